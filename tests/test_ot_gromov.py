"""medot.ot.gromov against POT's entropic and exact FGW, envelope gradients, and POT's silent failure."""

import warnings

import numpy as np
import ot
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from medot.errors import OTError
from medot.ot import (
    entropic_fused_gromov_wasserstein,
    fused_gromov_wasserstein_exact,
    squared_euclidean_cost,
)

F64 = torch.float64
TIGHT = {"tol": 1e-12, "inner_tol": 1e-13, "inner_max_iter": 20000, "max_iter": 3000}


def embeddings(rows, cols, dim, seed, scale=1.0, dtype=F64, batch=None):
    generator = torch.Generator().manual_seed(seed)
    lead = () if batch is None else (batch,)
    X = torch.randn(*lead, rows, dim, generator=generator, dtype=F64) * scale
    Y = torch.randn(*lead, cols, dim, generator=generator, dtype=F64) * scale
    return X.to(dtype), Y.to(dtype)


def fgw_costs(X, Y):
    return squared_euclidean_cost(X, Y), squared_euclidean_cost(X, X), squared_euclidean_cost(Y, Y)


@pytest.mark.parametrize(
    ("rows", "cols", "alpha", "epsilon"), [(6, 5, 0.1, 0.1), (5, 7, 0.5, 0.05), (8, 6, 0.9, 0.2)]
)
def test_converged_plan_and_value_match_pot_entropic_fgw(rows, cols, alpha, epsilon):
    X, Y = embeddings(rows, cols, 3, seed=rows * cols, scale=0.3)
    M, C1, C2 = fgw_costs(X, Y)
    generator = torch.Generator().manual_seed(1)
    p = torch.rand(rows, generator=generator, dtype=F64) + 0.5
    q = torch.rand(cols, generator=generator, dtype=F64) + 0.5
    p, q = p / p.sum(), q / q.sum()
    result = entropic_fused_gromov_wasserstein(M, C1, C2, p, q, alpha=alpha, epsilon=epsilon, **TIGHT)
    plan, log = ot.gromov.entropic_fused_gromov_wasserstein(
        M.numpy(), C1.numpy(), C2.numpy(), p.numpy(), q.numpy(), epsilon=epsilon, alpha=alpha,
        max_iter=3000, tol=1e-13, numItermax=20000, stopThr=1e-14, log=True,
    )
    assert bool(result.diagnostics.converged)
    assert float(np.abs(result.plan.numpy() - plan).max() / plan.max()) < 1e-6
    assert float(result.value) == pytest.approx(float(log["fgw_dist"]), rel=1e-6)


def test_objective_matches_pot_solve_gromov_entropic_value():
    # ot.solve_gromov (POT 0.9.7) does not forward `reg` to its entropic FGW solver, which then runs
    # with its default epsilon=0.1; reg=0.1 makes the two coincide. Its value adds reg * sum T log T.
    X, Y = embeddings(6, 5, 3, seed=11, scale=0.3)
    M, C1, C2 = fgw_costs(X, Y)
    result = entropic_fused_gromov_wasserstein(M, C1, C2, alpha=0.3, epsilon=0.1, **TIGHT)
    reference = ot.solve_gromov(
        C1.numpy(), C2.numpy(), M=M.numpy(), alpha=0.3, reg=0.1, max_iter=3000, tol=1e-12
    )
    assert float(result.objective) == pytest.approx(float(reference.value), rel=1e-6)
    pot_value = float(reference.value_linear + reference.value_quad)
    assert float(result.value) == pytest.approx(pot_value, rel=1e-6)


