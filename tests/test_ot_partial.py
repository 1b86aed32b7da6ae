"""medot.ot.partial against POT's entropic partial Wasserstein, plus constraints and gradients."""

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medot.errors import OTError
from medot.ot import entropic_partial_wasserstein

F64 = torch.float64


def random_problem(rows, cols, batch=None, seed=0, b_mass=1.0):
    generator = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    cost = torch.rand(*lead, rows, cols, generator=generator, dtype=F64) * 3.0
    a = torch.rand(*lead, rows, generator=generator, dtype=F64) + 0.2
    b = torch.rand(*lead, cols, generator=generator, dtype=F64) + 0.2
    return cost, a / a.sum(-1, keepdim=True), b_mass * b / b.sum(-1, keepdim=True)


@pytest.mark.parametrize(
    ("rows", "cols", "mass", "epsilon", "method"),
    [(6, 4, 0.3, 0.2, "sinkhorn"), (9, 13, 0.7, 0.5, "sinkhorn_log"), (20, 17, 1.0, 0.1, "sinkhorn")],
)
def test_same_plans_as_pot_for_a_fixed_number_of_cycles(rows, cols, mass, epsilon, method):
    cost, a, b = random_problem(rows, cols, seed=rows, b_mass=1.3)
    result = entropic_partial_wasserstein(cost, a, b, mass=mass, epsilon=epsilon, max_iter=150, tol=0.0)
    reference, log = ot.partial.entropic_partial_wasserstein(
        a.numpy(), b.numpy(), cost.numpy(), epsilon, m=mass, numItermax=150, method=method, log=True
    )
    assert float(np.abs(result.plan.numpy() - reference).max() / reference.max()) < 1e-10
    assert float(result.cost) == pytest.approx(float(log["partial_w_dist"]), rel=1e-10)


def test_converged_plan_matches_pot_run_to_convergence():
    cost, a, b = random_problem(8, 10, seed=3, b_mass=1.5)
    result = entropic_partial_wasserstein(cost, a, b, mass=0.6, epsilon=0.1, max_iter=20000, tol=1e-13)
    reference = ot.partial.entropic_partial_wasserstein(
        a.numpy(), b.numpy(), cost.numpy(), 0.1, m=0.6, numItermax=20000, method="sinkhorn_log", stopThr=1e-14
    )
    assert bool(result.diagnostics.converged)
    assert float(np.abs(result.plan.numpy() - reference).max() / reference.max()) < 1e-6


def test_plan_carries_mass_m_within_the_marginal_bounds():
    cost, a, b = random_problem(12, 7, batch=3, seed=4)
    masses = torch.tensor([0.2, 0.5, 0.9], dtype=F64)
    result = entropic_partial_wasserstein(cost, a, b, mass=masses, epsilon=0.05, max_iter=5000, tol=1e-11)
    plan = result.plan
    assert bool(result.diagnostics.converged.all())
    torch.testing.assert_close(plan.sum((-2, -1)), masses, rtol=0, atol=1e-12)
    torch.testing.assert_close(result.diagnostics.transported_mass, masses, rtol=0, atol=1e-12)
    assert float((plan.sum(-1) - a).max()) <= 1e-9
    assert float((plan.sum(-2) - b).max()) <= 1e-9
    assert float(result.diagnostics.marginal_error.max()) <= 1e-9
    entropy_term = 0.05 * torch.xlogy(plan, plan).sum((-2, -1))
    torch.testing.assert_close(result.objective, (plan * cost).sum((-2, -1)) + entropy_term)


def test_full_mass_on_equal_marginals_recovers_balanced_sinkhorn():
    cost, a, b = random_problem(6, 5, seed=5)
    partial = entropic_partial_wasserstein(cost, a, b, mass=1.0, epsilon=0.3, max_iter=20000, tol=1e-13)
    balanced = ot.sinkhorn(a.numpy(), b.numpy(), cost.numpy(), 0.3, method="sinkhorn_log", stopThr=1e-14)
    assert float(np.abs(partial.plan.numpy() - balanced).max()) < 1e-9


