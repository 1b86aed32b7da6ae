"""medot.viz: manifold projections and figures, coupling heatmaps, anomaly overlays."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from plotly.colors import sample_colorscale, unlabel_rgb

from medot.errors import MedotError
from medot.viz import (
    EmbeddingSet,
    VisualizationError,
    anomaly_overlay,
    colormap_lut,
    coupling_heatmaps,
    manifold_figure,
    project,
    save_overlay_png,
)

METHODS = ["tsne", "umap"]


def _blobs(n_per: int = 15, dim: int = 64, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Three tight clusters around random (nearly orthogonal) directions in ``dim`` dimensions."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(3, dim))
    labels = np.repeat(np.arange(3), n_per)
    return centres[labels] + 0.05 * rng.normal(size=(3 * n_per, dim)), labels


def _prompt_set(rng: np.random.Generator, classes=("a", "b", "c"), dim: int = 16) -> EmbeddingSet:
    """Per class: a prompt per modality (H, L), an anchor per modality and one description."""
    rows = [(c, m, k) for c in classes for m in ("H", "L") for k in ("prompt", "anchor")]
    rows += [(c, "H", "description") for c in classes]
    text = [f"sentence about {c}" if k == "description" else "" for c, _, k in rows]
    return EmbeddingSet(
        rng.normal(size=(len(rows), dim)),
        classes=[r[0] for r in rows],
        modality=[r[1] for r in rows],
        kind=[r[2] for r in rows],
        text=text,
    )


# ---------------------------------------------------------------------------------- projections


@pytest.mark.parametrize("method", METHODS)
def test_projection_is_seeded_and_keeps_clusters_apart(method):
    x, labels = _blobs()
    first = project(x, method=method, seed=3).points
    again = project(x, method=method, seed=3).points
    np.testing.assert_array_equal(first, again)
    assert first.shape == (x.shape[0], 2)
    centroids = np.stack([first[labels == k].mean(0) for k in range(3)])
    nearest = np.linalg.norm(first[:, None] - centroids[None], axis=-1).argmin(1)
    np.testing.assert_array_equal(nearest, labels)


@pytest.mark.parametrize("method", METHODS)
def test_tiny_set_clamps_the_neighbourhood(method):
    x = np.random.default_rng(1).normal(size=(4, 8))
    projection = project(x, method=method, seed=0)
    assert projection.points.shape == (4, 2)
    assert np.isfinite(projection.points).all()
    if method == "tsne":
        assert projection.perplexity == pytest.approx(1.0)  # (n - 1) / 3 with n = 4
    else:
        assert projection.n_neighbors == 3


def test_projection_uses_the_direction_only_and_merges_equal_rows():
    x, _ = _blobs(n_per=5)
    # Powers of two scale exactly, so the normalised rows, and hence the maps, are identical.
    scaled = x * np.random.default_rng(2).choice([0.25, 2.0, 8.0], size=(x.shape[0], 1))
    np.testing.assert_array_equal(project(scaled, seed=0).points, project(x, seed=0).points)
    doubled = project(np.concatenate([x, 2 * x[:3]]), seed=0).points
    np.testing.assert_array_equal(doubled[-3:], doubled[:3])


def test_projection_rejects_degenerate_input():
    with pytest.raises(VisualizationError, match="at least 4 distinct"):
        project(np.tile(np.eye(3, 5), (4, 1)))
    with pytest.raises(VisualizationError, match="all zeros"):
        project(np.vstack([np.eye(5), np.zeros((1, 5))]))
    with pytest.raises(VisualizationError, match="NaN"):
        project(np.array([[1.0, np.nan]] * 5))
    with pytest.raises(VisualizationError, match="Unknown projection method"):
        project(np.eye(5), method="pca")


def test_embedding_set_checks_and_broadcasts():
    s = EmbeddingSet(torch.ones(2, 3, dtype=torch.bfloat16), ["a", "b"], "ct", "prompt")
    assert s.modality == ("ct", "ct") and s.kind == ("prompt", "prompt") and s.text == ("", "")
    assert s.vectors.dtype == np.float64
    with pytest.raises(VisualizationError, match=r"one label per row \(2\), got 3"):
        EmbeddingSet(np.ones((2, 3)), ["a", "b", "c"], "ct", "prompt")
    with pytest.raises(VisualizationError, match="text needs one string per row"):
        EmbeddingSet(np.ones((2, 3)), ["a", "b"], "ct", "prompt", text=["x"])
    with pytest.raises(VisualizationError, match="NaN"):
        EmbeddingSet(np.array([[0.0, np.inf]]), ["a"], "ct", "prompt")
    with pytest.raises(ValueError):  # VisualizationError is also a ValueError and a MedotError
        EmbeddingSet(np.ones(3), ["a"], "ct", "prompt")
    assert issubclass(VisualizationError, MedotError)


# ------------------------------------------------------------------------------------- figures


def test_manifold_figure_traces_counts_and_hover():
    embedding_set = _prompt_set(np.random.default_rng(0))
    fig = manifold_figure(embedding_set, method="tsne", seed=0)
    data = [t for t in fig.data if t.meta == "points"]
    # 3 classes x (prompt, anchor) x (H, L) + 3 classes x description(H) = 15 groups of 1 point.
    keys = set(zip(embedding_set.classes, embedding_set.kind, embedding_set.modality))
    assert len(data) == len(keys) == 15
    assert sum(len(t.x) for t in data) == len(embedding_set)
    for trace in data:
        class_name = trace.name.split(" · ")[0]
        assert all(f"class: {class_name}" in h for h in trace.hovertext)
        if "description" in trace.name:
            assert all(f"sentence about {class_name}" in h for h in trace.hovertext)
    colours = {t.name.split(" · ")[0]: t.marker.color for t in data}
    assert len(set(colours.values())) == 3  # one colour per class
    symbols = {t.name.split(" · ")[1]: t.marker.symbol for t in data}
    assert len(set(symbols.values())) == len(symbols) == 5  # prompt/anchor x H/L + description (H)
    assert "perplexity" in fig.layout.title.text


def test_comparison_shares_one_projection():
    rng = np.random.default_rng(4)
    before, after = _prompt_set(rng), _prompt_set(rng)
    shared = np.flatnonzero(np.asarray(before.kind) == "anchor")
    after = EmbeddingSet(
        np.where((np.asarray(after.kind) == "anchor")[:, None], before.vectors, after.vectors),
        after.classes, after.modality, after.kind, after.text,
    )
    fig = manifold_figure([before, after], titles=["with L_fgw", "without"], method="umap", seed=0)
    assert [a.text for a in fig.layout.annotations] == ["with L_fgw", "without"]
    panels = {"x": [], "x2": []}
    for trace in fig.data:
        if trace.meta == "points":
            panels[trace.xaxis].append(trace)
    assert len(panels["x"]) == len(panels["x2"]) == 15
    for left, right in zip(panels["x"], panels["x2"]):
        assert left.name == right.name and not left.showlegend and not right.showlegend
        if "anchor" in left.name:  # the same vectors in both sets: the same 2-D point
            assert (left.x, left.y) == (right.x, right.y)
    assert len(shared) == sum(len(t.x) for t in panels["x"] if "anchor" in t.name)
    assert fig.layout.xaxis.range == fig.layout.xaxis2.range and fig.layout.xaxis2.matches == "x"


def test_manifold_legend_is_grouped_links_join_prompt_and_anchor_and_descriptions_fade():
    embedding_set = _prompt_set(np.random.default_rng(1))
    fig = manifold_figure(embedding_set, method="tsne", seed=0, links=[("prompt", "anchor")])
    legend = [(t.legendgroup, t.name) for t in fig.data if t.meta == "legend"]
    assert legend == [("class", "a"), ("class", "b"), ("class", "c"), ("kind:prompt", "prompt"),
                      ("kind:anchor", "anchor"), ("kind:description", "description"), ("modality", "H"),
                      ("modality", "L")]  # 8 entries, each encoding explained once (not 15 combinations)
    assert all(t.x == (None,) for t in fig.data if t.meta == "legend")
    points = {t.name: t for t in fig.data if t.meta == "points"}
    (links,) = [t for t in fig.data if t.meta == "links"]
    segments = [(links.x[k:k + 2], links.y[k:k + 2]) for k in range(0, len(links.x), 3)]
    assert len(segments) == 6  # 3 classes x 2 modalities
    for name in ("a", "b", "c"):
        for modality in ("H", "L"):
            prompt, anchor = points[f"{name} · prompt ({modality})"], points[f"{name} · anchor ({modality})"]
            assert ((prompt.x[0], anchor.x[0]), (prompt.y[0], anchor.y[0])) in segments
    assert {t.opacity for n, t in points.items() if "description" in n} == {0.35}
    assert {t.opacity for n, t in points.items() if "description" not in n} == {1.0}
    assert (fig.layout.xaxis.title.text, fig.layout.yaxis.title.text) == ("t-SNE 1", "t-SNE 2")
    assert any("Only 15 distinct points" in a.text for a in fig.layout.annotations)  # 15 rows: flagged
    many = EmbeddingSet(np.random.default_rng(2).normal(size=(16, 8)), list("abcd") * 4, "H", "prompt")
    assert not any("distinct points" in (a.text or "") for a in manifold_figure(many, seed=0).layout.annotations)


def test_manifold_figure_rejects_mixed_dimensions():
    a = EmbeddingSet(np.eye(4, 8), list("abcd"), "H", "prompt")
    b = EmbeddingSet(np.eye(4, 6), list("abcd"), "H", "prompt")
    with pytest.raises(VisualizationError, match="different dimensions"):
        manifold_figure([a, b])


def test_coupling_heatmaps_labels_values_and_title():
    rng = np.random.default_rng(0)
    high, low = ["covid19", "normal", "pneumonia"], ["covid", "healthy"]
    plan = rng.random((3, 2))
    cost = torch.from_numpy(rng.random((3, 2)))
    d_high, d_low = rng.random((3, 3)), rng.random((2, 2))
    fig = coupling_heatmaps(
        plan, high, low, feature_cost=cost, structure_high=d_high, structure_low=d_low,
        fgw_value=0.123456, alpha=0.1, epsilon=torch.tensor(0.05), high_name="CT", low_name="X-ray",
    )
    expected = [(plan, high, low), (cost.numpy(), high, low), (d_high, high, high), (d_low, low, low)]
    assert len(fig.data) == 4
    for trace, (matrix, rows, cols) in zip(fig.data, expected):
        np.testing.assert_array_equal(np.asarray(trace.z), matrix)
        assert list(trace.y) == rows and list(trace.x) == cols
        assert trace.texttemplate  # small matrices print their values
    assert len({t.coloraxis for t in fig.data}) == 4  # one colour scale per matrix
    assert fig.layout.yaxis.autorange == "reversed" and fig.layout.xaxis.title.text == "X-ray class"
    title = fig.layout.title.text
    assert "FGW = 0.123" in title and "α = 0.100" in title and "ε = 0.050" in title
    assert all(t.texttemplate == "%{z:.3f}" and "%{z:.3f}" in t.hovertemplate for t in fig.data)  # one format
    assert all(fig.layout[f"coloraxis{k}"].colorbar.tickformat == ".3f" for k in range(1, 5))
    colorbars = [fig.layout[f"coloraxis{k}"].colorbar for k in range(1, 5)]
    assert [c.title.text for c in colorbars] == ["Γ", "M", "D<sup>H</sup>", "D<sup>L</sup>"]
    (bottom_title,) = [a for a in fig.layout.annotations if a.text == "D<sup>H</sup> (CT structure)"]
    assert bottom_title.y < fig.layout.yaxis.domain[0] - 0.15  # room for the top row's x title above it
    assert any(a.text.startswith("How to read Γ: rows are CT classes, columns X-ray classes") for a in fig.layout.annotations)


def test_coupling_heatmaps_plan_only_and_bad_input():
    fig = coupling_heatmaps(np.full((2, 2), 0.25), ["a", "b"], ["c", "d"], max_annotated_cells=3)
    assert len(fig.data) == 1 and fig.data[0].texttemplate is None
    with pytest.raises(VisualizationError, match=r"plan has shape \(2, 3\)"):
        coupling_heatmaps(np.ones((2, 3)), ["a", "b"], ["c", "d"])
    with pytest.raises(VisualizationError, match="structure_low"):
        coupling_heatmaps(np.ones((2, 2)), ["a", "b"], ["c", "d"], structure_low=np.ones((3, 3)))
    with pytest.raises(VisualizationError, match="NaN"):
        coupling_heatmaps(np.array([[np.nan, 1.0], [1.0, 0.0]]), ["a", "b"], ["c", "d"])
    with pytest.raises(VisualizationError, match="repeats"):
        coupling_heatmaps(np.ones((2, 2)), ["a", "a"], ["c", "d"])


# ------------------------------------------------------------------------------------- overlays


def _image_and_map(h: int = 32, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    return rng.random((h, w, 3)), rng.normal(size=(8, 10))


def _resized(anomaly_map: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Reference resize: PyTorch's bilinear upsampling with ``align_corners=False``."""
    t = torch.from_numpy(anomaly_map)[None, None]
    return F.interpolate(t, size=shape, mode="bilinear", align_corners=False)[0, 0].numpy()


