r"""A seeded, download-free medical-like benchmark written in the real dataset layouts.

Every case is one anatomy -- scikit-image's Shepp-Logan head phantom under a random affine and
elastic deformation, with parenchymal texture -- optionally carrying a lesion, rendered in two
modalities of very different character:

* **CT-like slice** (the high-end modality): the attenuation map :math:`\mu(x, y)` itself seen
  through a display window, with slight blur and Gaussian noise;
* **X-ray-like projection** (the low-end modality): the slice is extruded into a 3-D solid whose
  depth at :math:`(x, y)` is the chord :math:`t = 2\sqrt{d(2R - d)}` of a sphere (:math:`d` the
  distance to the outline), a lesion is a solid of its own chord :math:`\ell`, and the detector
  counts photons through the Beer-Lambert line integral :math:`P = \int \mu\,dz` (see
  :func:`_render_xray`), then blur, scatter and a low-contrast display. A nodule adds only its
  own diameter of attenuation to a path through the whole head, so it is far less conspicuous
  than in the slice: the high-end / low-end gap that K-MaT transfers across.

Lesion classes are ``normal``, ``nodule`` (one or two focal round lesions) and ``opacity`` (a
diffuse ground-glass region); every abnormal case has a pixel mask of the lesion footprint.

:func:`write_synthetic_benchmark` writes three datasets under one folder, in the layouts that
:mod:`medot.data.datasets` reads: a K-MaT modality pair (class folders plus BiomedCoOp-style
split JSON), the MVFA medical anomaly-detection layout with few-shot lists, and MVTec AD.

The MVFA layout holds three differently rendered "organs" with different anomaly types, so that
leave-one-organ-out (zero-shot) protocols can run: ``Phantom`` (the CT slice; nodule / opacity),
``Retina`` (an OCT-like B-scan, :func:`render_oct_case`; fluid pockets) and ``Histo`` (a
histology-like RGB tile, :func:`render_histology_case`; foci of nuclear atypia).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import Image
from scipy import ndimage
from skimage.data import shepp_logan_phantom
from skimage.transform import AffineTransform, resize
from tqdm.auto import tqdm

from medot import __version__
from medot.errors import MedotError

NORMAL, NODULE, OPACITY = "normal", "nodule", "opacity"
LESION_CLASSES = (NODULE, NORMAL, OPACITY)  # sorted: split-file labels equal the class-folder order
HIGH_END, LOW_END = "ct", "xray"
MVFA_OBJECT = "Phantom"
RETINA_OBJECT, HISTO_OBJECT = "Retina", "Histo"
#: the MVFA-layout objects, each a differently rendered "organ" with its own anomaly types
MVFA_OBJECTS = (MVFA_OBJECT, RETINA_OBJECT, HISTO_OBJECT)
FLUID, ATYPIA = "fluid", "atypia"
#: per object: modality, anomaly types (abnormal cases cycle through them)
MVFA_ORGANS = {
    MVFA_OBJECT: ("ct", (NODULE, OPACITY)),
    RETINA_OBJECT: ("oct", (FLUID,)),
    HISTO_OBJECT: ("histology", (ATYPIA,)),
}
MVTEC_CATEGORY = "phantom"
MANIFEST_NAME = "manifest.json"
GENERATOR_ID = "medot.data.synthetic"
KMAT_DIR, MVFA_DIR, MVTEC_DIR = "kmat", "mvfa", "mvtec"
MIN_SIZE = 32
MIN_PER_CLASS = 3

_KMAT_STREAM, _MVFA_STREAM, _MVTEC_STREAM = 0, 1, 2
_BACKGROUND, _SKULL, _BRAIN = 0, 1, 2


class SyntheticBenchmarkError(MedotError):
    """The synthetic benchmark cannot be written where or how it was asked."""


@dataclass(frozen=True)
class SyntheticCase:
    """One case in both modalities: ``uint8`` images and the boolean lesion footprint."""

    lesion: str
    ct: np.ndarray
    xray: np.ndarray
    mask: np.ndarray


@dataclass(frozen=True)
class SyntheticBenchmark:
    """Where :func:`write_synthetic_benchmark` put each dataset, and what it holds."""

    root: Path
    seed: int
    size: int
    class_names: tuple[str, ...]
    kmat_high: Path
    kmat_low: Path
    kmat_high_split: Path
    kmat_low_split: Path
    mvfa_root: Path
    mvfa_object: str
    mvfa_shots: tuple[int, ...]
    mvtec_root: Path
    mvtec_category: str
    manifest: Path
    #: every object of the MVFA layout (sorted as :func:`medot.data.datasets.detect_layout` lists them)
    mvfa_objects: tuple[str, ...] = tuple(sorted(MVFA_OBJECTS))


# --------------------------------------------------------------------------- rendering


class _Lesion(NamedTuple):
    """In-plane attenuation excess, its depth along the X-ray beam (pixels) and its footprint."""

    delta_mu: np.ndarray
    chord: np.ndarray
    footprint: np.ndarray


@lru_cache(maxsize=4)
def _canonical_phantom(size: int) -> tuple[np.ndarray, np.ndarray]:
    """The phantom at ``size`` and its regions: background, skull (the body rim) and brain."""
    mu = resize(shepp_logan_phantom(), (size, size), order=1, anti_aliasing=True)
    body = ndimage.binary_fill_holes(mu > 0.05)
    brain = ndimage.binary_erosion(body, iterations=max(2, round(0.04 * size)))
    regions = np.where(brain, _BRAIN, np.where(body, _SKULL, _BACKGROUND)).astype(float)
    return mu, regions


def _smooth_noise(rng: np.random.Generator, size: int, sigma: float) -> np.ndarray:
    """White noise smoothed by a Gaussian of width ``sigma``, rescaled to unit standard deviation.

    The noise is drawn and smoothed on a grid ``sigma/4`` times coarser, then interpolated
    bilinearly to ``size``: the same smooth field for a fraction of the filtering cost.
    """
    step = max(1, int(sigma // 4))
    coarse_size = size // step + 2
    coarse = ndimage.gaussian_filter(rng.standard_normal((coarse_size, coarse_size)), sigma=sigma / step, truncate=3.0)
    position = np.arange(size) / step
    left = np.floor(position).astype(int)
    weight = position - left
    rows = coarse[left] * (1 - weight)[:, None] + coarse[left + 1] * weight[:, None]
    field = rows[:, left] * (1 - weight) + rows[:, left + 1] * weight
    return field / field.std()


def _deformation(rng: np.random.Generator, size: int) -> np.ndarray:
    r"""Backward sampling coordinates ``[2, H, W]`` of a random affine + elastic deformation.

    Output pixel :math:`x` samples the phantom at :math:`A^{-1}x + u(x)`, where :math:`A` rotates
    (+-10 deg), scales each axis (0.85-1.0), shears and shifts about the image centre, and each
    component of :math:`u` is white noise smoothed at width ``size/10`` with RMS ``0.012*size``.
    """
    centre = (size - 1) / 2
    shift = rng.uniform(-0.03, 0.03, 2) * size
    affine = (
        AffineTransform(translation=(-centre, -centre))
        + AffineTransform(
            scale=tuple(rng.uniform(0.85, 1.0, 2)),
            rotation=np.deg2rad(rng.uniform(-10, 10)),
            shear=rng.uniform(-0.05, 0.05),
        )
        + AffineTransform(translation=(centre + shift[0], centre + shift[1]))
    )
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    source_xy = affine.inverse(np.column_stack([cols.ravel(), rows.ravel()]))
    coords = source_xy[:, ::-1].T.reshape(2, size, size).copy()
    for axis in range(2):
        coords[axis] += 0.012 * size * _smooth_noise(rng, size, size / 10)
    return coords


def _pick_centre(rng: np.random.Generator, brain: np.ndarray, margin: float) -> tuple[int, int]:
    """A random brain pixel at least ``margin`` from the brain outline (the deepest one if none is)."""
    depth = ndimage.distance_transform_edt(brain)
    candidates = np.argwhere(depth > margin)
    if len(candidates) == 0:
        row, col = np.unravel_index(np.argmax(depth), depth.shape)
    else:
        row, col = candidates[rng.integers(len(candidates))]
    return int(row), int(col)


def _nodules(rng: np.random.Generator, brain: np.ndarray) -> _Lesion:
    r"""One or two spheres of radius :math:`r` = 3.5-6 % of the image, :math:`\Delta\mu` = 0.35-0.5.

    Along the beam a sphere has chord :math:`\ell = 2\sqrt{r^2 - \rho^2}` at in-plane distance
    :math:`\rho` from its centre; its footprint is the disc :math:`\rho \le r`.
    """
    size = brain.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    delta_mu, chord, footprint = np.zeros((3, size, size))
    for _ in range(rng.integers(1, 3)):
        radius = rng.uniform(0.035, 0.06) * size
        row, col = _pick_centre(rng, brain, radius + 1)
        rho = np.hypot(rows - row, cols - col)
        delta_mu = np.maximum(delta_mu, rng.uniform(0.35, 0.5) * np.clip(radius - rho + 0.5, 0.0, 1.0))
        chord = np.maximum(chord, 2 * np.sqrt(np.clip(radius**2 - rho**2, 0.0, None)))
        footprint = np.maximum(footprint, rho <= radius)
    return _Lesion(delta_mu, chord, footprint.astype(bool))


def _opacity(rng: np.random.Generator, brain: np.ndarray) -> _Lesion:
    r"""A ground-glass ellipsoid of radius :math:`R` = 20-30 % of the image, :math:`\Delta\mu` 0.10-0.16.

    The footprint is where a Gaussian envelope of width :math:`R/2`, modulated by a smooth random
    field, exceeds one half (a patchy border); inside it the excess is mottled by +-30 % texture.
    """
    size = brain.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    radius = rng.uniform(0.2, 0.3) * size
    row, col = _pick_centre(rng, brain, radius / 3)
    rho2 = (rows - row) ** 2 + (cols - col) ** 2
    envelope = np.exp(-rho2 / (2 * (radius / 2) ** 2))
    patchiness = 0.6 + 0.4 * np.clip(0.5 + 0.25 * _smooth_noise(rng, size, size / 25), 0.0, 1.0)
    footprint = (envelope * patchiness > 0.5) & brain
    soft_region = ndimage.gaussian_filter(footprint.astype(float), sigma=size / 100)
    texture = np.clip(1.0 + 0.3 * _smooth_noise(rng, size, size / 80), 0.0, None)
    delta_mu = rng.uniform(0.10, 0.16) * soft_region * texture * brain
    chord = 2 * np.sqrt(np.clip(radius**2 - rho2, 0.0, None)) * soft_region
    return _Lesion(delta_mu, chord, footprint)


def _lesion(rng: np.random.Generator, lesion: str, brain: np.ndarray) -> _Lesion:
    if lesion == NODULE:
        return _nodules(rng, brain)
    if lesion == OPACITY:
        return _opacity(rng, brain)
    empty = np.zeros(brain.shape)
    return _Lesion(empty, empty, np.zeros(brain.shape, dtype=bool))


def _to_uint8(image: np.ndarray) -> np.ndarray:
    return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)


def _render_ct(mu: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Slice through a window spanning air to bone, focal blur 0.6 px, Gaussian noise sigma 0.015."""
    window = (ndimage.gaussian_filter(mu, sigma=0.6) + 0.05) / 1.1
    return _to_uint8(window + rng.normal(0.0, 0.015, mu.shape))


