"""Zero-shot classification: softmax over ``logit_scale * cos(image, class prompt)``.

Each class is represented by the mean of its L2-normalised prompt embeddings over the templates
(the prompt ensemble of CLIP, Radford et al. 2021, Sec. 3.1.4), renormalised.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

from medot.backbones.base import VisionLanguageBackbone
from medot.data.io import MedicalImage

DEFAULT_TEMPLATES = ("a photo of a {}.",)
#: most labels one zero-shot request may name (each is a text-encoder pass), and their longest length
MAX_LABELS = 100
MAX_LABEL_CHARS = 200


def parse_labels(text: str) -> list[str]:
    """``"normal, pneumonia"`` -> ``["normal", "pneumonia"]``; two to :data:`MAX_LABELS` distinct
    labels of at most :data:`MAX_LABEL_CHARS` characters."""
    labels = [label.strip() for label in (text or "").split(",") if label.strip()]
    if len(labels) < 2 or len(set(labels)) != len(labels):
        raise ValueError("give at least two distinct class labels, separated by commas")
    if len(labels) > MAX_LABELS:
        raise ValueError(f"give at most {MAX_LABELS} class labels, got {len(labels)}")
    longest = max(labels, key=len)
    if len(longest) > MAX_LABEL_CHARS:
        raise ValueError(f"a class label may have at most {MAX_LABEL_CHARS} characters; {longest[:20]!r}... has {len(longest)}")
    return labels


@torch.no_grad()
def class_text_embeddings(
    backbone: VisionLanguageBackbone, labels: Sequence[str], templates: Sequence[str] = DEFAULT_TEMPLATES
) -> torch.Tensor:
    """``[C, D]`` unit-norm class embeddings, averaged over ``templates``."""
    prompts = [template.format(label) for label in labels for template in templates]
    embeddings = F.normalize(backbone.encode_text(prompts), dim=-1).view(len(labels), len(templates), -1)
    return F.normalize(embeddings.mean(dim=1), dim=-1)


@torch.no_grad()
def zero_shot_probabilities(
    backbone: VisionLanguageBackbone,
    images: Sequence[MedicalImage],
    labels: Sequence[str],
    templates: Sequence[str] = DEFAULT_TEMPLATES,
) -> torch.Tensor:
    """``[B, C]`` class probabilities for ``images``."""
    pixels = backbone.transform_batch([image.rgb() for image in images])
    image_embedding = backbone.encode_image(pixels, layers=()).embedding
    text_embedding = class_text_embeddings(backbone, labels, templates)
    return backbone.similarity_logits(image_embedding, text_embedding).softmax(dim=-1).float().cpu()