def test_colormap_lut_samples_the_plotly_scale():
    lut = colormap_lut("Viridis")
    assert lut.shape == (256, 3) and lut.dtype == np.uint8
    for k in (0, 77, 255):
        expected = unlabel_rgb(sample_colorscale("Viridis", [k / 255])[0])
        np.testing.assert_allclose(lut[k], expected, atol=0.5)
    with pytest.raises(VisualizationError, match="Unknown colormap"):
        colormap_lut("NotAScale")


def test_overlay_opacity_extremes():
    image, anomaly_map = _image_and_map()
    out0 = anomaly_overlay(image, anomaly_map, opacity=0.0)
    np.testing.assert_array_equal(out0, np.rint(image * 255).astype(np.uint8))
    out1 = anomaly_overlay(image, torch.from_numpy(anomaly_map)[None, None], opacity=1.0)
    big = _resized(anomaly_map, image.shape[:2])
    normalised = (big - big.min()) / (big.max() - big.min())
    np.testing.assert_array_equal(out1, colormap_lut()[np.rint(normalised * 255).astype(int)])
    assert out1.shape == image.shape


def test_overlay_fixed_range_and_grey_image():
    grey = np.linspace(0, 1, 12 * 16).reshape(12, 16)
    anomaly_map = np.linspace(-1.0, 3.0, 12 * 16).reshape(12, 16)
    out = anomaly_overlay(grey, anomaly_map, opacity=1.0, value_range=(0.0, 2.0), colormap="Magma")
    fixed = np.clip(anomaly_map / 2.0, 0, 1)
    np.testing.assert_array_equal(out, colormap_lut("Magma")[np.rint(fixed * 255).astype(int)])
    half = anomaly_overlay((grey * 255).astype(np.uint8), anomaly_map, opacity=0.5)
    mixed = 0.5 * np.repeat((grey * 255).astype(np.uint8)[..., None], 3, 2) / 255
    index = np.rint((anomaly_map + 1) / 4 * 255).astype(int)
    mixed = mixed + 0.5 * colormap_lut()[index] / 255
    np.testing.assert_array_equal(half, np.rint(mixed * 255).astype(np.uint8))


