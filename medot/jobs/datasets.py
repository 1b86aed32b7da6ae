"""Whether a training job can read its dataset, checked before the job is queued.

A job that cannot read its data should be refused with the reason on submission, not fail minutes
later in its worker with "exited with status 2". The check indexes files (no pixel is decoded, no
backbone loaded) with the same functions the method's command uses:

* ``kmat`` - :func:`medot.methods.prompt_learning.crossmodal.resolve_task`: a paper task name
  (its folders must exist under the data root), a task folder (``<high>/{train,val,test}/<class>/``
  + ``<low>/test/<class>/``, every split's class checks run at training time) or a task JSON file
  (parsed, every path it names confined to the data root); a plain image folder is not a
  cross-modal task; with descriptions when the chosen method needs them;
* ``pradot`` - :func:`medot.methods.pradot.data.anomaly_classes` and ``load_anomaly_splits``: an
  MVTec AD / MVFA folder holding one category or object (a job has no ``--category``).
* ``madpot`` - :func:`medot.data.datasets.detect_layout`: an MVFA folder (``--object`` one of its
  objects, needed when it holds several), or an MVTec AD folder with ``abnormal_shots`` (training
  there is normal-only, and MADPOT / MVFA need k abnormal support images): a folder of images
  (``<folder>/<object>/`` when it exists, as ``medot.methods.madpot.data.abnormal_shot_records``
  reads it), at least ``shots`` of them, outside every category's test split.

``synthetic`` is always accepted (written on first use); methods without a check pass.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from medot.config import Settings
from medot.errors import MedotError
from medot.jobs.arguments import SYNTHETIC
from medot.jobs.registry import JobError


def _kmat(arguments: Mapping[str, Any], home: Path, data_root: Path) -> None:
    from medot.methods.prompt_learning.crossmodal import FOLDER_LAYOUT, PAPER_TASKS, TaskError, resolve_task

    dataset = arguments["dataset"]
    settings = Settings(home=home, data_root=data_root, backbone="auto")
    try:
        task = resolve_task(dataset, settings, descriptions=arguments.get("descriptions"))
    except TaskError as error:
        if not Path(dataset).is_dir():
            raise
        raise JobError(
            f"K-MaT trains on a cross-modal task, not on one folder ({dataset}): choose 'synthetic', a paper task "
            f"({', '.join(PAPER_TASKS)}), a task folder {FOLDER_LAYOUT}, or a task JSON file under the data root "
            f"(format: docs/methods/kmat.md); {error}"
        ) from None
    method = arguments.get("method", "kmat")  # the command's default; None: a bare dataset, no method yet
    if method is not None:
        task.require_descriptions(method)


def _pradot(arguments: Mapping[str, Any], home: Path, data_root: Path) -> None:  # noqa: ARG001 - same signature
    from medot.methods.pradot.data import anomaly_classes, load_anomaly_splits

    dataset = arguments["dataset"]
    layout, names = anomaly_classes(dataset)
    if len(names) != 1:
        raise JobError(
            f"{dataset} holds {len(names)} {layout} classes ({', '.join(names)}); a PRADOT job trains on one: "
            "point it at a folder that holds only that class (e.g. a folder with a link to it)"
        )
    if not load_anomaly_splits(dataset, names[0]).train:
        raise JobError(f"{dataset}: no normal training images for {names[0]!r}")


def _madpot(arguments: Mapping[str, Any], home: Path, data_root: Path) -> None:  # noqa: ARG001 - same signature
    from medot.data.datasets import MVFA, MVTEC, _images, detect_layout

    dataset, folder, obj = arguments["dataset"], arguments.get("abnormal_shots"), arguments.get("object")
    layout = detect_layout(dataset)
    if layout.kind not in (MVFA, MVTEC):
        raise JobError(f"{dataset} is a {layout.kind.replace('_', ' ')} dataset; a MADPOT job needs an MVFA folder "
                       "(<Obj>_AD/{valid,test}) or an MVTec AD folder (<category>/train/good, test/<defect>)")
    if obj is not None and obj not in layout.names:
        raise JobError(f"{dataset} has no object {obj!r}; it has {', '.join(layout.names)}")
    if obj is None and len(layout.names) > 1:
        raise JobError(f"{dataset} holds {len(layout.names)} objects ({', '.join(layout.names)}): type one as the object")
    obj = obj or layout.names[0]
    if layout.kind == MVFA:
        if folder is not None:
            raise JobError(f"abnormal_shots is for MVTec AD folders (normal-only training): {dataset} is an MVFA folder "
                           "with its own abnormal shots (<Obj>_AD/valid/Ungood); leave it empty")
        return
    if folder is None:
        raise JobError(f"{dataset} is an MVTec AD folder: its training images are all normal, and MADPOT / MVFA need "
                       "k abnormal support images as well: give a folder of abnormal images under the data root, "
                       "outside the test split (abnormal_shots)")
    folder = Path(folder)
    if (folder / obj).is_dir():
        folder = folder / obj
    if not folder.is_dir():
        raise JobError(f"abnormal_shots: {folder} is not a folder")
    for category in layout.names:
        test = (Path(dataset) / category / "test").resolve()
        if folder.resolve().is_relative_to(test):
            raise JobError(f"abnormal_shots: {folder} is inside the test split {test}: training on test images would "
                           "leak them into the model; copy abnormal images that are not in the test split to another folder")
    images, shots = len(_images(folder)), int(arguments.get("shots", 4))  # 4: `medot train madpot`'s default
    if images < shots:
        raise JobError(f"abnormal_shots: {folder} holds {images} images (png, jpg, ...), fewer than the {shots} shots")


DATASET_CHECKS: dict[str, Callable[[Mapping[str, Any], Path, Path], None]] = {"kmat": _kmat, "pradot": _pradot, "madpot": _madpot}


def check_job_dataset(method: str, arguments: Mapping[str, Any] | str | None, home: Path, data_root: Path) -> None:
    """Raise :class:`JobError` saying why a ``method`` job with the checked ``arguments`` (or just
    its dataset) could not read its ``dataset`` (``synthetic``, a paper task name or an absolute
    path inside the data root)."""
    if not isinstance(arguments, Mapping):  # a bare dataset: what the method needs beyond it is not checked
        arguments = {"dataset": arguments, "method": None}
    check = DATASET_CHECKS.get(method)
    dataset = arguments.get("dataset")
    if check is None or dataset is None or dataset == SYNTHETIC:
        return
    try:
        check(arguments, home, data_root)
    except JobError:
        raise
    except MedotError as error:
        raise JobError(f"dataset {dataset}: {error}") from None
