"""Index dataset folders (paths, labels, masks; no pixels are decoded) in the layouts medot reads.

Three layouts, each the one its benchmark ships in:

* **class folders** (the K-MaT pairs: MIDAS, Derm7pt, DMID->BUSI, CC-CCII->Chest X-ray):
  ``<root>/<class>/<image>``, optionally with a split file -- a CoOp / BiomedCoOp JSON
  ``{"train": [[relative path, label, class name], ...], "val": [...], "test": [...]}`` or a CSV
  with columns ``path,label`` (and optional ``class_name``, ``split``);
* **MVFA** (medical anomaly detection, Huang et al., CVPR 2024):
  ``<root>/<Obj>_AD/{valid,test}/{good,Ungood}/img/<image>``, pixel masks (where the object has
  them) in ``Ungood/anomaly_mask/<same name>``, few-shot lists
  ``<root>/fewshot_seed/<Obj>/<k>-shot.txt`` with lines ``a-<i>: names`` / ``n-<i>: names``;
* **MVTec AD** and **MVTec LOCO AD**: ``<root>/<category>/train/good``, ``test/{good,<defect>}``,
  masks ``ground_truth/<defect>/<stem>_mask.png`` (AD) or a folder ``ground_truth/<defect>/<stem>/``
  of region masks ``000.png``, ``001.png``, ... (LOCO; the image's mask is their union). LOCO's
  ``validation`` folder is indexed like any other split when asked for.

In the anomaly layouts ``label`` is 0 for normal and 1 for anomalous and ``class_name`` is the
folder the image sits in (``good``, ``Ungood`` or the MVTec defect type).
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple, overload

from medot.errors import DatasetLayoutError

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".dcm", ".npy"})
CLASS_FOLDERS, MVFA, MVTEC = "class_folders", "mvfa", "mvtec"
ANOMALY_LABEL_NAMES = ("normal", "anomalous")
MVFA_SPLITS = ("valid", "test")

_LAYOUT_HELP = (
    "expected one of:\n"
    "  class folders: <root>/<class>/<images> (two or more class folders), optional split JSON/CSV;\n"
    "  MVFA:          <root>/<Obj>_AD/{valid,test}/{good,Ungood}/img/<images>;\n"
    "  MVTec AD:      <root>/<category>/train/good/<images> and <root>/<category>/test/<defect>/<images>"
)


class ImageRecord(NamedTuple):
    """One indexed image: where it is, its integer label and class name, and its mask if any."""

    path: Path
    label: int
    class_name: str
    mask_path: Path | None = None


@dataclass(frozen=True)
class DatasetIndex(Sequence[ImageRecord]):
    """The records of one split, in a stable order, and the name of every integer label."""

    root: Path
    label_names: tuple[str, ...]
    records: tuple[ImageRecord, ...]

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> ImageRecord: ...

    @overload
    def __getitem__(self, index: slice) -> tuple[ImageRecord, ...]: ...

    def __getitem__(self, index):
        return self.records[index]

    def __iter__(self) -> Iterator[ImageRecord]:
        return iter(self.records)

    def counts(self) -> dict[str, int]:
        """Number of records per class name."""
        counts: dict[str, int] = {}
        for record in self.records:
            counts[record.class_name] = counts.get(record.class_name, 0) + 1
        return counts


class FewShotSet(NamedTuple):
    """The normal and the abnormal reference images of one MVFA few-shot list."""

    normal: tuple[ImageRecord, ...]
    abnormal: tuple[ImageRecord, ...]


@dataclass(frozen=True)
class DetectedLayout:
    """What :func:`detect_layout` found: the layout and its classes, objects or categories."""

    kind: str
    root: Path
    names: tuple[str, ...]
    split_files: tuple[Path, ...] = ()


# --------------------------------------------------------------------------- folder helpers


def _require_dir(path: Path, expected: str) -> Path:
    if not path.is_dir():
        raise DatasetLayoutError(f"missing folder {path}: expected {expected}")
    return path


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS and not path.name.startswith(".")


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if _is_image(p))


def _require_images(folder: Path, expected: str) -> list[Path]:
    images = _images(_require_dir(folder, expected))
    if not images:
        extensions = ", ".join(sorted(IMAGE_EXTENSIONS))
        raise DatasetLayoutError(f"no images ({extensions}) in {folder}: expected {expected}")
    return images


def _class_folders(root: Path) -> list[Path]:
    return [folder for folder in _subdirs(root) if _images(folder)]


# --------------------------------------------------------------------------- class folders + split files


def load_class_folder_dataset(
    root: str | Path, split_file: str | Path | None = None, split: str = "train"
) -> DatasetIndex:
    """Index ``<root>/<class>/<image>``; with ``split_file``, only the entries of ``split``.

    Without a split file every image in the class folders is returned (``split`` is not used)
    and the labels follow the sorted class-folder names. A JSON split file names each entry's
    class; a CSV may (``class_name`` column), else its labels index the sorted folder names.
    Relative paths in a split file are taken from ``root`` and must stay inside it.
    """
    root = _require_dir(Path(root), "a dataset folder with one sub-folder of images per class")
    if split_file is None:
        folders = _class_folders(root)
        if not folders:
            raise DatasetLayoutError(f"no class folders with images in {root}: expected <root>/<class>/<images>")
        records = [
            ImageRecord(path, label, folder.name)
            for label, folder in enumerate(folders)
            for path in _images(folder)
        ]
        return DatasetIndex(root, tuple(folder.name for folder in folders), tuple(records))
    split_file = Path(split_file)
    if not split_file.is_file():
        raise DatasetLayoutError(f"split file {split_file} does not exist")
    if split_file.suffix.lower() == ".json":
        entries, label_names = _read_split_json(split_file, split)
    elif split_file.suffix.lower() == ".csv":
        entries, label_names = _read_split_csv(split_file, split, root)
    else:
        raise DatasetLayoutError(f"split file {split_file} is neither .json (CoOp/BiomedCoOp style) nor .csv")
    records = [
        ImageRecord(_inside(root, relative, split_file), label, label_names[label])
        for relative, label in entries
    ]
    return DatasetIndex(root, label_names, tuple(records))


def _inside(root: Path, relative: str, split_file: Path) -> Path:
    """``root/relative``, refusing paths that leave ``root`` and files that are not there."""
    if Path(relative).is_absolute() or os.path.normpath(relative).split(os.sep)[0] == os.pardir:
        raise DatasetLayoutError(f"{split_file} lists {relative!r}: paths must be relative to {root} and inside it")
    path = root / relative
    if not path.is_file():
        raise DatasetLayoutError(f"{split_file} lists {relative!r}, but {path} does not exist")
    return path


def _read_split_json(split_file: Path, split: str) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Entries ``(relative path, label)`` of ``split`` and the label names over all splits."""
    try:
        splits = json.loads(split_file.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetLayoutError(f"split file {split_file} is not valid JSON: {error}") from None
    if not isinstance(splits, dict) or not all(isinstance(v, list) for v in splits.values()):
        raise DatasetLayoutError(
            f"split file {split_file} must be an object of lists: "
            '{"train": [[relative path, label, class name], ...], "val": [...], "test": [...]}'
        )
    names: dict[int, str] = {}
    chosen: list[tuple[str, int]] = []
    for part, items in splits.items():
        for position, item in enumerate(items):
            if not (
                isinstance(item, list)
                and len(item) == 3
                and isinstance(item[0], str)
                and isinstance(item[1], int)
                and not isinstance(item[1], bool)
                and item[1] >= 0
                and isinstance(item[2], str)
            ):
                raise DatasetLayoutError(
                    f"split file {split_file}: entry {position} of {part!r} is {item!r}; "
                    "expected [relative path, non-negative integer label, class name]"
                )
            relative, label, class_name = item
            if names.setdefault(label, class_name) != class_name:
                raise DatasetLayoutError(
                    f"split file {split_file}: label {label} is called both {names[label]!r} and {class_name!r}"
                )
            if part == split:
                chosen.append((relative, label))
    if split not in splits:
        raise DatasetLayoutError(f"split file {split_file} has no {split!r} split; it has {sorted(splits)}")
    if not chosen:
        raise DatasetLayoutError(f"split {split!r} in {split_file} is empty")
    missing = [label for label in range(max(names) + 1) if label not in names]
    if missing:
        raise DatasetLayoutError(f"split file {split_file} never names label(s) {missing}; labels must be 0..N-1")
    return chosen, tuple(names[label] for label in range(len(names)))


def _read_split_csv(split_file: Path, split: str, root: Path) -> tuple[list[tuple[str, int]], tuple[str, ...]]:
    """Rows ``(path, label)`` of ``split`` (all rows if there is no ``split`` column) and label names."""
    try:
        with split_file.open(newline="", encoding="utf-8") as handle:
            reader = csv.DictReader(handle)
            columns = set(reader.fieldnames or ())
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as error:
        raise DatasetLayoutError(f"split file {split_file} is not a readable CSV: {error}") from None
    if not {"path", "label"} <= columns:
        raise DatasetLayoutError(
            f"split file {split_file} has columns {sorted(columns)}; expected at least 'path' and 'label' "
            "(optional: 'class_name', 'split')"
        )
    names: dict[int, str] = {}
    chosen: list[tuple[str, int]] = []
    for line, row in enumerate(rows, start=2):
        text = (row["label"] or "").strip()
        if not text.isdigit():
            raise DatasetLayoutError(
                f"split file {split_file}, line {line}: label {text!r} is not a non-negative integer"
            )
        label = int(text)
        if "class_name" in columns and names.setdefault(label, row["class_name"]) != row["class_name"]:
            raise DatasetLayoutError(
                f"split file {split_file}, line {line}: label {label} is called both "
                f"{names[label]!r} and {row['class_name']!r}"
            )
        if "split" not in columns or row["split"] == split:
            chosen.append(((row["path"] or "").strip(), label))
    if not chosen:
        found = sorted({row["split"] for row in rows}) if "split" in columns else []
        raise DatasetLayoutError(f"split {split!r} in {split_file} is empty" + (f"; it has {found}" if found else ""))
    if "class_name" not in columns:
        names = {label: folder.name for label, folder in enumerate(_class_folders(root))}
    top = max(set(names) | {label for _, label in chosen})
    missing = [label for label in range(top + 1) if label not in names]
    if missing:
        raise DatasetLayoutError(
            f"split file {split_file} uses label(s) {missing} with no class name: add a 'class_name' column "
            f"or a class folder per label under {root}"
        )
    return chosen, tuple(names[label] for label in range(top + 1))


# --------------------------------------------------------------------------- MVFA


def _mvfa_object_dir(root: Path, obj: str) -> Path:
    root = _require_dir(root, "the MVFA data folder holding <Obj>_AD folders")
    object_dir = root / f"{obj}_AD"
    if not object_dir.is_dir():
        found = [p.name[: -len("_AD")] for p in _subdirs(root) if p.name.endswith("_AD")]
        raise DatasetLayoutError(f"missing folder {object_dir}: MVFA objects found in {root}: {found or 'none'}")
    return object_dir


def _mvfa_records(split_dir: Path, group: str, names: Sequence[str] | None = None) -> list[ImageRecord]:
    """Records of ``<split>/<group>/img`` (all, or the given file names); masks where present."""
    label = 0 if group == "good" else 1
    img_dir = split_dir / group / "img"
    if names is None:
        paths = _require_images(img_dir, f"the {group} images of this MVFA split")
    else:
        paths = [img_dir / name for name in names]
        absent = [str(p) for p in paths if not p.is_file()]
        if absent:
            raise DatasetLayoutError(f"few-shot list names images that do not exist: {', '.join(absent)}")
    mask_dir = split_dir / group / "anomaly_mask"
    if label == 0 or not mask_dir.is_dir():
        return [ImageRecord(path, label, group) for path in paths]
    records = []
    for path in paths:
        mask = mask_dir / path.name
        if not mask.is_file():
            raise DatasetLayoutError(f"missing mask {mask} for {path}: every image in {img_dir} needs one")
        records.append(ImageRecord(path, label, group, mask))
    return records


def load_mvfa(root: str | Path, obj: str, split: str) -> DatasetIndex:
    """Index MVFA ``<root>/<obj>_AD/<split>``: ``good`` (label 0) then ``Ungood`` (label 1)."""
    if split not in MVFA_SPLITS:
        raise DatasetLayoutError(f"MVFA splits are {' and '.join(MVFA_SPLITS)}, not {split!r}")
    object_dir = _mvfa_object_dir(Path(root), obj)
    split_dir = _require_dir(object_dir / split, "good/img and Ungood/img sub-folders")
    records = _mvfa_records(split_dir, "good") + _mvfa_records(split_dir, "Ungood")
    return DatasetIndex(object_dir, ANOMALY_LABEL_NAMES, tuple(records))


def load_mvfa_fewshot(root: str | Path, obj: str, k: int, iteration: int = 0) -> FewShotSet:
    """The ``k``-shot references of MVFA ``fewshot_seed/<obj>/<k>-shot.txt``, from the valid split.

    The file holds lines ``a-<iteration>: <k abnormal names>`` and ``n-<iteration>: <k normal
    names>``; the names are files in ``<obj>_AD/valid/Ungood/img`` and ``valid/good/img``.
    """
    root = Path(root)
    list_dir = root / "fewshot_seed" / obj
    list_file = list_dir / f"{k}-shot.txt"
    if not list_file.is_file():
        found = sorted(p.name for p in list_dir.glob("*-shot.txt")) if list_dir.is_dir() else []
        raise DatasetLayoutError(
            f"missing few-shot list {list_file}; lists found: {found or 'none'} (MVFA-AD ships them in its "
            "dataset/fewshot_seed folder: copy that folder next to the <Obj>_AD folders)"
        )
    lines = {}
    for line in list_file.read_text(encoding="utf-8").splitlines():
        key, _, names = line.partition(":")
        if names:
            lines[key.strip()] = names.split()
    chosen = {}
    for prefix in ("a", "n"):
        key = f"{prefix}-{iteration}"
        if key not in lines:
            raise DatasetLayoutError(f"{list_file} has no line '{key}: <names>'; it has {sorted(lines)}")
        if len(lines[key]) != k:
            raise DatasetLayoutError(f"{list_file}: line '{key}' names {len(lines[key])} images, expected {k}")
        chosen[prefix] = lines[key]
    valid_dir = _require_dir(_mvfa_object_dir(root, obj) / "valid", "good/img and Ungood/img sub-folders")
    return FewShotSet(
        normal=tuple(_mvfa_records(valid_dir, "good", chosen["n"])),
        abnormal=tuple(_mvfa_records(valid_dir, "Ungood", chosen["a"])),
    )


# --------------------------------------------------------------------------- MVTec AD


def _is_mvtec_category(folder: Path) -> bool:
    return (folder / "train").is_dir() and (folder / "test").is_dir()


def mask_files(folder: Path) -> tuple[Path, ...]:
    """The region-mask PNGs of a MVTec LOCO mask folder (``000.png``, ``001.png``, ...), sorted.

    Hidden files and other extensions are skipped; an empty tuple means the folder holds no PNG.
    """
    pngs = (p for p in folder.iterdir() if p.suffix.lower() == ".png" and not p.name.startswith("."))
    return tuple(sorted(p for p in pngs if p.is_file()))


def _mvtec_mask(category_dir: Path, defect: str, image: Path) -> Path:
    """``ground_truth/<defect>/<stem>_mask.png`` (MVTec AD) or the folder ``<stem>/`` of PNGs (LOCO)."""
    ground_truth = category_dir / "ground_truth" / defect
    ad_mask, loco_folder = ground_truth / f"{image.stem}_mask.png", ground_truth / image.stem
    if ad_mask.is_file():
        return ad_mask
    if loco_folder.is_dir() and mask_files(loco_folder):
        return loco_folder
    raise DatasetLayoutError(
        f"missing mask {ad_mask} for {image}: expected that file (MVTec AD) or a folder {loco_folder} "
        "holding one or more mask PNGs 000.png, 001.png, ... (MVTec LOCO AD)"
    )


def load_mvtec(root: str | Path, category: str, split: str) -> DatasetIndex:
    """Index MVTec ``<root>/<category>/<split>/<defect>``: ``good`` first (label 0), defects label 1.

    Each defective ``<split>/<defect>/<stem>.png`` must have ``ground_truth/<defect>/<stem>_mask.png``
    (MVTec AD; ``mask_path`` is that file) or a folder ``ground_truth/<defect>/<stem>/`` with at least
    one PNG (MVTec LOCO AD; ``mask_path`` is the folder, read as the union of its masks).
    """
    root = _require_dir(Path(root), "the MVTec AD folder holding one folder per category")
    category_dir = root / category
    if not category_dir.is_dir():
        found = [p.name for p in _subdirs(root) if _is_mvtec_category(p)]
        raise DatasetLayoutError(f"missing folder {category_dir}: MVTec categories found in {root}: {found or 'none'}")
    split_dir = _require_dir(category_dir / split, "one sub-folder per defect type (good for normal images)")
    groups = sorted(_subdirs(split_dir), key=lambda p: (p.name != "good", p.name))
    if not groups:
        raise DatasetLayoutError(f"no sub-folders in {split_dir}: expected good/ and, for test, one per defect type")
    records = []
    for group in groups:
        expected = f"the {group.name} images of {category}/{split}"
        for path in _require_images(group, expected):
            if group.name == "good":
                records.append(ImageRecord(path, 0, "good"))
                continue
            records.append(ImageRecord(path, 1, group.name, _mvtec_mask(category_dir, group.name, path)))
    return DatasetIndex(category_dir, ANOMALY_LABEL_NAMES, tuple(records))


# --------------------------------------------------------------------------- layout detection


def detect_layout(root: str | Path) -> DetectedLayout:
    """Say which layout ``root`` follows, with its MVFA objects, MVTec categories or classes.

    MVFA is recognised by ``<Obj>_AD/{valid|test}`` folders, MVTec by ``<category>/{train,test}``,
    class folders by two or more sub-folders that hold images (``split_files`` lists the JSON and
    CSV files next to them).
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetLayoutError(f"{root} is not a folder; {_LAYOUT_HELP}")
    subdirs = _subdirs(root)
    objects = tuple(
        p.name[: -len("_AD")]
        for p in subdirs
        if p.name.endswith("_AD") and any((p / split).is_dir() for split in MVFA_SPLITS)
    )
    if objects:
        return DetectedLayout(MVFA, root, objects)
    categories = tuple(p.name for p in subdirs if _is_mvtec_category(p))
    if categories:
        return DetectedLayout(MVTEC, root, categories)
    classes = tuple(p.name for p in _class_folders(root))
    if len(classes) >= 2:
        split_files = tuple(sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() in {".json", ".csv"}))
        return DetectedLayout(CLASS_FOLDERS, root, classes, split_files)
    raise DatasetLayoutError(f"{root} does not follow a known dataset layout; {_LAYOUT_HELP}")