def test_marginals_hold_and_batched_equals_loop():
    X, Y = embeddings(5, 4, 3, seed=2, scale=0.4, batch=3)
    M, C1, C2 = fgw_costs(X, Y)
    options = {"alpha": 0.5, "epsilon": 0.05, "tol": 1e-10, "inner_tol": 1e-11, "inner_max_iter": 5000}
    batched = entropic_fused_gromov_wasserstein(M, C1, C2, **options)
    assert bool(batched.diagnostics.converged.all())
    torch.testing.assert_close(batched.plan.sum(-1), torch.full((3, 5), 0.2, dtype=F64), rtol=0, atol=1e-10)
    torch.testing.assert_close(batched.plan.sum(-2), torch.full((3, 4), 0.25, dtype=F64), rtol=0, atol=1e-10)
    iterations = set()
    for k in range(3):
        single = entropic_fused_gromov_wasserstein(M[k], C1[k], C2[k], **options)
        assert single.plan.shape == (5, 4) and single.value.ndim == 0
        torch.testing.assert_close(batched.plan[k], single.plan, rtol=1e-10, atol=1e-13)
        assert int(batched.diagnostics.iterations[k]) == int(single.diagnostics.iterations)
        assert int(batched.diagnostics.inner_iterations[k]) == int(single.diagnostics.inner_iterations)
        iterations.add(int(single.diagnostics.iterations))
    assert len(iterations) > 1


def test_envelope_gradient_to_embeddings_matches_finite_differences_of_the_converged_objective():
    X, Y = embeddings(3, 3, 2, seed=3, scale=0.5)
    options = {"alpha": 0.5, "epsilon": 0.1, "tol": 1e-11, "inner_tol": 1e-12, "inner_max_iter": 20000}

    def objective(X, Y):
        return entropic_fused_gromov_wasserstein(*fgw_costs(X, Y), **options).objective

    assert torch.autograd.gradcheck(objective, (X.requires_grad_(), Y.requires_grad_()), eps=1e-6, atol=1e-6)


def test_envelope_gradients_in_the_cost_matrices_have_the_closed_form():
    X, Y = embeddings(5, 4, 3, seed=4, scale=0.5)
    M, C1, C2 = (c.requires_grad_() for c in fgw_costs(X, Y))
    alpha = 0.3
    result = entropic_fused_gromov_wasserstein(M, C1, C2, alpha=alpha, epsilon=0.05, **TIGHT)
    grad_M, grad_C1, grad_C2 = torch.autograd.grad(result.value_plan_fixed, (M, C1, C2))
    T = result.plan
    p, q = T.sum(-1), T.sum(-2)
    torch.testing.assert_close(grad_M, (1 - alpha) * T)
    torch.testing.assert_close(grad_C1, 2 * alpha * (C1.detach() * torch.outer(p, p) - T @ C2.detach() @ T.T))
    torch.testing.assert_close(grad_C2, 2 * alpha * (C2.detach() * torch.outer(q, q) - T.T @ C1.detach() @ T))


def test_unscaled_costs_make_pot_return_a_silent_zero_but_not_medot():
    X, Y = embeddings(6, 6, 512, seed=0, scale=0.16, dtype=torch.float32)
    M, C1, C2 = fgw_costs(X, Y)
    assert 20.0 < float(M.mean()) < 32.0  # squared-Euclidean costs around 26, as in K-MaT
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        pot_value = ot.gromov.entropic_fused_gromov_wasserstein2(
            M, C1, C2, epsilon=0.1, alpha=0.1, max_iter=100
        )
    assert float(pot_value) == 0.0
    assert any("failed to produce a transport plan" in str(w.message) for w in caught)

    result = entropic_fused_gromov_wasserstein(M, C1, C2, alpha=0.1, epsilon=0.1, max_iter=100)
    exact = fused_gromov_wasserstein_exact(M.double(), C1.double(), C2.double(), alpha=0.1)
    assert bool(torch.isfinite(result.plan).all())
    assert float(result.plan.sum()) == pytest.approx(1.0, abs=1e-4)
    assert float(result.value) == pytest.approx(float(exact.value), rel=0.05)


def test_alpha_one_half_float64_pot_failure_is_solved_too():
    X, Y = embeddings(6, 6, 512, seed=1, scale=0.16)
    M, C1, C2 = fgw_costs(X, Y)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot_plan = ot.gromov.entropic_fused_gromov_wasserstein(
            M.numpy(), C1.numpy(), C2.numpy(), epsilon=0.1, alpha=0.5, max_iter=100
        )
    assert float(pot_plan.sum()) == 0.0
    result = entropic_fused_gromov_wasserstein(M, C1, C2, alpha=0.5, epsilon=0.1, max_iter=100)
    exact = fused_gromov_wasserstein_exact(M, C1, C2, alpha=0.5)
    assert float(result.diagnostics.marginal_error) < 1e-6
    assert float(result.value) == pytest.approx(float(exact.value), rel=0.05)


