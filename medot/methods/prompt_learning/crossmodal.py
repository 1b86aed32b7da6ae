"""Cross-modal tasks: a high-end dataset to train on, a low-end one to test on, class descriptions.

A task is resolved from a name or a path (:func:`resolve_task`):

* ``"synthetic"`` - the CT -> X-ray pair of :mod:`medot.data.synthetic`, written to
  ``$MEDOT_HOME/synthetic`` (``n_per_class=40``: 20 training cases per class) on first use;
* ``"skin_midas"``, ``"skin_derm7pt"``, ``"breast"``, ``"chest"`` - the K-MaT paper's tasks, read
  from ``$MEDOT_DATA_ROOT/kmat/<task>/<modality>/`` (class folders, with ``split_<modality>.json``);
* a **folder** (:func:`folder_task`) laid out as ``<root>/<high>/{train,val,test}/<class>/`` and
  ``<root>/<low>/test/<class>/`` (``<low>/val`` optional, never used): the modality names are the
  folder names, the classes the high-end training class folders; descriptions come from
  ``descriptions=`` (``--descriptions FILE``), and without them only the methods that need no
  descriptions run (:meth:`CrossModalTask.require_descriptions`);
* a path to a task JSON file (format in ``docs/methods/kmat.md``; ``medot task init ROOT`` writes
  one, with split files, from a folder as above)::

      {"name": "chest_ct_to_xray",
       "descriptions": "chest",                      # bundled set name or a JSON path; optional
       "high": {"root": "ccii", "split_file": "ccii/split.json"},
       "low":  {"root": "cxr"},                      # no split file: every image is a test image
       "class_names": ["covid19", "normal", "pneumonia"],   # optional; default: all described classes
       "modalities": {"high": "ct", "low": "xray"}}  # without descriptions: required, as class_names

  relative paths are taken from the JSON file's folder; paths inside a split file from the
  modality's ``root``. A task file inside the data root may name only paths inside it (resolved
  like a typed path, :func:`medot.config.confine_path`).

**Every task class has images in every split that is read** (high-end train, val and test, low-end
test), and at least ``shots`` in the high-end training split: otherwise :class:`TaskError` names the
class, the modality, the split, the count and the resolved path it read.

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
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medot.config import Settings, confine_path
from medot.data.datasets import IMAGE_EXTENSIONS, ImageRecord, load_class_folder_dataset
from medot.data.descriptions import DescriptionSet, bundled_description_sets, load_descriptions, normalize_name
from medot.data.sampling import sample_k_shot
from medot.errors import DatasetLayoutError, MedotError, PathNotAllowedError

SYNTHETIC = "synthetic"
TASK_FILE_KEYS = ("name", "descriptions", "high", "low", "class_names", "modalities")
SPLITS = ("train", "val", "test")
DESCRIPTION_METHODS = ("kmat", "zeroshot_desc", "biomedcoop")
"""Methods that need class descriptions; the others (zeroshot, coop, cocoop, kgcoop) run without."""
EXAMPLE_DESCRIPTIONS = Path(__file__).resolve().parents[3] / "assets" / "descriptions" / "chest.json"
DESCRIPTION_FORMAT = (
    '{"task": ..., "modalities": {"high": "<high folder>", "low": "<low folder>"}, "classes": [...], '
    '"aliases": {...} (optional), "descriptions": {"<high folder>": {"<class>": ["sentence", ...]}, '
    '"<low folder>": {...}}}'
)


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
    """A dataset folder of class folders and its optional split file (CoOp/BiomedCoOp JSON or CSV),
    or, with ``split_folders``, a folder of split folders ``<root>/<split>/<class>/``."""

    root: Path
    split_file: Path | None = None
    split_folders: bool = False

    def source(self, split: str) -> Path:
        """The path a split is read from (for messages): the split folder or the split file."""
        if self.split_folders:
            return Path(os.path.abspath(self.root / split))
        return Path(os.path.abspath(self.split_file or self.root))


@dataclass(frozen=True)
class HighEndData:
    """Everything training and model selection may see: the k-shot high-end training images and
    the high-end validation images (labels in task class order)."""

    train: tuple[ImageRecord, ...]
    val: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class CrossModalTask:
    """A high-end -> low-end transfer task: datasets, descriptions (None: a folder task without a
    description file) and the class order. ``modality_names`` overrides the description set's."""

    name: str
    descriptions: DescriptionSet | None
    classes: tuple[str, ...]
    high: ModalityData
    low: ModalityData
    modality_names: tuple[str, str] | None = None

    @property
    def modalities(self) -> tuple[str, str]:
        """``(high-end, low-end)`` modality names, e.g. ``("ct", "xray")``."""
        if self.modality_names is not None:
            return self.modality_names
        if self.descriptions is None:
            raise TaskError(f"task {self.name!r} names no modalities")
        return self.descriptions.modalities

    def require_descriptions(self, method: str) -> None:
        """Refuse ``method`` when it needs descriptions (:data:`DESCRIPTION_METHODS`) and the task has none."""
        if method in DESCRIPTION_METHODS and self.descriptions is None:
            high, low = self.modalities
            raise TaskError(
                f"{method} needs class descriptions and task {self.name!r} has none: pass --descriptions FILE, a "
                f"JSON file {DESCRIPTION_FORMAT} with sentences for every class ({', '.join(self.classes)}) in "
                f"{high!r} and {low!r} (example: {EXAMPLE_DESCRIPTIONS}; format: docs/descriptions.md). Without "
                f"descriptions, zeroshot, coop, cocoop and kgcoop run (train: --method coop, cocoop or kgcoop; benchmark: "
                "--methods zeroshot,coop,cocoop,kgcoop)"
            )

    def high_end_data(self, shots: int, seed: int) -> HighEndData:
        """``shots`` training images per class (:func:`medot.data.sampling.sample_k_shot` with
        ``seed``) and the whole validation split, both from the high-end dataset only."""
        if self.high.split_file is None and not self.high.split_folders:
            raise TaskError(
                f"task {self.name!r}: the high-end dataset {self.high.root} needs a split file with 'train' "
                "and 'val' splits (CoOp/BiomedCoOp JSON or CSV)"
            )
        train = self._records(self.high, "train")
        self.check_shots(train, shots)
        try:
            chosen = sample_k_shot(train, shots, seed)
        except DatasetLayoutError as error:
            raise DatasetLayoutError(f"task {self.name!r}: {error} in the high-end training split") from None
        data = HighEndData(tuple(chosen), self._records(self.high, "val"))
        low_files = _image_files(self.low.root)
        leaked = [record.path for record in (*data.train, *data.val) if record.path.resolve() in low_files]
        if leaked:
            raise TaskError(
                f"task {self.name!r}: {len(leaked)} high-end training/validation image(s) are also files of the "
                f"low-end dataset {self.low.root} (e.g. {leaked[0]}); low-end images must never be trained on"
            )
        return data

    def check_shots(self, train: Sequence[ImageRecord], shots: int) -> None:
        """A class with fewer than ``shots`` high-end training images is an error naming it and its count."""
        counts = Counter(record.label for record in train)
        short = [(cls, counts[label]) for label, cls in enumerate(self.classes) if counts[label] < shots]
        if short and not isinstance(shots, bool) and isinstance(shots, int) and shots >= 1:
            cls, count = short[0]
            others = "".join(f", {c!r} has {n}" for c, n in short[1:])
            # about half of a synthetic set's cases per class are training cases (medot.data.synthetic)
            hint = (f" or write a larger set: 'medot synth --out {self.high.root.parents[1]} --n-per-class "
                    f"{2 * shots + 2}'" if self.name == SYNTHETIC else "")
            raise DatasetLayoutError(
                f"task {self.name!r}: class {cls!r} has {count} image(s) in the {self.modalities[0]} train split "
                f"({self.high.source('train')}){others}, fewer than --shots {shots}; use --shots "
                f"{min(n for _, n in short)} or fewer, or add images{hint}"
            )

    def high_end_test(self) -> tuple[ImageRecord, ...]:
        return self._records(self.high, "test")

    def low_end_test(self) -> tuple[ImageRecord, ...]:
        """The low-end test images: the split file's 'test' split, or every image without one."""
        return self._records(self.low, "test")

    def split_counts(self, data: ModalityData, split: str) -> dict[str, int]:
        """Images per task class in one split (no class check: for reports)."""
        counts = Counter(record.label for record in self._records(data, split, check=False))
        return {cls: counts[label] for label, cls in enumerate(self.classes)}

    def _records(self, data: ModalityData, split: str, check: bool = True) -> tuple[ImageRecord, ...]:
        modality = self.modalities[1 if data is self.low and data is not self.high else 0]
        if data.split_folders:
            folder = data.root / split
            if not folder.is_dir():
                raise TaskError(f"task {self.name!r}: the {modality} {split} split folder {data.source(split)} does not exist")
            index = load_class_folder_dataset(folder)
        else:
            index = load_class_folder_dataset(data.root, data.split_file, split)
        resolved = self._classes_for_labels(index.label_names)
        stray = sorted({name for name, cls in zip(index.label_names, resolved, strict=True) if cls not in self.classes})
        if stray:
            raise TaskError(
                f"task {self.name!r}: classes {stray} of {data.source(split)} are not among the task's classes "
                f"{list(self.classes)}; remove them from the split or add them to 'class_names'"
            )
        label_of = {label: self.classes.index(cls) for label, cls in enumerate(resolved)}
        records = tuple(
            ImageRecord(record.path, label_of[record.label], self.classes[label_of[record.label]], record.mask_path)
            for record in index
        )
        if check:
            present = {record.label for record in records}
            missing = [cls for label, cls in enumerate(self.classes) if label not in present]
            if missing:
                raise TaskError(
                    f"task {self.name!r}: class {missing[0]!r} has no image in the {modality} {split} split "
                    f"({data.source(split)})"
                    + (f"; nor do {missing[1:]}" if len(missing) > 1 else "")
                    + f"; every one of the task's {len(self.classes)} classes {list(self.classes)} needs images "
                    "in every split (or leave the class out: 'class_names' in a task JSON)"
                )
        return records

    def _classes_for_labels(self, label_names: Sequence[str]) -> tuple[str, ...]:
        if self.descriptions is not None:
            return self.descriptions.classes_for_labels(label_names)
        known = {normalize_name(cls): cls for cls in self.classes}
        return tuple(known.get(normalize_name(name), name) for name in label_names)


