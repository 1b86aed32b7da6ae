"""What a classification's probabilities are and how far to trust them, in words for the screen and
the CLI.

A prompt classifier's probabilities are a softmax over the C labels it was given,
:math:`p_i = \\exp(\\tau\\, s_i) / \\sum_j \\exp(\\tau\\, s_j)` with :math:`s_i` the cosine similarity
of the image to label i's prompt, so they always sum to 1 even when no label fits the image: they
rank the given labels, they do not say how likely a finding is. Beside them :func:`prediction_evidence`
puts the chance level :math:`1/C` (guessing one of C labels at random), the model's own held-out
test accuracy and macro-F1 for the modality used (``metrics`` in the checkpoint written by
``medot train kmat``: ``acc_hi`` / ``f1_hi`` for the high-end modality, ``acc_lo`` / ``f1_lo`` for
the low-end one) and a warning when the image's DICOM Modality tag names another modality than the
prompts used.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from medot.data.modality import dicom_modality, display_name

SIDES = ("high", "low")
_SUFFIX = {"high": "hi", "low": "lo"}


@dataclass(frozen=True)
class HeldOutMetrics:
    """A trained model's test figures for one modality (fractions), as recorded in its checkpoint."""

    modality: str
    accuracy: float | None
    macro_f1: float | None
    task: str | None = None
    shots: int | None = None
    seed: int | None = None


@dataclass(frozen=True)
class PredictionEvidence:
    """The probabilities of one image and what stands behind them."""

    labels: tuple[str, ...]
    probabilities: tuple[float, ...]
    chance: float
    held_out: HeldOutMetrics | None
    trained: bool
    warning: str | None

    @property
    def top(self) -> tuple[str, float]:
        index = max(range(len(self.labels)), key=self.probabilities.__getitem__)
        return self.labels[index], self.probabilities[index]

    def heading(self) -> str:
        """The top label worded as a ranking among the given labels, not as a finding."""
        label, probability = self.top
        return f"Highest of the {len(self.labels)} given labels: {label} ({probability:.0%})"

    def lines(self) -> list[str]:
        """Plain sentences (Markdown-safe) explaining the scores."""
        n = len(self.labels)
        lines = [
            f"The scores are a softmax over the {n} labels given: they always sum to 100 %, even when "
            "none of the labels fits the image. They rank these labels; they are not a diagnosis.",
            f"Chance level: {self.chance:.1%} (one of {n} labels picked at random).",
        ]
        if self.held_out is not None:
            m = self.held_out
            figures = []
            if m.accuracy is not None:
                figures.append(f"accuracy {m.accuracy:.1%}")
            if m.macro_f1 is not None:
                figures.append(f"macro-F1 {m.macro_f1:.2f}")
            run = ", ".join(
                part
                for part in (
                    f"task {m.task}" if m.task else "",
                    f"{m.shots} shots" if m.shots is not None else "",
                    f"seed {m.seed}" if m.seed is not None else "",
                )
                if part
            )
            lines.append(
                f"This model on held-out {display_name(m.modality)} test images: {' and '.join(figures)}"
                + (f" ({run})." if run else ".")
            )
        elif self.trained:
            lines.append("This checkpoint records no held-out test figures for this modality.")
        else:
            lines.append("Zero-shot on typed labels: no held-out test figures exist for these labels.")
        if self.warning:
            lines.append(f"**Warning:** {self.warning}")
        return lines


def chance_level(n_labels: int) -> float:
    """:math:`1/C`: accuracy of picking one of ``n_labels`` labels uniformly at random."""
    if n_labels < 1:
        raise ValueError("a classification needs at least one label")
    return 1.0 / n_labels


def held_out_metrics(meta: Mapping[str, Any], side: str) -> HeldOutMetrics | None:
    """The checkpoint's test accuracy / macro-F1 for its ``side`` (``"high"`` / ``"low"``) modality,
    ``None`` when it records neither."""
    if side not in SIDES:
        raise ValueError(f"modality side must be 'high' or 'low', not {side!r}")
    metrics = meta.get("metrics") or {}
    accuracy, macro_f1 = metrics.get(f"acc_{_SUFFIX[side]}"), metrics.get(f"f1_{_SUFFIX[side]}")
    if accuracy is None and macro_f1 is None:
        return None
    modalities = meta.get("modalities") or {}
    return HeldOutMetrics(
        modality=str(modalities.get(side, side)),
        accuracy=None if accuracy is None else float(accuracy),
        macro_f1=None if macro_f1 is None else float(macro_f1),
        task=meta.get("task"),
        shots=meta.get("shots"),
        seed=meta.get("seed"),
    )


