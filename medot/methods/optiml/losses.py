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

**Nearest-neighbour matching** (VICRegL's feature-space matching, the ``vicregl`` baseline): the
plan puts mass :math:`1/(2N)` on :math:`(i, \arg\min_j \|q_{s,i} - q_{t,j}\|)` and
:math:`1/(2M)` on :math:`(\arg\min_i \|q_{s,i} - q_{t,j}\|, j)`; the same formula turns it into a
loss, so the two matchings share one code path.

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


def nearest_neighbour_plan(q_s: Tensor, q_t: Tensor) -> Tensor:
    """Symmetric nearest-neighbour matching as a plan ``[B, N, M]`` of total mass 1 (no gradient)."""
    with torch.no_grad():
        distance = torch.cdist(q_s.detach().float(), q_t.detach().float())
        batch, n, m = distance.shape
        plan = distance.new_zeros(batch, n, m)
        plan.scatter_add_(2, distance.argmin(dim=2, keepdim=True), distance.new_full((batch, n, 1), 0.5 / n))
        plan.scatter_add_(1, distance.argmin(dim=1, keepdim=True), distance.new_full((batch, 1, m), 0.5 / m))
        return plan


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
