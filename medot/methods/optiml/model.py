r"""OPTiML's modules: CV-SIM, the dense and global projectors, and the model that scores a pair.

**CV-SIM** (cross-viewpoint semantics infusion). For the dense tokens :math:`z_s \in
\mathbb{R}^{N\times C}` of one view and :math:`z_t \in \mathbb{R}^{M\times C}` of the other, one
pre-norm transformer cross-attention block with shared weights applied in both directions:

.. math::
    u_s = z_s + \mathrm{MHA}(\mathrm{LN}_1(z_s), \mathrm{LN}_1(z_t), \mathrm{LN}_1(z_t)),\qquad
    \tilde z_s = u_s + \mathrm{FFN}(\mathrm{LN}_2(u_s)),

and :math:`\tilde z_t` likewise with s and t swapped (8 heads; FFN ``C -> rC -> C`` with GELU,
``r = 2``). No positional encoding: the block is permutation-equivariant in the query view's
tokens and invariant to the order of the other view's tokens. The pre-norm form keeps an exact
residual path (zeroed attention and FFN outputs give :math:`\tilde z = z`).

**Dense projector**: a 1x1-convolution MLP ``C -> 512 -> 512 -> 512`` with BatchNorm + ReLU after
the first two layers (VICRegL / DenseCL style), applied token-wise (a ``Linear`` on tokens with
BatchNorm over batch x locations is exactly a 1x1 convolution with ``BatchNorm2d``). The global
projector (VICReg's expander) has the same widths on pooled features.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medot.methods.optiml import losses
from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.encoder import Encoder
from medot.methods.optiml.sync import gather_rows
from medot.methods.optiml.views import mass_on_overlap, overlap_mask


class CVSIM(nn.Module):
    """Cross-view attention block (see the module docstring); ``forward(z_s, z_t) -> (z~_s, z~_t)``
    on ``[B, N, C]`` / ``[B, M, C]`` tokens."""

    def __init__(self, channels: int, heads: int = 8, ffn_ratio: int = 2) -> None:
        super().__init__()
        if channels % heads:
            raise ValueError(f"CV-SIM: {channels} channels do not split into {heads} heads")
        self.norm_attention = nn.LayerNorm(channels)
        self.attention = nn.MultiheadAttention(channels, heads, batch_first=True)
        self.norm_ffn = nn.LayerNorm(channels)
        self.ffn = nn.Sequential(
            nn.Linear(channels, ffn_ratio * channels), nn.GELU(), nn.Linear(ffn_ratio * channels, channels)
        )

    def infuse(self, query: Tensor, context: Tensor) -> Tensor:
        """``query`` tokens after attending to ``context`` tokens (one direction)."""
        q, kv = self.norm_attention(query), self.norm_attention(context)
        attended, _ = self.attention(q, kv, kv, need_weights=False)
        updated = query + attended
        return updated + self.ffn(self.norm_ffn(updated))

    def forward(self, z_s: Tensor, z_t: Tensor) -> tuple[Tensor, Tensor]:
        return self.infuse(z_s, z_t), self.infuse(z_t, z_s)


def mlp(widths: Sequence[int]) -> nn.Sequential:
    """``Linear -> BN -> ReLU`` between consecutive ``widths``, the last layer linear only."""
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(zip(widths[:-1], widths[1:])):
        last = index == len(widths) - 2
        layers.append(nn.Linear(width_in, width_out, bias=last))
        if not last:
            layers += [nn.BatchNorm1d(width_out), nn.ReLU(inplace=True)]
    return nn.Sequential(*layers)


class DenseProjector(nn.Module):
    """Token-wise MLP (a 1x1-conv MLP): ``[B, N, C] -> [B, N, D]``, BatchNorm over ``B x N``."""

    def __init__(self, widths: Sequence[int]) -> None:
        super().__init__()
        self.net = mlp(widths)

    def forward(self, tokens: Tensor) -> Tensor:
        batch, n, _ = tokens.shape
        return self.net(tokens.reshape(batch * n, -1)).reshape(batch, n, -1)


class OptimlModel(nn.Module):
    """Encoder + (CV-SIM) + projectors; :meth:`forward` returns every loss term of one pair batch.

    The method and the switches of :class:`OptimlConfig` decide which modules exist and which terms
    enter ``"loss"``; terms that are not used are not computed (and not logged), except the
    correspondence diagnostics ``agree_ot`` / ``agree_nn`` (no gradient) whenever there are dense
    tokens: the share of each matching's mass on truly overlapping patches."""

    def __init__(self, config: OptimlConfig, encoder: Encoder | None = None) -> None:
        super().__init__()
        self.config = config
        self.encoder = encoder if encoder is not None else Encoder(config.encoder)
        channels = self.encoder.channels
        self.cvsim = (
            CVSIM(channels, config.cvsim_heads, config.cvsim_ffn_ratio) if config.uses_cvsim else None
        )
        self.dense_projector = DenseProjector((channels, *config.projector)) if config.dense else None
        self.global_projector = mlp((channels, *config.projector)) if config.global_term_weight > 0 else None

    def forward(self, view_s: Tensor, view_t: Tensor, box_s: Tensor, box_t: Tensor) -> dict[str, Tensor]:
        config = self.config
        both = self.encoder(self.encoder.normalize(torch.cat([view_s, view_t])))  # one BN batch
        batch = view_s.shape[0]
        grid = (both.shape[2], both.shape[3])
        tokens = both.flatten(2).transpose(1, 2)  # [2B, hw, C]
        terms: dict[str, Tensor] = {}
        loss = both.new_zeros(())
        if self.global_projector is not None:
            pooled = self.global_projector(tokens.mean(dim=1))
            vicreg = losses.vicreg_global(pooled[:batch], pooled[batch:], gather=gather_rows)
            loss = loss + config.global_term_weight * vicreg["total"]
            terms.update({f"global_{name}": value for name, value in vicreg.items() if name != "total"})
        if self.dense_projector is not None:
            z_s, z_t = tokens[:batch], tokens[batch:]
            if self.cvsim is not None:
                z_s, z_t = self.cvsim(z_s, z_t)
            q = self.dense_projector(torch.cat([z_s, z_t]))
            q_s, q_t = q[:batch], q[batch:]
            dense_terms, dense_loss = self._dense_terms(q_s, q_t, box_s, box_t, grid)
            terms.update(dense_terms)
            loss = loss + dense_loss
        return {"loss": loss, **terms}

    def _dense_terms(
        self, q_s: Tensor, q_t: Tensor, box_s: Tensor, box_t: Tensor, grid: tuple[int, int]
    ) -> tuple[dict[str, Tensor], Tensor]:
        config = self.config
        terms: dict[str, Tensor] = {}
        loss = q_s.new_zeros(())
        mask = overlap_mask(box_s, box_t, grid, grid)
        if bool(torch.isfinite(q_s).all() and torch.isfinite(q_t).all()):
            plan_ot = losses.ot_plan(q_s, q_t, config.epsilon, config.sinkhorn_iterations)
            plan_nn = losses.nearest_neighbour_plan(q_s, q_t)
        else:  # diverged: NaN terms make the trainer stop with its message naming them
            plan_ot = plan_nn = torch.full(mask.shape, float("nan"), device=q_s.device)
        terms["agree_ot"] = mass_on_overlap(plan_ot, mask)
        terms["agree_nn"] = mass_on_overlap(plan_nn, mask)
        if config.matching is not None:
            plan = plan_ot if config.matching == "ot" else plan_nn
            match = losses.matching_loss(q_s, q_t, plan)
            terms["ot" if config.matching == "ot" else "nn"] = match
            loss = loss + config.alpha * match
        if config.varcov:
            # the global batch's statistics under torchrun (one process: the rows themselves)
            flat_s = gather_rows(q_s.reshape(-1, q_s.shape[-1]).float())
            flat_t = gather_rows(q_t.reshape(-1, q_t.shape[-1]).float())
            variance = losses.variance_term(flat_s) + losses.variance_term(flat_t)
            covariance = losses.covariance_term(flat_s) + losses.covariance_term(flat_t)
            terms["var"], terms["cov"] = variance, covariance
            loss = loss + config.beta * variance + config.eta * covariance
        return terms, loss

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Pooled encoder features ``[B, C]`` of normalised images (for probes and plots)."""
        return self.encoder(images).mean(dim=(2, 3))
