"""medot.ot.costs against scikit-learn / POT references and hand-computed grids."""

import ot
import pytest
import torch
from sklearn.metrics.pairwise import cosine_distances

from medot.errors import OTError
from medot.ot import (
    barycentric_projection,
    cosine_cost,
    euclidean_cost,
    grid_distance,
    grid_positions,
    normalize_by_max,
    sinkhorn,
    squared_euclidean_cost,
)

F64 = torch.float64


def clouds(batch=None, rows=6, cols=4, dim=5, seed=0):
    generator = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    return (
        torch.randn(*lead, rows, dim, generator=generator, dtype=F64),
        torch.randn(*lead, cols, dim, generator=generator, dtype=F64),
    )


def test_cosine_cost_matches_scikit_learn_and_is_batched():
    X, Y = clouds(batch=2)
    cost = cosine_cost(X, Y)
    assert cost.shape == (2, 6, 4)
    for k in range(2):
        torch.testing.assert_close(cost[k], torch.from_numpy(cosine_distances(X[k].numpy(), Y[k].numpy())))


def test_euclidean_costs_match_pot_dist():
    X, Y = clouds()
    torch.testing.assert_close(squared_euclidean_cost(X, Y), ot.dist(X, Y, metric="sqeuclidean"))
    torch.testing.assert_close(euclidean_cost(X, Y), ot.dist(X, Y, metric="euclidean"))


def test_costs_between_identical_points_are_zero_with_finite_gradients():
    X, _ = clouds(rows=40)
    X.requires_grad_(True)
    squared = squared_euclidean_cost(X, X)
    distance = euclidean_cost(X, X)
    assert float(squared.detach().min()) >= 0.0
    assert float(squared.detach().diagonal().abs().max()) < 1e-12
    (grad,) = torch.autograd.grad(distance.sum() + squared.sum(), X)
    assert bool(torch.isfinite(grad).all())


def test_grid_positions_are_cell_centres_in_row_major_order():
    positions = grid_positions(2, 3, dtype=F64)
    expected = torch.tensor(
        [[0.25, 1 / 6], [0.25, 0.5], [0.25, 5 / 6], [0.75, 1 / 6], [0.75, 0.5], [0.75, 5 / 6]], dtype=F64
    )
    torch.testing.assert_close(positions, expected)


def test_grid_distance_is_exact_between_neighbours():
    distance = grid_distance(17, 17, dtype=F64)
    assert distance.shape == (289, 289)
    assert float(distance.diagonal().abs().max()) == 0.0
    torch.testing.assert_close(distance, distance.T)
    assert float(distance[0, 1]) == pytest.approx(1 / 17, rel=1e-12)
    assert float(distance[0, 17]) == pytest.approx(1 / 17, rel=1e-12)
    assert float(distance[0, 288]) == pytest.approx(2**0.5 * 16 / 17, rel=1e-12)
    squared = grid_distance(3, 4, squared=True, dtype=F64)
    torch.testing.assert_close(squared, grid_distance(3, 4, dtype=F64) ** 2)


def test_normalize_by_max_scales_each_problem_and_leaves_zero_costs_alone():
    cost = torch.stack([torch.full((3, 2), 4.0, dtype=F64), torch.zeros(3, 2, dtype=F64)])
    cost[0, 1, 1] = 8.0
    cost.requires_grad_(True)
    normalised = normalize_by_max(cost)
    values = normalised.detach()
    assert float(values[0].max()) == 1.0 and float(values[0, 0, 0]) == 0.5
    assert float(values[1].abs().max()) == 0.0
    (grad,) = torch.autograd.grad(normalised.sum(), cost)
    assert bool(torch.isfinite(grad).all())


def test_barycentric_projection_of_a_permutation_plan_permutes_the_targets():
    _, Y = clouds(cols=4)
    plan = torch.zeros(4, 4, dtype=F64)
    permutation = torch.tensor([2, 0, 3, 1])
    plan[torch.arange(4), permutation] = 0.25
    torch.testing.assert_close(barycentric_projection(plan, Y), Y[permutation])


def test_barycentric_projection_averages_rows_and_maps_empty_rows_to_zero():
    X, Y = clouds(batch=2)
    plan = sinkhorn(squared_euclidean_cost(X, Y), epsilon=1.0).plan.clone()
    plan[:, 0] = 0.0
    projected = barycentric_projection(plan, Y)
    expected = (plan @ Y) / plan.sum(-1, keepdim=True)
    torch.testing.assert_close(projected[:, 1:], expected[:, 1:])
    assert float(projected[:, 0].abs().max()) == 0.0


def test_mismatched_shapes_raise_ot_error():
    with pytest.raises(OTError, match="same d"):
        cosine_cost(torch.randn(3, 4), torch.randn(2, 5))
    with pytest.raises(OTError, match="target columns"):
        barycentric_projection(torch.rand(3, 4), torch.randn(5, 2))
    with pytest.raises(OTError, match="grid size"):
        grid_positions(0, 3)
