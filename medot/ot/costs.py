r"""Cost matrices between point clouds, grid geometry and barycentric projection.

All builders take ``X`` ``[..., N, d]`` and ``Y`` ``[..., M, d]`` (any matching leading batch
dimensions) and return ``[..., N, M]`` on the inputs' device and dtype, differentiable w.r.t. both:

* :func:`cosine_cost`: :math:`C_{ij} = 1 - \frac{\langle x_i, y_j\rangle}{\|x_i\|\,\|y_j\|}
  \in [0, 2]`;
* :func:`squared_euclidean_cost`: :math:`C_{ij} = \|x_i - y_j\|_2^2`;
* :func:`euclidean_cost`: :math:`C_{ij} = \|x_i - y_j\|_2` (gradient 0 at coincident points);
* :func:`grid_positions` / :func:`grid_distance`: centres of the cells of an ``H x W`` grid on
  :math:`[0, 1]^2` in row-major (ViT patch-token) order, and their exact pairwise distances;
* :func:`normalize_by_max`: :math:`\mathbf{C} / \max_{ij}|C_{ij}|` per problem, the usual way to
  make :math:`\varepsilon` comparable across cost scales;
* :func:`barycentric_projection`: :math:`\hat{y}_i = \sum_j \Gamma_{ij} y_j / \sum_j \Gamma_{ij}`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.errors import OTError


def cosine_cost(X: Tensor, Y: Tensor, eps: float = 1e-8) -> Tensor:
    """``1 - cos(x_i, y_j)``; vectors shorter than ``eps`` are treated as having norm ``eps``."""
    _check_clouds(X, Y)
    return 1.0 - F.normalize(X, dim=-1, eps=eps) @ F.normalize(Y, dim=-1, eps=eps).transpose(-1, -2)


def squared_euclidean_cost(X: Tensor, Y: Tensor) -> Tensor:
    """``||x_i - y_j||^2`` by the expansion ``|x|^2 + |y|^2 - 2<x, y>`` (one matmul), clamped at 0."""
    _check_clouds(X, Y)
    squared = (
        X.square().sum(-1, keepdim=True)
        + Y.square().sum(-1).unsqueeze(-2)
        - 2.0 * (X @ Y.transpose(-1, -2))
    )
    return squared.clamp_min(0.0)


def euclidean_cost(X: Tensor, Y: Tensor) -> Tensor:
    """``||x_i - y_j||`` via :func:`torch.cdist` (its gradient is 0 where points coincide).

    Like :func:`squared_euclidean_cost`, large inputs go through a matmul expansion, so distances
    between (near-)coincident points carry a cancellation error of order
    ``sqrt(finfo.eps) * |x|``.
    """
    _check_clouds(X, Y)
    return torch.cdist(X, Y)


def grid_positions(
    height: int, width: int, *, dtype: torch.dtype = torch.float32, device: torch.device | str | None = None
) -> Tensor:
    """Cell centres ``((r + 1/2) / H, (c + 1/2) / W)`` of an ``H x W`` grid, ``[H*W, 2]`` row-major.

    Column 0 is the vertical (row) coordinate, column 1 the horizontal one; token ``r * W + c``
    sits at row ``r``, column ``c``, matching ``patch_tokens.reshape(B, H*W, C)``.
    """
    if int(height) < 1 or int(width) < 1:
        raise OTError(f"grid size must be positive, got {height} x {width}.")
    rows = (torch.arange(height, dtype=dtype, device=device) + 0.5) / height
    cols = (torch.arange(width, dtype=dtype, device=device) + 0.5) / width
    grid_r, grid_c = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack((grid_r.reshape(-1), grid_c.reshape(-1)), dim=-1)


def grid_distance(
    height: int,
    width: int,
    *,
    squared: bool = False,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """``[H*W, H*W]`` (squared) Euclidean distances between the cell centres of an ``H x W`` grid."""
    positions = grid_positions(height, width, dtype=dtype, device=device)
    distance = torch.cdist(positions, positions, compute_mode="donot_use_mm_for_euclid_dist")
    return distance.square() if squared else distance


def normalize_by_max(cost: Tensor) -> Tensor:
    """Divide each ``[N, M]`` matrix of ``cost`` by its largest absolute entry (all-zero: unchanged).

    The scale is part of the graph, so gradients see the normalisation.
    """
    if cost.ndim < 2:
        raise OTError(f"cost must have at least 2 dimensions, got shape {tuple(cost.shape)}.")
    scale = cost.abs().amax(dim=(-2, -1), keepdim=True)
    return cost / torch.where(scale > 0, scale, torch.ones_like(scale))


def barycentric_projection(plan: Tensor, Y: Tensor) -> Tensor:
    """Barycentric map ``Γ Y / Γ 1`` of ``plan`` ``[..., N, M]`` applied to targets ``Y`` ``[..., M, d]``.

    Rows of the plan with no mass (possible for partial plans) map to the zero vector rather than
    to NaN.
    """
    if plan.shape[-1] != Y.shape[-2]:
        raise OTError(
            f"plan has {plan.shape[-1]} target columns but Y has {Y.shape[-2]} points; "
            "pass the targets the plan was computed for."
        )
    row_mass = plan.sum(-1, keepdim=True)
    safe_mass = torch.where(row_mass > 0, row_mass, torch.ones_like(row_mass))
    return (plan @ Y) / safe_mass


def _check_clouds(X: Tensor, Y: Tensor) -> None:
    if X.ndim < 2 or Y.ndim < 2 or X.shape[-1] != Y.shape[-1]:
        raise OTError(
            f"point clouds must be [..., N, d] and [..., M, d] with the same d, "
            f"got {tuple(X.shape)} and {tuple(Y.shape)}."
        )
