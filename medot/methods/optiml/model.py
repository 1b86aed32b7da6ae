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

**Several stages** (``config.stages``, e.g. ``(3, 4)``): every stage ``k`` has its own CV-SIM and
dense projector (the channel counts differ), its own plan on its own token grid, its own var/cov,
and the dense loss is the mean over the stages, :math:`L_{dense} = \frac{1}{|K|}\sum_{k\in K}
L_k` (each :math:`L_k` the one-stage loss below); the logged ``ot``, ``var``, ``cov``, ... are the
means over the stages, ``ot_stage3``, ... each stage's own. With ``stages = (4,)`` (the default)
the model, its parameters and its terms are exactly the one-stage ones.

**Loss**: ``loss = w_g L_global + w_d L_dense`` with ``w_g`` = :attr:`OptimlConfig.global_term_weight`,
``w_d`` = :attr:`OptimlConfig.dense_weight` and, per stage,
:math:`L_k = \alpha L_{match} + \beta[v(q_s) + v(q_t)] + \eta[c(q_s) + c(q_t)]`, where
:math:`L_{match}` is the OT term (``optiml``) or, for ``vicregl``, the mean of the feature-based and
the location-based nearest-neighbour terms (``nn``, ``loc``).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from medot.methods.optiml import losses
from medot.methods.optiml.config import STAGES, OptimlConfig
from medot.methods.optiml.encoder import Encoder
from medot.methods.optiml.sync import gather_rows
from medot.methods.optiml.views import mass_on_overlap, overlap_mask, patch_centres


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
        # earlier stages (beyond the final map, stage 4): a CV-SIM and a projector each
        earlier = [k for k in config.stages if k != 4] if config.dense else []
        self.stage_cvsim = self.stage_projectors = None
        if earlier:
            width = {k: self.encoder.layer_channels(STAGES[k]) for k in earlier}
            self.stage_projectors = nn.ModuleDict({str(k): DenseProjector((width[k], *config.projector)) for k in earlier})
            if config.uses_cvsim:
                self.stage_cvsim = nn.ModuleDict(
                    {str(k): CVSIM(width[k], config.cvsim_heads, config.cvsim_ffn_ratio) for k in earlier}
                )

    def forward(self, view_s: Tensor, view_t: Tensor, box_s: Tensor, box_t: Tensor) -> dict[str, Tensor]:
        config = self.config
        inputs = self.encoder.normalize(torch.cat([view_s, view_t]))  # one BN batch
        if self.stage_projectors is None:
            maps = {4: self.encoder(inputs)}
        else:
            final, named = self.encoder.forward_features(inputs, tuple(STAGES[int(k)] for k in self.stage_projectors))
            maps = {int(k): named[STAGES[int(k)]] for k in self.stage_projectors} | {4: final}
        both = maps[4]
        batch = view_s.shape[0]
        tokens = both.flatten(2).transpose(1, 2)  # [2B, hw, C]
        terms: dict[str, Tensor] = {}
        loss = both.new_zeros(())
        if self.global_projector is not None:
            pooled = self.global_projector(tokens.mean(dim=1))
            vicreg = losses.vicreg_global(pooled[:batch], pooled[batch:], gather=gather_rows)
            loss = loss + config.global_term_weight * vicreg["total"]
            terms.update({f"global_{name}": value for name, value in vicreg.items() if name != "total"})
        if self.dense_projector is not None:
            per_stage = {k: self._stage_terms(k, maps[k], batch, box_s, box_t) for k in config.stages}
            if len(per_stage) == 1:
                stage_terms, dense_loss = per_stage[4]
                terms.update(stage_terms)
            else:
                dense_loss = torch.stack([stage_loss for _, stage_loss in per_stage.values()]).mean()
                for name in per_stage[4][0]:
                    values = [stage_terms[name] for stage_terms, _ in per_stage.values()]
                    terms[name] = torch.stack(values).mean()
                    terms.update({f"{name}_stage{k}": value for k, value in zip(per_stage, values)})
            loss = loss + config.dense_weight * dense_loss
        return {"loss": loss, **terms}

    def _stage_terms(
        self, stage: int, feature_map: Tensor, batch: int, box_s: Tensor, box_t: Tensor
    ) -> tuple[dict[str, Tensor], Tensor]:
        """One stage's dense terms: (CV-SIM), projector, matching and var/cov on its own grid."""
        if stage == 4:
            cvsim, projector = self.cvsim, self.dense_projector
        else:
            cvsim = self.stage_cvsim[str(stage)] if self.stage_cvsim is not None else None
            projector = self.stage_projectors[str(stage)]
        grid = (feature_map.shape[2], feature_map.shape[3])
        tokens = feature_map.flatten(2).transpose(1, 2)
        z_s, z_t = tokens[:batch], tokens[batch:]
        if cvsim is not None:
            z_s, z_t = cvsim(z_s, z_t)
        q = projector(torch.cat([z_s, z_t]))
        return self._dense_terms(q[:batch], q[batch:], box_s, box_t, grid)

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
        if config.matching == "ot":
            terms["ot"] = match = losses.matching_loss(q_s, q_t, plan_ot)
            loss = loss + config.alpha * match
        elif config.matching == "nn":  # VICRegL: feature-based and location-based matchings, averaged
            plan_feature = (
                plan_nn if config.vicregl_nn_matches == (0, 0)
                else losses.nearest_neighbour_plan(q_s, q_t, config.vicregl_nn_matches)
            )
            plan_location = losses.location_plan(
                patch_centres(box_s, grid).to(q_s.device), patch_centres(box_t, grid).to(q_s.device), config.vicregl_matches
            )
            terms["nn"] = losses.matching_loss(q_s, q_t, plan_feature)
            terms["loc"] = losses.matching_loss(q_s, q_t, plan_location)
            loss = loss + config.alpha * (terms["nn"] + terms["loc"]) / 2
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
