r"""OPTiML's loss terms and the baselines' (pure functions of tensors).

Notation: :math:`q_s \in \mathbb{R}^{B\times N\times D}`, :math:`q_t \in \mathbb{R}^{B\times M\times
D}` are the projected dense tokens of the two views (source s, target t) of ``B`` images.

**Dense OT** (OPTiML). Per image, the cost :math:`C_{ij} = 1 - \cos(q_{s,i}, q_{t,j})`, uniform
marginals :math:`a = \mathbf{1}/N`, :math:`b = \mathbf{1}/M`, entropic plan :math:`P` from
:func:`medot.ot.sinkhorn` (:math:`\varepsilon = 0.1`, at most 100 iterations) computed on detached
tokens (no gradient through the plan), then

.. math:: L_{OT} = \frac{1}{B}\sum_b \frac{N}{D} \sum_{ij} P_{b,ij}\,\|q_{s,i} - q_{t,j}\|^2 .

The issue writes :math:`N\sum_{ij}P_{ij}\|q_{s,i}-q_{t,j}\|^2`; the extra :math:`1/D` makes the
term a per-dimension mean squared error like VICReg's invariance term (``F.mse_loss``), so that
VICReg's weights 25/25/1 keep their balance (docs/methods/optiml.md).

**Nearest-neighbour matchings** (VICRegL, Bardes, Ponce & LeCun, NeurIPS 2022; the ``vicregl``
baseline), both as plans of total mass 1 so that the same formula turns them into a loss and OT and
VICRegL differ only in the plan. For a distance :math:`d \in \mathbb{R}^{N\times M}` between the
two views' tokens, :func:`matching_plan` pairs every token :math:`i` of view s with
:math:`j(i) = \arg\min_j d_{ij}`, keeps the :math:`k_s` pairs of smallest :math:`d_{i j(i)}` (all
when :math:`k_s = 0`) with mass :math:`1/(2k_s)` each, and likewise every token of view t with its
nearest token of view s (:math:`k_t` pairs, mass :math:`1/(2k_t)`): VICRegL's
``neirest_neighbores`` (top-:math:`\gamma` filtering), one direction per half of the mass.

* feature-based (:func:`nearest_neighbour_plan`): :math:`d_{ij} = \|q_{s,i} - q_{t,j}\|`;
  VICRegL keeps every match by default (``l2_all_matches = 1``);
* location-based (:func:`location_plan`): :math:`d_{ij}` = distance between the source-image
  centres of patch :math:`i` of view s and patch :math:`j` of view t (the recorded crop boxes);
  VICRegL keeps :math:`\gamma = (20, 4)` pairs (``num_matches``).

**Variance / covariance** (VICReg, Bardes et al. 2022, Eqs. 1-4) of a matrix :math:`Z \in
\mathbb{R}^{n\times D}` (dense: the tokens stacked over batch x locations, :math:`n = BN`):

.. math:: v(Z) = \frac{1}{D}\sum_d \max(0, 1 - \sqrt{\mathrm{Var}(z_d) + 10^{-4}}), \qquad
          c(Z) = \frac{1}{D}\sum_{d\ne d'} \mathrm{Cov}(Z)_{dd'}^2,

with the unbiased (``n - 1``) variance and covariance. OPTiML's total is
:math:`L = \alpha L_{OT} + \beta[v(q_s) + v(q_t)] + \eta[c(q_s) + c(q_t)]`.

**Global VICReg** (the ``vicreg`` baseline and the optional global term) on the pooled, projected
features :math:`y_s, y_t \in \mathbb{R}^{B\times D}`, exactly as VICReg's reference code:
:math:`25\,\mathrm{mse}(y_s, y_t) + 25\,[v(y_s) + v(y_t)]/2 + 1\,[c(y_s) + c(y_t)]`.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from medot.errors import OTConvergenceWarning
from medot.ot import cosine_cost, sinkhorn, squared_euclidean_cost

VICREG_SIM, VICREG_STD, VICREG_COV = 25.0, 25.0, 1.0
VARIANCE_EPS = 1e-4


def variance_term(z: Tensor, gamma: float = 1.0) -> Tensor:
    """VICReg's hinge on the per-dimension standard deviation of ``z`` ``[n, D]``."""
    std = torch.sqrt(z.var(dim=0) + VARIANCE_EPS)
    return F.relu(gamma - std).mean()


def covariance_term(z: Tensor) -> Tensor:
    """VICReg's sum of squared off-diagonal covariances of ``z`` ``[n, D]``, divided by ``D``."""
    n, d = z.shape
    centred = z - z.mean(dim=0)
    cov = centred.T @ centred / (n - 1)
    off_diagonal = cov - torch.diag(torch.diagonal(cov))
    return off_diagonal.pow(2).sum() / d


