"""Prompt learning across imaging modalities: what K-MaT and its baselines share.

* :mod:`.prompts` - :class:`PromptLearner`: CoOp contexts (optionally class-specific,
  modality-specific, or image-conditioned as in CoCoOp) run through the frozen text tower;
* :mod:`.knowledge` - description embeddings, their class means :math:`\\bar p_{i,m}`, hand-crafted
  prompt embeddings;
* :mod:`.losses` - CoOp, KgCoOp and BiomedCoOp losses;
* :mod:`.task` - :class:`PromptTask`, the :class:`medot.train.TrainingTask` they train through;
* :mod:`.baselines` - zero-shot, CoOp, CoCoOp, KgCoOp and BiomedCoOp;
* :mod:`.crossmodal` - high-end / low-end tasks (synthetic, the K-MaT paper's four, task JSON files);
* :mod:`.features` - cached image embeddings and per-epoch augmented-view batches.

K-MaT itself is :mod:`medot.methods.kmat`.
"""

from medot.methods.prompt_learning.baselines import (
    BiomedCoOpTask,
    CoCoOpTask,
    CoOpTask,
    KgCoOpTask,
    ZeroShotClassifier,
)
from medot.methods.prompt_learning.crossmodal import (
    PAPER_TASKS,
    CrossModalTask,
    HighEndData,
    ModalityData,
    TaskError,
    resolve_task,
)
from medot.methods.prompt_learning.knowledge import DescriptionEmbeddings, embed_descriptions, template_embeddings
from medot.methods.prompt_learning.prompts import HIGH, LOW, PromptLearner, cosine_logits
from medot.methods.prompt_learning.task import PromptTask

__all__ = [
    "HIGH",
    "LOW",
    "PAPER_TASKS",
    "BiomedCoOpTask",
    "CoCoOpTask",
    "CoOpTask",
    "CrossModalTask",
    "DescriptionEmbeddings",
    "HighEndData",
    "KgCoOpTask",
    "ModalityData",
    "PromptLearner",
    "PromptTask",
    "TaskError",
    "ZeroShotClassifier",
    "cosine_logits",
    "embed_descriptions",
    "resolve_task",
    "template_embeddings",
]
