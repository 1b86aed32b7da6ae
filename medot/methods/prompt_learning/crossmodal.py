"""Cross-modal tasks: a high-end dataset to train on, a low-end one to test on, class descriptions.

A task is resolved from a name or a path (:func:`resolve_task`):

* ``"synthetic"`` - the CT -> X-ray pair of :mod:`medot.data.synthetic`, written to
  ``$MEDOT_HOME/synthetic`` (``n_per_class=40``: 20 training cases per class) on first use;
* ``"skin_midas"``, ``"skin_derm7pt"``, ``"breast"``, ``"chest"`` - the K-MaT paper's tasks, read
  from ``$MEDOT_DATA_ROOT/kmat/<task>/<modality>/`` (class folders, with ``split_<modality>.json``);
* a path to a task JSON file (format in ``docs/methods/kmat.md``)::

      {"name": "chest_ct_to_xray",
       "descriptions": "chest",                      # bundled set name, or a JSON path
       "high": {"root": "ccii", "split_file": "ccii/split.json"},
       "low":  {"root": "cxr"},                      # no split file: every image is a test image
       "class_names": ["covid19", "normal", "pneumonia"]}   # optional; default: all described classes

  relative paths are taken from the JSON file's folder. A task file inside the data root may name
  only paths inside it (resolved like a typed path, :func:`medot.config.confine_path`).

Dataset class folders are matched to description classes through the description set's names and
aliases (:meth:`DescriptionSet.resolve_class`); labels are re-indexed to the task's class order,
which is the same in both modalities.

**No low-end image reaches training or selection.** :meth:`CrossModalTask.high_end_data` reads only
the high-end split file and refuses to return any image that is also a file of the low-end dataset;
the low-end images are read only by :meth:`CrossModalTask.low_end_test`.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medot.config import Settings, confine_path
from medot.data.datasets import IMAGE_EXTENSIONS, ImageRecord, load_class_folder_dataset
from medot.data.descriptions import DescriptionSet, load_descriptions
from medot.data.sampling import sample_k_shot
from medot.errors import DatasetLayoutError, MedotError, PathNotAllowedError

SYNTHETIC = "synthetic"
TASK_FILE_KEYS = ("name", "descriptions", "high", "low", "class_names")


class TaskError(MedotError):
    """A cross-modal task cannot be resolved: unknown name, bad task file, missing data."""


@dataclass(frozen=True)
class PaperTask:
    """One of the K-MaT paper's four benchmarks and where to get its data."""

    high: str
    low: str
    sources: str


PAPER_TASKS = {
    "skin_midas": PaperTask(
        "dermoscopy",
        "clinical",
        "MIDAS (Stanford AIMI, https://aimi.stanford.edu/datasets/midas): dermoscopic and clinical "
        "photographs of the same biopsy-proven lesions",
    ),
    "skin_derm7pt": PaperTask(
        "dermoscopy",
        "clinical",
        "Derm7pt (https://derm.cs.sfu.ca): the release_v0 dermoscopic ('derm') and clinical ('clinic') images",
    ),
    "breast": PaperTask(
        "mammography",
        "ultrasound",
        "DMID (digital mammography, Figshare) for the high end and BUSI (Dataset_BUSI_with_GT, Al-Dhabyani "
        "et al. 2020) for the low end",
    ),
    "chest": PaperTask(
        "ct",
        "xray",
        "CC-CCII (China Consortium of Chest CT Image Investigation) for the high end and a chest X-ray set "
        "with COVID / Normal / Viral Pneumonia folders (COVID-19 Radiography Database, Kaggle) for the low end",
    ),
}


@dataclass(frozen=True)
class ModalityData:
    """A dataset folder of class folders and its optional split file (CoOp/BiomedCoOp JSON or CSV)."""

    root: Path
    split_file: Path | None = None


