"""Which arguments a training job accepts, how they are checked, and how they reach the command.

Job arguments come from the app's forms, so every one is checked before a job is queued: the
method must be known, the argument names must be on that method's list (nothing else - not
``--out`` nor ``--resume`` - can be slipped into the command), numbers must be finite and in range,
and every path must lie inside the data root once symlinks and ``..`` are resolved
(:func:`medot.config.confine_path`; a dataset may also be :data:`SYNTHETIC`). Checked arguments
become ``--name=value`` items of an argument list (never a shell string): the ``=`` form keeps a
value that starts with ``-`` from being read as an option.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from medot.config import confine_path
from medot.jobs.registry import JobError

SYNTHETIC = "synthetic"
#: K-MaT's paper tasks, named datasets of ``medot train kmat`` (the keys of
#: :data:`medot.methods.prompt_learning.crossmodal.PAPER_TASKS`; spelt out to keep torch out of here)
KMAT_PAPER_TASKS = ("skin_midas", "skin_derm7pt", "breast", "chest")


@dataclass(frozen=True)
class Argument:
    """One accepted argument. ``kind``: "int"/"float" (within [``minimum``, ``maximum``]),
    "ints" (a list of whole numbers, each within [``minimum``, ``maximum``], of ``count`` items
    when set, holding every number of ``required``; an ``nargs`` option such as ``--stages 3 4``),
    "choice" (one of ``choices``), "flag" (a bool; True passes ``--name``), "path" (inside the data
    root), "dataset" (a path inside the data root, :data:`SYNTHETIC`, or one of ``choices``:
    named datasets such as K-MaT's paper tasks) or "name" (a folder name such as an MVFA object:
    letters, digits, ``_``, ``-``, ``.``, not starting with ``-`` or ``.``)."""

    kind: Literal["int", "float", "ints", "choice", "flag", "path", "dataset", "name"]
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    count: int | None = None
    required: tuple[int, ...] = ()


#: what every training command accepts (the data - ``--dataset`` - and the run's settings)
TRAIN_ARGUMENTS: dict[str, Argument] = {
    "dataset": Argument("dataset"),
    "epochs": Argument("int", 1, 10_000),
    "batch_size": Argument("int", 1, 65_536),
    "seed": Argument("int", 0, 2**32 - 1),
    "backbone": Argument("choice", choices=("auto", "biomedclip", "lite")),
    "device": Argument("choice", choices=("auto", "cpu", "cuda")),
}

#: the methods the app can train, and their arguments (names of ``medot train <method>`` flags)
METHOD_ARGUMENTS: dict[str, Mapping[str, Argument]] = {
    "kmat": {
        **TRAIN_ARGUMENTS,
        "dataset": Argument("dataset", choices=KMAT_PAPER_TASKS),
        "method": Argument("choice", choices=("kmat", "coop", "cocoop", "kgcoop", "biomedcoop")),
        "shots": Argument("int", 1, 1024),
        "lr": Argument("float", 1e-8, 10.0),
        "patience": Argument("int", 1, 10_000),
        "lambda_anc": Argument("float", 0.0, 1e4),
        "lambda_fgw": Argument("float", 0.0, 1e4),
        "descriptions": Argument("path"),
        "kgcoop_lambda": Argument("float", 0.0, 1e4),
        "biomedcoop_lambda1": Argument("float", 0.0, 1e4),
        "biomedcoop_lambda2": Argument("float", 0.0, 1e4),
        "biomedcoop_tau": Argument("float", 1e-3, 100.0),
        "cocoop_width": Argument("int", 1, 65_536),
    },
    "pradot": {
        **TRAIN_ARGUMENTS,
        "n_prototypes": Argument("int", 1, 1024),
        "epsilon": Argument("float", 1e-4, 10.0),
        "preset": Argument("choice", choices=("auto", "paper", "cpu")),
        "plan_budget": Argument("int", 1, 2**40),
        "init": Argument("choice", choices=("data", "kmeans++", "uniform")),
    },
    "madpot": {
        **TRAIN_ARGUMENTS,
        "object": Argument("name"),
        "shots": Argument("int", 1, 1024),
        "method": Argument("choice", choices=("madpot", "mvfa")),
        "lr": Argument("float", 1e-8, 10.0),
        # MVTec AD data (normal-only training): the folder of abnormal support images
        "abnormal_shots": Argument("path"),
    },
    "optiml": {  # pretrains its own encoder: no --backbone
        **{name: argument for name, argument in TRAIN_ARGUMENTS.items() if name != "backbone"},
        "method": Argument("choice", choices=("optiml", "vicreg", "vicregl")),
        "encoder": Argument("choice", choices=("lite", "resnet18", "resnet50")),
        "no_cvsim": Argument("flag"),
        "no_varcov": Argument("flag"),
        "no_ot": Argument("flag"),
        "alpha": Argument("float", 0.0, 1e4),
        "beta": Argument("float", 0.0, 1e4),
        "eta": Argument("float", 0.0, 1e4),
        "epsilon": Argument("float", 1e-3, 10.0),
        "image_size": Argument("int", 32, 1024),
        "lr": Argument("float", 1e-8, 100.0),
        # dense stages by ResNet stage number, always with 4 (medot.methods.optiml.config.STAGES)
        "stages": Argument("ints", 2, 4, required=(4,)),
        "vicregl_alpha": Argument("float", 0.0, 1.0),
        "num_matches": Argument("ints", 1, 4096, count=2),
    },
}


def capped_arguments(
    methods: Mapping[str, Mapping[str, Argument]] | None = None, **maxima: float
) -> dict[str, dict[str, Argument]]:
    """``methods`` (default :data:`METHOD_ARGUMENTS`) with the numeric arguments named in ``maxima``
    capped there (``capped_arguments(epochs=200, shots=32)``): a deployment's budget, never above
    the command's own maximum."""
    methods = METHOD_ARGUMENTS if methods is None else methods
    capped = {}
    for method, accepted in methods.items():
        capped[method] = dict(accepted)
        for name, cap in maxima.items():
            argument = accepted.get(name)
            if argument is not None and argument.kind in ("int", "float"):
                top = cap if argument.maximum is None else min(cap, argument.maximum)
                capped[method][name] = replace(argument, maximum=top)
    return capped


