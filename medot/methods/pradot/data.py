"""Normal-only training sets and mixed test sets from the anomaly layouts medot reads.

* **MVTec AD** and **MVTec LOCO AD** (``<root>/<category>/{train,test,ground_truth}``): train on
  ``train/good``, test on ``test/*`` with the ``ground_truth`` masks (a LOCO image's mask is the
  union of the region masks in its folder, :func:`read_mask`; LOCO's ``validation`` is not used).
* **MVFA** (``<root>/<Obj>_AD/{valid,test}``): train on the normal images of ``valid``
  (``valid/good/img``; its abnormal images are not used), test on ``test/{good,Ungood}`` with the
  ``anomaly_mask`` masks where the object has them.

Masks are brought into the backbone's view (the geometry of
:meth:`~medot.backbones.base.VisionLanguageBackbone.transform`: short side to ``S``, centre
crop) by sending them through that same transform and thresholding at one half, so that maps and
masks are compared pixel for pixel whatever the image's aspect ratio.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from medot.backbones.base import VisionLanguageBackbone
from medot.data.datasets import MVFA, MVTEC, ImageRecord, detect_layout, load_mvfa, load_mvtec, mask_files
from medot.errors import DatasetLayoutError, ImageReadError


@dataclass(frozen=True)
class AnomalySplits:
    """One object / category: its normal training images and its labelled test records."""

    layout: str
    name: str
    train: tuple[Path, ...]
    test: tuple[ImageRecord, ...]

    @property
    def test_labels(self) -> np.ndarray:
        return np.array([record.label for record in self.test], dtype=np.int64)

    @property
    def has_masks(self) -> bool:
        """True when at least one anomalous test image has a pixel mask (localisation metrics)."""
        return any(record.mask_path is not None for record in self.test if record.label == 1)


def anomaly_classes(root: str | Path) -> tuple[str, tuple[str, ...]]:
    """The layout of ``root`` and its MVTec categories or MVFA objects (class folders are refused)."""
    detected = detect_layout(root)
    if detected.kind not in (MVTEC, MVFA):
        raise DatasetLayoutError(
            f"{root} is a class-folder dataset; PRADOT needs an anomaly-detection layout with normal "
            "training images: MVTec AD (<category>/train/good, test/<defect>, ground_truth) or MVFA "
            "(<Obj>_AD/{valid,test}/{good,Ungood}/img)"
        )
    return detected.kind, detected.names


def resolve_class(root: str | Path, name: str | None) -> str:
    """``name`` if ``root`` has it, else the only class of ``root``; raises with the choices otherwise."""
    _, names = anomaly_classes(root)
    if name is None:
        if len(names) == 1:
            return names[0]
        raise DatasetLayoutError(f"{root} holds several classes {list(names)}: choose one with --category/--object")
    if name not in names:
        raise DatasetLayoutError(f"{root} has no class {name!r}; it has {list(names)}")
    return name


def load_anomaly_splits(root: str | Path, name: str) -> AnomalySplits:
    """Training normals and test records of class ``name`` (module docstring)."""
    layout, _ = anomaly_classes(root)
    if layout == MVTEC:
        train = load_mvtec(root, name, "train")
        test = load_mvtec(root, name, "test")
    else:
        train = load_mvfa(root, name, "valid")
        test = load_mvfa(root, name, "test")
    normals = tuple(record.path for record in train if record.label == 0)
    return AnomalySplits(layout, name, normals, tuple(test))


def _read_grey(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("L"))
    except (OSError, ValueError) as error:
        raise ImageReadError(f"cannot read mask {path}: {error}") from None


def read_mask(path: Path) -> np.ndarray:
    """A record's ``mask_path`` as an ``HxW`` bool mask.

    A file (MVTec AD, MVFA) is anomalous where its grey level is above half the range (> 127). A
    folder (MVTec LOCO AD, one PNG per defect region) gives the union of its masks, each anomalous
    wherever it is non-zero, since LOCO's region masks do not all use 255 as their positive value.
    """
    if not path.is_dir():
        return _read_grey(path) > 127
    files = mask_files(path)
    if not files:
        raise DatasetLayoutError(f"mask folder {path} holds no PNG: expected 000.png, 001.png, ... (MVTec LOCO AD)")
    regions = [_read_grey(file) > 0 for file in files]
    shapes = {region.shape for region in regions}
    if len(shapes) > 1:
        found = ", ".join(f"{file.name} {region.shape}" for file, region in zip(files, regions, strict=True))
        raise DatasetLayoutError(f"the masks in {path} differ in size ({found}): each must cover the whole image")
    return np.logical_or.reduce(regions)


def view_image(backbone: VisionLanguageBackbone, image: np.ndarray) -> np.ndarray:
    """``HxW`` / ``HxWx3`` image in [0, 1] -> the ``SxSx3`` view the backbone sees, in [0, 1]."""
    tensor = backbone.transform(image)
    mean = np.asarray(backbone.preprocess.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(backbone.preprocess.std, dtype=np.float32)[:, None, None]
    return np.clip(tensor.numpy() * std + mean, 0.0, 1.0).transpose(1, 2, 0)


def view_mask(backbone: VisionLanguageBackbone, mask: np.ndarray) -> np.ndarray:
    """``HxW`` bool mask -> ``SxS`` bool mask in the backbone's view (module docstring)."""
    return view_image(backbone, mask.astype(np.float32))[..., 0] >= 0.5


def view_masks(backbone: VisionLanguageBackbone, records: tuple[ImageRecord, ...]) -> np.ndarray:
    """``[N, S, S]`` bool masks of ``records`` in the backbone's view (all-normal where none)."""
    size = backbone.preprocess.image_size
    masks = np.zeros((len(records), size, size), dtype=bool)
    for row, record in enumerate(records):
        if record.mask_path is not None:
            masks[row] = view_mask(backbone, read_mask(record.mask_path))
    return masks


def hold_out_normals(
    paths: tuple[Path, ...], fraction: float, seed: int = 0
) -> tuple[tuple[Path, ...], tuple[Path, ...]]:
    """Split the normal training images into ``(train, held_out)`` for score calibration.

    ``round(fraction * N)`` images, at least one and at most ``N - 1`` (none when ``N < 2`` or
    ``fraction == 0``), drawn with ``numpy.random.default_rng(seed)``; both parts keep the input
    order. The held-out normals are never trained on (:mod:`medot.eval.calibration`).
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetLayoutError(f"the calibration fraction must be in [0, 1), got {fraction}")
    count = len(paths)
    held = 0 if count < 2 or fraction == 0.0 else min(count - 1, max(1, round(fraction * count)))
    chosen = set(np.random.default_rng(seed).permutation(count)[:held].tolist())
    train = tuple(path for index, path in enumerate(paths) if index not in chosen)
    return train, tuple(path for index, path in enumerate(paths) if index in chosen)
