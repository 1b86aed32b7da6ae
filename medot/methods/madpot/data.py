r"""MADPOT's support sets, their 16 fixed augmentations, and their cached patch tokens.

**Support set** (MVFA protocol): ``k`` normal and ``k`` abnormal images of the ``valid`` split, from
``fewshot_seed/<Obj>/<k>-shot.txt`` when the dataset ships it (MVFA-AD; the seed then changes only
the initialisation), otherwise drawn with the seed from ``valid/good`` and ``valid/Ungood`` (said
in the output). The test split is never read here: :func:`load_support` indexes ``valid`` only
and :func:`encode_support` encodes only the records it is given, so test images are unreachable
from training by construction (``tests/test_madpot.py`` spies on the encoder to check it).

**MVTec AD** (normal-only training): the ``k`` normal shots are drawn with the seed from
``<obj>/train/good``; abnormal shots come only from a folder the user gives (``--abnormal-shots``),
refused when it lies inside ``<obj>/test``. Without it the support set is normal-only, which is
what PatchCore and zero-shot scoring need; MADPOT and the MVFA baseline then stop with a message.

**Augmentations** (MadCLIP expands each support image by 16 fixed augmentations: rotations,
translations, zooms, flips, jitter; the exact parameters are not public, these are medot's):
identity; horizontal and vertical flip; rotations by 90, 180, 270 degrees; translations by 1/8 of
the side right, left, down, up (zero fill); zoom in x1.2 (centre crop) and out x0.8 (zero
border); brightness +-0.1; contrast x1.2 and x0.8 about the mean. Geometric ones move the mask with
the image. View ``v`` of an image is encoded once and cached (:class:`medot.train.FeatureCache`,
with the augmentation in the reader key).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from medot.backbones.base import VisionLanguageBackbone
from medot.data.datasets import MVTEC, ImageRecord, _images, detect_layout, load_mvfa, load_mvfa_fewshot, load_mvtec
from medot.data.io import read_image
from medot.methods.madpot.config import MadpotError
from medot.methods.pradot.data import read_mask
from medot.train import FeatureCache

AUGMENTATIONS = (
    "identity",
    "hflip",
    "vflip",
    "rot90",
    "rot180",
    "rot270",
    "shift_right",
    "shift_left",
    "shift_down",
    "shift_up",
    "zoom_in",
    "zoom_out",
    "brighter",
    "darker",
    "more_contrast",
    "less_contrast",
)
READ_KEY = "medot.methods.madpot.augment:v1:{}"


@dataclass(frozen=True)
class SupportSet:
    """The few-shot images of one object: ``k`` normal, ``k`` abnormal, and where they came from."""

    name: str
    normal: tuple[ImageRecord, ...]
    abnormal: tuple[ImageRecord, ...]
    source: str

    @property
    def records(self) -> tuple[ImageRecord, ...]:
        return self.normal + self.abnormal

    @property
    def has_masks(self) -> bool:
        return any(record.mask_path is not None for record in self.abnormal)


NORMAL_ONLY = (
    "{root} is an MVTec AD dataset: its training split holds normal images only, and {what} needs k abnormal "
    "support images as well. Give them with --abnormal-shots DIR (a folder of abnormal images outside the test "
    "split; masks optional as DIR/masks/<name>_mask.png or DIR/masks/<name>.png), or run the methods that need "
    "no abnormal shot: medot benchmark madpot --data {root} --methods zeroshot,patchcore"
)


def _pick(group: Sequence[ImageRecord], shots: int, rng: np.random.Generator) -> tuple[ImageRecord, ...]:
    return tuple(group[i] for i in sorted(rng.choice(len(group), shots, replace=False)))


def abnormal_shot_records(folder: str | Path, obj: str, test_dir: Path | None = None) -> list[ImageRecord]:
    """The images of a user-given abnormal-shot folder (label 1), with their masks when present.

    ``folder/<obj>/`` is used when it exists (one sub-folder per object), else ``folder`` itself.
    A mask is ``masks/<stem>_mask.png`` (MVTec naming) or ``masks/<stem>.png`` next to the images.
    Images inside ``test_dir`` (the object's test split) are refused: training on them would put
    test images into training."""
    folder = Path(folder)
    if not folder.is_dir():
        raise MadpotError(f"--abnormal-shots {folder} is not a folder of abnormal images")
    if (folder / obj).is_dir():
        folder = folder / obj
    images = _images(folder)
    if not images:
        raise MadpotError(f"--abnormal-shots {folder} holds no image (png, jpg, ...)")
    if test_dir is not None:
        inside = [path for path in images if path.resolve().is_relative_to(test_dir.resolve())]
        if inside:
            raise MadpotError(
                f"--abnormal-shots {folder} is inside the test split {test_dir}: training on test images would leak "
                "them into the model; copy abnormal images that are not in the test split to another folder"
            )
    records = []
    for path in images:
        masks = [folder / "masks" / f"{path.stem}_mask.png", folder / "masks" / f"{path.stem}.png"]
        found = next((mask for mask in masks if mask.is_file()), None)
        records.append(ImageRecord(path, 1, "abnormal", found))
    return records


def load_support(
    root: str | Path, obj: str, shots: int, seed: int, abnormal_shots: str | Path | None = None
) -> SupportSet:
    """``shots`` normal and abnormal images of ``<root>/<obj>_AD/valid`` (module docstring).

    On an MVTec AD folder the normal shots are drawn with ``seed`` from ``<obj>/train/good`` and the
    abnormal ones from the user's ``abnormal_shots`` folder (none without it: a normal-only support
    set, enough for PatchCore and zero-shot scoring only)."""
    if shots < 1:
        raise MadpotError(f"--shots must be at least 1, got {shots}")
    root = Path(root)
    if detect_layout(root).kind == MVTEC:
        normal = [r for r in load_mvtec(root, obj, "train") if r.label == 0]
        if len(normal) < shots:
            raise MadpotError(f"{obj}: train/good holds {len(normal)} images, fewer than --shots {shots}")
        rng = np.random.default_rng(seed)
        chosen_normal = _pick(normal, shots, rng)
        if abnormal_shots is None:
            source = f"{shots} normal images drawn from {obj}/train/good with seed {seed} (normal-only: no abnormal shot)"
            return SupportSet(obj, chosen_normal, (), source)
        abnormal = abnormal_shot_records(abnormal_shots, obj, root / obj / "test")
        if len(abnormal) < shots:
            raise MadpotError(f"--abnormal-shots {abnormal_shots} holds {len(abnormal)} images, fewer than --shots {shots}")
        source = (f"{shots} normal images drawn from {obj}/train/good and {shots} abnormal ones from "
                  f"{abnormal_shots} with seed {seed}")
        return SupportSet(obj, chosen_normal, _pick(abnormal, shots, rng), source)
    if abnormal_shots is not None:
        raise MadpotError(
            "--abnormal-shots is for MVTec AD folders (normal-only training); an MVFA folder has its abnormal shots "
            "in <Obj>_AD/valid/Ungood"
        )
    list_file = root / "fewshot_seed" / obj / f"{shots}-shot.txt"
    if list_file.is_file():
        chosen = load_mvfa_fewshot(root, obj, shots)
        source = f"MVFA few-shot list {list_file}"
        return SupportSet(obj, chosen.normal, chosen.abnormal, source)
    valid = load_mvfa(root, obj, "valid")
    normal = [r for r in valid if r.label == 0]
    abnormal = [r for r in valid if r.label == 1]
    if len(normal) < shots or len(abnormal) < shots:
        raise MadpotError(
            f"{obj}: valid/ holds {len(normal)} normal and {len(abnormal)} abnormal images, fewer than "
            f"--shots {shots} of each"
        )
    rng = np.random.default_rng(seed)
    source = f"no {list_file.name} in fewshot_seed/{obj}: {shots} + {shots} images drawn from valid/ with seed {seed}"
    return SupportSet(obj, _pick(normal, shots, rng), _pick(abnormal, shots, rng), source)


def load_validation(root: str | Path, support: SupportSet, per_class: int, seed: int) -> tuple[ImageRecord, ...]:
    """``per_class`` normal and abnormal ``valid`` images **not** in ``support``, drawn with ``seed``:
    the only data an epoch may be selected on (never the test split)."""
    if detect_layout(root).kind == MVTEC:
        raise MadpotError(
            "--validation needs normal and abnormal images outside the support set: an MVTec AD folder has no "
            "labelled validation split (keep the last epoch: --validation 0)"
        )
    taken = {record.path for record in support.records}
    valid = [r for r in load_mvfa(root, support.name, "valid") if r.path not in taken]
    rng = np.random.default_rng((seed, 1))
    chosen = []
    for label in (0, 1):
        group = [r for r in valid if r.label == label]
        if len(group) < per_class:
            kind = "normal" if label == 0 else "abnormal"
            raise MadpotError(
                f"{support.name}: valid/ holds {len(group)} {kind} images outside the support set, fewer than "
                f"--validation {per_class}; use a smaller --validation or none (the last epoch is kept)"
            )
        chosen.extend(group[i] for i in sorted(rng.choice(len(group), per_class, replace=False)))
    return tuple(chosen)


# ---------------------------------------------------------------------------------- augmentation
def _resize(array: np.ndarray, size: tuple[int, int], mode: str) -> np.ndarray:
    tensor = torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))
    tensor = tensor.permute(2, 0, 1)[None] if tensor.ndim == 3 else tensor[None, None]
    kwargs = {} if mode == "nearest" else {"align_corners": False}
    out = F.interpolate(tensor, size=size, mode=mode, **kwargs)[0]
    return (out.permute(1, 2, 0) if array.ndim == 3 else out[0]).numpy()


def _shift(array: np.ndarray, rows: int, cols: int) -> np.ndarray:
    out = np.zeros_like(array)
    h, w = array.shape[:2]
    src = array[max(0, -rows) : h - max(0, rows), max(0, -cols) : w - max(0, cols)]
    out[max(0, rows) : max(0, rows) + src.shape[0], max(0, cols) : max(0, cols) + src.shape[1]] = src
    return out


def _zoom(array: np.ndarray, factor: float, mode: str) -> np.ndarray:
    h, w = array.shape[:2]
    if factor > 1:
        ch, cw = round(h / factor), round(w / factor)
        top, left = (h - ch) // 2, (w - cw) // 2
        return _resize(array[top : top + ch, left : left + cw], (h, w), mode)
    small = _resize(array, (round(h * factor), round(w * factor)), mode)
    out = np.zeros_like(array, dtype=np.float32)
    top, left = (h - small.shape[0]) // 2, (w - small.shape[1]) // 2
    out[top : top + small.shape[0], left : left + small.shape[1]] = small
    return out


def augment(image: np.ndarray, mask: np.ndarray | None, view: int) -> tuple[np.ndarray, np.ndarray | None]:
    """View ``view`` (0..15, :data:`AUGMENTATIONS`) of an ``HxWx3`` image in [0, 1] and its ``HxW`` mask."""
    name = AUGMENTATIONS[view]
    h, w = image.shape[:2]
    step_rows, step_cols = max(1, h // 8), max(1, w // 8)
    geometric = {
        "identity": lambda a, m: a,
        "hflip": lambda a, m: a[:, ::-1],
        "vflip": lambda a, m: a[::-1],
        "rot90": lambda a, m: np.rot90(a, 1),
        "rot180": lambda a, m: np.rot90(a, 2),
        "rot270": lambda a, m: np.rot90(a, 3),
        "shift_right": lambda a, m: _shift(a, 0, step_cols),
        "shift_left": lambda a, m: _shift(a, 0, -step_cols),
        "shift_down": lambda a, m: _shift(a, step_rows, 0),
        "shift_up": lambda a, m: _shift(a, -step_rows, 0),
        "zoom_in": lambda a, m: _zoom(a, 1.2, m),
        "zoom_out": lambda a, m: _zoom(a, 0.8, m),
    }
    if name in geometric:
        out = np.ascontiguousarray(geometric[name](image, "bilinear"), dtype=np.float32)
        moved = None if mask is None else np.ascontiguousarray(geometric[name](mask.astype(np.float32), "nearest")) >= 0.5
        return out, moved
    mean = image.mean()
    photometric = {
        "brighter": image + 0.1,
        "darker": image - 0.1,
        "more_contrast": (image - mean) * 1.2 + mean,
        "less_contrast": (image - mean) * 0.8 + mean,
    }[name]
    return np.clip(photometric, 0.0, 1.0).astype(np.float32), mask


# ---------------------------------------------------------------------------------- encoding
@dataclass
class EncodedSupport:
    """Cached tokens of every (support image, view): rows are image-major, ``views`` per image.

    ``tokens[layer]`` ``[N*V, M, C]``; ``labels`` ``[N*V]``; ``masks`` ``[N*V, S, S]`` (the view's
    mask in the backbone's input frame, zeros for normal images); ``has_mask`` ``[N*V]`` (the row's
    mask is ground truth: an abnormal image with a mask, or a normal image of an object with masks).
    """

    tokens: dict[str, torch.Tensor]
    grids: dict[str, tuple[int, int]]
    labels: torch.Tensor
    masks: torch.Tensor
    has_mask: torch.Tensor
    paths: tuple[Path, ...]
    views: int


def _view_mask(backbone: VisionLanguageBackbone, mask: np.ndarray) -> np.ndarray:
    from medot.methods.pradot.data import view_mask

    return view_mask(backbone, mask)


def encode_support(
    backbone: VisionLanguageBackbone,
    records: Sequence[ImageRecord],
    layers: Sequence[str],
    *,
    views: int,
    cache: FeatureCache | None = None,
    progress: bool = True,
    mask_size: int = 56,
) -> EncodedSupport:
    """Encode ``views`` fixed augmentations of each record (only these records are read)."""
    cache = cache or FeatureCache()
    layers = tuple(layers)
    paths = [record.path for record in records]
    masks_by_record = [read_mask(r.mask_path) if r.mask_path is not None else None for r in records]
    object_has_masks = any(mask is not None for mask in masks_by_record)
    per_view = []
    for view in range(views):

        def read(path: Path, view: int = view) -> np.ndarray:
            augmented, _ = augment(read_image(path).rgb(), None, view)
            return augmented

        per_view.append(
            cache.encode(
                backbone, paths, layers=layers, read=read, read_key=READ_KEY.format(AUGMENTATIONS[view]),
                progress=progress and view == 0,
            )
        )
    grids = per_view[0].grids
    tokens = {
        layer: torch.stack([features.patch_tokens[layer][:, 0] for features in per_view], dim=1).flatten(0, 1)
        for layer in layers
    }
    labels, masks, has_mask = [], [], []
    for record, mask in zip(records, masks_by_record, strict=True):
        image_shape = None
        for view in range(views):
            labels.append(record.label)
            has_mask.append(record.label == 0 and object_has_masks or mask is not None)
            if mask is None:
                masks.append(np.zeros((mask_size, mask_size), dtype=np.float32))
                continue
            if image_shape is None:
                image_shape = mask.shape
            _, moved = augment(np.zeros((*mask.shape, 3), dtype=np.float32), mask, view)
            framed = _view_mask(backbone, moved).astype(np.float32)
            masks.append(_resize(framed, (mask_size, mask_size), "bilinear"))
    return EncodedSupport(
        tokens=tokens,
        grids=dict(grids),
        labels=torch.tensor(labels, dtype=torch.long),
        masks=torch.from_numpy(np.stack(masks)).float().clamp(0, 1),
        has_mask=torch.tensor(has_mask, dtype=torch.bool),
        paths=tuple(paths),
        views=views,
    )