def test_threshold_outline_marks_exactly_the_region_boundary():
    image, anomaly_map = _image_and_map()
    threshold = 0.8
    colour = (1, 2, 3)
    plain = anomaly_overlay(image, anomaly_map, opacity=0.6)
    outlined = anomaly_overlay(
        image, anomaly_map, opacity=0.6, threshold=threshold, outline_colour=colour
    )
    region = _resized(anomaly_map, image.shape[:2]) >= threshold
    padded = np.pad(region, 1, mode="edge")  # the image border is not outside the region
    neighbours_inside = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:]
    boundary = region & ~neighbours_inside
    assert 0 < boundary.sum() < region.sum()
    assert (outlined[boundary] == colour).all()
    np.testing.assert_array_equal(outlined[~boundary], plain[~boundary])

    masked = anomaly_overlay(
        image, anomaly_map, opacity=0.6, threshold=threshold, threshold_style="mask"
    )
    np.testing.assert_array_equal(masked[region], plain[region])
    np.testing.assert_array_equal(masked[~region], np.rint(image * 255).astype(np.uint8)[~region])


def test_overlay_rejects_bad_input():
    image, anomaly_map = _image_and_map()
    with pytest.raises(VisualizationError, match=r"\[0, 1\]"):
        anomaly_overlay(image * 2, anomaly_map)
    with pytest.raises(VisualizationError, match="NaN"):
        anomaly_overlay(image, np.full((4, 4), np.nan))
    with pytest.raises(VisualizationError, match="opacity"):
        anomaly_overlay(image, anomaly_map, opacity=1.5)
    with pytest.raises(VisualizationError, match="value_range"):
        anomaly_overlay(image, anomaly_map, value_range=(1.0, 1.0))
    with pytest.raises(VisualizationError, match=r"\[H, W\] or \[H, W, 3\]"):
        anomaly_overlay(np.zeros((4, 4, 2)), anomaly_map)


