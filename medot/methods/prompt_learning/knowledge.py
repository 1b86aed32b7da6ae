r"""Fixed text knowledge: description embeddings, their class means, hand-crafted prompt embeddings.

For class :math:`i` and modality :math:`m \in \{H, L\}` with descriptions
:math:`d^{(1..N_p)}_{i,m}` (:mod:`medot.data.descriptions`), the knowledge anchor is

.. math:: \bar p_{i,m} = \frac{\sum_k \tilde e^{(k)}_{i,m}}{\|\sum_k \tilde e^{(k)}_{i,m}\|},
   \qquad \tilde e^{(k)}_{i,m} = \frac{E_T(d^{(k)}_{i,m})}{\|E_T(d^{(k)}_{i,m})\|},

the normalised mean of the L2-normalised description embeddings (CLIP's prompt-ensemble rule,
Radford et al. 2021, Sec. 3.1.4). Classification only uses directions (cosine logits), so anchors
and prompts are compared on the unit sphere.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.backbones.base import VisionLanguageBackbone
from medot.data.descriptions import DescriptionSet
from medot.methods.prompt_learning.prompts import HIGH, LOW, prompt_name
from medot.zeroshot import DEFAULT_TEMPLATES, class_text_embeddings

TEXT_BATCH = 64


@dataclass(frozen=True)
class DescriptionEmbeddings:
    """Unit-norm embeddings ``[K, D]`` of every description, with the class index (task order) and
    modality index (:data:`HIGH` / :data:`LOW`) of each row, for ``n_classes`` classes."""

    embeddings: Tensor
    class_index: Tensor
    modality_index: Tensor
    n_classes: int

    def rows(self, modality: int, class_index: int) -> Tensor:
        """The embeddings of one class in one modality, ``[N_p, D]``."""
        return self.embeddings[(self.modality_index == modality) & (self.class_index == class_index)]

    def anchors(self) -> Tensor:
        r"""The knowledge anchors :math:`\bar p_{i,m}`, ``[2, C, D]`` (modality, class), unit norm."""
        return torch.stack(
            [
                torch.stack([normalised_mean(self.rows(modality, i)) for i in range(self.n_classes)])
                for modality in (HIGH, LOW)
            ]
        )

    def anchor_cosines(self) -> Tensor:
        r"""``[2, C, C]``: :math:`\cos(\bar p_{i,m}, \bar p_{j,m})` between the class anchors of each
        modality. Off-diagonal values near 1 mean the descriptions cannot tell those classes apart in
        the backbone's text space (the anchors then carry no class information)."""
        anchors = self.anchors()
        return anchors @ anchors.transpose(1, 2)

    def to(self, device: torch.device | str) -> DescriptionEmbeddings:
        return DescriptionEmbeddings(
            self.embeddings.to(device), self.class_index.to(device), self.modality_index.to(device), self.n_classes
        )


def normalised_mean(embeddings: Tensor) -> Tensor:
    """``normalize(mean_k normalize(e_k))`` of ``[K, D]`` rows -> ``[D]``."""
    return F.normalize(F.normalize(embeddings, dim=-1).mean(0), dim=-1)


@torch.no_grad()
def embed_descriptions(
    backbone: VisionLanguageBackbone, descriptions: DescriptionSet, classes: Sequence[str]
) -> DescriptionEmbeddings:
    """Encode the descriptions of ``classes`` (description-set classes, task order) in both modalities."""
    texts: list[str] = []
    class_index: list[int] = []
    modality_index: list[int] = []
    for modality, name in ((HIGH, descriptions.high), (LOW, descriptions.low)):
        for index, cls in enumerate(classes):
            sentences = descriptions.sentences(name, cls)
            texts.extend(sentences)
            class_index.extend([index] * len(sentences))
            modality_index.extend([modality] * len(sentences))
    chunks = [backbone.encode_text(texts[i : i + TEXT_BATCH]) for i in range(0, len(texts), TEXT_BATCH)]
    embeddings = F.normalize(torch.cat(chunks).float(), dim=-1)
    device = embeddings.device
    return DescriptionEmbeddings(
        embeddings,
        torch.tensor(class_index, dtype=torch.long, device=device),
        torch.tensor(modality_index, dtype=torch.long, device=device),
        len(classes),
    )


def template_embeddings(
    backbone: VisionLanguageBackbone, classes: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> Tensor:
    """Hand-crafted prompt embeddings ``[C, D]`` (unit norm): :func:`medot.zeroshot.class_text_embeddings`
    of the classes' prompt names (``basal_cell_carcinoma`` -> ``basal cell carcinoma``)."""
    return class_text_embeddings(backbone, [prompt_name(cls) for cls in classes], templates).float()


def anchor_separation(knowledge: DescriptionEmbeddings, classes: Sequence[str], modalities: Sequence[str]) -> dict:
    """Per modality: the cosine matrix between class anchors, its mean and largest off-diagonal
    value and the closest pair of classes (JSON-ready)."""
    cosines = knowledge.anchor_cosines().cpu()
    report = {}
    for index, modality in enumerate(modalities):
        matrix = cosines[index]
        off = ~torch.eye(len(classes), dtype=torch.bool)
        masked = matrix.masked_fill(~off, -2.0)
        i, j = divmod(int(masked.argmax()), len(classes))
        report[modality] = {
            "cosine": matrix.tolist(),
            "mean_off_diagonal": float(matrix[off].mean()),
            "max_off_diagonal": float(matrix[i, j]),
            "closest_pair": [classes[i], classes[j]],
        }
    return report


def format_anchor_separation(report: dict) -> str:
    """One line per modality, e.g. ``ct: closest classes nodule / opacity, cosine 0.981 (mean 0.95)``."""
    lines = ["anchor separation (cosine between the class anchors p̄ of a modality; near 1 = the descriptions "
             "cannot tell the classes apart in this backbone's space):"]
    for modality, entry in report.items():
        a, b = entry["closest_pair"]
        lines.append(
            f"  {modality}: closest classes {a} / {b}, cosine {entry['max_off_diagonal']:.3f} "
            f"(mean over class pairs {entry['mean_off_diagonal']:.3f})"
        )
    return "\n".join(lines)
