r"""Class-description sets: the clinical text that K-MaT anchors its prompts to.

K-MaT (Zeng & Albarqouni, 2026) anchors the learned prompt of class :math:`i` in modality
:math:`m \in \{H, L\}` (high-end, low-end) to the mean text embedding of :math:`N_p` descriptions
of how that class looks in that modality,

.. math:: \bar p_{i,m} = \frac{1}{N_p} \sum_{k=1}^{N_p} E_T\big(d^{(k)}_{i,m}\big),

with :math:`E_T` the frozen text encoder. This module supplies the sentences :math:`d^{(k)}_{i,m}`:
it reads a description set from JSON, checks it, and answers ``sentences(modality, class)``.

File format (``docs/descriptions.md`` has the full account)::

    {
      "task": "chest",
      "modalities": {"high": "ct", "low": "xray"},
      "classes": ["covid19", "normal", "pneumonia"],
      "aliases": {"covid19": ["NCP", "COVID"], ...},          # optional
      "notes": "where the class list comes from",            # optional
      "descriptions": {"ct": {"covid19": ["...", ...], ...}, "xray": {...}}
    }

Class names and aliases are matched after :func:`normalize_name` (case-folded, every run of
spaces, hyphens, underscores and other punctuation read as one space), so the folder names
``Viral_Pneumonia`` and ``viral pneumonia`` find the same class. Bundled sets live in
``assets/descriptions/<name>.json`` and load by name (``load_descriptions("chest")``).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

from medot.errors import MedotError

BUNDLED_DIR = Path(__file__).resolve().parents[2] / "assets" / "descriptions"
REQUIRED_KEYS = ("task", "modalities", "classes", "descriptions")
OPTIONAL_KEYS = ("aliases", "notes")
ROLES = ("high", "low")

_SEPARATORS = re.compile(r"[\W_]+")


class DescriptionError(MedotError):
    """A class-description file or lookup is malformed, missing or inconsistent."""


def normalize_name(name: str) -> str:
    """The form class names and aliases are compared in: case-folded, punctuation runs -> one space."""
    return _SEPARATORS.sub(" ", name.casefold()).strip()


def _normalize_sentence(sentence: str) -> str:
    return " ".join(sentence.casefold().split())


@dataclass(frozen=True)
class DescriptionSet:
    """Descriptions of every class in a high-end and a low-end modality.

    ``descriptions[modality][class]`` holds the sentences; ``aliases[class]`` the other names the
    class goes by (dataset folder names, abbreviations). ``origin`` is the file it was read from.
    Build one with :func:`load_descriptions` or :meth:`from_dict`, which check it.
    """

    task: str
    high: str
    low: str
    classes: tuple[str, ...]
    descriptions: dict[str, dict[str, tuple[str, ...]]]
    aliases: dict[str, tuple[str, ...]] = field(default_factory=dict)
    notes: str = ""
    origin: str = field(default="<memory>", compare=False)

    @property
    def modalities(self) -> tuple[str, str]:
        """``(high, low)`` modality names."""
        return self.high, self.low

    @cached_property
    def _lookup(self) -> dict[str, str]:
        return {
            normalize_name(name): cls for cls in self.classes for name in (cls, *self.aliases.get(cls, ()))
        }

    def resolve_class(self, name: str) -> str:
        """The canonical class that ``name`` (a class name or an alias, in any case) refers to."""
        found = self._lookup.get(normalize_name(name))
        if found is None:
            known = "; ".join(", ".join((cls, *self.aliases.get(cls, ()))) for cls in self.classes)
            raise DescriptionError(
                f"description set {self.task!r} ({self.origin}) has no class or alias {name!r}; "
                f"it knows (class, aliases): {known}. Rename the folder or add an alias to the description file."
            )
        return found

    def sentences(self, modality: str, class_name: str) -> list[str]:
        """The descriptions :math:`d^{(1..N_p)}_{i,m}` of ``class_name`` (or an alias) in ``modality``."""
        if modality not in self.descriptions:
            raise DescriptionError(
                f"description set {self.task!r} ({self.origin}) has no modality {modality!r}; "
                f"use {self.high!r} (high-end) or {self.low!r} (low-end)"
            )
        return list(self.descriptions[modality][self.resolve_class(class_name)])

    def description_counts(self) -> dict[str, dict[str, int]]:
        """:math:`N_p` of every class in every modality: ``{modality: {class: count}}``."""
        return {modality: {cls: len(per_class[cls]) for cls in self.classes} for modality, per_class in self.descriptions.items()}

    def describe_counts(self) -> str:
        """``N_p`` in words, e.g. ``"N_p = 22 descriptions per class and modality"`` (or its range)."""
        counts = [n for per_class in self.description_counts().values() for n in per_class.values()]
        low, high = min(counts), max(counts)
        value = f"{low}" if low == high else f"{low}-{high}"
        return f"N_p = {value} descriptions per class and modality ({self.origin}; the K-MaT paper uses 50 generated ones)"

    def classes_for_labels(self, label_names: Sequence[str]) -> tuple[str, ...]:
        """The canonical class of each dataset label name, in the dataset's label order.

        A dataset indexes its classes by sorted folder name (``CP, NCP, Normal`` for CC-CCII), so
        the description anchors must be taken in that order, not in :attr:`classes` order.
        """
        resolved = tuple(self.resolve_class(name) for name in label_names)
        for cls in dict.fromkeys(resolved):
            sharing = [name for name, target in zip(label_names, resolved) if target == cls]
            if len(sharing) > 1:
                raise DescriptionError(
                    f"dataset labels {', '.join(map(repr, sharing))} all resolve to class {cls!r} of "
                    f"description set {self.task!r} ({self.origin}); each label needs its own class"
                )
        return resolved

    def to_dict(self) -> dict[str, Any]:
        """The JSON-ready form that :meth:`from_dict` and :func:`load_descriptions` read back."""
        data: dict[str, Any] = {
            "task": self.task,
            "modalities": {"high": self.high, "low": self.low},
            "classes": list(self.classes),
        }
        if self.aliases:
            data["aliases"] = {cls: list(names) for cls, names in self.aliases.items()}
        if self.notes:
            data["notes"] = self.notes
        data["descriptions"] = {
            modality: {cls: list(per_class[cls]) for cls in self.classes}
            for modality, per_class in self.descriptions.items()
        }
        return data

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<memory>") -> DescriptionSet:
        """Check ``data`` (parsed JSON) and build the set; every problem names ``origin``."""
        return _Parser(origin).parse(data)


class _Parser:
    """Validation of one description file; each failure raises with the file named."""

    def __init__(self, origin: str) -> None:
        self.origin = origin

    def fail(self, problem: str) -> DescriptionError:
        return DescriptionError(f"description file {self.origin}: {problem}")

    def text(self, value: Any, what: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(f"{what} must be a non-empty string, got {value!r}")
        return value.strip()

    def mapping(self, value: Any, what: str) -> dict:
        if not isinstance(value, dict):
            raise self.fail(f"{what} must be a JSON object, got {type(value).__name__}")
        return value

    def string_list(self, value: Any, what: str) -> list[str]:
        if not isinstance(value, list):
            raise self.fail(f"{what} must be a list of strings, got {type(value).__name__}")
        for position, item in enumerate(value, start=1):
            if not isinstance(item, str):
                raise self.fail(f"item {position} of {what} is a {type(item).__name__} ({item!r}); expected a string")
            if not item.strip():
                raise self.fail(f"item {position} of {what} is blank")
        return [item.strip() for item in value]

    def same_keys(self, found: Iterable[str], expected: Sequence[str], what: str) -> None:
        found, wanted = set(found), set(expected)
        problems = []
        if wanted - found:
            problems.append(f"missing {', '.join(repr(k) for k in expected if k not in found)}")
        if found - wanted:
            problems.append(f"unexpected {', '.join(repr(k) for k in sorted(found - wanted))}")
        if problems:
            keys = ", ".join(map(repr, expected))
            raise self.fail(f"{what} must have exactly the keys {keys}: {'; '.join(problems)}")

    def parse(self, data: Any) -> DescriptionSet:
        data = self.mapping(data, "the top level")
        missing = [key for key in REQUIRED_KEYS if key not in data]
        if missing:
            raise self.fail(f"missing required key(s) {', '.join(map(repr, missing))}")
        unknown = sorted(set(data) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
        if unknown:
            allowed = ", ".join(map(repr, REQUIRED_KEYS + OPTIONAL_KEYS))
            raise self.fail(f"unknown key(s) {', '.join(map(repr, unknown))}; allowed keys are {allowed}")
        task = self.text(data["task"], "'task'")
        high, low = self.modalities(data["modalities"])
        classes = self.classes(data["classes"])
        aliases = self.aliases(data.get("aliases", {}), classes)
        notes = self.text(data["notes"], "'notes'") if "notes" in data else ""
        descriptions = self.descriptions(data["descriptions"], (high, low), classes)
        return DescriptionSet(task, high, low, classes, descriptions, aliases, notes, self.origin)

    def modalities(self, value: Any) -> tuple[str, str]:
        modalities = self.mapping(value, "'modalities'")
        self.same_keys(modalities, ROLES, "'modalities'")
        high = self.text(modalities["high"], "'modalities.high'")
        low = self.text(modalities["low"], "'modalities.low'")
        if high == low:
            raise self.fail(f"'modalities' names {high!r} as both high-end and low-end; give two different names")
        return high, low

    def classes(self, value: Any) -> tuple[str, ...]:
        classes = self.string_list(value, "'classes'")
        if len(classes) < 2:
            raise self.fail(f"'classes' lists {len(classes)} class(es); a classification task needs at least two")
        return tuple(classes)

    def aliases(self, value: Any, classes: tuple[str, ...]) -> dict[str, tuple[str, ...]]:
        aliases = self.mapping(value, "'aliases'")
        strays = [name for name in aliases if name not in classes]
        if strays:
            raise self.fail(f"'aliases' names {', '.join(map(repr, strays))}, not in 'classes' {list(classes)}")
        parsed = {cls: tuple(self.string_list(aliases[cls], f"'aliases.{cls}'")) for cls in classes if cls in aliases}
        owner: dict[str, tuple[str, str]] = {}
        for cls in classes:
            for name in (cls, *parsed.get(cls, ())):
                key = normalize_name(name)
                if not key:
                    raise self.fail(f"name {name!r} of class {cls!r} has no letters or digits")
                if key in owner:
                    first_name, first_class = owner[key]
                    raise self.fail(
                        f"{name!r} (class {cls!r}) and {first_name!r} (class {first_class!r}) are the same name "
                        f"once case and punctuation are ignored; class names and aliases must all be distinct"
                    )
                owner[key] = (name, cls)
        return parsed

    def descriptions(
        self, value: Any, modalities: tuple[str, str], classes: tuple[str, ...]
    ) -> dict[str, dict[str, tuple[str, ...]]]:
        descriptions = self.mapping(value, "'descriptions'")
        self.same_keys(descriptions, modalities, "'descriptions' (one entry per modality)")
        parsed: dict[str, dict[str, tuple[str, ...]]] = {}
        for modality in modalities:
            per_class = self.mapping(descriptions[modality], f"'descriptions.{modality}'")
            self.same_keys(per_class, classes, f"'descriptions.{modality}' (one entry per class)")
            seen: dict[str, str] = {}
            parsed[modality] = {}
            for cls in classes:
                where = f"'descriptions.{modality}.{cls}'"
                sentences = self.string_list(per_class[cls], where)
                if not sentences:
                    raise self.fail(f"{where} has no sentences; every class needs descriptions in every modality")
                for sentence in sentences:
                    key = _normalize_sentence(sentence)
                    if key in seen:
                        first = seen[key]
                        place = "twice in the same class" if first == cls else f"in classes {first!r} and {cls!r}"
                        raise self.fail(f"in modality {modality!r}, the sentence {sentence!r} appears {place}")
                    seen[key] = cls
                parsed[modality][cls] = tuple(sentences)
        return parsed


def bundled_description_sets() -> tuple[str, ...]:
    """Names of the description sets shipped in ``assets/descriptions``."""
    return tuple(sorted(path.stem for path in BUNDLED_DIR.glob("*.json")))


def _locate(path_or_name: str | os.PathLike[str]) -> Path:
    """The bundled file for a bundled set's name (a ``str`` such as ``"chest"``), else the file at that path."""
    if isinstance(path_or_name, str) and path_or_name in bundled_description_sets():
        return BUNDLED_DIR / f"{path_or_name}.json"
    path = Path(os.path.abspath(Path(path_or_name).expanduser()))
    if not path.is_file():
        raise DescriptionError(
            f"no description file at {path} and no bundled description set named {str(path_or_name)!r}; "
            f"bundled sets: {', '.join(bundled_description_sets())}"
        )
    return path


