"""The shared few-shot training engine (K-MaT, MADPOT and PRADOT all train through it).

* :class:`FeatureCache` - the frozen image tower's outputs (global embedding, patch tokens, fixed
  augmented views) computed once per image and stored on disk, so an epoch runs only the text side;
* :class:`TrainingTask` - what a method implements: ``training_step(batch) -> {"loss": ..., ...}``,
  an optional ``validation_score()``, and its checkpoint tensors/metadata;
* :class:`Trainer` (:class:`TrainConfig`) - seeded, resumable loop: SGD/AdamW, warm-up + cosine lr,
  early stopping on the validation score, progress bars, :class:`TrainEvent` s for live display,
  cooperative cancellation, CUDA mixed precision and ``torchrun`` data parallelism;
* :class:`TensorBatches` / :class:`EpochContext` - per-epoch, seeded, rank-sharded batches.

Example::

    features = FeatureCache().encode(backbone, paths, views=4)
    batches = TensorBatches(features.embeddings, labels, batch_size=32)
    result = Trainer(TrainConfig(epochs=50, checkpoint_dir=run_dir)).fit(task, batches)
"""

from medot.train.config import TrainConfig
from medot.train.data import BatchFactory, EpochContext, TensorBatches, move_to_device
from medot.train.engine import Trainer, TrainResult
from medot.train.events import EventHandler, TrainEvent
from medot.train.feature_cache import CachedFeatures, FeatureCache, ViewAugmentation, augment_view, file_sha256
from medot.train.schedule import WarmupCosineSchedule, build_optimizer
from medot.train.state import epoch_generator, seed_everything
from medot.train.task import TrainingTask

__all__ = [
    "BatchFactory",
    "CachedFeatures",
    "EpochContext",
    "EventHandler",
    "FeatureCache",
    "TensorBatches",
    "TrainConfig",
    "TrainEvent",
    "TrainResult",
    "Trainer",
    "TrainingTask",
    "ViewAugmentation",
    "WarmupCosineSchedule",
    "augment_view",
    "build_optimizer",
    "epoch_generator",
    "file_sha256",
    "move_to_device",
    "seed_everything",
]