def _sphere_chord(mask: np.ndarray) -> np.ndarray:
    r"""Depth :math:`t = 2\sqrt{d(2R - d)}` (pixels) of the solid whose outline is ``mask``."""
    distance = ndimage.distance_transform_edt(mask)
    radius = distance.max()
    return 2 * np.sqrt(distance * (2 * radius - distance))


def _render_xray(
    tissue: np.ndarray, body: np.ndarray, brain: np.ndarray, lesion: _Lesion, rng: np.random.Generator
) -> np.ndarray:
    r"""Beer-Lambert projection of the extruded slice, then blur, scatter, photon noise and display.

    The solid is a bone shell (:math:`\mu = 1`) between the body and brain outlines, a slab of
    thickness :math:`s = \min(0.15\,\text{size}, t_{brain})` through the brain carrying the slice
    :math:`\mu(x, y)`, and mean brain tissue (0.2) over the rest of the brain depth:

    .. math:: P = (t_{body} - t_{brain}) + s\,\mu + 0.2\,(t_{brain} - s) + \Delta\mu\,\ell .

    The transmitted fraction :math:`e^{-3P/\text{size}}` is blurred (focal spot, ``size/120``),
    gains 25 % low-frequency scatter, is counted with 3000 photons per pixel (Poisson), and the
    log signal :math:`-\log(\text{counts}/3000)/3` is shown through a low-contrast gamma window.
    """
    size = tissue.shape[0]
    body_depth = _sphere_chord(body)
    brain_depth = _sphere_chord(brain)
    slab = np.minimum(0.15 * size, brain_depth)
    bone = body_depth - brain_depth
    line_integral = bone + slab * tissue + 0.2 * (brain_depth - slab) + lesion.delta_mu * lesion.chord
    transmitted = ndimage.gaussian_filter(np.exp(-3.0 * line_integral / size), sigma=size / 120)
    transmitted = transmitted + 0.25 * ndimage.gaussian_filter(transmitted, sigma=size / 10, truncate=3.0)
    counts = rng.poisson(3000.0 * transmitted)
    measured = -np.log(np.maximum(counts, 1) / 3000.0) / 3.0
    return _to_uint8(0.1 + 0.8 * np.clip(measured / 0.35, 0.0, 1.0) ** 0.8)