def ot_plan(q_s: Tensor, q_t: Tensor, epsilon: float = 0.1, max_iter: int = 100) -> Tensor:
    """Entropic plans ``[B, N, M]`` between detached tokens on the cost ``1 - cos`` (uniform
    marginals, float32 at least; no gradient). The iteration cap is the method's setting (at most
    100): a plan still above the solver's tolerance there is used as it is (its rows are exact,
    the columns close), so the solver's convergence warning is not raised every training step."""
    dtype = torch.promote_types(q_s.dtype, torch.float32)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", OTConvergenceWarning)
        cost = cosine_cost(q_s.detach().to(dtype), q_t.detach().to(dtype))
        return sinkhorn(cost, epsilon=epsilon, max_iter=max_iter, gradient="envelope").plan


def matching_plan(distance: Tensor, top_k: tuple[int, int] = (0, 0)) -> Tensor:
    """Symmetric top-k nearest-neighbour matching of a distance ``[B, N, M]`` as a plan ``[B, N, M]``
    of total mass 1 (see the module docstring; ``top_k = (k_s, k_t)``, 0 = every token, values above
    the token count are clipped). Ties keep the lower index (stable sort)."""
    with torch.no_grad():
        batch, n, m = distance.shape
        plan = distance.new_zeros(batch, n * m)
        for dim, k in ((2, top_k[0]), (1, top_k[1])):
            nearest_value, nearest = distance.min(dim=dim)  # [B, N] (rows) or [B, M] (columns)
            count = nearest.shape[1]
            k = count if k <= 0 else min(int(k), count)
            kept = nearest_value.argsort(dim=1, stable=True)[:, :k]
            partner = nearest.gather(1, kept)
            flat = kept * m + partner if dim == 2 else partner * m + kept
            plan.scatter_add_(1, flat, distance.new_full(flat.shape, 0.5 / k))
        return plan.view(batch, n, m)


def nearest_neighbour_plan(q_s: Tensor, q_t: Tensor, top_k: tuple[int, int] = (0, 0)) -> Tensor:
    """VICRegL's feature-based matching (L2 nearest neighbours, both directions) as a plan
    ``[B, N, M]`` of total mass 1 (no gradient); ``top_k`` as in :func:`matching_plan`."""
    with torch.no_grad():
        return matching_plan(torch.cdist(q_s.detach().float(), q_t.detach().float()), top_k)


def location_plan(centres_s: Tensor, centres_t: Tensor, top_k: tuple[int, int] = (20, 4)) -> Tensor:
    """VICRegL's location-based matching: for each patch of one view the spatially closest patch of
    the other, by the distance between their source-image centres ``[B, N, 2]`` / ``[B, M, 2]``
    (:func:`medot.methods.optiml.views.patch_centres`), top ``top_k`` per direction (VICRegL's
    ``num_matches`` = (20, 4)); a plan ``[B, N, M]`` of total mass 1."""
    with torch.no_grad():
        return matching_plan(torch.cdist(centres_s.float(), centres_t.float()), top_k)


def matching_loss(q_s: Tensor, q_t: Tensor, plan: Tensor) -> Tensor:
    """``mean_b (N / D) sum_ij P_ij ||q_s,i - q_t,j||^2`` (see the module docstring); the plan is
    a constant, gradients flow into both views' tokens."""
    _, n, d = q_s.shape
    dtype = torch.promote_types(q_s.dtype, torch.float32)
    squared = squared_euclidean_cost(q_s.to(dtype), q_t.to(dtype))
    return (n / d) * (plan.to(squared.dtype) * squared).sum(dim=(1, 2)).mean()


def vicreg_global(y_s: Tensor, y_t: Tensor, gather=None) -> dict[str, Tensor]:
    """VICReg's three terms (weighted) and their sum under ``"total"``; ``gather`` (e.g.
    :func:`medot.methods.optiml.sync.gather_rows`) collects every rank's rows for the variance and
    covariance, as VICReg's ``FullGatherLayer`` does (the invariance term stays per rank)."""
    invariance = F.mse_loss(y_s, y_t)
    if gather is not None:
        y_s, y_t = gather(y_s), gather(y_t)
    variance = (variance_term(y_s) + variance_term(y_t)) / 2
    covariance = covariance_term(y_s) + covariance_term(y_t)
    total = VICREG_SIM * invariance + VICREG_STD * variance + VICREG_COV * covariance
    return {"total": total, "invariance": invariance, "variance": variance, "covariance": covariance}
