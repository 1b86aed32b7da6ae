"""The shared few-shot training engine (K-MaT, MADPOT and PRADOT all train through it).

* :class:`FeatureCache` - the frozen image tower's outputs (global embedding, patch tokens, fixed
  augmented views) computed once per image and stored on disk, so an epoch runs only the text side;
* :class:`TrainingTask` - what a method implements: ``training_step(batch) -> {"loss": ..., ...}``,
  an optional ``validation_score()``, and its checkpoint tensors/metadata;
* :class:`Trainer` (:class:`TrainConfig`) - seeded, resumable loop: SGD/AdamW, warm-up + cosine lr,
  early stopping on the validation score, progress bars, :class:`TrainEvent` s for live display,
  cooperative cancellation, CUDA mixed precision and ``torchrun`` data parallelism;
* :class:`TensorBatches` / :class:`EpochContext` - per-epoch, seeded, rank-sharded batches;
* :mod:`medot.train.distributed` - one run over ``torchrun``'s processes: :func:`distributed_session`
  (process group from the launcher's environment, torn down on every exit), :func:`is_main_process`
  (rank 0 writes and prints), :func:`main_process_first` (rank 0 fills a shared cache, the others
  then read it), :func:`barrier`, :func:`all_reduce_sum_`. A ``medot train METHOD`` parser opts in
  with :func:`medot.launch.mark_distributed` (or refuses with :func:`medot.launch.mark_single_process`).

Example::

    features = FeatureCache().encode(backbone, paths, views=4)
    batches = TensorBatches(features.embeddings, labels, batch_size=32)
    result = Trainer(TrainConfig(epochs=50, checkpoint_dir=run_dir)).fit(task, batches)
"""

from medot.train.config import TrainConfig
from medot.train.data import BatchFactory, EpochContext, TensorBatches, move_to_device
from medot.train.distributed import (
    all_reduce_sum_,
    barrier,
    distributed_session,
    is_main_process,
    main_process_first,
)
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
    "all_reduce_sum_",
    "augment_view",
    "barrier",
    "build_optimizer",
    "distributed_session",
    "epoch_generator",
    "file_sha256",
    "is_main_process",
    "main_process_first",
    "move_to_device",
    "seed_everything",
]
