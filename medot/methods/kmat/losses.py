r"""K-MaT's two regularisers: knowledge anchoring and FGW manifold transport.

Class embeddings :math:`w_{i,m}` (class :math:`i`, modality :math:`m \in \{H, L\}`) are compared on
the unit sphere, :math:`\tilde w = w / \|w\|`, the geometry the cosine classifier uses.

**Knowledge anchoring** (:func:`knowledge_anchor_loss`):

.. math:: \mathcal{L}_{anc} = \frac{1}{2N_c} \sum_{i=1}^{N_c} \sum_{m \in \{H, L\}}
   \|\tilde w_{i,m} - \bar p_{i,m}\|_2^2

with :math:`\bar p_{i,m}` the unit-norm mean description embedding
(:mod:`medot.methods.prompt_learning.knowledge`); each term equals :math:`2 - 2\cos(w_{i,m},
\bar p_{i,m})`.

**Manifold transport** (:func:`manifold_transport_loss`): the fused Gromov-Wasserstein discrepancy
between the high-end prompt manifold (held fixed, :math:`\mathrm{sg}[\cdot]`) and the low-end one,

.. math:: \mathcal{L}_{fgw} = \min_{\Gamma \in U(\frac1{N_c}\mathbf 1, \frac1{N_c}\mathbf 1)}
   (1-\alpha)\sum_{ij} M_{ij}\Gamma_{ij}
   + \alpha \sum_{ijkl} (D^H_{ik} - D^L_{jl})^2\,\Gamma_{ij}\Gamma_{kl},

:math:`D^H_{ik} = \|\mathrm{sg}[\tilde w_{i,H}] - \mathrm{sg}[\tilde w_{k,H}]\|`,
:math:`D^L_{jl} = \|\tilde w_{j,L} - \tilde w_{l,L}\|`,
:math:`M_{ij} = \|\mathrm{sg}[\tilde w_{i,H}] - \tilde w_{j,L}\|^2`, :math:`\alpha = 0.1`, solved by
:func:`medot.ot.entropic_fused_gromov_wasserstein` (entropic temperature 0.1, at most 100 outer
iterations). The loss is the solver's entropic ``objective``,

.. math:: \mathcal{L}_{fgw} = \min_\Gamma\ \mathcal{E}(\Gamma) + \varepsilon \sum_{ij}\Gamma_{ij}\log\Gamma_{ij}

(:math:`\mathcal{E}` the bracket above), whose envelope (Danskin) gradient,
:math:`\partial\mathcal{E}/\partial(M, D^L)` at the solved plan, is its exact derivative; it reaches
the low-end prompts through :math:`M` and :math:`D^L` and never the high-end ones. The same gradient
is *not* the derivative of the unregularised :math:`\mathcal{E}(\Gamma^\star)` (the solver's
``value``), which also moves through :math:`\Gamma^\star`; training on ``value`` with that gradient
would follow a gradient of no loss. The two are the same tensor, so the trained prompts are
identical either way (``tests/test_kmat.py``); what changes is that the logged ``fgw`` term is the
loss being descended. It includes :math:`\varepsilon\sum\Gamma\log\Gamma \ge -\varepsilon\log N_c^2`,
so it can be negative (the paper is silent on the entropic term; medot's choice, see
``docs/methods/kmat.md``). ``ManifoldTransport.value`` keeps :math:`\mathcal{E}(\Gamma^\star)` for
display.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch.nn.functional as F
from torch import Tensor

from medot.ot import FGWResult, entropic_fused_gromov_wasserstein, euclidean_cost, squared_euclidean_cost

FGW_ALPHA = 0.1
FGW_EPSILON = 0.1
FGW_MAX_ITER = 100


def knowledge_anchor_loss(class_embeddings: Tensor, anchors: Tensor) -> Tensor:
    r""":math:`\mathcal{L}_{anc}` for ``[2, C, D]`` (modality, class) embeddings and unit anchors.

    The embeddings are L2-normalised here; the sum over both modalities and ``C`` classes is
    divided by ``2 C``."""
    return (F.normalize(class_embeddings, dim=-1) - anchors).square().sum(-1).mean()


@dataclass(frozen=True)
class ManifoldTransport:
    """:math:`\\mathcal{L}_{fgw}` (``loss``) with the matrices it was solved on and the solver's result
    (``result.plan`` is :math:`\\Gamma`, ``[C, C]``, detached)."""

    loss: Tensor
    cost: Tensor
    high_structure: Tensor
    low_structure: Tensor
    result: FGWResult

    @property
    def plan(self) -> Tensor:
        return self.result.plan

    @property
    def value(self) -> Tensor:
        """:math:`\\mathcal{E}(\\Gamma^\\star)` without the entropic term (detached; for display)."""
        return self.result.value


def manifold_transport_loss(
    high: Tensor,
    low: Tensor,
    *,
    alpha: float = FGW_ALPHA,
    epsilon: float = FGW_EPSILON,
    max_iter: int = FGW_MAX_ITER,
    gradient: Literal["envelope", "unrolled"] = "envelope",
) -> ManifoldTransport:
    """:math:`\\mathcal{L}_{fgw}` between high-end ``[C, D]`` (detached here) and low-end ``[C, D]``
    class embeddings, both L2-normalised here, with uniform class weights.

    ``gradient="envelope"`` (default): the loss is the entropic objective and carries its exact
    envelope gradient. ``"unrolled"``: the loss is :math:`\\mathcal{E}(\\Gamma^\\star)` (the solver's
    ``value``) differentiated through every solver iteration, also its exact derivative, at a
    memory and time cost that grows with the iterations."""
    high_unit = F.normalize(high.detach(), dim=-1)
    low_unit = F.normalize(low, dim=-1)
    cost = squared_euclidean_cost(high_unit, low_unit)
    high_structure = euclidean_cost(high_unit, high_unit)
    low_structure = euclidean_cost(low_unit, low_unit)
    result = entropic_fused_gromov_wasserstein(
        cost, high_structure, low_structure, alpha=alpha, epsilon=epsilon, max_iter=max_iter,
        gradient=gradient,
    )
    # Each loss is paired with the gradient that is its derivative: never value + envelope.
    loss = result.objective if gradient == "envelope" else result.value
    return ManifoldTransport(loss, cost, high_structure, low_structure, result)
