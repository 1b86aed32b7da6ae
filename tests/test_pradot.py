"""PRADOT's model: the cost, one OT + EMA step, training, scoring properties and checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from medot.checkpoint import load_checkpoint
from medot.errors import CheckpointError, MedotError
from medot.methods.pradot import (
    PradotConfig,
    PrototypeBank,
    build_model,
    effective_batch_size,
    model_from_checkpoint,
    pradot_cost,
    save_pradot,
    train_pradot,
)
from medot.ot import sinkhorn


def _hand_cost(tokens, token_pos, proto, proto_pos, alpha, scope):
    """M from its definition, in numpy float64."""
    x = tokens / np.linalg.norm(tokens, axis=-1, keepdims=True)
    p = proto / np.linalg.norm(proto, axis=-1, keepdims=True)
    feat = 1.0 - x @ p.T
    feat = feat / (feat.max() if scope == "batch" else feat.max(axis=(1, 2), keepdims=True))
    struct = np.sqrt(((token_pos[:, None, :] - proto_pos[None, :, :]) ** 2).sum(-1))
    return (1 - alpha) * feat + alpha * struct / struct.max()


def _grid_tokens(rng: np.random.Generator, images: int, height: int, width: int, channels: int, noise: float):
    """Normal images: a fixed feature per grid cell plus small noise (``[images, H*W, C]``)."""
    cells = rng.normal(size=(height * width, channels))
    return cells, torch.tensor(cells + noise * rng.normal(size=(images, height * width, channels)), dtype=torch.float32)


@pytest.mark.parametrize("alpha", [0.0, 0.3, 1.0])
@pytest.mark.parametrize("scope", ["image", "batch"])
def test_cost_equals_hand_computation(alpha: float, scope: str) -> None:
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(2, 6, 5))
    rows, cols = np.meshgrid((np.arange(2) + 0.5) / 2, (np.arange(3) + 0.5) / 3, indexing="ij")
    token_pos = np.stack([rows, cols], -1).reshape(6, 2)
    proto = rng.normal(size=(12, 5))
    proto_pos = rng.uniform(size=(12, 2))
    got = pradot_cost(
        torch.tensor(tokens), torch.tensor(token_pos), torch.tensor(proto), torch.tensor(proto_pos), alpha, scope
    )
    np.testing.assert_allclose(got.numpy(), _hand_cost(tokens, token_pos, proto, proto_pos, alpha, scope), atol=1e-12)


def test_alpha_zero_ignores_positions_and_alpha_one_ignores_features() -> None:
    bank = PrototypeBank("layer", 4, (3, 3), n_prototypes=2, alpha=0.0, generator=torch.Generator().manual_seed(0))
    tokens = torch.randn(2, 9, 4, generator=torch.Generator().manual_seed(1))
    before = bank.cost(tokens)
    bank.positions.copy_(torch.rand(bank.positions.shape, generator=torch.Generator().manual_seed(2)))
    assert torch.equal(bank.cost(tokens), before)
    bank.alpha = 0.3
    assert not torch.equal(bank.cost(tokens), before)

    bank.alpha = 1.0
    before = bank.cost(tokens)
    bank.features.copy_(torch.randn(bank.features.shape, generator=torch.Generator().manual_seed(3)))
    assert torch.equal(bank.cost(tokens), before)
    assert torch.equal(bank.cost(torch.randn(tokens.shape, generator=torch.Generator().manual_seed(4))), before)
    bank.alpha = 0.5
    assert not torch.equal(bank.cost(tokens), before)


@pytest.mark.parametrize("update_positions", [False, True])
def test_ema_step_equals_hand_barycentre_mix(update_positions: bool) -> None:
    bank = PrototypeBank(
        "layer", 3, (2, 2), n_prototypes=2, alpha=0.3, epsilon=0.05, ema=0.9, sinkhorn_iterations=50,
        update_positions=update_positions, generator=torch.Generator().manual_seed(0),
    ).double()
    tokens = torch.randn(2, 4, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    features, positions = bank.features.clone(), bank.positions.clone()
    cost = _hand_cost(tokens.numpy(), bank.token_positions.numpy(), features.numpy(), positions.numpy(), 0.3, "batch")
    plan = sinkhorn(torch.tensor(cost.reshape(8, 8)), epsilon=0.05, max_iter=50, tol=0.0).plan.numpy()
    column_mass = plan.sum(0)[:, None]
    barycentre = plan.T @ tokens.numpy().reshape(8, 3) / column_mass
    expected = 0.9 * features.numpy() + 0.1 * barycentre

    value = bank.fit_batch(tokens)

    np.testing.assert_allclose(bank.features.numpy(), expected, atol=1e-10)
    np.testing.assert_allclose(float(value), (plan * cost.reshape(8, 8)).sum(), atol=1e-10)
    if update_positions:
        moved = plan.T @ np.tile(bank.token_positions.numpy(), (2, 1)) / column_mass
        shared = np.tile(moved.reshape(2, 4, 2).mean(0), (2, 1))
        np.testing.assert_allclose(bank.positions.numpy(), 0.9 * positions.numpy() + 0.1 * shared, atol=1e-10)
    else:
        assert torch.equal(bank.positions, positions)


def test_prototype_layout_and_matches() -> None:
    bank = PrototypeBank("layer", 4, (2, 3), n_prototypes=3, generator=torch.Generator().manual_seed(0))
    assert bank.num_prototypes == 18
    # prototype j = k * HW + cell sits at that cell's centre
    assert torch.equal(bank.positions[7], bank.token_positions[1])
    tokens = torch.randn(2, 6, 4, generator=torch.Generator().manual_seed(1))
    match = bank.matched_prototypes(tokens)
    cost = bank.cost(tokens)
    assert torch.equal(match.index, cost.argmin(-1))
    assert torch.equal(match.cost, cost.amin(-1))
    assert torch.equal(match.copy * 6 + match.cell, match.index)
    assert torch.equal(match.position, bank.positions[match.index])
    assert torch.equal(bank.patch_scores(tokens), match.cost.reshape(2, 2, 3))


def test_training_flags_a_foreign_patch_and_local_prototypes_flag_a_misplaced_one() -> None:
    rng = np.random.default_rng(0)
    cells, train = _grid_tokens(rng, images=6, height=4, width=4, channels=8, noise=0.05)
    config = PradotConfig(layers=("layer",), alphas=(0.0, 0.3), n_prototypes=1, epochs=30, batch_size=3,
                          sinkhorn_iterations=30, ema=0.8)
    model = build_model(config, {"layer": train}, {"layer": (4, 4)})
    train_pradot(model, {"layer": train}, config, progress=False)

    normal = torch.tensor(cells + 0.05 * rng.normal(size=cells.shape), dtype=torch.float32)[None]
    foreign = normal.clone()
    foreign[0, 5] = torch.tensor(rng.normal(size=8) * 3.0, dtype=torch.float32)
    maps, scores = model({"layer": torch.cat([normal, foreign])}, (16, 16))
    assert scores[1] > scores[0]
    for member in model.members:
        patch = member.patch_scores(foreign)[0].flatten()
        assert int(patch.argmax()) == 5

    swapped = normal.clone()
    swapped[0, [0, 15]] = normal[0, [15, 0]]
    global_bank, local_bank = model.member("layer/alpha=0"), model.member("layer/alpha=0.3")
    # a normal feature in the wrong place: only the local prototypes see it
    assert local_bank.patch_scores(swapped)[0].flatten()[[0, 15]].min() > 10 * local_bank.patch_scores(normal).max()
    assert global_bank.patch_scores(swapped)[0].flatten()[[0, 15]].max() < 2 * global_bank.patch_scores(normal).max()


def test_batch_size_is_clamped_and_empty_training_set_refused() -> None:
    assert effective_batch_size(3, 64) == 3
    assert effective_batch_size(100, 64) == 64
    tokens = {"layer": torch.randn(3, 4, 2, generator=torch.Generator().manual_seed(0))}
    config = PradotConfig(layers=("layer",), alphas=(0.3,), n_prototypes=1, epochs=2, batch_size=64,
                          sinkhorn_iterations=5)
    model = build_model(config, tokens, {"layer": (2, 2)})
    before = model.members[0].features.clone()
    result = train_pradot(model, tokens, config, progress=False)
    assert (result.batch_size, result.steps, len(result.history)) == (3, 2, 2)
    assert not torch.equal(model.members[0].features, before)
    with pytest.raises(MedotError, match="training set is empty"):
        train_pradot(model, {"layer": torch.empty(0, 4, 2)}, config, progress=False)


def test_training_is_seeded_and_cancellable() -> None:
    tokens = {"layer": torch.randn(5, 4, 3, generator=torch.Generator().manual_seed(0))}
    config = PradotConfig(layers=("layer",), alphas=(0.0,), n_prototypes=2, epochs=2, batch_size=2,
                          sinkhorn_iterations=5)
    first, second = (build_model(config, tokens, {"layer": (2, 2)}) for _ in range(2))
    for model in (first, second):
        train_pradot(model, tokens, config, progress=False)
    assert torch.equal(first.members[0].features, second.members[0].features)

    events = []
    calls = iter([False, True])
    result = train_pradot(build_model(config, tokens, {"layer": (2, 2)}), tokens, config, progress=False,
                          on_event=events.append, should_stop=lambda: next(calls))
    assert (result.status, result.steps) == ("cancelled", 1)
    assert [event.kind for event in events] == ["start", "step", "cancelled"]


def test_checkpoint_round_trip_gives_identical_maps(tmp_path) -> None:
    tokens = {
        "a": torch.randn(4, 16, 3, generator=torch.Generator().manual_seed(0)),
        "b": torch.randn(4, 4, 5, generator=torch.Generator().manual_seed(1)),
    }
    config = PradotConfig(layers=("a", "b"), alphas=(0.0, 0.3), n_prototypes=2, epochs=1, batch_size=2,
                          sinkhorn_iterations=5, update_positions=True)
    model = build_model(config, tokens, {"a": (4, 4), "b": (2, 2)})
    train_pradot(model, tokens, config, progress=False)
    save_pradot(tmp_path / "model", model, backbone="lite", image_size=32, config=config, metrics={"image_auroc": 0.5})

    checkpoint = load_checkpoint(tmp_path / "model")
    restored, restored_config = model_from_checkpoint(checkpoint)
    assert restored_config == config
    assert [m.name for m in restored.members] == ["a/alpha=0", "a/alpha=0.3", "b/alpha=0", "b/alpha=0.3"]
    assert checkpoint.meta["metrics"] == {"image_auroc": 0.5}
    maps, scores = model(tokens, (32, 32))
    restored_maps, restored_scores = restored(tokens, (32, 32))
    assert torch.equal(maps, restored_maps) and torch.equal(scores, restored_scores)

    checkpoint.meta["method"] = "madpot"
    with pytest.raises(CheckpointError, match="not 'pradot'"):
        model_from_checkpoint(checkpoint)
    checkpoint.meta["method"] = "pradot"
    del checkpoint.tensors["member.3.positions"]
    with pytest.raises(CheckpointError, match="incomplete"):
        model_from_checkpoint(checkpoint)


def test_invalid_settings_are_refused_with_a_message() -> None:
    with pytest.raises(MedotError, match="alphas must be"):
        PradotConfig(alphas=(1.5,))
    with pytest.raises(MedotError, match="batch_size must be >= 1"):
        PradotConfig(batch_size=0)
