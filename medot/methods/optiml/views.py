r"""Two augmented views per image, with the crop box of each recorded (true patch correspondence).

A view of a grey image :math:`x \in [0,1]^{H\times W}` is (VICReg's asymmetric pair, Bardes et al.
2022, App. C, without the hue/saturation jitter and grey-scale conversion that grey images make
meaningless):

1. a random resized crop (scale :math:`s \sim U(s_{min}, 1)` of the area, aspect ratio
   :math:`r`, :math:`\log r \sim U(\log 3/4, \log 4/3)`; torchvision's ``RandomResizedCrop``
   sampling) resized to ``S x S``; its box is recorded as ``(top, left, height, width, flip)`` in
   fractions of the source image;
2. a horizontal flip with probability 1/2 (recorded);
3. brightness and contrast jitter (factors in ``[0.6, 1.4]``) with probability 0.8;
4. Gaussian blur (:math:`\sigma \sim U(0.1, 2.0)\cdot S/224`) with probability 1.0 (view 1) /
   0.1 (view 2);
5. solarisation (:math:`x \mapsto 1 - x` where :math:`x \ge 1/2`) with probability 0 / 0.2;

then the grey channel is repeated three times and normalised with the encoder's mean/std.

**Correspondence.** Patch :math:`(r, c)` of an :math:`h\times w` token grid on a view with box
:math:`(t, l, H_b, W_b, f)` covers the source rectangle rows :math:`[t + H_b r/h, t + H_b(r+1)/h]`
and columns :math:`[l + W_b c/w, l + W_b(c+1)/w]` (mirrored, :math:`c \to w-1-c`, when flipped).
:func:`overlap_mask` marks the pairs of patches of two views whose rectangles intersect with
positive area; :func:`patch_centres` gives each patch's centre in the source image;
:func:`centre_match` gives, for each patch of view s, the patch of view t whose
rectangle contains its centre (-1 when outside view t). :func:`mass_on_overlap` is the share of a
matching plan's mass that lands on overlapping pairs - the diagnostic the issue asks for.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

#: box layout: top, left, height, width (fractions of the source image), flip (0 or 1)
BOX_FIELDS = ("top", "left", "height", "width", "flip")


@dataclass(frozen=True)
class ViewRecipe:
    """Probabilities of one view's photometric augmentations (VICReg: view 1 / view 2)."""

    blur: float
    solarize: float
    jitter: float = 0.8
    flip: float = 0.5


VIEW_RECIPES = (ViewRecipe(blur=1.0, solarize=0.0), ViewRecipe(blur=0.1, solarize=0.2))


