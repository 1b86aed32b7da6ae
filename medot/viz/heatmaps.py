r"""Coupling heatmaps: the FGW plan :math:`\Gamma` between high- and low-end classes, and its costs.

K-MaT's manifold-transport term (:mod:`medot.methods.kmat.losses`) solves

.. math:: \min_{\Gamma \in U(\frac1{N_c}\mathbf 1, \frac1{N_c}\mathbf 1)}
   (1-\alpha)\sum_{ij} M_{ij}\Gamma_{ij}
   + \alpha \sum_{ijkl} (D^H_{ik} - D^L_{jl})^2\,\Gamma_{ij}\Gamma_{kl}

(entropic, temperature :math:`\varepsilon`). :func:`coupling_heatmaps` draws :math:`\Gamma`
``[N_H, N_L]`` (rows: high-end classes, columns: low-end classes), and whichever of the
cross-modal cost :math:`M` ``[N_H, N_L]`` and the intra-modal structures :math:`D^H` ``[N_H, N_H]``,
:math:`D^L` ``[N_L, N_L]`` are given, one panel each (two per row: :math:`\Gamma, M` then
:math:`D^H, D^L`), each with its own colour scale. Row 0 is at the top, as in the matrix. The hover
shows the row class, the column class and the value; matrices of at most ``max_annotated_cells``
cells also print their values in the cells. Every number (cells, hover, title) is printed in one
format, :data:`NUMBER_FORMAT`; each colour bar is titled with its matrix's symbol; a caption under
the panels says how to read :math:`\Gamma` (:data:`HOW_TO_READ_PLAN`). The title carries the FGW
value, :math:`\alpha` and :math:`\varepsilon` passed in.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from medot.viz._inputs import VisualizationError, as_finite, as_finite_number, as_labels

PLAN_COLORSCALE = "Viridis"
COST_COLORSCALE = "Cividis"
_COLORBAR_GAP = 0.01
NUMBER_FORMAT = ".3f"
HOW_TO_READ_PLAN = (
    "How to read Γ: rows are {high} classes, columns {low} classes; Γ<sub>ij</sub> is the share of mass "
    "matched between class i and class j (each row and each column sums to 1/C).<br>A bright diagonal means each "
    "class's {high} prompt is matched to the same class's {low} prompt; off-diagonal mass shows classes the "
    "two modalities confuse."
)


@dataclass(frozen=True, eq=False)
class _Panel:
    title: str
    symbol: str
    matrix: np.ndarray
    rows: tuple[str, ...]
    cols: tuple[str, ...]
    row_axis: str
    col_axis: str
    colorscale: str


def coupling_heatmaps(
    plan: Any,
    high_classes: Sequence[str],
    low_classes: Sequence[str],
    *,
    feature_cost: Any = None,
    structure_high: Any = None,
    structure_low: Any = None,
    fgw_value: float | None = None,
    alpha: float | None = None,
    epsilon: float | None = None,
    high_name: str = "high-end",
    low_name: str = "low-end",
    title: str = "Cross-modal class coupling",
    max_annotated_cells: int = 144,
) -> go.Figure:
    r"""Heatmaps of :math:`\Gamma` and of those of :math:`M, D^H, D^L` given (module docstring).

    ``plan`` (:math:`\Gamma`) and ``feature_cost`` (:math:`M`) are ``[N_H, N_L]``;
    ``structure_high`` (:math:`D^H`) is ``[N_H, N_H]`` and ``structure_low`` (:math:`D^L`)
    ``[N_L, N_L]``; numpy or torch. ``high_name`` / ``low_name`` name the modalities on the axes
    (e.g. ``"CT"``, ``"X-ray"``).
    """
    high = as_labels(high_classes, "high_classes", len(high_classes))
    low = as_labels(low_classes, "low_classes", len(low_classes))
    for name, labels in (("high_classes", high), ("low_classes", low)):
        if len(set(labels)) != len(labels):
            raise VisualizationError(f"{name} repeats a class name: {list(labels)}.")
    high_axis, low_axis = f"{high_name} class", f"{low_name} class"
    specs = [
        ("plan", plan, "Γ", "transport plan", high, low, high_axis, low_axis, PLAN_COLORSCALE),
        ("feature_cost", feature_cost, "M", "cross-modal cost", high, low, high_axis, low_axis,
         COST_COLORSCALE),
        ("structure_high", structure_high, "D<sup>H</sup>", f"{high_name} structure", high, high,
         high_axis, high_axis, COST_COLORSCALE),
        ("structure_low", structure_low, "D<sup>L</sup>", f"{low_name} structure", low, low,
         low_axis, low_axis, COST_COLORSCALE),
    ]
    panels = [
        _Panel(f"{symbol} ({what})", symbol, _matrix(values, name, rows, cols), rows, cols,
               row_axis, col_axis, colorscale)
        for name, values, symbol, what, rows, cols, row_axis, col_axis, colorscale in specs
        if values is not None
    ]

    n_cols = min(2, len(panels))
    n_rows = math.ceil(len(panels) / n_cols)
    fig = make_subplots(
        rows=n_rows,
        cols=n_cols,
        subplot_titles=[p.title for p in panels],
        horizontal_spacing=0.22,
        vertical_spacing=0.26,
    )
    for k, panel in enumerate(panels):
        row, col = divmod(k, n_cols)
        annotate = panel.matrix.size <= max_annotated_cells
        fig.add_trace(
            go.Heatmap(
                z=panel.matrix,
                x=list(panel.cols),
                y=list(panel.rows),
                coloraxis=f"coloraxis{k + 1}",
                texttemplate=f"%{{z:{NUMBER_FORMAT}}}" if annotate else None,
                hovertemplate=(
                    f"{panel.row_axis}: %{{y}}<br>{panel.col_axis}: %{{x}}<br>"
                    f"{panel.symbol} = %{{z:{NUMBER_FORMAT}}}<extra></extra>"
                ),
            ),
            row=row + 1,
            col=col + 1,
        )
        fig.update_xaxes(title_text=panel.col_axis, type="category", row=row + 1, col=col + 1)
        fig.update_yaxes(
            title_text=panel.row_axis,
            type="category",
            autorange="reversed",
            row=row + 1,
            col=col + 1,
        )
    for k in range(len(panels)):
        x_domain = fig.layout[_axis_name("xaxis", k)].domain
        y_domain = fig.layout[_axis_name("yaxis", k)].domain
        fig.layout[f"coloraxis{k + 1}"] = {
            "colorscale": panels[k].colorscale,
            "colorbar": {
                "x": x_domain[1] + _COLORBAR_GAP,
                "xanchor": "left",
                "y": (y_domain[0] + y_domain[1]) / 2,
                "len": y_domain[1] - y_domain[0],
                "thickness": 12,
                "title": {"text": panels[k].symbol, "side": "right"},
                "tickformat": NUMBER_FORMAT,
            },
        }
    fig.update_layout(title=_title(title, fgw_value, alpha, epsilon), height=380 * n_rows + 120,
                      margin={"b": 110})
    fig.add_annotation(
        text=HOW_TO_READ_PLAN.format(high=high_name, low=low_name), xref="paper", yref="paper", x=0.0, y=0.0,
        yshift=-95, xanchor="left", yanchor="bottom", showarrow=False, align="left", font={"size": 12},
        name="how-to-read",
    )
    return fig


def _matrix(values: Any, name: str, rows: tuple[str, ...], cols: tuple[str, ...]) -> np.ndarray:
    matrix = as_finite(values, name, 2)
    if matrix.shape != (len(rows), len(cols)):
        raise VisualizationError(
            f"{name} has shape {tuple(matrix.shape)} but its class labels give "
            f"({len(rows)}, {len(cols)}): one row per {list(rows)}, one column per {list(cols)}."
        )
    return matrix


def _axis_name(prefix: str, k: int) -> str:
    return prefix if k == 0 else f"{prefix}{k + 1}"


def _title(title: str, fgw_value: Any, alpha: Any, epsilon: Any) -> str:
    parts = [title]
    for label, value in (("FGW", fgw_value), ("α", alpha), ("ε", epsilon)):
        if value is not None:
            parts.append(f"{label} = {as_finite_number(value, label):{NUMBER_FORMAT}}")
    return " · ".join(parts)
