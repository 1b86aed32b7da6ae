"""OPTiML: self-supervised pretraining with OT-aligned dense features (Singh, Gorade & Mishra,
arXiv 2404.11868 / WACV 2025 "OTCXR"), its VICReg / VICRegL baselines on the same code path, and
the export of the pretrained encoder as a medot image backbone (``encoder:PATH``).

* :mod:`~medot.methods.optiml.config` - :class:`OptimlConfig` (method, switches, weights);
* :mod:`~medot.methods.optiml.views` - two augmented views with recorded crop boxes, the true
  patch correspondence and the mass-on-overlap diagnostic;
* :mod:`~medot.methods.optiml.encoder` - ResNet-18/50 (random init) or EfficientNet-Lite0
  (ImageNet init), :func:`save_encoder` / :func:`load_encoder`;
* :mod:`~medot.methods.optiml.model` - CV-SIM, projectors, :class:`OptimlModel`;
* :mod:`~medot.methods.optiml.losses` - dense OT / NN matching, VICReg var/cov, global VICReg;
* :mod:`~medot.methods.optiml.task` - :class:`OptimlTask` on the shared trainer (torchrun-ready);
* :mod:`~medot.methods.optiml.data` - unlabelled image pools and view-pair batches;
* :mod:`~medot.methods.optiml.cli` - ``medot train optiml``.

Every choice and its source: docs/methods/optiml.md.
"""

from medot.methods.optiml.config import METHODS, OptimlConfig

__all__ = ["METHODS", "OptimlConfig"]