def validate_arguments(
    method: str, arguments: Mapping[str, Any], data_root: Path, methods: Mapping[str, Mapping[str, Argument]]
) -> dict[str, Any]:
    """Checked, normalised copy of ``arguments`` (ints as int, paths absolute and resolved; None
    values dropped: the command's default applies). Raises :class:`JobError`, or
    :class:`~medot.errors.PathNotAllowedError` for a path outside ``data_root``."""
    if method not in methods:
        raise JobError(f"unknown training method {method!r}; choose one of {', '.join(sorted(methods))}")
    accepted = methods[method]
    unknown = sorted(set(arguments) - set(accepted))
    if unknown:
        raise JobError(
            f"{method} does not take {', '.join(unknown)}; it takes {', '.join(sorted(accepted))}"
        )
    checked = {
        name: _check(name, value, accepted[name], data_root)
        for name, value in arguments.items()
        if value is not None
    }
    if method == "optiml" and checked.get("method") == "vicreg" and set(checked.get("stages", [4])) != {4}:
        raise JobError("stages: vicreg has no dense terms, so stages other than 4 do not apply")
    if method == "madpot" and "abnormal_shots" in checked and checked.get("dataset") == SYNTHETIC:
        raise JobError("abnormal_shots is for MVTec AD folders (normal-only training): the synthetic set is MVFA-layout "
                       "data with its own abnormal shots (<Obj>_AD/valid/Ungood); leave it empty")
    return checked


def cli_flags(arguments: Mapping[str, Any]) -> list[str]:
    """``{"batch_size": 8, "amp": True, "stages": [3, 4]}`` -> ``["--batch-size=8", "--amp", "--stages",
    "3", "4"]`` (False flags omitted; a list's items follow its option: checked whole numbers, never
    negative, so none can be read as an option)."""
    flags = []
    for name, value in arguments.items():
        option = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            flags.extend([option] if value else [])
        elif isinstance(value, (list, tuple)):
            flags.extend([option, *(str(item) for item in value)])
        else:
            flags.append(f"{option}={value}")
    return flags


def _check(name: str, value: Any, argument: Argument, data_root: Path) -> Any:
    if argument.kind in ("int", "float"):
        return _check_number(name, value, argument)
    if argument.kind == "ints":
        return _check_numbers(name, value, argument)
    if argument.kind == "flag":
        if not isinstance(value, bool):
            raise JobError(f"{name} must be true or false, got {value!r}")
        return value
    if not isinstance(value, str):
        raise JobError(f"{name} must be text, got {value!r}")
    if argument.kind == "name":
        if not re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}", value):
            raise JobError(f"{name} must be a folder name (letters, digits, _ - .), got {value!r}")
        return value
    if argument.kind == "choice":
        if value not in argument.choices:
            raise JobError(f"{name} must be one of {', '.join(argument.choices)}, got {value!r}")
        return value
    if argument.kind == "dataset" and (value == SYNTHETIC or value in argument.choices):
        return value
    path = confine_path(value, data_root)
    try:
        exists = path.exists()
    except OSError as error:  # e.g. a name longer than the file system allows
        raise JobError(f"{name}: {value[:80]!r} cannot be used as a path: {(error.strerror or 'invalid').lower()}") from None
    if not exists:
        raise JobError(f"{name}: {path} does not exist under the data root {data_root}")
    return str(path)


def _check_number(name: str, value: Any, argument: Argument) -> int | float:
    """A number (or its text) of the argument's kind, within its range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise JobError(f"{name} must be a number, got {value!r}")
    try:
        number = float(value)
    except ValueError:
        raise JobError(f"{name} must be a number, got {value!r}") from None
    if not math.isfinite(number):
        raise JobError(f"{name} must be finite, got {value!r}")
    if argument.kind == "int":
        if not number.is_integer():
            raise JobError(f"{name} must be a whole number, got {value!r}")
        number = int(number)
    if argument.minimum is not None and number < argument.minimum:
        raise JobError(f"{name} must be at least {argument.minimum:g}, got {value!r}")
    if argument.maximum is not None and number > argument.maximum:
        raise JobError(f"{name} must be at most {argument.maximum:g}, got {value!r}")
    return number


def _check_numbers(name: str, value: Any, argument: Argument) -> list[int]:
    """A list of whole numbers (or their text, space- or comma-separated), each in the argument's
    range, of its ``count`` items when set, holding its ``required`` numbers."""
    items = re.split(r"[\s,]+", value.strip()) if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not [item for item in items if item != ""]:
        raise JobError(f"{name} must be whole numbers separated by spaces, got {value!r}")
    single = replace(argument, kind="int")
    numbers = [_check_number(name, item, single) for item in items if item != ""]
    if argument.count is not None and len(numbers) != argument.count:
        raise JobError(f"{name} takes {argument.count} numbers, got {len(numbers)} ({value!r})")
    missing = [k for k in argument.required if k not in numbers]
    if missing:
        raise JobError(f"{name} must include {', '.join(map(str, missing))}, got {value!r}")
    return numbers
