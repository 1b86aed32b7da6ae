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
from medot.data.labels import MAX_LABEL_CHARS, MAX_LABELS, parse_labels  # noqa: F401 - re-exported

DEFAULT_TEMPLATES = ("a photo of a {}.",)


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