def generator_for(*entropy: int) -> torch.Generator:
    """A torch generator seeded from ``entropy`` (e.g. ``(seed, epoch, image index)``)."""
    state = np.random.SeedSequence([int(e) for e in entropy]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def _uniform(generator: torch.Generator, low: float = 0.0, high: float = 1.0) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def sample_crop(
    height: int, width: int, generator: torch.Generator, scale: tuple[float, float] = (0.2, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """``(top, left, h, w)`` in pixels, as torchvision's ``RandomResizedCrop.get_params`` draws it
    (10 tries, then a central crop clamped to ``ratio``), from ``generator``."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = area * _uniform(generator, *scale)
        aspect = math.exp(_uniform(generator, *log_ratio))
        w = round(math.sqrt(target * aspect))
        h = round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            top = int(torch.randint(0, height - h + 1, (), generator=generator))
            left = int(torch.randint(0, width - w + 1, (), generator=generator))
            return top, left, h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, round(width / ratio[0])
    elif in_ratio > ratio[1]:
        h, w = height, round(height * ratio[1])
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _gaussian_blur(image: Tensor, sigma: float) -> Tensor:
    radius = max(1, math.ceil(3 * sigma))
    x = torch.arange(-radius, radius + 1, dtype=image.dtype)
    kernel = torch.exp(-(x**2) / (2 * sigma**2))
    kernel = kernel / kernel.sum()
    padded = F.pad(image[None], (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1))
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1))[0]


def make_view(
    image: Tensor,
    size: int,
    recipe: ViewRecipe,
    generator: torch.Generator,
    min_scale: float = 0.2,
    photometric: bool = True,
) -> tuple[Tensor, Tensor]:
    """One augmented view ``[1, size, size]`` (grey, in [0, 1]) of ``image`` ``[1, H, W]`` and its
    box ``[5]`` (see :data:`BOX_FIELDS`). ``photometric=False`` keeps only crop and flip."""
    _, height, width = image.shape
    top, left, h, w = sample_crop(height, width, generator, (min_scale, 1.0))
    crop = image[:, top : top + h, left : left + w]
    view = F.interpolate(crop[None], size=(size, size), mode="bilinear", align_corners=False, antialias=True)[0]
    flip = _uniform(generator) < recipe.flip
    if flip:
        view = view.flip(-1)
    if photometric:
        if _uniform(generator) < recipe.jitter:
            brightness, contrast = _uniform(generator, 0.6, 1.4), _uniform(generator, 0.6, 1.4)
            view = view * brightness
            view = (view - view.mean()) * contrast + view.mean()
        if _uniform(generator) < recipe.blur:
            view = _gaussian_blur(view, _uniform(generator, 0.1, 2.0) * size / 224)
        if _uniform(generator) < recipe.solarize:
            view = torch.where(view >= 0.5, 1.0 - view, view)
    box = torch.tensor([top / height, left / width, h / height, w / width, float(flip)])
    return view.clamp(0.0, 1.0), box


def patch_rectangles(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Source-image rectangles ``[B, h*w, 4]`` (row0, col0, row1, col1; fractions) of the patches of
    an ``h x w`` token grid (row-major) on views with ``boxes`` ``[B, 5]``."""
    h, w = grid
    top, left, height, width, flip = boxes.unbind(-1)
    r = torch.arange(h, dtype=boxes.dtype, device=boxes.device)
    c = torch.arange(w, dtype=boxes.dtype, device=boxes.device)
    rows0 = top[:, None] + height[:, None] * r / h  # [B, h]
    rows1 = top[:, None] + height[:, None] * (r + 1) / h
    c_src = torch.where(flip[:, None] > 0.5, (w - 1 - c).expand(len(boxes), w), c.expand(len(boxes), w))
    cols0 = left[:, None] + width[:, None] * c_src / w  # [B, w]
    cols1 = left[:, None] + width[:, None] * (c_src + 1) / w
    rect = torch.stack(
        [
            rows0[:, :, None].expand(-1, h, w),
            cols0[:, None, :].expand(-1, h, w),
            rows1[:, :, None].expand(-1, h, w),
            cols1[:, None, :].expand(-1, h, w),
        ],
        dim=-1,
    )
    return rect.reshape(len(boxes), h * w, 4)


def patch_centres(boxes: Tensor, grid: tuple[int, int]) -> Tensor:
    """Source-image centres ``[B, h*w, 2]`` (row, col; fractions) of the patches of an ``h x w``
    token grid on views with ``boxes`` (flips mirrored): the locations VICRegL's location-based
    matching compares."""
    rect = patch_rectangles(boxes, grid)
    return torch.stack([(rect[..., 0] + rect[..., 2]) / 2, (rect[..., 1] + rect[..., 3]) / 2], dim=-1)


def overlap_mask(boxes_s: Tensor, boxes_t: Tensor, grid_s: tuple[int, int], grid_t: tuple[int, int]) -> Tensor:
    """``[B, Ns, Nt]`` bool: patch i of view s and patch j of view t cover intersecting source
    rectangles (positive area)."""
    a = patch_rectangles(boxes_s, grid_s)[:, :, None, :]
    b = patch_rectangles(boxes_t, grid_t)[:, None, :, :]
    rows = torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])
    cols = torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])
    tiny = 1e-9
    return (rows > tiny) & (cols > tiny)


def centre_match(boxes_s: Tensor, boxes_t: Tensor, grid_s: tuple[int, int], grid_t: tuple[int, int]) -> Tensor:
    """``[B, Ns]`` long: the patch of view t whose rectangle holds the centre of patch i of view s,
    or -1 when that centre lies outside view t."""
    centre_r, centre_c = patch_centres(boxes_s, grid_s).unbind(-1)
    top, left, height, width, flip = (v[:, None] for v in boxes_t.unbind(-1))
    u = (centre_r - top) / height  # position inside view t, fractions
    v = (centre_c - left) / width
    v = torch.where(flip > 0.5, 1 - v, v)
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    h, w = grid_t
    row = (u * h).floor().clamp(0, h - 1).long()
    col = (v * w).floor().clamp(0, w - 1).long()
    return torch.where(inside, row * w + col, torch.full_like(row, -1))


def mass_on_overlap(plan: Tensor, mask: Tensor) -> Tensor:
    """Share of each plan's mass on overlapping patch pairs, averaged over the batch (scalar)."""
    total = plan.sum(dim=(-1, -2)).clamp_min(1e-12)
    return ((plan * mask).sum(dim=(-1, -2)) / total).mean()