def test_batched_solve_equals_a_loop_of_unbatched_solves():
    cost, a, b = random_problem(5, 8, batch=3, seed=6, b_mass=1.2)
    cost = cost * torch.tensor([0.2, 1.0, 4.0], dtype=F64).view(3, 1, 1)
    options = {"mass": 0.5, "epsilon": 0.2, "max_iter": 3000, "tol": 1e-10}
    batched = entropic_partial_wasserstein(cost, a, b, **options)
    iterations = set()
    for k in range(3):
        single = entropic_partial_wasserstein(cost[k], a[k], b[k], **options)
        torch.testing.assert_close(batched.plan[k], single.plan, rtol=1e-12, atol=1e-15)
        assert int(batched.diagnostics.iterations[k]) == int(single.diagnostics.iterations)
        iterations.add(int(single.diagnostics.iterations))
    assert len(iterations) > 1


def test_unrolled_gradient_passes_gradcheck():
    cost, a, b = random_problem(4, 3, seed=7, b_mass=1.2)
    cost.requires_grad_(True)

    def transport_cost(c):
        return entropic_partial_wasserstein(c, a, b, mass=0.6, epsilon=0.3, max_iter=25, tol=0.0).cost

    assert torch.autograd.gradcheck(transport_cost, (cost,))


def test_envelope_gradient_is_the_plan_and_matches_finite_differences_of_the_objective():
    cost, a, b = random_problem(4, 3, seed=8, b_mass=1.2)
    cost.requires_grad_(True)

    def objective(c):
        return entropic_partial_wasserstein(
            c, a, b, mass=0.6, epsilon=0.3, max_iter=20000, tol=1e-14, gradient="envelope"
        ).objective

    assert torch.autograd.gradcheck(objective, (cost,), atol=1e-7)
    result = entropic_partial_wasserstein(
        cost, a, b, mass=0.6, epsilon=0.3, max_iter=20000, tol=1e-14, gradient="envelope"
    )
    (grad,) = torch.autograd.grad(result.objective, cost)
    torch.testing.assert_close(grad, result.plan)


@settings(max_examples=10, deadline=None)
@given(
    rows=st.integers(1, 8),
    cols=st.integers(1, 8),
    fraction=st.floats(0.05, 1.0),
    epsilon=st.floats(0.05, 2.0),
    seed=st.integers(0, 10_000),
)
def test_any_feasible_mass_gives_a_feasible_plan(rows, cols, fraction, epsilon, seed):
    cost, a, b = random_problem(rows, cols, seed=seed, b_mass=1.4)
    result = entropic_partial_wasserstein(
        cost, a, b, mass=fraction, epsilon=epsilon, max_iter=5000, tol=1e-10
    )
    plan = result.plan
    assert bool(torch.isfinite(plan).all()) and bool((plan >= 0).all())
    assert float(plan.sum()) == pytest.approx(fraction, abs=1e-12)
    if bool(result.diagnostics.converged):
        assert float((plan.sum(-1) - a).max()) <= 1e-7
        assert float((plan.sum(-2) - b).max()) <= 1e-7


def test_small_epsilon_large_costs_stay_finite():
    generator = torch.Generator().manual_seed(9)
    cost = torch.rand(2, 15, 11, generator=generator) * 100
    result = entropic_partial_wasserstein(cost, mass=0.5, epsilon=1e-3, max_iter=200)
    assert bool(torch.isfinite(result.plan).all())
    torch.testing.assert_close(result.plan.sum((-2, -1)), torch.full((2,), 0.5), rtol=0, atol=1e-4)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mass": 1.5}, "mass must satisfy"),
        ({"mass": 0.0}, "mass must satisfy"),
        ({"mass": 0.5, "a": torch.tensor([0.5, 0.5, 0.0], dtype=F64)}, "strictly positive"),
        (
            {"mass": 0.5, "gradient": "envelope", "a": torch.full((3,), 1 / 3, dtype=F64).requires_grad_()},
            "cost matrix only",
        ),
    ],
)
def test_invalid_inputs_raise_ot_error(kwargs, message):
    cost = torch.rand(3, 4, dtype=F64)
    with pytest.raises(OTError, match=message):
        entropic_partial_wasserstein(cost, epsilon=0.1, **kwargs)
