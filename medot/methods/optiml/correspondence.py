"""Dense correspondences of a pretrained model on one image: what the app's "Dense correspondences"
view shows (two augmented views, the strongest OT matches between their patches, and the true
geometric correspondence for comparison).

:func:`dense_correspondences` draws the view pair of an image as training does (seeded), runs the
model's encoder (and, when the checkpoint has them, CV-SIM and the dense projector; a bare encoder's
tokens otherwise), solves the entropic OT plan on the cost ``1 - cos`` (uniform marginals, the
model's epsilon) and returns the ``top_k`` pairs of largest mass with, for each source patch, the
patch of the other view that truly holds its centre (:func:`medot.methods.optiml.views.centre_match`),
plus the two agreement figures the training logs (``agree_ot``, ``agree_nn``).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from medot.methods.optiml import losses
from medot.methods.optiml.data import view_pair
from medot.methods.optiml.model import OptimlModel
from medot.methods.optiml.views import centre_match, mass_on_overlap, overlap_mask


@dataclass(frozen=True)
class Correspondences:
    """``view_s`` / ``view_t``: grey ``[S, S]`` in [0, 1]; ``grid``: token grid ``(h, w)``;
    ``matches``: ``(i, j, mass)`` of the ``top_k`` plan entries (row-major patch indices);
    ``truth``: for each matched ``i``, the true patch of view t (-1: outside view t)."""

    view_s: np.ndarray
    view_t: np.ndarray
    grid: tuple[int, int]
    matches: list[tuple[int, int, float]]
    truth: dict[int, int]
    agree_ot: float
    agree_nn: float
    true_match_rate: float


@torch.no_grad()
def dense_correspondences(
    model: OptimlModel, image: np.ndarray | torch.Tensor, seed: int = 0, top_k: int = 10, epsilon: float | None = None
) -> Correspondences:
    """The view pair of ``image`` (grey ``[H, W]`` in [0, 1]) for ``seed`` and its OT matches."""
    model = model.eval()
    size = model.config.image_size
    grey = torch.as_tensor(np.asarray(image, dtype=np.float32))
    if grey.ndim == 3:
        grey = grey.mean(dim=-1)
    view_s, view_t, box_s, box_t = view_pair(grey[None], size, seed, 0, 0, model.config.min_scale)
    encoder = model.encoder
    device = next(encoder.parameters()).device
    maps = encoder(encoder.normalize(torch.stack([view_s, view_t]).to(device)))
    grid = (maps.shape[2], maps.shape[3])
    tokens = maps.flatten(2).transpose(1, 2)
    z_s, z_t = tokens[:1], tokens[1:]
    if model.cvsim is not None:
        z_s, z_t = model.cvsim(z_s, z_t)
    if model.dense_projector is not None:
        q = model.dense_projector(torch.cat([z_s, z_t]))
        z_s, z_t = q[:1], q[1:]
    plan = losses.ot_plan(z_s, z_t, epsilon or model.config.epsilon, model.config.sinkhorn_iterations)
    nn_plan = losses.nearest_neighbour_plan(z_s, z_t)
    boxes_s, boxes_t = box_s[None].to(device), box_t[None].to(device)
    mask = overlap_mask(boxes_s, boxes_t, grid, grid)
    truth_all = centre_match(boxes_s, boxes_t, grid, grid)[0].cpu()
    flat = plan[0].flatten().cpu()
    top = flat.topk(min(top_k, flat.numel()))
    columns = plan.shape[-1]
    matches = [(int(k) // columns, int(k) % columns, float(m)) for m, k in zip(top.values, top.indices)]
    inside = [(i, j) for i, j, _ in matches if truth_all[i] >= 0]
    return Correspondences(
        view_s=view_s[0].numpy(),
        view_t=view_t[0].numpy(),
        grid=grid,
        matches=matches,
        truth={i: int(truth_all[i]) for i, _, _ in matches},
        agree_ot=float(mass_on_overlap(plan, mask)),
        agree_nn=float(mass_on_overlap(nn_plan, mask)),
        true_match_rate=sum(int(truth_all[i]) == j for i, j in inside) / max(1, len(inside)),
    )


def correspondence_figure(result: Correspondences, title: str = ""):
    """Plotly figure: the two views side by side, OT matches as solid lines (opacity by mass) and
    the true correspondence of each matched source patch as dashed lines."""
    import plotly.graph_objects as go

    size = result.view_s.shape[0]
    gap = size // 10
    canvas = np.ones((size, 2 * size + gap), dtype=np.float32)
    canvas[:, :size] = result.view_s
    canvas[:, size + gap :] = result.view_t
    figure = go.Figure(go.Heatmap(z=canvas[::-1], colorscale="gray", showscale=False, hoverinfo="skip"))
    h, w = result.grid

    def centre(index: int, offset: int) -> tuple[float, float]:
        row, col = divmod(index, w)
        return offset + (col + 0.5) * size / w, size - (row + 0.5) * size / h

    top_mass = max((m for *_, m in result.matches), default=1.0)
    for i, j, mass in result.matches:
        (x0, y0), (x1, y1) = centre(i, 0), centre(j, size + gap)
        figure.add_trace(go.Scatter(x=[x0, x1], y=[y0, y1], mode="lines+markers", showlegend=False,
                                    line={"color": "lime", "width": 2}, opacity=0.3 + 0.7 * mass / top_mass,
                                    hovertext=f"patch {i} -> {j}, mass {mass:.4f}"))
        true = result.truth.get(i, -1)
        if true >= 0:
            x2, y2 = centre(true, size + gap)
            figure.add_trace(go.Scatter(x=[x0, x2], y=[y0, y2], mode="lines", showlegend=False,
                                        line={"color": "orange", "width": 1, "dash": "dash"},
                                        hovertext=f"true correspondence of patch {i}: {true}"))
    figure.update_layout(
        # two short lines: one line ran past the app's half-width plot and was cut; numbers as the
        # app's summary line writes them (3 decimals)
        title={"text": title or f"OT matches (green) vs true correspondence (orange, dashed)<br>"
               f"mass on overlapping patches: OT {result.agree_ot:.3f}, nearest neighbour {result.agree_nn:.3f}",
               "font": {"size": 14}},
        xaxis={"visible": False}, yaxis={"visible": False, "scaleanchor": "x"}, margin={"l": 0, "r": 0, "t": 64, "b": 0},
    )
    return figure
