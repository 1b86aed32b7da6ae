"""Figures the app shows, built from medot data and equally usable from Python or the CLI.

The app holds no maths: every figure is made here, from plain arrays or tensors.

* :mod:`medot.viz.manifold`: prompt-manifold maps. :class:`EmbeddingSet` (vectors with class,
  modality, kind and optional text per row), :func:`project` (t-SNE or UMAP on cosine distance,
  seeded, perplexity / neighbours clamped for small sets) and :func:`manifold_figure` (colour by
  class, marker by kind and modality; several sets side by side in one joint projection).
* :mod:`medot.viz.heatmaps`: :func:`coupling_heatmaps`, the FGW plan Γ between high-end and
  low-end classes with the costs M, D^H, D^L, each with its own colour scale.
* :mod:`medot.viz.overlay`: :func:`anomaly_overlay` (anomaly map resized, normalised, coloured by a
  perceptual colormap and blended over the image, optional threshold outline or mask) and
  :func:`save_overlay_png`; the pieces :func:`colormap_lut`, :func:`resize_map`,
  :func:`normalize_map`, :func:`threshold_outline`.

Figures are plotly ``Figure`` objects (``fig.write_html(path)`` saves one); overlays are
``[H, W, 3]`` uint8 arrays. Bad inputs raise :class:`VisualizationError` (a
:class:`~medot.errors.MedotError` and a ``ValueError``) with a message that says what to fix.
"""

from medot.viz._inputs import VisualizationError
from medot.viz.heatmaps import coupling_heatmaps
from medot.viz.manifold import EmbeddingSet, Projection, manifold_figure, project
from medot.viz.overlay import (
    anomaly_overlay,
    colormap_lut,
    normalize_map,
    resize_map,
    save_overlay_png,
    threshold_outline,
)

__all__ = [
    "EmbeddingSet",
    "Projection",
    "VisualizationError",
    "anomaly_overlay",
    "colormap_lut",
    "coupling_heatmaps",
    "manifold_figure",
    "normalize_map",
    "project",
    "resize_map",
    "save_overlay_png",
    "threshold_outline",
]