def test_exact_wrapper_matches_pot_and_carries_its_gradient():
    X, Y = embeddings(5, 4, 3, seed=5)
    M, C1, C2 = (c.requires_grad_() for c in fgw_costs(X, Y))
    exact = fused_gromov_wasserstein_exact(M, C1, C2, alpha=0.4)
    reference = ot.gromov.fused_gromov_wasserstein2(
        M.detach().numpy(), C1.detach().numpy(), C2.detach().numpy(), alpha=0.4
    )
    assert float(exact.value.detach()) == pytest.approx(float(reference), rel=1e-10)
    (grad_M,) = torch.autograd.grad(exact.value, M)
    torch.testing.assert_close(grad_M, 0.6 * exact.plan.detach())


@settings(max_examples=6, deadline=None)
@given(
    rows=st.integers(2, 6),
    cols=st.integers(2, 6),
    alpha=st.floats(0.0, 1.0),
    epsilon=st.floats(0.05, 1.0),
    seed=st.integers(0, 1000),
)
def test_plans_are_couplings_and_values_are_non_negative(rows, cols, alpha, epsilon, seed):
    X, Y = embeddings(rows, cols, 2, seed=seed, scale=0.5)
    options = {"max_iter": 200, "tol": 1e-8, "inner_tol": 1e-10, "inner_max_iter": 2000}
    result = entropic_fused_gromov_wasserstein(*fgw_costs(X, Y), alpha=alpha, epsilon=epsilon, **options)
    plan = result.plan
    assert bool(torch.isfinite(plan).all()) and bool((plan >= 0).all())
    torch.testing.assert_close(plan.sum(-1), torch.full((rows,), 1 / rows, dtype=F64), rtol=0, atol=1e-12)
    if bool(result.diagnostics.inner_converged):
        assert float(result.diagnostics.marginal_error) < 1e-9
    assert float(result.value) >= -1e-12


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"alpha": 1.5}, "alpha"),
        ({"C1": torch.zeros(3, 3, dtype=F64)}, "C1 must be"),
        ({"p": torch.full((4,), 0.25, dtype=F64, requires_grad=True)}, "does not differentiate"),
        ({"q": torch.full((3,), 0.5, dtype=F64)}, "equal mass"),
    ],
)
def test_invalid_inputs_raise_ot_error(change, message):
    X, Y = embeddings(4, 3, 2, seed=6)
    M, C1, C2 = fgw_costs(X, Y)
    arguments = {"M": M, "C1": C1, "C2": C2, **change}
    with pytest.raises(OTError, match=message):
        entropic_fused_gromov_wasserstein(**arguments)


def test_costs_beyond_float32_resolution_raise_a_clear_error():
    X, Y = embeddings(6, 6, 512, seed=7, scale=30.0, dtype=torch.float32)
    with pytest.raises(OTError, match="float64"):
        entropic_fused_gromov_wasserstein(
            *fgw_costs(X, Y), alpha=0.1, epsilon=1e-3, max_iter=5, inner_max_iter=50
        )


def test_non_finite_iterates_stop_the_solve_at_once_instead_of_after_its_budget():
    # (1 - alpha) M / epsilon overflows float32: the first outer iteration already fails
    X, Y = embeddings(4, 5, 2, seed=11, dtype=torch.float32)
    M, C1, C2 = fgw_costs(X, Y)
    with pytest.raises(OTError, match=r"non-finite iterates in problem 0 at iteration 1 "):
        entropic_fused_gromov_wasserstein(M * 1e30, C1, C2, epsilon=1e-12, max_iter=10**9)


