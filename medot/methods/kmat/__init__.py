r"""K-MaT: Knowledge-Anchored Manifold Transport for cross-modal prompt learning (Zeng & Albarqouni,
arXiv 2603.06340, 2026). No public code exists; this is medot's reference implementation.

Prompts are learned on high-end images (e.g. CT) and deployed on a low-end modality (e.g. X-ray)
without any low-end training image:

* factorised prompts :math:`t_{i,m} = [v^1_{i,m}, \dots, v^4_{i,m}, c_i]` with class- and
  modality-specific context, :math:`w_{i,m} = \theta(t_{i,m})` through the frozen text tower;
* :math:`\mathcal{L} = \mathcal{L}_{ce} + \lambda_{anc}\mathcal{L}_{anc} + \lambda_{fgw}\mathcal{L}_{fgw}`:
  cross-entropy on high-end images, anchors to mean clinical-description embeddings per class and
  modality, and a fused Gromov-Wasserstein alignment of the low-end prompt manifold to the
  (fixed) high-end one;
* low-end images are classified with :math:`w_{i,L}`.

Modules: :mod:`.losses` (:math:`\mathcal{L}_{anc}`, :math:`\mathcal{L}_{fgw}`), :mod:`.model`
(:class:`KMaTTask`, :class:`KMaTConfig`), :mod:`.runner` (train / select / evaluate, baselines
included), :mod:`.benchmark` (Table 2), :mod:`.predictor` (:func:`load_kmat_predictor`),
:mod:`.cli`. The shared prompt-learning pieces are in :mod:`medot.methods.prompt_learning`;
``docs/methods/kmat.md`` lists every choice the paper leaves open.

Exports load lazily (PEP 562), so that ``medot.methods.kmat.cli`` - and ``medot --help`` - do not
import torch.
"""

import importlib

_EXPORTS = {
    "ManifoldTransport": "losses",
    "knowledge_anchor_loss": "losses",
    "manifold_transport_loss": "losses",
    "KMaTConfig": "model",
    "KMaTTask": "model",
    "PromptPredictor": "predictor",
    "load_kmat_predictor": "predictor",
    "METHODS": "runner",
    "TRAINED_METHODS": "runner",
    "RunConfig": "runner",
    "evaluate": "runner",
    "fit_method": "runner",
    "grid_search": "runner",
    "run_method": "runner",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