def modality_warning(dicom_tag: str | None, used: str) -> str | None:
    """A sentence when the image's DICOM Modality tag names another modality than ``used`` (the
    modality key of the prompts applied); ``None`` without a tag or when they agree."""
    tag = (dicom_tag or "").strip()
    if not tag:
        return None
    key = dicom_modality(tag)
    if key == used.lower():
        return None
    named = f"{tag} ({display_name(key)})" if key else f"{tag}"
    return (
        f"the image's DICOM Modality is {named}, but the scores use this model's "
        f"{display_name(used)} prompts; they may mean nothing for this image."
    )


def prediction_evidence(
    labels: Sequence[str],
    probabilities: Sequence[float],
    *,
    meta: Mapping[str, Any] | None = None,
    side: str | None = None,
    dicom_tag: str | None = None,
) -> PredictionEvidence:
    """Evidence for one image's ``probabilities`` over ``labels``: zero-shot when ``meta`` is
    ``None``, else a trained checkpoint's metadata and the ``side`` (``"high"`` / ``"low"``) whose
    prompts were applied."""
    if len(labels) != len(probabilities) or not labels:
        raise ValueError("give one probability per label")
    held_out, warning = None, None
    if meta is not None:
        side = side or "high"
        held_out = held_out_metrics(meta, side)
        used = str((meta.get("modalities") or {}).get(side, ""))
        warning = modality_warning(dicom_tag, used) if used else None
    return PredictionEvidence(
        labels=tuple(labels),
        probabilities=tuple(float(p) for p in probabilities),
        chance=chance_level(len(labels)),
        held_out=held_out,
        trained=meta is not None,
        warning=warning,
    )


@dataclass(frozen=True)
class ResultRow:
    """One line of a training result card: a test metric (fraction), and what chance would score."""

    metric: str
    value: float
    chance: float | None
    #: shown as a percentage (accuracy, macro-F1: as the Classify tab and the CLI write them) or as a
    #: number in [0, 1] (AUROC, AU-PRO, conventionally so)
    percent: bool = False

    def shown(self, value: float | None) -> str:
        """``value`` (this row's value or chance level) as the card writes it."""
        if value is None:
            return ""
        return f"{100 * value:.1f} %" if self.percent else f"{value:.3f}"


#: anomaly metrics written by ``medot train pradot``: name -> (words, chance level). A random map
#: or score has AUROC 1/2; its per-region overlap at false-positive rate f is f, so the normalised
#: area up to limit L is (1/L) ∫_0^L f df = L/2.
_ANOMALY_METRICS = {"image_auroc": "image AUROC", "pixel_auroc": "pixel AUROC"}


def result_rows(meta: Mapping[str, Any]) -> list[ResultRow]:
    """The test metrics a checkpoint records, with their chance levels: accuracy / macro-F1 per
    modality for prompt classifiers (chance 1/C; for macro-F1, that of uniform guessing on
    balanced classes), AUROC (1/2) and AU-PRO up to limit L (L/2) for anomaly detectors."""
    metrics = meta.get("metrics") or {}
    rows: list[ResultRow] = []
    classes = meta.get("class_names") or []
    modalities = meta.get("modalities") or {}
    for side in SIDES:
        for key, words in (("acc", "accuracy"), ("f1", "macro-F1")):
            value = metrics.get(f"{key}_{_SUFFIX[side]}")
            if value is not None:
                modality = display_name(str(modalities.get(side, side)))
                rows.append(ResultRow(f"{words}, {modality}", float(value),
                                            chance_level(len(classes)) if classes else None, percent=True))
    for key, words in _ANOMALY_METRICS.items():
        if metrics.get(key) is not None:
            rows.append(ResultRow(words, float(metrics[key]), 0.5))
    for key, value in metrics.items():
        if key.startswith("au_pro@") and value is not None:
            limit = float(key.split("@", 1)[1])
            rows.append(ResultRow(f"AU-PRO up to FPR {limit:g}", float(value), limit / 2))
    return rows