def _image_files(root: Path) -> frozenset[Path]:
    return frozenset(
        path.resolve() for path in root.rglob("*") if path.suffix.lower() in IMAGE_EXTENSIONS and path.is_file()
    )


def resolve_task(
    name_or_path: str | os.PathLike[str],
    settings: Settings | None = None,
    descriptions: str | os.PathLike[str] | None = None,
) -> CrossModalTask:
    """The task named ``name_or_path`` (``"synthetic"``, a paper task), read from that task JSON
    file, or laid out in that folder (:func:`folder_task`, with the description file ``descriptions``)."""
    settings = settings or Settings.from_env()
    text = str(name_or_path).strip()
    path = Path(text).expanduser()
    if descriptions is not None and not path.is_dir():
        raise TaskError(
            "--descriptions goes with a folder --task; a task JSON names its description file under 'descriptions', "
            "and the named tasks use their bundled sets"
        )
    if text == SYNTHETIC:
        return synthetic_task(settings.home / SYNTHETIC)
    if text in PAPER_TASKS:
        return paper_task(text, settings.data_root)
    if path.is_dir() and descriptions is None and (synthetic_root := _synthetic_output_root(path)) is not None:
        return synthetic_task(synthetic_root)
    if path.is_dir():
        return folder_task(path, descriptions)
    if path.is_file():
        root = Path(settings.data_root).expanduser().resolve()
        inside = root in path.resolve().parents
        return read_task_file(path, confine_to=root if inside else None)
    raise TaskError(
        f"no task named {text!r} and no task file or folder at {os.path.abspath(path)}: use 'synthetic', one of "
        f"{', '.join(PAPER_TASKS)}, a folder <root>/<high>/{{train,val,test}}/<class>/ + <root>/<low>/test/<class>/, "
        "or the path of a task JSON file (docs/methods/kmat.md)"
    )