def _no_duplicate_keys(origin: Path):
    def hook(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        result: dict[str, Any] = {}
        for key, value in pairs:
            if key in result:
                raise DescriptionError(f"description file {origin}: key {key!r} appears twice in the same JSON object")
            result[key] = value
        return result

    return hook


def load_descriptions(path_or_name: str | os.PathLike[str]) -> DescriptionSet:
    """Read and check a description set: a bundled name (``"chest"``) or a path to a JSON file.

    Raises :class:`DescriptionError` naming the file and the problem for unreadable files,
    invalid JSON, missing or unknown keys, class lists that differ between sections, classes
    without sentences, non-string or blank sentences, and duplicated names, keys or sentences.
    """
    path = _locate(path_or_name)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DescriptionError(f"description file {path} cannot be read as UTF-8 text: {error}") from error
    try:
        data = json.loads(text, object_pairs_hook=_no_duplicate_keys(path))
    except json.JSONDecodeError as error:
        raise DescriptionError(
            f"description file {path} is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}"
        ) from error
    return DescriptionSet.from_dict(data, origin=str(path))


def save_descriptions(descriptions: DescriptionSet, path: str | os.PathLike[str]) -> Path:
    """Write ``descriptions`` as a JSON file that :func:`load_descriptions` reads back unchanged."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(descriptions.to_dict(), indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return path