def test_unconverged_solve_warns_with_the_fix_to_try():
    from medot.errors import OTConvergenceWarning

    X, Y = embeddings(6, 5, 3, seed=12)
    with pytest.warns(OTConvergenceWarning, match="increase max_iter / inner_max_iter"):
        result = entropic_fused_gromov_wasserstein(*fgw_costs(X, Y), alpha=0.5, epsilon=0.05, max_iter=2)
    assert not bool(result.diagnostics.converged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        entropic_fused_gromov_wasserstein(*fgw_costs(X, Y), alpha=0.5, epsilon=0.05, max_iter=2, tol=0.0)


def test_each_output_carries_the_gradient_its_name_says():
    X, Y = embeddings(5, 4, 3, seed=13, scale=0.5)
    M, C1, C2 = (c.requires_grad_() for c in fgw_costs(X, Y))
    options = {"alpha": 0.5, "epsilon": 0.05, **TIGHT}
    result = entropic_fused_gromov_wasserstein(M, C1, C2, **options)
    # envelope mode: value has no gradient (its derivative also moves through the plan) ...
    assert not result.value.requires_grad and not result.plan.requires_grad
    # ... objective's exact gradient is the plan-fixed gradient, available under that name
    by_objective = torch.autograd.grad(result.objective, (M, C1, C2), retain_graph=True)
    by_plan_fixed = torch.autograd.grad(result.value_plan_fixed, (M, C1, C2))
    for left, right in zip(by_objective, by_plan_fixed):
        assert torch.equal(left, right)
    assert float(result.value_plan_fixed.detach()) == float(result.value)
    with pytest.raises(OTError, match="gradient"):
        entropic_fused_gromov_wasserstein(M, C1, C2, gradient="implicit", **options)


def test_unrolled_value_gradient_is_its_derivative_and_the_plan_fixed_one_is_not():
    X, Y = embeddings(4, 3, 2, seed=14, scale=0.5)
    options = {"alpha": 0.5, "epsilon": 0.1, **TIGHT}

    def value(Y, gradient):
        return entropic_fused_gromov_wasserstein(*fgw_costs(X, Y), gradient=gradient, **options)

    assert torch.autograd.gradcheck(
        lambda Y: value(Y, "unrolled").value, (Y.clone().requires_grad_(),), eps=1e-6, atol=1e-6
    )
    leaf = Y.clone().requires_grad_()
    (unrolled,) = torch.autograd.grad(value(leaf, "unrolled").value, leaf)
    leaf = Y.clone().requires_grad_()
    (plan_fixed,) = torch.autograd.grad(value(leaf, "envelope").value_plan_fixed, leaf)
    assert float((unrolled - plan_fixed).norm() / unrolled.norm()) > 0.05


def test_float32_large_structure_matrices_warn_once_with_the_fix_and_the_fix_converges():
    """Issue #16 item 4: float32 FGW on structure matrices in the tens (here up to 70, epsilon 0.5)
    used to run out its budget silently; it now warns once, naming the fixes, and the float64 fix
    with a larger inner budget converges without a warning. (The two plans need not be close: FGW
    is non-convex and the unconverged float32 iterate heads for another sharp local optimum.)"""
    from medot.errors import OTConvergenceWarning

    X, Y = embeddings(8, 7, 3, seed=5, scale=2.0)
    M, C1, C2 = fgw_costs(X, Y)
    assert 60.0 < float(C1.max()) < 80.0
    options = {"alpha": 0.5, "epsilon": 0.5, "max_iter": 30, "inner_max_iter": 200}
    with pytest.warns(OTConvergenceWarning, match=r"rescale C1 and C2 .*or use float64") as caught:
        single = entropic_fused_gromov_wasserstein(M.float(), C1.float(), C2.float(), **options)
    assert len([w for w in caught if issubclass(w.category, OTConvergenceWarning)]) == 1
    assert not bool(single.diagnostics.converged)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fixed = entropic_fused_gromov_wasserstein(M, C1, C2, **{**options, "inner_max_iter": 5000})
    assert bool(fixed.diagnostics.converged)
    assert float(fixed.diagnostics.marginal_error) < 1e-5