FOLDER_LAYOUT = (
    "<root>/<high>/train/<class>/, <root>/<high>/val/<class>/, <root>/<high>/test/<class>/ and "
    "<root>/<low>/test/<class>/ (<root>/<low>/val/ optional, never used)"
)


def folder_task(root: Path, descriptions: str | os.PathLike[str] | None = None) -> CrossModalTask:
    """A task from a folder laid out as :data:`FOLDER_LAYOUT`: the high-end modality is the one
    sub-folder with a ``train`` folder, the low-end one the sub-folder with only ``test`` (and
    ``val``); their names are the modality names. Classes: the high-end training class folders
    (through the description set's names and aliases when ``descriptions`` is given)."""
    root = Path(os.path.abspath(Path(root).expanduser()))
    modality_dirs = [
        folder for folder in sorted(root.iterdir())
        if folder.is_dir() and not folder.name.startswith(".") and any((folder / s).is_dir() for s in SPLITS)
    ]
    high = [folder for folder in modality_dirs if (folder / "train").is_dir()]
    low = [folder for folder in modality_dirs if not (folder / "train").is_dir()]
    if len(high) != 1 or len(low) != 1:
        found = ", ".join(f"{f.name}/ ({'/'.join(s for s in SPLITS if (f / s).is_dir())})" for f in modality_dirs)
        raise TaskError(
            f"{root} is not a task folder: expected {FOLDER_LAYOUT}, i.e. one modality folder with train/ (the high "
            f"end) and one with test/ only (the low end); found {found or 'no modality folders'}"
        )
    high_dir, low_dir = high[0], low[0]
    for folder, splits in ((high_dir, SPLITS), (low_dir, ("test",))):
        for split in splits:
            if not (folder / split).is_dir():
                raise TaskError(f"task folder {root}: missing {folder / split}; expected {FOLDER_LAYOUT}")
    try:
        train_classes = load_class_folder_dataset(high_dir / "train").label_names
    except DatasetLayoutError as error:
        raise TaskError(f"task folder {root}: {error}") from None
    modalities = (high_dir.name, low_dir.name)
    description_set = None
    classes = tuple(train_classes)
    if descriptions is not None:
        description_set = load_descriptions(Path(os.path.abspath(Path(descriptions).expanduser())))
        wanted = tuple(normalize_name(m) for m in description_set.modalities)
        if wanted != tuple(normalize_name(m) for m in modalities):
            raise TaskError(
                f"the description file {description_set.origin} describes {description_set.high!r} (high end) and "
                f"{description_set.low!r} (low end), but the modality folders of {root} are {modalities[0]!r} (with "
                f"train/) and {modalities[1]!r}: rename the folders or the file's 'modalities'"
            )
        classes = description_set.classes_for_labels(train_classes)
    if len(classes) < 2:
        raise TaskError(f"task folder {root}: {high_dir / 'train'} has {len(classes)} class folder(s); a task needs two or more")
    return CrossModalTask(
        name=root.name,
        descriptions=description_set,
        classes=tuple(classes),
        high=ModalityData(high_dir, split_folders=True),
        low=ModalityData(low_dir, split_folders=True),
        modality_names=description_set.modalities if description_set is not None else modalities,
    )


