"""The PatchCore baseline: locally aware features, greedy k-center coreset, nearest-neighbour scores."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medot.methods.pradot import PatchCoreConfig, PatchCoreModel, k_center_greedy, locally_aware_features
from medot.methods.pradot.patchcore import gaussian_blur


def test_k_center_greedy_on_a_line_by_hand() -> None:
    points = torch.tensor([[0.0, 0.0], [1.0, 0.0], [2.0, 0.0], [10.0, 0.0], [6.0, 0.0]])
    chosen = k_center_greedy(points, 3, seed=0).tolist()
    first = chosen[0]
    # from any start the farthest point is an end of the segment, then the point that best splits it
    expected = {0: [0, 3, 4], 1: [1, 3, 4], 2: [2, 3, 4], 3: [3, 0, 4], 4: [4, 0, 3]}[first]
    assert chosen == expected


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_greedy_adds_the_farthest_point_each_step(seed: int) -> None:
    points = torch.rand(40, 2, generator=torch.Generator().manual_seed(seed))
    chosen = k_center_greedy(points, 8, seed=seed).tolist()
    assert len(set(chosen)) == 8
    distances = torch.cdist(points, points)
    for step in range(1, 8):
        gap = distances[:, chosen[:step]].min(dim=1).values
        assert gap[chosen[step]] == pytest.approx(float(gap.max()), abs=1e-6)


def test_locally_aware_features_average_3x3_and_upsample_to_the_finest_grid() -> None:
    fine = torch.arange(16, dtype=torch.float32).reshape(1, 16, 1)
    coarse = torch.ones(1, 4, 2)
    features, grid = locally_aware_features({"fine": fine, "coarse": coarse}, {"fine": (4, 4), "coarse": (2, 2)},
                                            ["fine", "coarse"])
    assert grid == (4, 4) and features.shape == (1, 16, 3)
    values = np.arange(16, dtype=np.float64).reshape(4, 4)
    assert float(features[0, 5, 0]) == pytest.approx(values[0:3, 0:3].mean())  # interior cell (1, 1)
    assert float(features[0, 0, 0]) == pytest.approx(values[0:2, 0:2].sum() / 9)  # zero padding counted
    corner = F.avg_pool2d(torch.ones(1, 2, 2, 2), 3, 1, 1)  # what the coarse layer becomes before upsampling
    assert torch.allclose(features[0, :, 1:], F.interpolate(corner, size=(4, 4), mode="bilinear").flatten(2)[0].T)


def test_scores_are_nearest_neighbour_distances() -> None:
    generator = torch.Generator().manual_seed(0)
    train = {"layer": torch.randn(3, 9, 4, generator=generator)}
    test = {"layer": torch.randn(2, 9, 4, generator=generator)}
    model = PatchCoreModel(["layer"], {"layer": (3, 3)}, PatchCoreConfig(coreset_ratio=0.5, blur_sigma=0.0))
    model.fit(train)
    bank = model.memory_bank
    assert bank.shape == (round(0.5 * 27), 4)
    all_train, _ = model.embed(train)
    assert all(bool((all_train.reshape(-1, 4) == row).all(1).any()) for row in bank)

    maps, scores = model(test, (3, 3))
    embedding, _ = model.embed(test)
    brute = np.array([[min(np.linalg.norm(e - m) for m in bank.numpy()) for e in image] for image in embedding.numpy()])
    np.testing.assert_allclose(maps.reshape(2, 9).numpy(), brute, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), brute.max(1), rtol=1e-5, atol=1e-5)


def test_reweighted_image_score_follows_eq_7() -> None:
    train = {"layer": torch.tensor([[[0.0, 0.0], [1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])}
    model = PatchCoreModel(["layer"], {"layer": (2, 2)},
                           PatchCoreConfig(coreset_ratio=1.0, num_neighbors=2, reweight=True, blur_sigma=0.0))
    model.fit(train)
    test = {"layer": torch.tensor([[[0.1, 0.0], [0.9, 0.0], [0.0, 2.1], [3.0, 9.0]]])}
    embedding, _ = model.embed(test)
    bank = model.memory_bank.numpy()
    patch = embedding[0].numpy()
    distances = np.linalg.norm(patch[:, None] - bank[None], axis=-1)
    worst = distances.min(1).argmax()
    nearest = distances[worst].argmin()
    support = np.argsort(np.linalg.norm(bank - bank[nearest], axis=1))[:2]
    weight = 1 - np.exp(distances[worst, nearest]) / np.exp(distances[worst, support]).sum()
    _, score = model(test, (2, 2))
    assert float(score[0]) == pytest.approx(weight * distances[worst, nearest], rel=1e-5)


def test_gaussian_blur_keeps_constants_and_mass_of_an_interior_impulse() -> None:
    constant = torch.full((1, 40, 40), 0.7)
    assert torch.allclose(gaussian_blur(constant, 4.0), constant)
    impulse = torch.zeros(1, 61, 61)
    impulse[0, 30, 30] = 1.0
    blurred = gaussian_blur(impulse, 2.0)
    assert float(blurred.sum()) == pytest.approx(1.0, abs=1e-5)
    assert int(blurred.flatten().argmax()) == 30 * 61 + 30


def test_save_and_load_give_identical_maps_and_scores(tmp_path) -> None:
    from PIL import Image

    from medot.backbones import create_backbone
    from medot.errors import CheckpointError
    from medot.methods.pradot import PatchCoreDetector, load_patchcore, load_pradot, save_patchcore
    from medot.methods.pradot.training import encode_tokens

    backbone = create_backbone("lite", device="cpu")
    rng = np.random.default_rng(0)
    paths = []
    for index in range(3):
        paths.append(tmp_path / f"normal{index}.png")
        Image.fromarray((rng.random((48, 48, 3)) * 255).astype(np.uint8)).save(paths[-1])
    tokens, grids = encode_tokens(backbone, paths, ["stride16"], progress=False)
    model = PatchCoreModel(["stride16"], grids, PatchCoreConfig(coreset_ratio=0.2, reweight=True, seed=3))
    model.fit(tokens)
    size = backbone.preprocess.image_size
    path = save_patchcore(tmp_path / "patchcore", model, backbone="lite", image_size=size, metrics={"auroc": 0.5})

    loaded = load_patchcore(path, backbone)
    fitted = PatchCoreDetector(model, backbone, {"image_size": size})
    queries = [rng.random((40, 56, 3)).astype(np.float32) for _ in range(2)]
    maps, scores = loaded.predict(queries)
    expected_maps, expected_scores = fitted.predict(queries)
    assert maps.shape == (2, size, size)
    assert torch.equal(loaded.model.memory_bank, model.memory_bank)
    assert loaded.model.config == model.config and loaded.model.grids == model.grids
    assert torch.equal(maps, expected_maps) and torch.equal(scores, expected_scores)
    assert loaded.meta["method"] == "patchcore" and loaded.meta["metrics"] == {"auroc": 0.5}
    with pytest.raises(CheckpointError, match="written by method 'patchcore', not 'pradot'"):
        load_pradot(path, backbone)
