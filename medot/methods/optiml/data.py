"""Unlabelled image pools and the per-epoch batches of view pairs OPTiML trains on.

:class:`ImagePool` lists every image medot reads (PNG/JPEG/BMP/TIFF/DICOM/.npy) under a folder,
nested folders included, and loads each as a grey ``[1, H, W]`` tensor whose short side is
``load_size`` (decoding once and keeping them in memory when ``in_memory``).
:class:`ViewPairBatches` is a trainer batch factory: the epoch's order and rank sharding come from
:class:`medot.train.TensorBatches` (a function of ``(seed, epoch)``), and the two views of image
``i`` in epoch ``e`` are drawn from a generator seeded by ``(seed, e, i)``, so a batch is the same
whichever rank builds it and a resumed epoch replays it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.data.io import read_image
from medot.errors import DatasetLayoutError
from medot.methods.optiml.views import VIEW_RECIPES, generator_for, make_view
from medot.train.data import EpochContext, TensorBatches

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".dicom", ".npy")


def list_images(root: str | Path) -> list[Path]:
    """Every readable-looking image file under ``root`` (recursive, sorted; hidden files skipped)."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder of images")
    files = sorted(
        path
        for path in root.rglob("*")
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not any(p.startswith(".") for p in path.parts[len(root.parts):])
    )
    if not files:
        raise DatasetLayoutError(f"no images under {root}: expected PNG/JPEG/BMP/TIFF/DICOM/.npy files (nested folders are fine)")
    return files


def load_grey(path: str | Path, load_size: int) -> Tensor:
    """``path`` as grey ``[1, H, W]`` float32 in [0, 1], short side resized to ``load_size``."""
    pixels = read_image(path).pixels
    image = torch.from_numpy(pixels if pixels.ndim == 2 else pixels.mean(axis=2)).float()[None]
    height, width = image.shape[-2:]
    scale = load_size / min(height, width)
    size = (max(load_size, round(height * scale)), max(load_size, round(width * scale)))
    if size != (height, width):
        image = F.interpolate(image[None], size=size, mode="bilinear", align_corners=False, antialias=True)[0]
    return image.clamp(0.0, 1.0)


class ImagePool:
    """The images of an unlabelled folder (or an explicit list of files)."""

    def __init__(self, paths: Sequence[Path], load_size: int, in_memory: bool = True) -> None:
        if not paths:
            raise DatasetLayoutError("the image pool is empty")
        self.paths = list(paths)
        self.load_size = load_size
        self._images = [load_grey(path, load_size) for path in self.paths] if in_memory else None

    @classmethod
    def from_folder(cls, root: str | Path, load_size: int, in_memory: bool = True) -> ImagePool:
        return cls(list_images(root), load_size, in_memory)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> Tensor:
        if self._images is not None:
            return self._images[index]
        return load_grey(self.paths[index], self.load_size)


def view_pair(
    image: Tensor, size: int, seed: int, epoch: int, index: int, min_scale: float = 0.2
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(view_s, view_t, box_s, box_t)`` of one image, reproducible from ``(seed, epoch, index)``."""
    generator = generator_for(seed, epoch, index)
    view_s, box_s = make_view(image, size, VIEW_RECIPES[0], generator, min_scale)
    view_t, box_t = make_view(image, size, VIEW_RECIPES[1], generator, min_scale)
    return view_s, view_t, box_s, box_t


class ViewPairBatches:
    """Trainer batch factory: per-rank batches ``(view_s, view_t, box_s, box_t)`` of ``batch_size``
    images (``[B, 1, S, S]`` grey views in [0, 1] and ``[B, 5]`` boxes); the last incomplete batch
    is dropped (BatchNorm and the variance terms need full batches)."""

    def __init__(self, pool: ImagePool, batch_size: int, size: int, seed: int, min_scale: float = 0.2) -> None:
        if batch_size < 2:
            raise ValueError("batch_size must be at least 2 (the variance terms need two samples)")
        self.pool = pool
        self.size = size
        self.seed = seed
        self.min_scale = min_scale
        self.order = TensorBatches(torch.arange(len(pool)), batch_size=batch_size, drop_last=True)

    def __call__(self, context: EpochContext) -> _Epoch:
        return _Epoch(self, self.order(context), context.epoch)


class _Epoch:
    def __init__(self, source: ViewPairBatches, order, epoch: int) -> None:
        self.source, self.order, self.epoch = source, order, epoch

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor, Tensor, Tensor]]:
        source = self.source
        for (indices,) in self.order:
            pairs = [
                view_pair(source.pool[int(i)], source.size, source.seed, self.epoch, int(i), source.min_scale)
                for i in indices
            ]
            yield tuple(torch.stack(parts) for parts in zip(*pairs))