class _Scene(NamedTuple):
    """One deformed anatomy with its lesion, and the generator that will draw its noise."""

    tissue: np.ndarray
    body: np.ndarray
    brain: np.ndarray
    lesion: _Lesion
    rng: np.random.Generator


def _scene(lesion: str, seed: int | Sequence[int], size: int) -> _Scene:
    if lesion not in LESION_CLASSES:
        raise SyntheticBenchmarkError(f"unknown lesion class {lesion!r}: use one of {', '.join(LESION_CLASSES)}")
    if size < MIN_SIZE:
        raise SyntheticBenchmarkError(f"image size {size} is too small: use at least {MIN_SIZE} pixels")
    rng = np.random.default_rng(seed)
    canonical_mu, canonical_regions = _canonical_phantom(size)
    coords = _deformation(rng, size)
    tissue = ndimage.map_coordinates(canonical_mu, coords, order=1, mode="constant")
    regions = ndimage.map_coordinates(canonical_regions, coords, order=0, mode="constant")
    body, brain = regions != _BACKGROUND, regions == _BRAIN
    tissue = np.clip(tissue + 0.02 * _smooth_noise(rng, size, size / 60) * brain, 0.0, None)
    return _Scene(tissue, body, brain, _lesion(rng, lesion, brain), rng)


