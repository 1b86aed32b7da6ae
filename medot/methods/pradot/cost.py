r"""PRADOT's cost between patch embeddings and prototypes (feature cost mixed with a spatial cost).

Embeddings :math:`x_i \in \mathbb{R}^C` sit at grid positions :math:`u_i \in [0, 1]^2` and
prototypes :math:`(p_j, v_j)` carry a feature and a position (Trombetta & Lartizien 2025, Sec. 3):

.. math::
    M_{ij} = (1 - \alpha)\,\frac{M^{\mathrm{feat}}_{ij}}{\max_{kl} M^{\mathrm{feat}}_{kl}}
    + \alpha\,\frac{M^{\mathrm{struct}}_{ij}}{\max_{kl} M^{\mathrm{struct}}_{kl}},
    \qquad
    M^{\mathrm{feat}}_{ij} = 1 - \frac{\langle x_i, p_j \rangle}{\|x_i\|\,\|p_j\|},
    \qquad
    M^{\mathrm{struct}}_{ij} = \|u_i - v_j\|_2 .

``alpha = 0`` ignores the positions (global prototypes), ``alpha > 0`` ties each prototype to its
neighbourhood of the grid (local prototypes), ``alpha = 1`` ignores the features. Both terms are
divided by their largest entry, over the batch during training (one OT problem for all
:math:`B \cdot H \cdot W` embeddings) and within each image at test time (:data:`Scope`). The
structural term is the same for every image of a batch (positions depend only on the grid), so it
is built once as ``[HW, P]`` and broadcast.

PRADOT never differentiates through this cost (prototypes move by EMA, not by gradient), so it is
built in place without an autograd graph: its largest allocation is one ``[B, HW, P]`` tensor plus
the matmul that produces it (at the paper's sizes, 12,544 x 3,136 float32: 157 MB).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from medot.ot import cosine_cost, euclidean_cost

Scope = Literal["batch", "image"]
"""Over which entries the max-normalisation runs: the whole batch (training) or each image (test)."""


@torch.no_grad()
def structural_cost(token_positions: Tensor, prototype_positions: Tensor) -> Tensor:
    """:math:`M^{\\mathrm{struct}} / \\max M^{\\mathrm{struct}}`: ``[HW, 2] x [P, 2] -> [HW, P]``.

    All-zero distances (a single position on both sides) stay zero.
    """
    distance = euclidean_cost(token_positions, prototype_positions)
    return _divide_by_max_(distance, dims=(-2, -1))


@torch.no_grad()
def pradot_cost(
    tokens: Tensor,
    token_positions: Tensor,
    prototype_features: Tensor,
    prototype_positions: Tensor,
    alpha: float,
    scope: Scope = "image",
) -> Tensor:
    """The mixed cost :math:`M` (module docstring) for ``tokens`` ``[B, HW, C]``, ``[B, HW, P]``.

    ``token_positions`` ``[HW, 2]`` locate the tokens of every image, ``prototype_features``
    ``[P, C]`` and ``prototype_positions`` ``[P, 2]`` describe the prototypes. ``scope`` chooses
    the entries each term is normalised over (:data:`Scope`).
    """
    if scope not in ("batch", "image"):
        raise ValueError(f"scope must be 'batch' or 'image', got {scope!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    cost = cosine_cost(tokens, prototype_features.to(tokens.dtype))
    dims = (0, 1, 2) if scope == "batch" else (1, 2)
    _divide_by_max_(cost, dims=dims).mul_(1.0 - alpha)
    if alpha > 0.0:
        struct = structural_cost(token_positions, prototype_positions).to(cost.dtype)
        cost.add_(struct, alpha=alpha)
    return cost


def _divide_by_max_(cost: Tensor, dims: tuple[int, ...]) -> Tensor:
    """Divide ``cost`` in place by its largest entry over ``dims`` (a zero maximum leaves it as is)."""
    scale = cost.amax(dim=dims, keepdim=True)
    return cost.div_(torch.where(scale > 0, scale, torch.ones_like(scale)))