@dataclass(frozen=True)
class HighEndData:
    """Everything training and model selection may see: the k-shot high-end training images and
    the high-end validation images (labels in task class order)."""

    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class CrossModalTask:
    """A high-end -> low-end transfer task: datasets, descriptions and the class order."""

    name: str
    descriptions: DescriptionSet
    classes: tuple[str, ...]
    high: ModalityData
    low: ModalityData

    @property
    def modalities(self) -> tuple[str, str]:
        """``(high-end, low-end)`` modality names, e.g. ``("ct", "xray")``."""
        return self.descriptions.modalities

    def high_end_data(self, shots: int, seed: int) -> HighEndData:
        """``shots`` training images per class (:func:`medot.data.sampling.sample_k_shot` with
        ``seed``) and the whole validation split, both from the high-end dataset only."""
        if self.high.split_file is None:
            raise TaskError(
                f"task {self.name!r}: the high-end dataset {self.high.root} needs a split file with 'train' "
                "and 'val' splits (CoOp/BiomedCoOp JSON or CSV)"
            )
        train = self._records(self.high, "train")
        try:
            chosen = sample_k_shot(train, shots, seed)
        except DatasetLayoutError as error:
            raise DatasetLayoutError(
                f"task {self.name!r}: {error} in the high-end training split; use fewer shots"
                + (f" or delete {self.high.root.parents[1]} to regenerate it" if self.name == SYNTHETIC else "")
            ) from None
        data = HighEndData(tuple(chosen), self._records(self.high, "val"))
        low_files = _image_files(self.low.root)
        leaked = [record.path for record in (*data.train, *data.val) if record.path.resolve() in low_files]
        if leaked:
            raise TaskError(
                f"task {self.name!r}: {len(leaked)} high-end training/validation image(s) are also files of the "
                f"low-end dataset {self.low.root} (e.g. {leaked[0]}); low-end images must never be trained on"
            )
        return data

    def high_end_test(self) -> tuple[ImageRecord, ...]:
        return self._records(self.high, "test")

    def low_end_test(self) -> tuple[ImageRecord, ...]:
        """The low-end test images: the split file's 'test' split, or every image without one."""
        return self._records(self.low, "test")

    def _records(self, data: ModalityData, split: str) -> tuple[ImageRecord, ...]:
        index = load_class_folder_dataset(data.root, data.split_file, split)
        resolved = self.descriptions.classes_for_labels(index.label_names)
        stray = sorted({name for name, cls in zip(index.label_names, resolved, strict=True) if cls not in self.classes})
        if stray:
            raise TaskError(
                f"task {self.name!r}: classes {stray} of {data.root} are not among the task's classes "
                f"{list(self.classes)}; remove them from the split or add them to 'class_names'"
            )
        label_of = {label: self.classes.index(cls) for label, cls in enumerate(resolved)}
        return tuple(
            ImageRecord(record.path, label_of[record.label], self.classes[label_of[record.label]], record.mask_path)
            for record in index
        )