def render_case(lesion: str, seed: int | Sequence[int], size: int = 224) -> SyntheticCase:
    """Render one case of class ``lesion`` in both modalities; the same ``seed`` gives the same arrays.

    ``seed`` is any entropy :func:`numpy.random.default_rng` accepts (an int or a sequence of
    ints), so a benchmark addresses case ``i`` of stream ``s`` as ``(seed, s, i)``.
    """
    scene = _scene(lesion, seed, size)
    ct = _render_ct(scene.tissue + scene.lesion.delta_mu, scene.rng)
    xray = _render_xray(scene.tissue, scene.body, scene.brain, scene.lesion, scene.rng)
    return SyntheticCase(lesion=lesion, ct=ct, xray=xray, mask=scene.lesion.footprint)


def render_ct_case(lesion: str, seed: int | Sequence[int], size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """``(ct, mask)`` of :func:`render_case` for the same arguments, without the projection's cost."""
    scene = _scene(lesion, seed, size)
    return _render_ct(scene.tissue + scene.lesion.delta_mu, scene.rng), scene.lesion.footprint


# --------------------------------------------------------------------------- more MVFA organs


def render_oct_case(abnormal: bool, seed: int | Sequence[int], size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    r"""An OCT-like retinal B-scan ``(uint8 image, bool mask)``; abnormal cases carry a fluid pocket.

    The retina lies below a smooth random surface :math:`y_0(x)` (a random low-order curve plus
    smooth noise); below it, bands of alternating reflectivity at fixed depths (nerve fibre,
    plexiform and photoreceptor-like layers) whose boundaries follow the surface, over a dark
    vitreous. The intensity is multiplied by gamma-distributed speckle (shape 4) and blurred. A
    *fluid* anomaly is a hyporeflective ellipse (intensity x 0.15) inside the band region, 10-16 %
    of the image wide and 5-9 % high; its footprint is the mask.
    """
    if size < MIN_SIZE:
        raise SyntheticBenchmarkError(f"image size {size} is too small: use at least {MIN_SIZE} pixels")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    x = np.linspace(-1.0, 1.0, size)
    curvature, tilt = rng.uniform(0.05, 0.15), rng.uniform(-0.05, 0.05)
    surface = size * (0.35 + tilt * x + curvature * x**2) + 0.01 * size * _smooth_noise(rng, size, size / 8)[0]
    depth = (rows - surface[None, :]) / size
    bands = np.zeros((size, size))
    for top, bottom, level in ((0.0, 0.05, 0.9), (0.05, 0.12, 0.45), (0.12, 0.16, 0.7), (0.16, 0.24, 0.35),
                               (0.24, 0.27, 1.0), (0.27, 0.31, 0.6)):
        bands = np.where((depth >= top) & (depth < bottom), level, bands)
    bands = np.where(depth >= 0.31, 0.25 * np.exp(-(depth - 0.31) * 12), bands) + 0.03
    mask = np.zeros((size, size), dtype=bool)
    if abnormal:
        col = rng.uniform(0.25, 0.75) * size
        half_width, half_height = rng.uniform(0.05, 0.08) * size, rng.uniform(0.025, 0.045) * size
        row = surface[int(col)] + rng.uniform(0.08, 0.2) * size
        mask = ((rows - row) / half_height) ** 2 + ((cols - col) / half_width) ** 2 <= 1.0
        bands = np.where(mask, 0.15 * bands, bands)
    speckle = rng.gamma(4.0, 1 / 4.0, (size, size))
    image = ndimage.gaussian_filter(bands * speckle, sigma=0.7)
    return _to_uint8(image), mask


_HISTO_BACKGROUND = np.array([0.93, 0.78, 0.86])
_HISTO_NUCLEUS = np.array([0.35, 0.2, 0.55])


def render_histology_case(
    abnormal: bool, seed: int | Sequence[int], size: int = 224
) -> tuple[np.ndarray, np.ndarray]:
    r"""A histology-like RGB tile ``(uint8 HxWx3, bool mask)``; abnormal tiles carry a focus of atypia.

    Pink stroma (eosin-like, with smooth texture) holds round purple nuclei (haematoxylin-like)
    of radius 1.2-2 % of the tile at random positions, about one per :math:`(0.06\,\text{size})^2`.
    An *atypia* focus is a disc of radius 12-18 % of the tile in which nuclei are twice as dense,
    1.6-2x larger and darker; the disc is the mask.
    """
    if size < MIN_SIZE:
        raise SyntheticBenchmarkError(f"image size {size} is too small: use at least {MIN_SIZE} pixels")
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:size, 0:size].astype(float)
    stain = np.zeros((size, size))
    count = int(round((size / (0.06 * size)) ** 2))
    centres = rng.uniform(0, size, (count, 2))
    radii = rng.uniform(0.012, 0.02, count) * size
    darkness = np.full(count, 0.8)
    mask = np.zeros((size, size), dtype=bool)
    if abnormal:
        focus = rng.uniform(0.3, 0.7, 2) * size
        focus_radius = rng.uniform(0.12, 0.18) * size
        mask = np.hypot(rows - focus[0], cols - focus[1]) <= focus_radius
        inside = np.hypot(*(centres - focus).T) <= focus_radius
        radii[inside] *= rng.uniform(1.6, 2.0, int(inside.sum()))
        darkness[inside] = 1.0
        extra_count = max(1, int(inside.sum()))
        angle, spread = rng.uniform(0, 2 * np.pi, extra_count), focus_radius * np.sqrt(rng.uniform(0, 1, extra_count))
        extra = focus + np.column_stack([spread * np.sin(angle), spread * np.cos(angle)])
        centres = np.concatenate([centres, extra])
        radii = np.concatenate([radii, rng.uniform(0.02, 0.035, extra_count) * size])
        darkness = np.concatenate([darkness, np.ones(extra_count)])
    for (row, col), radius, dark in zip(centres, radii, darkness, strict=True):
        top, bottom = max(0, int(row - radius - 1)), min(size, int(row + radius + 2))
        left, right = max(0, int(col - radius - 1)), min(size, int(col + radius + 2))
        disc = np.clip(radius - np.hypot(rows[top:bottom, left:right] - row, cols[top:bottom, left:right] - col) + 0.5, 0, 1)
        stain[top:bottom, left:right] = np.maximum(stain[top:bottom, left:right], dark * disc)
    texture = 1.0 + 0.05 * _smooth_noise(rng, size, size / 30)
    image = (_HISTO_BACKGROUND * texture[..., None]) * (1 - stain[..., None]) + _HISTO_NUCLEUS * stain[..., None]
    image = ndimage.gaussian_filter(image, sigma=(0.6, 0.6, 0)) + rng.normal(0.0, 0.01, image.shape)
    return _to_uint8(image), mask


def render_mvfa_case(obj: str, lesion: str, seed: int | Sequence[int], size: int = 224) -> tuple[np.ndarray, np.ndarray]:
    """``(image, mask)`` of one case of MVFA object ``obj`` (:data:`MVFA_ORGANS`) with ``lesion``
    (``normal`` or one of the object's anomaly types)."""
    if obj not in MVFA_ORGANS:
        raise SyntheticBenchmarkError(f"unknown synthetic MVFA object {obj!r}: use one of {', '.join(MVFA_ORGANS)}")
    kinds = MVFA_ORGANS[obj][1]
    if lesion != NORMAL and lesion not in kinds:
        raise SyntheticBenchmarkError(f"{obj} has no anomaly {lesion!r}: use normal or {', '.join(kinds)}")
    if obj == MVFA_OBJECT:
        return render_ct_case(lesion, seed, size)
    if obj == RETINA_OBJECT:
        return render_oct_case(lesion != NORMAL, seed, size)
    return render_histology_case(lesion != NORMAL, seed, size)


# --------------------------------------------------------------------------- writing


def _save_png(path: Path, image: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path, format="PNG")


def _save_mask(path: Path, mask: np.ndarray) -> None:
    _save_png(path, np.where(mask, 255, 0).astype(np.uint8))


def _kmat_split_sizes(n_per_class: int) -> dict[str, int]:
    """Cases per class in each split: 40 % test, 10 % (at least one) val, the rest train."""
    n_test = max(1, 2 * n_per_class // 5)
    n_val = max(1, n_per_class // 10)
    return {"train": n_per_class - n_val - n_test, "val": n_val, "test": n_test}


def _mvfa_plan(n_per_class: int) -> dict[str, int]:
    """Normal cases (and as many abnormal ones) in each MVFA split."""
    return {"valid": max(1, n_per_class // 2), "test": n_per_class}


def _mvtec_plan(n_per_class: int) -> list[tuple[str, str, int]]:
    """``(split, lesion class, number of cases)`` for the MVTec category."""
    n_test = max(1, n_per_class // 2)
    return [("train", NORMAL, n_per_class)] + [("test", lesion, n_test) for lesion in LESION_CLASSES]


def _write_kmat(root: Path, seed: int, n_per_class: int, size: int, bar: tqdm) -> dict:
    """The same cases as CT slices under ``ct/`` and X-ray projections under ``xray/``.

    Each modality folder holds ``<class>/<class>_NNNN.png`` and ``split_<modality>.json`` with
    ``{"train" | "val" | "test": [[relative path, label, class name], ...]}``; a case has the same
    file name and split in both modalities, so the two folders are paired image by image.
    """
    sizes = _kmat_split_sizes(n_per_class)
    split_of_case = [split for split, count in sizes.items() for _ in range(count)]
    entries: dict[str, dict[str, list]] = {m: {s: [] for s in sizes} for m in (HIGH_END, LOW_END)}
    for label, lesion in enumerate(LESION_CLASSES):
        for index, split in enumerate(split_of_case):
            case = render_case(lesion, (seed, _KMAT_STREAM, label, index), size)
            relative = f"{lesion}/{lesion}_{index:04d}.png"
            for modality, image in ((HIGH_END, case.ct), (LOW_END, case.xray)):
                _save_png(root / modality / relative, image)
                entries[modality][split].append([relative, label, lesion])
            bar.update()
    for modality, splits in entries.items():
        (root / modality / f"split_{modality}.json").write_text(json.dumps(splits, indent=1))
    return {split: dict.fromkeys(LESION_CLASSES, count) for split, count in sizes.items()}


def _write_mvfa(
    root: Path, seed: int, n_per_class: int, size: int, bar: tqdm
) -> tuple[dict, tuple[int, ...]]:
    """Every object of :data:`MVFA_ORGANS` as ``<Obj>_AD/{valid,test}/{good,Ungood}/img/NNNNN.png``
    plus few-shot lists.

    Masks are ``Ungood/anomaly_mask/<same name>``; abnormal cases cycle through the object's
    anomaly types (the phantom: nodule and opacity). ``fewshot_seed/<Obj>/<k>-shot.txt`` holds
    ``a-0: <k abnormal names>`` and ``n-0: <k normal names>`` from the valid split, as in MVFA-AD;
    the k-shot sets are nested prefixes of one seeded permutation, for every k in 1, 2, 4, 8, 16
    that the valid split can supply. Returns the counts per object and the shots.
    """
    plan = _mvfa_plan(n_per_class)
    counts = {}
    shots = tuple(k for k in (1, 2, 4, 8, 16) if k <= plan["valid"])
    for obj_id, obj in enumerate(MVFA_ORGANS):
        _write_mvfa_object(root, obj, obj_id, seed, plan, shots, size, bar)
        counts[obj] = {split: {"good": count, "Ungood": count} for split, count in plan.items()}
    return counts, shots


def _write_mvfa_object(
    root: Path, obj: str, obj_id: int, seed: int, plan: dict[str, int], shots: tuple[int, ...], size: int, bar: tqdm
) -> None:
    object_dir = root / f"{obj}_AD"
    kinds = MVFA_ORGANS[obj][1]
    names: dict[str, list[str]] = {"good": [], "Ungood": []}
    # the phantom keeps the stream it always had, so its files stay byte-identical
    stream = (_MVFA_STREAM,) if obj_id == 0 else (_MVFA_STREAM, 10 + obj_id)
    for split_id, (split, count) in enumerate(plan.items()):
        for index in range(2 * count):
            normal = index < count
            lesion = NORMAL if normal else kinds[index % len(kinds)]
            image, mask = render_mvfa_case(obj, lesion, (seed, *stream, split_id, index), size)
            folder = object_dir / split / ("good" if normal else "Ungood")
            name = f"{index:05d}.png"
            _save_png(folder / "img" / name, image)
            if not normal:
                _save_mask(folder / "anomaly_mask" / name, mask)
            if split == "valid":
                names["good" if normal else "Ungood"].append(name)
            bar.update()
    rng = np.random.default_rng((seed, *stream, len(plan)))
    order = {group: [found[i] for i in rng.permutation(len(found))] for group, found in names.items()}
    fewshot_dir = root / "fewshot_seed" / obj
    fewshot_dir.mkdir(parents=True, exist_ok=True)
    for k in shots:
        lines = [f"a-0: {' '.join(order['Ungood'][:k])}", f"n-0: {' '.join(order['good'][:k])}"]
        (fewshot_dir / f"{k}-shot.txt").write_text("\n".join(lines) + "\n")


def _write_mvtec(root: Path, seed: int, n_per_class: int, size: int, bar: tqdm) -> dict:
    """CT cases as ``<category>/train/good``, ``test/{good,nodule,opacity}`` and ``ground_truth``.

    Masks are ``ground_truth/<defect>/NNN_mask.png`` for ``test/<defect>/NNN.png``.
    """
    category_dir = root / MVTEC_CATEGORY
    plan = _mvtec_plan(n_per_class)
    for part, (split, lesion, count) in enumerate(plan):
        folder = "good" if lesion == NORMAL else lesion
        for index in range(count):
            ct, mask = render_ct_case(lesion, (seed, _MVTEC_STREAM, part, index), size)
            _save_png(category_dir / split / folder / f"{index:03d}.png", ct)
            if lesion != NORMAL:
                _save_mask(category_dir / "ground_truth" / folder / f"{index:03d}_mask.png", mask)
            bar.update()
    counts: dict[str, dict[str, int]] = {}
    for split, lesion, count in plan:
        counts.setdefault(split, {})["good" if lesion == NORMAL else lesion] = count
    return counts


def _is_synthetic_output(folder: Path) -> bool:
    try:
        manifest = json.loads((folder / MANIFEST_NAME).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_ID


def _prepare_output(root: Path) -> None:
    """Create ``root``, or clear a previous synthetic output there; never touch foreign data."""
    if root.exists() and not root.is_dir():
        raise SyntheticBenchmarkError(f"{root} is a file; give a folder for the synthetic benchmark")
    if root.is_dir() and any(root.iterdir()):
        if not _is_synthetic_output(root):
            raise SyntheticBenchmarkError(
                f"{root} is not empty and holds no synthetic-benchmark {MANIFEST_NAME}; refusing to write "
                "into it. Choose a new or empty folder, or one written by write_synthetic_benchmark before."
            )
        for name in (KMAT_DIR, MVFA_DIR, MVTEC_DIR):
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)


def _write_manifest(root: Path, settings: dict, datasets: dict | None) -> None:
    """``manifest.json``: what was generated, how, and whether generation finished."""
    manifest = {
        "generator": GENERATOR_ID,
        "medot_version": __version__,
        "description": (
            "Synthetic medical-like benchmark: Shepp-Logan head phantoms with random affine + elastic "
            "variation; classes normal / nodule (focal round lesions) / opacity (diffuse ground-glass "
            "region), lesion masks for abnormal cases; the same cases as CT-like slices (high-end) and "
            "X-ray-like projections (low-end). The MVFA layout also holds an OCT-like retina (fluid "
            "pockets) and a histology-like tissue (foci of nuclear atypia), with masks. Not clinical data."
        ),
        **settings,
        "complete": datasets is not None,
        "datasets": datasets or {},
    }
    (root / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2))


def write_synthetic_benchmark(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_per_class: int = 20,
    size: int = 224,
    progress: bool = True,
) -> SyntheticBenchmark:
    """Write the K-MaT pair, the MVFA set and the MVTec set under ``out_dir`` (see module docs).

    ``n_per_class`` cases per lesion class per modality go to the K-MaT pair (40 % test, 10 % val,
    rest train); the MVFA object gets ``n_per_class // 2`` normal and abnormal valid cases and
    ``n_per_class`` of each in test (and so do the other MVFA organs); the MVTec category gets ``n_per_class`` training normals and
    ``n_per_class // 2`` test images per class; the defaults write 460 PNGs (masks included).
    The same arguments always give byte-identical files. ``out_dir`` must be new, empty, or a
    previous output of this function (recognised by its ``manifest.json``), which is replaced.
    """
    if seed < 0:
        raise SyntheticBenchmarkError(f"seed={seed}: use a non-negative integer seed")
    if n_per_class < MIN_PER_CLASS:
        raise SyntheticBenchmarkError(f"n_per_class={n_per_class} is too small: use at least {MIN_PER_CLASS}")
    if size < MIN_SIZE:
        raise SyntheticBenchmarkError(f"image size {size} is too small: use at least {MIN_SIZE} pixels")
    root = Path(out_dir)
    _prepare_output(root)
    settings = {"seed": seed, "size": size, "n_per_class": n_per_class, "classes": list(LESION_CLASSES)}
    _write_manifest(root, settings, None)
    n_cases = (
        len(LESION_CLASSES) * n_per_class
        + 2 * len(MVFA_ORGANS) * sum(_mvfa_plan(n_per_class).values())
        + sum(count for *_, count in _mvtec_plan(n_per_class))
    )
    with tqdm(total=n_cases, desc="synthetic benchmark", unit="case", disable=not progress) as bar:
        kmat_counts = _write_kmat(root / KMAT_DIR, seed, n_per_class, size, bar)
        mvfa_counts, shots = _write_mvfa(root / MVFA_DIR, seed, n_per_class, size, bar)
        mvtec_counts = _write_mvtec(root / MVTEC_DIR, seed, n_per_class, size, bar)
    kmat = {
        modality: {"root": f"{KMAT_DIR}/{modality}", "split_file": f"{KMAT_DIR}/{modality}/split_{modality}.json"}
        for modality in (HIGH_END, LOW_END)
    }
    datasets = {
        "kmat": {
            "layout": "class_folders",
            "high_end": kmat[HIGH_END],
            "low_end": kmat[LOW_END],
            "counts": kmat_counts,
        },
        "mvfa": {
            "layout": "mvfa",
            "root": MVFA_DIR,
            "object": MVFA_OBJECT,
            "modality": HIGH_END,
            "shots": list(shots),
            "counts": mvfa_counts[MVFA_OBJECT],
            "objects": {
                obj: {"modality": modality, "anomalies": list(kinds), "counts": mvfa_counts[obj]}
                for obj, (modality, kinds) in MVFA_ORGANS.items()
            },
        },
        "mvtec": {
            "layout": "mvtec",
            "root": MVTEC_DIR,
            "category": MVTEC_CATEGORY,
            "modality": HIGH_END,
            "counts": mvtec_counts,
        },
    }
    _write_manifest(root, settings, datasets)
    return SyntheticBenchmark(
        root=root,
        seed=seed,
        size=size,
        class_names=LESION_CLASSES,
        kmat_high=root / KMAT_DIR / HIGH_END,
        kmat_low=root / KMAT_DIR / LOW_END,
        kmat_high_split=root / kmat[HIGH_END]["split_file"],
        kmat_low_split=root / kmat[LOW_END]["split_file"],
        mvfa_root=root / MVFA_DIR,
        mvfa_object=MVFA_OBJECT,
        mvfa_shots=shots,
        mvtec_root=root / MVTEC_DIR,
        mvtec_category=MVTEC_CATEGORY,
        manifest=root / MANIFEST_NAME,
    )


#: cases per class of the shared demo benchmark under ``$MEDOT_HOME/synthetic``: 20 K-MaT training
#: cases per class, enough for 16 shots
DEMO_CASES_PER_CLASS = 40


def ensure_synthetic_benchmark(root: str | Path, n_per_class: int = DEMO_CASES_PER_CLASS) -> Path:
    """``root`` holding a complete synthetic benchmark (seed 0), written there first if absent or
    interrupted. The methods' ``synthetic`` dataset name resolves to this folder."""
    root = Path(root)
    try:
        complete = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError, AttributeError):
        complete = False
    if not complete:
        write_synthetic_benchmark(root, seed=0, n_per_class=n_per_class)
    return root


# --------------------------------------------------------------------------- OPTiML pretraining set

PRETRAIN_DIR = "optiml"
_POOL_STREAM, _PROBE_STREAM = 3, 4


@dataclass(frozen=True)
class PretrainingSet:
    """Where :func:`write_pretraining_set` put the unlabelled pool and the labelled probe set."""

    root: Path
    pool: Path
    labelled: Path
    n_pool: int
    n_per_class: int


def write_pretraining_set(
    out_dir: str | Path,
    *,
    seed: int = 0,
    n_pool: int = 300,
    n_per_class: int = 30,
    size: int = 224,
    progress: bool = True,
) -> PretrainingSet:
    """The OPTiML synthetic data: an unlabelled pool of ``n_pool`` X-ray-like projections (classes
    drawn uniformly, no labels kept) under ``<out>/pool/NNNNN.png`` and a labelled probe set of
    ``n_per_class`` other cases per class under ``<out>/labelled/{train,test}/<class>/`` (70 % /
    30 %). Pool and probe cases come from separate seed streams (no image is in both). ``out_dir``
    must be new, empty or a previous output of this function."""
    if seed < 0 or n_pool < 2 or n_per_class < 4 or size < MIN_SIZE:
        raise SyntheticBenchmarkError(
            f"pretraining set: need seed >= 0, n_pool >= 2, n_per_class >= 4 and size >= {MIN_SIZE}; "
            f"got {seed}, {n_pool}, {n_per_class}, {size}"
        )
    root = Path(out_dir)
    if root.is_dir() and any(root.iterdir()):
        if not _is_synthetic_output(root):
            raise SyntheticBenchmarkError(f"{root} is not empty and holds no synthetic {MANIFEST_NAME}; refusing to write into it")
        shutil.rmtree(root / "pool", ignore_errors=True)
        shutil.rmtree(root / "labelled", ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    settings = {"seed": seed, "size": size, "n_pool": n_pool, "n_per_class": n_per_class, "classes": list(LESION_CLASSES)}
    _write_manifest(root, settings, None)
    rng = np.random.default_rng((seed, _POOL_STREAM))
    lesions = rng.integers(0, len(LESION_CLASSES), size=n_pool)
    n_test = max(1, round(0.3 * n_per_class))
    with tqdm(total=n_pool + len(LESION_CLASSES) * n_per_class, desc="pretraining set", unit="case", disable=not progress) as bar:
        for index, label in enumerate(lesions):
            case = render_case(LESION_CLASSES[int(label)], (seed, _POOL_STREAM, index), size)
            _save_png(root / "pool" / f"{index:05d}.png", case.xray)
            bar.update()
        for label, lesion in enumerate(LESION_CLASSES):
            for index in range(n_per_class):
                split = "test" if index < n_test else "train"
                case = render_case(lesion, (seed, _PROBE_STREAM, label, index), size)
                _save_png(root / "labelled" / split / lesion / f"{lesion}_{index:04d}.png", case.xray)
                bar.update()
    counts = {"pool": n_pool, "train": n_per_class - n_test, "test": n_test}
    _write_manifest(root, settings, {"optiml": {"pool": "pool", "labelled": "labelled", "counts_per_class": counts}})
    return PretrainingSet(root, root / "pool", root / "labelled", n_pool, n_per_class)
