r"""PRADOT: unsupervised anomaly detection and localisation with local and global prototypes
learned by optimal transport (R. Trombetta & C. Lartizien, "Learning local and global prototypes
with optimal transport for unsupervised anomaly detection and localization", arXiv 2508.12927,
2025; authors' code: github.com/robintrmbtt/pradot).

A frozen encoder turns each normal training image into an :math:`H \times W` grid of patch
embeddings. For one layer and one structure weight :math:`\alpha`, ``n`` prototypes per grid cell
(feature + fixed position on :math:`[0, 1]^2`) are learned by matching each batch's embeddings to
them with balanced entropic OT under the cost

.. math::
    M = (1 - \alpha)\,\frac{M^{\mathrm{feat}}}{\max M^{\mathrm{feat}}}
      + \alpha\,\frac{M^{\mathrm{struct}}}{\max M^{\mathrm{struct}}}

(cosine cost of features, Euclidean distance of positions; :mod:`.cost`) and moving every
prototype by an EMA toward the barycentre of the embeddings it received (:mod:`.torch_model`).
:math:`\alpha = 0` gives global prototypes, :math:`\alpha > 0` local ones. A test patch scores its
lowest cost to any prototype; maps are upsampled and averaged over an ensemble of
``(layer, alpha)`` members (default: two layers x :math:`\alpha \in \{0, 0.3\}`), and an image
scores the maximum of its map.

Modules: :mod:`.cost` (the cost), :mod:`.torch_model` (:class:`PrototypeBank`,
:class:`PradotModel`: pure ``nn.Module`` s), :mod:`.training` (the EMA loop over cached features),
:mod:`.detector` (checkpoints, :func:`load_pradot`, :class:`PradotDetector`), :mod:`.patchcore`
(the PatchCore baseline), :mod:`.patchcore_io` (its checkpoints, :func:`load_patchcore`),
:mod:`.data` / :mod:`.evaluation` (anomaly layouts and the benchmark),
:mod:`.overlay` (heat-map PNGs), :mod:`.cli` (``medot train pradot``, ``medot benchmark pradot``,
``medot predict-anomaly``). Equations and the choices made where the paper is silent are in
``docs/methods/pradot.md``.

The public names below load on first use (PEP 562), so importing :mod:`.cli` for ``medot --help``
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "PatchCoreConfig": "config",
    "PradotConfig": "config",
    "pradot_cost": "cost",
    "structural_cost": "cost",
    "PradotDetector": "detector",
    "load_pradot": "detector",
    "model_from_checkpoint": "detector",
    "save_pradot": "detector",
    "PatchCoreDetector": "patchcore_io",
    "PatchCoreModel": "patchcore",
    "k_center_greedy": "patchcore",
    "locally_aware_features": "patchcore",
    "load_patchcore": "patchcore_io",
    "save_patchcore": "patchcore_io",
    "PradotModel": "torch_model",
    "PrototypeBank": "torch_model",
    "PrototypeMatch": "torch_model",
    "PradotTrainResult": "training",
    "build_model": "training",
    "effective_batch_size": "training",
    "train_pradot": "training",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