def test_save_overlay_png_round_trip(tmp_path):
    image, anomaly_map = _image_and_map()
    path = save_overlay_png(tmp_path / "overlay.png", image, anomaly_map, opacity=0.4, threshold=0.5)
    with Image.open(path) as png:
        np.testing.assert_array_equal(
            np.asarray(png.convert("RGB")),
            anomaly_overlay(image, anomaly_map, opacity=0.4, threshold=0.5),
        )
    with pytest.raises(VisualizationError, match=r"\.png"):
        save_overlay_png(tmp_path / "overlay.jpg", image, anomaly_map)
    with pytest.raises(VisualizationError, match="does not exist"):
        save_overlay_png(tmp_path / "missing" / "overlay.png", image, anomaly_map)


@pytest.mark.parametrize(("threshold", "height"), [(1.0, 224), (1.0, 96), (0.5, 224), (None, 224)])
def test_colour_bar_unit_never_covers_a_tick_label(threshold, height):
    """The unit ("x image / max") is written where no tick is: at the bar's middle it hid the
    calibrated threshold 1 of the [0, 2] scale."""
    from medot.viz.anomaly_panel import BAR_WIDTH, colour_bar

    plain = colour_bar(height, 2.0, "", threshold=threshold)
    with_unit = colour_bar(height, 2.0, "x image\nmax", threshold=threshold)
    unit_rows = np.flatnonzero((plain != with_unit).any(axis=(1, 2)))
    assert unit_rows.size  # the unit is drawn
    tick_rows = set(np.flatnonzero((plain[:, BAR_WIDTH + 6:] < 128).any(axis=(1, 2))).tolist())  # dark label text
    assert tick_rows.isdisjoint(unit_rows.tolist())