def _image_files(root: Path) -> frozenset[Path]:
    return frozenset(
        path.resolve() for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def resolve_task(name_or_path: str | os.PathLike[str], settings: Settings | None = None) -> CrossModalTask:
    """The task named ``name_or_path`` (``"synthetic"``, a paper task) or read from that task JSON file."""
    settings = settings or Settings.from_env()
    text = str(name_or_path).strip()
    if text == SYNTHETIC:
        return synthetic_task(settings.home / SYNTHETIC)
    if text in PAPER_TASKS:
        return paper_task(text, settings.data_root)
    path = Path(text).expanduser()
    if path.is_file():
        root = Path(settings.data_root).expanduser().resolve()
        inside = root in path.resolve().parents
        return read_task_file(path, confine_to=root if inside else None)
    raise TaskError(
        f"no task named {text!r} and no task file at {path}: use 'synthetic', one of "
        f"{', '.join(PAPER_TASKS)}, or the path of a task JSON file (docs/methods/kmat.md)"
    )


def synthetic_task(root: Path) -> CrossModalTask:
    """The synthetic CT -> X-ray task under ``root``, written there first if absent or incomplete."""
    from medot.data.synthetic import HIGH_END, KMAT_DIR, LOW_END, ensure_synthetic_benchmark

    ensure_synthetic_benchmark(root)
    descriptions = load_descriptions(SYNTHETIC)
    pair = root / KMAT_DIR
    return CrossModalTask(
        name=SYNTHETIC,
        descriptions=descriptions,
        classes=descriptions.classes,
        high=ModalityData(pair / HIGH_END, pair / HIGH_END / f"split_{HIGH_END}.json"),
        low=ModalityData(pair / LOW_END, pair / LOW_END / f"split_{LOW_END}.json"),
    )


def paper_task(name: str, data_root: Path) -> CrossModalTask:
    """A K-MaT paper task from ``<data_root>/kmat/<name>/<modality>/`` (see :data:`PAPER_TASKS`)."""
    paper = PAPER_TASKS[name]
    folders = {modality: data_root / "kmat" / name / modality for modality in (paper.high, paper.low)}
    missing = [str(folder) for folder in folders.values() if not folder.is_dir()]
    if missing:
        raise TaskError(
            f"the {name!r} task needs its data under {data_root / 'kmat' / name}: download {paper.sources}; put the "
            f"{paper.high} images in {folders[paper.high]}/<class>/ with split_{paper.high}.json (train/val/test) "
            f"and the {paper.low} images in {folders[paper.low]}/<class>/ (optional split_{paper.low}.json); "
            f"missing: {', '.join(missing)}"
        )
    descriptions = load_descriptions(name)

    def modality_data(modality: str) -> ModalityData:
        split = folders[modality] / f"split_{modality}.json"
        return ModalityData(folders[modality], split if split.is_file() else None)

    return CrossModalTask(name, descriptions, descriptions.classes, modality_data(paper.high), modality_data(paper.low))


def read_task_file(path: Path, confine_to: Path | None = None) -> CrossModalTask:
    """Parse a task JSON file (see the module docstring); relative paths start at its folder and,
    with ``confine_to``, must lie inside that folder once symlinks and ``..`` are resolved."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"task file {path} cannot be read as JSON: {error}") from None
    if not isinstance(data, dict):
        raise TaskError(f"task file {path} must hold a JSON object with keys {list(TASK_FILE_KEYS)}")
    unknown = sorted(set(data) - set(TASK_FILE_KEYS))
    missing = [key for key in ("name", "descriptions", "high", "low") if key not in data]
    if unknown or missing:
        raise TaskError(f"task file {path}: missing keys {missing}, unknown keys {unknown}")
    base = path.parent
    descriptions_ref = _string(data["descriptions"], "descriptions", path)
    as_path = base / descriptions_ref
    if as_path.suffix == ".json":
        as_path = _confined(as_path, "descriptions", path, confine_to)
    descriptions = load_descriptions(as_path if as_path.suffix == ".json" and as_path.is_file() else descriptions_ref)
    classes = descriptions.classes
    if "class_names" in data:
        names = data["class_names"]
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise TaskError(f"task file {path}: 'class_names' must be a list of two or more class names")
        classes = tuple(descriptions.resolve_class(name) for name in names)
        if len(set(classes)) != len(classes):
            raise TaskError(f"task file {path}: 'class_names' {names} name the same class twice")
    return CrossModalTask(
        name=_string(data["name"], "name", path),
        descriptions=descriptions,
        classes=classes,
        high=_modality_data(data["high"], "high", base, path, confine_to),
        low=_modality_data(data["low"], "low", base, path, confine_to),
    )


def _confined(named: Path, key: str, path: Path, root: Path | None) -> Path:
    if root is None:
        return named
    try:
        return confine_path(named, root)
    except PathNotAllowedError as error:
        raise TaskError(f"task file {path}: {key!r} names {named}, which is not allowed: {error}") from None


def _string(value: Any, key: str, path: Path) -> str:
    if not isinstance(value, str) or not value.strip():
        raise TaskError(f"task file {path}: {key!r} must be a non-empty string")
    return value.strip()


def _modality_data(value: Any, key: str, base: Path, path: Path, confine_to: Path | None = None) -> ModalityData:
    if not isinstance(value, dict) or "root" not in value or set(value) - {"root", "split_file"}:
        raise TaskError(f"task file {path}: {key!r} must be an object {{'root': ..., 'split_file': ... (optional)}}")
    root = _confined(base / _string(value["root"], f"{key}.root", path), f"{key}.root", path, confine_to)
    if not root.is_dir():
        raise TaskError(f"task file {path}: the {key}-end dataset folder {root} does not exist")
    split = value.get("split_file")
    if split is None:
        return ModalityData(root, None)
    split_key = f"{key}.split_file"
    return ModalityData(root, _confined(base / _string(split, split_key, path), split_key, path, confine_to))
