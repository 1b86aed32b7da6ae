r"""From a K-MaT checkpoint to the inputs of :mod:`medot.viz` figures.

A checkpoint written by ``medot train kmat`` stores, under ``artefacts.``, what
:meth:`medot.methods.kmat.model.KMaTTask.artefacts` derives from the learned prompts: the unit
class embeddings :math:`w_{i,H}, w_{i,L}` (``w_high`` / ``w_low``, ``[C, D]``), the description
anchors :math:`\bar p_{i,H}, \bar p_{i,L}`, the description embeddings with their class and
modality indices, and the FGW plan :math:`\Gamma` with :math:`M, D^H, D^L`. Trained baselines
(CoOp, KgCoOp, BiomedCoOp) store only ``w_high`` / ``w_low``; CoCoOp stores none.

* :func:`load_kmat_artefacts` reads those tensors and names (no prompt learner is rebuilt);
* :func:`prompt_embedding_set` turns them into one :class:`~medot.viz.EmbeddingSet`
  (kinds ``prompt``, ``anchor``, ``description``) for :func:`~medot.viz.manifold_figure`;
* :func:`kmat_coupling` re-solves :math:`\mathcal{L}_{fgw}` on the stored class embeddings with
  :func:`medot.methods.kmat.losses.manifold_transport_loss` (the very function training used) for a
  chosen :math:`(\alpha, \varepsilon)`; at the trained values it reproduces the stored
  :math:`\Gamma`. :func:`coupling_figure` draws it with :func:`~medot.viz.coupling_heatmaps`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import plotly.graph_objects as go
import torch
from torch import Tensor

from medot.checkpoint import load_checkpoint
from medot.data.modality import display_name
from medot.errors import CheckpointError
from medot.viz.heatmaps import coupling_heatmaps
from medot.viz.manifold import EmbeddingSet

ARTEFACTS_PREFIX = "artefacts."
PROMPT, ANCHOR, DESCRIPTION = "prompt", "anchor", "description"


@dataclass(frozen=True)
class KMaTArtefacts:
    """The display tensors of one prompt-learning checkpoint (``tensors`` without the prefix),
    its class names, its ``(high, low)`` modality names, method and trained FGW settings."""

    method: str
    class_names: tuple[str, ...]
    modalities: tuple[str, str]
    tensors: dict[str, Tensor]
    fgw_alpha: float | None
    fgw_epsilon: float | None

    def require(self, *names: str) -> list[Tensor]:
        missing = [name for name in names if name not in self.tensors]
        if missing:
            raise CheckpointError(
                f"this {self.method} checkpoint has no {', '.join(missing)}: only K-MaT checkpoints written by "
                "`medot train kmat` carry anchors, descriptions and the FGW plan"
            )
        return [self.tensors[name] for name in names]


def load_kmat_artefacts(path: str | os.PathLike[str]) -> KMaTArtefacts:
    """The ``artefacts.*`` tensors and names of the prompt-learning checkpoint at ``path``."""
    checkpoint = load_checkpoint(path)
    meta = checkpoint.meta
    tensors = {
        name[len(ARTEFACTS_PREFIX) :]: tensor.float()
        for name, tensor in checkpoint.tensors.items()
        if name.startswith(ARTEFACTS_PREFIX)
    }
    if "class_names" not in meta or "modalities" not in meta or not {"w_high", "w_low"} <= tensors.keys():
        raise CheckpointError(
            f"{path} ({meta.get('method')!r}) stores no class embeddings w_high / w_low: choose a K-MaT or "
            "prompt-learning checkpoint written by `medot train kmat` (CoCoOp's prompts depend on the image)"
        )
    hyper: dict[str, Any] = meta.get("hyper_parameters") or {}
    return KMaTArtefacts(
        method=meta["method"],
        class_names=tuple(meta["class_names"]),
        modalities=(meta["modalities"]["high"], meta["modalities"]["low"]),
        tensors=tensors,
        fgw_alpha=hyper.get("fgw_alpha"),
        fgw_epsilon=hyper.get("fgw_epsilon"),
    )


def prompt_embedding_set(artefacts: KMaTArtefacts, *, descriptions: bool = True) -> EmbeddingSet:
    r"""One set: :math:`w_{i,H}, w_{i,L}` (kind ``prompt``), and when stored the anchors
    :math:`\bar p_{i,m}` (``anchor``) and, if ``descriptions``, the description embeddings
    (``description``, hover text "description k of <class>")."""
    names, (high, low) = artefacts.class_names, artefacts.modalities
    sets = [
        EmbeddingSet(artefacts.tensors["w_high"], names, high, PROMPT),
        EmbeddingSet(artefacts.tensors["w_low"], names, low, PROMPT),
    ]
    if {"anchors_high", "anchors_low"} <= artefacts.tensors.keys():
        sets += [
            EmbeddingSet(artefacts.tensors["anchors_high"], names, high, ANCHOR),
            EmbeddingSet(artefacts.tensors["anchors_low"], names, low, ANCHOR),
        ]
    if descriptions and "description_embeddings" in artefacts.tensors:
        embeddings, classes, modality = artefacts.require(
            "description_embeddings", "description_class", "description_modality"
        )
        class_of = [names[int(i)] for i in classes]
        seen: dict[str, int] = {}
        texts = []
        for name in class_of:
            seen[name] = seen.get(name, 0) + 1
            texts.append(f"description {seen[name]} of {name}")
        sets.append(
            EmbeddingSet(embeddings, class_of, [artefacts.modalities[int(m)] for m in modality], DESCRIPTION, texts)
        )
    return EmbeddingSet.concat(sets)


@dataclass(frozen=True)
class Coupling:
    r""":math:`\Gamma` ``[C, C]`` (rows: high-end classes, columns: low-end classes), :math:`M`,
    :math:`D^H`, :math:`D^L`, the FGW value and the :math:`(\alpha, \varepsilon)` it was solved with."""

    plan: Tensor
    cost: Tensor
    structure_high: Tensor
    structure_low: Tensor
    value: float
    alpha: float
    epsilon: float


def kmat_coupling(artefacts: KMaTArtefacts, alpha: float | None = None, epsilon: float | None = None) -> Coupling:
    r""":math:`\mathcal{L}_{fgw}` solved on the stored :math:`w_H, w_L` with ``alpha`` / ``epsilon``
    (None: the checkpoint's trained values, else K-MaT's defaults)."""
    from medot.methods.kmat.losses import FGW_ALPHA, FGW_EPSILON, FGW_MAX_ITER, manifold_transport_loss

    alpha = float(alpha if alpha is not None else artefacts.fgw_alpha if artefacts.fgw_alpha is not None else FGW_ALPHA)
    epsilon = float(
        epsilon if epsilon is not None else artefacts.fgw_epsilon if artefacts.fgw_epsilon is not None else FGW_EPSILON
    )
    if not 0.0 <= alpha <= 1.0 or epsilon <= 0.0:
        raise CheckpointError(f"alpha must be in [0, 1] and epsilon > 0, got alpha={alpha}, epsilon={epsilon}")
    high, low = artefacts.require("w_high", "w_low")
    with torch.no_grad():
        transport = manifold_transport_loss(high, low, alpha=alpha, epsilon=epsilon, max_iter=FGW_MAX_ITER)
    return Coupling(
        plan=transport.plan,
        cost=transport.cost,
        structure_high=transport.high_structure,
        structure_low=transport.low_structure,
        value=float(transport.value),  # E(plan), as labelled; the loss adds the entropy
        alpha=alpha,
        epsilon=epsilon,
    )


def coupling_figure(artefacts: KMaTArtefacts, alpha: float | None = None, epsilon: float | None = None) -> go.Figure:
    r"""Heatmaps of :math:`\Gamma, M, D^H, D^L` from :func:`kmat_coupling`, classes on both axes."""
    coupling = kmat_coupling(artefacts, alpha, epsilon)
    high, low = artefacts.modalities
    return coupling_heatmaps(
        coupling.plan,
        artefacts.class_names,
        artefacts.class_names,
        feature_cost=coupling.cost,
        structure_high=coupling.structure_high,
        structure_low=coupling.structure_low,
        fgw_value=coupling.value,
        alpha=coupling.alpha,
        epsilon=coupling.epsilon,
        high_name=display_name(high),
        low_name=display_name(low),
    )
