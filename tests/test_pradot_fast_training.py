"""PRADOT trained fast (#11): data-initialised prototypes, warm-started Sinkhorn with a marginal
tolerance, batches bounded by a plan budget, in-epoch progress, and the ``paper`` / ``cpu`` presets."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from medot.errors import MedotError
from medot.methods.pradot import PradotConfig, PrototypeBank, build_model, train_pradot
from medot.methods.pradot.config import CPU_PLAN_BUDGET
from medot.methods.pradot.training import images_per_batch, plan_batches
from medot.ot import sinkhorn


def _grid_tokens(seed: int, images: int, height: int, width: int, channels: int, noise: float = 0.1) -> torch.Tensor:
    rng = np.random.default_rng(seed)
    cells = rng.normal(size=(height * width, channels))
    return torch.tensor(cells + noise * rng.normal(size=(images, height * width, channels)), dtype=torch.float64)


# ---------------------------------------------------------------------------------- warm start
def test_warm_started_solve_equals_the_cold_solve_and_needs_fewer_iterations() -> None:
    tokens = _grid_tokens(0, images=6, height=3, width=3, channels=5)
    bank = PrototypeBank("layer", 5, (3, 3), n_prototypes=2, alpha=0.3, epsilon=0.1, ema=0.9,
                         sinkhorn_iterations=3000, sinkhorn_tol=1e-8, warm_start=True,
                         generator=torch.Generator().manual_seed(0)).double()
    bank.init_from_data(tokens, torch.Generator().manual_seed(1))
    bank.fit_batch(tokens[:3])  # leaves the prototype potential of this step
    assert bank.dual_g is not None and bank.dual_g.shape == (bank.num_prototypes,)

    following = tokens[3:]
    warm = bank.transport_plan(following)
    cold = bank.transport_plan(following, warm=False)
    assert bool(warm.diagnostics.converged) and bool(cold.diagnostics.converged)
    torch.testing.assert_close(warm.plan, cold.plan, atol=1e-9, rtol=0)
    assert int(warm.diagnostics.iterations) < int(cold.diagnostics.iterations)

    # and both are POT's plan on the same cost
    ot = pytest.importorskip("ot")
    cost = bank.cost(following, scope="batch").reshape(-1, bank.num_prototypes).numpy()
    a, b = np.full(cost.shape[0], 1 / cost.shape[0]), np.full(cost.shape[1], 1 / cost.shape[1])
    reference = ot.sinkhorn(a, b, cost, 0.1, method="sinkhorn_log", numItermax=5000, stopThr=1e-12)
    np.testing.assert_allclose(warm.plan.numpy(), reference, atol=1e-8)


def test_c_transform_start_is_the_exact_row_update() -> None:
    """The warm start's embedding potential makes the rows exact for the stored prototype potential."""
    tokens = _grid_tokens(1, images=2, height=2, width=2, channels=4)
    bank = PrototypeBank("layer", 4, (2, 2), n_prototypes=3, alpha=0.3, epsilon=0.1,
                         generator=torch.Generator().manual_seed(0)).double()
    cost = bank.cost(tokens, scope="batch").reshape(8, 12)
    g = torch.randn(12, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    f = bank._c_transform(cost, g)
    plan = (1 / 8) * (1 / 12) * torch.exp((f[:, None] + g[None, :] - cost) / 0.1)
    torch.testing.assert_close(plan.sum(1), torch.full((8,), 1 / 8, dtype=torch.float64))


def test_training_reports_sinkhorn_iterations_and_the_tolerance_stops_early() -> None:
    tokens = {"layer": _grid_tokens(2, images=8, height=3, width=3, channels=6).float()}
    common = dict(layers=("layer",), alphas=(0.3,), n_prototypes=2, epochs=3, batch_size=4, sinkhorn_iterations=100)
    fixed = train_pradot(build_model(PradotConfig(**common, sinkhorn_tol=0.0, warm_start=False), tokens,
                                     {"layer": (3, 3)}), tokens,
                         PradotConfig(**common, sinkhorn_tol=0.0, warm_start=False), progress=False)
    assert [step["layer/alpha=0.3"] for step in fixed.sinkhorn_iterations] == [100] * 6
    config = PradotConfig(**common, sinkhorn_tol=1e-2, warm_start=True)
    fast = train_pradot(build_model(config, tokens, {"layer": (3, 3)}), tokens, config, progress=False)
    counts = [step["layer/alpha=0.3"] for step in fast.sinkhorn_iterations]
    assert len(counts) == 6 and max(counts) < 100
    assert fast.history[-1]["sinkhorn_iterations"] == pytest.approx(np.mean(counts[-2:]))


# ---------------------------------------------------------------------------------- data init
def test_data_init_puts_each_prototype_on_a_training_feature_of_its_own_cell() -> None:
    tokens = _grid_tokens(3, images=5, height=2, width=3, channels=4).float()
    bank = PrototypeBank("layer", 4, (2, 3), n_prototypes=3, generator=torch.Generator().manual_seed(0))
    bank.init_from_data(tokens, torch.Generator().manual_seed(7))
    cells = 6
    for prototype in range(bank.num_prototypes):
        cell = prototype % cells
        matches = (tokens[:, cell] == bank.features[prototype]).all(dim=1)
        assert int(matches.sum()) == 1, prototype  # exactly one training image's feature at that cell
    # the n copies of a cell come from different images (5 images >= 3 copies)
    for cell in range(cells):
        copies = bank.features[cell::cells]
        assert len({tuple(row.tolist()) for row in copies}) == 3
    again = PrototypeBank("layer", 4, (2, 3), n_prototypes=3, generator=torch.Generator().manual_seed(0))
    again.init_from_data(tokens, torch.Generator().manual_seed(7))
    assert torch.equal(again.features, bank.features)


def test_kmeans_plus_plus_init_picks_a_feature_of_each_cluster_of_a_cell() -> None:
    # every cell: 9 embeddings near one direction, 1 near the opposite direction (cosine distance 2)
    rng = np.random.default_rng(5)
    cells, channels = 6, 8
    direction = rng.normal(size=(cells, channels))
    tokens = np.repeat(direction[None], 10, axis=0) + 0.01 * rng.normal(size=(10, cells, channels))
    outlier = rng.integers(0, 10, size=cells)  # a different image is the rare one in each cell
    tokens[outlier, np.arange(cells)] *= -1.0
    tokens = torch.tensor(tokens, dtype=torch.float32)
    bank = PrototypeBank("layer", channels, (2, 3), n_prototypes=2, generator=torch.Generator().manual_seed(0))
    bank.init_kmeans_plus_plus(tokens, seed=3)
    for cell in range(cells):
        copies = bank.features[cell::cells]
        for copy in copies:  # each prototype is one training embedding of its own cell
            assert int((tokens[:, cell] == copy).all(dim=1).sum()) == 1
        # D^2 seeding: after any first pick the other cluster holds ~all of the squared distance
        assert torch.cosine_similarity(copies[0], copies[1], dim=0) < -0.9, cell
    again = PrototypeBank("layer", channels, (2, 3), n_prototypes=2, generator=torch.Generator().manual_seed(0))
    again.init_kmeans_plus_plus(tokens, seed=3)
    assert torch.equal(again.features, bank.features)
    # the random draw of the data init puts both copies in the big cluster in most cells
    data = PrototypeBank("layer", channels, (2, 3), n_prototypes=2, generator=torch.Generator().manual_seed(0))
    data.init_from_data(tokens, torch.Generator().manual_seed(3))
    split = [float(torch.cosine_similarity(*data.features[c::cells], dim=0)) < -0.9 for c in range(cells)]
    assert sum(split) < cells


def test_kmeans_plus_plus_init_with_fewer_images_than_prototypes_repeats_copies() -> None:
    tokens = _grid_tokens(6, images=2, height=1, width=2, channels=3).float()
    model = build_model(PradotConfig(layers=("layer",), alphas=(0.3,), n_prototypes=3, init="kmeans++"),
                        {"layer": tokens}, {"layer": (1, 2)})
    features = model.members[0].features  # copy k at cell r is row 2 k + r
    assert torch.equal(features[4:], features[:2])  # copy 2 = copy 0 (2 images for 3 copies)
    for cell in range(2):
        assert {tuple(features[k * 2 + cell].tolist()) for k in range(2)} == {tuple(t.tolist()) for t in tokens[:, cell]}


def test_build_model_initialises_from_data_unless_the_paper_init_is_asked_for() -> None:
    tokens = {"layer": _grid_tokens(4, images=4, height=2, width=2, channels=3).float()}
    data = build_model(PradotConfig(layers=("layer",), alphas=(0.0,), n_prototypes=2), tokens, {"layer": (2, 2)})
    uniform = build_model(PradotConfig(layers=("layer",), alphas=(0.0,), n_prototypes=2, init="uniform"), tokens,
                          {"layer": (2, 2)})
    flat = tokens["layer"].reshape(-1, 3)
    assert all(bool((flat == row).all(1).any()) for row in data.members[0].features)
    assert bool(((uniform.members[0].features >= 0) & (uniform.members[0].features < 1)).all())
    with pytest.raises(MedotError, match="training set is empty"):
        build_model(PradotConfig(layers=("layer",)), {"layer": torch.empty(0, 4, 3)}, {"layer": (2, 2)})
    with pytest.raises(MedotError, match=r"init must be one of data, kmeans\+\+, uniform"):
        PradotConfig(init="kmeans")


def test_data_init_flags_an_injected_lesion_after_one_epoch_better_than_the_uniform_init() -> None:
    import medot.backbones
    from medot.data.synthetic import render_ct_case
    from medot.methods.pradot.detector import PradotDetector

    lite = medot.backbones.create_backbone("lite", device="cpu")

    def ct(seed) -> np.ndarray:
        return np.repeat(render_ct_case("normal", seed, 64)[0][..., None] / 255.0, 3, axis=2).astype(np.float32)

    with torch.inference_mode():
        features = lite.encode_image(lite.transform_batch([ct((7, i)) for i in range(6)]), ["stride16"])
    tokens = {"stride16": features.patch_tokens["stride16"].float().clone()}
    image = ct((8, 0))
    rows, cols = np.mgrid[:64, :64]
    lesion = (rows - 28) ** 2 + (cols - 36) ** 2 < 8**2
    with_lesion = image.copy()
    with_lesion[lesion] = 1.0
    inside = torch.nn.functional.interpolate(torch.tensor(lesion[None, None], dtype=torch.float32), size=(224, 224))
    inside = inside[0, 0].bool()

    contrast = {}
    for init in ("data", "uniform"):
        config = PradotConfig(layers=("stride16",), alphas=(0.0, 0.3), n_prototypes=2, epochs=1, init=init)
        model = build_model(config, tokens, features.grids)
        train_pradot(model, tokens, config, progress=False)
        maps, scores = PradotDetector(model, lite, {"image_size": 224}).predict([image, with_lesion])
        if init == "data":
            assert maps[1][inside].mean() > maps[1][~inside].mean()
            assert scores[1] > scores[0]
        # lesion against the rest of the same image, in units of the normal image's spread
        contrast[init] = float((maps[1][inside].mean() - maps[1][~inside].mean()) / maps[0].std())
    assert contrast["data"] > contrast["uniform"]


# ---------------------------------------------------------------------------------- budget batching
@pytest.mark.parametrize(("count", "size"), [(10, 3), (7, 7), (5, 2), (1, 4)])
def test_plan_batches_cover_every_image_exactly_once_in_near_equal_batches(count: int, size: int) -> None:
    order = torch.randperm(count, generator=torch.Generator().manual_seed(count))
    batches = plan_batches(order, min(size, count))
    assert torch.equal(torch.cat(batches), order)
    assert len(batches) == -(-count // min(size, count))
    lengths = [len(batch) for batch in batches]
    assert max(lengths) - min(lengths) <= 1 and max(lengths) <= size


def test_images_per_batch_follows_the_plan_budget() -> None:
    # lite stride16, 4 prototypes per cell: 196 x 784 = 153,664 entries per image
    assert images_per_batch(40, 64, CPU_PLAN_BUDGET, 196 * 784) == CPU_PLAN_BUDGET // (196 * 784) == 13
    assert images_per_batch(5, 64, CPU_PLAN_BUDGET, 196 * 784) == 5
    assert images_per_batch(40, 8, CPU_PLAN_BUDGET, 196 * 784) == 8
    assert images_per_batch(40, 64, 10, 196 * 784) == 1  # a budget below one image still trains one at a time
    assert images_per_batch(40, 64, None, 196 * 784) == 40


def test_budget_batched_training_sees_every_image_once_per_epoch_with_progress_events() -> None:
    tokens = {"layer": _grid_tokens(5, images=7, height=2, width=2, channels=3).float()}
    # 2 x 2 grid, 2 prototypes per cell: 4 x 8 = 32 entries per image; budget 100 -> 3 images
    config = PradotConfig(layers=("layer",), alphas=(0.3,), n_prototypes=2, epochs=2, plan_budget=100,
                          sinkhorn_iterations=10)
    model = build_model(config, tokens, {"layer": (2, 2)})
    seen: list[torch.Tensor] = []
    original = model.fit_batch

    def recording(batch):
        seen.append(batch["layer"].clone())
        return original(batch)

    model.fit_batch = recording
    events = []
    result = train_pradot(model, tokens, config, progress=False, on_event=events.append)
    assert (result.batch_size, result.batches_per_epoch, result.steps) == (3, 3, 6)
    for epoch in range(2):
        images = torch.cat(seen[3 * epoch : 3 * epoch + 3])
        assert images.shape[0] == 7
        # every training image exactly once in the epoch
        matches = (images[:, None] == tokens["layer"][None]).flatten(2).all(-1)
        assert torch.equal(matches.sum(0), torch.ones(7, dtype=torch.long))
    steps = [event for event in events if event.kind == "step"]
    assert [event.metrics["progress"] for event in steps] == pytest.approx([k / 6 for k in range(1, 7)])
    assert steps[-1].metrics["eta_seconds"] == 0.0 and all(e.metrics["eta_seconds"] >= 0 for e in steps)
    assert [event.metrics["batch"] for event in steps] == [1, 2, 3, 1, 2, 3]
    assert all(1 <= event.metrics["sinkhorn_iterations/layer/alpha=0.3"] <= 10 for event in steps)
    assert "ETA" in steps[0].message


# ---------------------------------------------------------------------------------- presets
def test_presets_pick_the_paper_sizes_on_a_gpu_and_the_cpu_sizes_otherwise() -> None:
    layers = ("stride8", "stride16", "stride32")
    paper = PradotConfig.preset("auto", layers, cuda=True)
    assert (paper.layers, paper.n_prototypes, paper.epochs, paper.batch_size, paper.plan_budget) == (
        ("stride8", "stride16"), 16, 50, 64, None)
    cpu = PradotConfig.preset("auto", layers, cuda=False)
    assert (cpu.layers, cpu.n_prototypes, cpu.epochs, cpu.plan_budget) == (("stride16",), 4, 10, CPU_PLAN_BUDGET)
    assert PradotConfig.preset("paper", layers, cuda=False).n_prototypes == 16
    mine = PradotConfig.preset("cpu", layers, epochs=1, n_prototypes=None, layers=("stride32",))
    assert (mine.epochs, mine.n_prototypes, mine.layers) == (1, 4, ("stride32",))
    with pytest.raises(MedotError, match="unknown PRADOT preset 'fast'"):
        PradotConfig.preset("fast", layers)


def test_cli_says_which_preset_applies_and_why(capsys) -> None:
    from medot.methods.pradot.cli import _add_pradot_options, _config

    parser = argparse.ArgumentParser()
    _add_pradot_options(parser)

    class Backbone:
        name = "lite"
        default_layers = ("stride8", "stride16")
        feature_layers = ("stride4", "stride8", "stride16", "stride32")

    config = _config(parser.parse_args([]), Backbone(), "cpu")
    assert config.layers == ("stride16",) and config.n_prototypes == 4
    assert "PRADOT preset cpu (no CUDA GPU in use" in capsys.readouterr().out
    config = _config(parser.parse_args(["--epochs", "3", "--init", "uniform", "--no-warm-start"]), Backbone(), "cuda")
    assert (config.layers, config.epochs, config.init, config.warm_start) == (("stride8", "stride16"), 3, "uniform",
                                                                             False)
    assert "PRADOT preset paper:" in capsys.readouterr().out
    assert _config(parser.parse_args(["--init", "kmeans++"]), Backbone(), "cpu").init == "kmeans++"