def _synthetic_output_root(path: Path) -> Path | None:
    """The root of a complete ``medot synth --out ROOT`` output when ``path`` is ``ROOT`` or its
    ``kmat`` folder (the synthetic task's layout is split files, not train/val/test folders), else None."""
    from medot.data.synthetic import GENERATOR_ID, KMAT_DIR, MANIFEST_NAME

    for root in (path, path.parent) if path.name == KMAT_DIR else (path,):
        try:
            manifest = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if (isinstance(manifest, dict) and manifest.get("generator") == GENERATOR_ID
                and manifest.get("complete") is True and (root / KMAT_DIR).is_dir()):
            return root
    return None


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
    path = Path(os.path.abspath(path))
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TaskError(f"task file {path} cannot be read as JSON: {error}") from None
    if not isinstance(data, dict):
        raise TaskError(f"task file {path} must hold a JSON object with keys {list(TASK_FILE_KEYS)}")
    unknown = sorted(set(data) - set(TASK_FILE_KEYS))
    missing = [key for key in ("name", "high", "low") if key not in data]
    if "descriptions" not in data:
        missing += [key for key in ("modalities", "class_names") if key not in data]
    if unknown or missing:
        raise TaskError(
            f"task file {path}: missing keys {missing}, unknown keys {unknown}"
            + ("" if "descriptions" in data else " (without 'descriptions', 'modalities' and 'class_names' are required)")
        )
    base = path.parent
    descriptions = None
    if "descriptions" in data:
        reference = _string(data["descriptions"], "descriptions", path)
        bundled = reference in bundled_description_sets() and not (base / reference).is_file()
        if not bundled:
            named = _confined(Path(os.path.abspath(base / reference)), "descriptions", path, confine_to)
        descriptions = load_descriptions(reference if bundled else named)
    modality_names = None
    if "modalities" in data:
        value = data["modalities"]
        if not isinstance(value, dict) or set(value) != {"high", "low"}:
            raise TaskError(f"task file {path}: 'modalities' must be an object {{'high': ..., 'low': ...}}")
        modality_names = (_string(value["high"], "modalities.high", path), _string(value["low"], "modalities.low", path))
        if descriptions is not None and modality_names != descriptions.modalities:
            raise TaskError(
                f"task file {path}: 'modalities' {list(modality_names)} differ from those of the description file "
                f"{descriptions.origin} {list(descriptions.modalities)}"
            )
    classes = descriptions.classes if descriptions is not None else ()
    if "class_names" in data:
        names = data["class_names"]
        if not isinstance(names, list) or len(names) < 2 or not all(isinstance(n, str) for n in names):
            raise TaskError(f"task file {path}: 'class_names' must be a list of two or more class names")
        classes = tuple(names) if descriptions is None else tuple(descriptions.resolve_class(name) for name in names)
        if len({normalize_name(c) for c in classes}) != len(classes):
            raise TaskError(f"task file {path}: 'class_names' {names} name the same class twice")
    return CrossModalTask(
        name=_string(data["name"], "name", path),
        descriptions=descriptions,
        classes=classes,
        high=_modality_data(data["high"], "high", base, path, confine_to),
        low=_modality_data(data["low"], "low", base, path, confine_to),
        modality_names=modality_names,
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
    root = _confined(Path(os.path.abspath(base / _string(value["root"], f"{key}.root", path))), f"{key}.root", path, confine_to)
    if not root.is_dir():
        raise TaskError(f"task file {path}: the {key}-end dataset folder {root} does not exist")
    split = value.get("split_file")
    if split is None:
        return ModalityData(root)
    split_key = f"{key}.split_file"
    split_file = _confined(Path(os.path.abspath(base / _string(split, split_key, path))), split_key, path, confine_to)
    if not split_file.is_file():
        raise TaskError(f"task file {path}: the {key}-end split file {split_file} does not exist")
    return ModalityData(root, split_file)


# --------------------------------------------------------------------------- `medot task init`
def task_splits(task: CrossModalTask) -> list[tuple[str, ModalityData, str, bool]]:
    """``(modality, data, split, used)`` for every split of a folder task that exists on disk; the
    low end's ``val`` is listed but never used."""
    high, low = task.modalities
    rows = [(high, task.high, split, True) for split in SPLITS]
    rows += [(low, task.low, split, split == "test") for split in ("val", "test") if (task.low.root / split).is_dir()]
    return rows


def split_count_table(task: CrossModalTask) -> str:
    """Images per class (rows) x modality/split (columns), plus totals, as printed by ``medot task init``."""
    columns = task_splits(task)
    counts = [task.split_counts(data, split) for _, data, split, _ in columns]
    titles = [f"{modality}/{split}" + ("" if used else " (unused)") for modality, _, split, used in columns]
    width = max(len("class"), len("total"), *(len(cls) for cls in task.classes))
    widths = [max(len(title), 5) for title in titles]
    lines = [f"{'class':<{width}}  " + "  ".join(f"{t:>{w}}" for t, w in zip(titles, widths, strict=True))]
    for cls in (*task.classes, None):
        cells = [sum(c.values()) if cls is None else c[cls] for c in counts]
        lines.append(
            f"{'total' if cls is None else cls:<{width}}  " + "  ".join(f"{n:>{w}}" for n, w in zip(cells, widths, strict=True))
        )
    return "\n".join(lines)


def task_problems(task: CrossModalTask, shots: int | None = None) -> list[str]:
    """Every class check that fails (a class with no image in a used split; fewer than ``shots``
    high-end training images), as messages; empty when the task is ready to train."""
    problems = []
    for _, data, split, used in task_splits(task):
        if not used:
            continue
        try:
            records = task._records(data, split)
            if shots is not None and data is task.high and split == "train":
                task.check_shots(records, shots)
        except (TaskError, DatasetLayoutError) as error:
            problems.append(str(error))
    return problems


def write_task_files(task: CrossModalTask, root: Path, *, force: bool = False) -> tuple[Path, list[Path]]:
    """Write ``<root>/task.json`` and one split file per modality (``<root>/<m>/split_<m>.json``,
    paths relative to the modality folder) for a folder task; existing files are kept unless ``force``."""
    root = Path(os.path.abspath(root))
    task_path = root / "task.json"
    split_paths = [data.root / f"split_{data.root.name}.json" for data in (task.high, task.low)]
    existing = [str(path) for path in (task_path, *split_paths) if path.exists()]
    if existing and not force:
        raise TaskError(f"{', '.join(existing)} already exist(s); pass --force to overwrite")
    for data, split_path in zip((task.high, task.low), split_paths, strict=True):
        document = {
            split: [
                [record.path.relative_to(data.root).as_posix(), record.label, record.class_name]
                for record in task._records(data, split)
            ]
            for _, where, split, _ in task_splits(task)
            if where is data
        }
        split_path.write_text(json.dumps(document, indent=1) + "\n", encoding="utf-8")
    document: dict[str, Any] = {"name": task.name}
    if task.descriptions is not None:
        origin = Path(task.descriptions.origin)
        document["descriptions"] = os.path.relpath(origin, root) if origin.is_relative_to(root) else str(origin)
    else:
        document["modalities"] = dict(zip(("high", "low"), task.modalities, strict=True))
    for key, data, split_path in zip(("high", "low"), (task.high, task.low), split_paths, strict=True):
        document[key] = {"root": os.path.relpath(data.root, root), "split_file": os.path.relpath(split_path, root)}
    document["class_names"] = list(task.classes)
    task_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return task_path, split_paths
