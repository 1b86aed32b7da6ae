"""Which gradient is the derivative of which FGW number? (issue #16 item 1, K-MaT's L_fgw.)

On K-MaT-shaped problems (C class embeddings per modality on the unit sphere, d = 512, uniform
weights, M = squared Euclidean, D = Euclidean, as ``medot.methods.kmat.losses``) this compares,
along random unit directions of the low-end embeddings, the directional derivative that each
gradient predicts with central finite differences of the converged numbers:

* the envelope gradient (what ``objective`` and ``value_plan_fixed`` back-propagate) against
  finite differences of ``objective`` and of ``value``;
* the unrolled gradient of ``value`` (``gradient="unrolled"``) against finite differences of
  ``value``.

float64, tight tolerances, so the finite differences resolve ~1e-8. Run from the repository root::

    python -m benchmarks.fgw_gradient_check
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from medot.ot import entropic_fused_gromov_wasserstein, euclidean_cost, squared_euclidean_cost

TIGHT = {"tol": 1e-12, "inner_tol": 1e-13, "max_iter": 5000, "inner_max_iter": 20000}


def solve(high: torch.Tensor, low: torch.Tensor, alpha: float, epsilon: float, gradient: str):
    low_unit = F.normalize(low, dim=-1)
    cost = squared_euclidean_cost(high, low_unit)
    return entropic_fused_gromov_wasserstein(
        cost, euclidean_cost(high, high), euclidean_cost(low_unit, low_unit),
        alpha=alpha, epsilon=epsilon, gradient=gradient, **TIGHT,
    )


def main() -> None:
    torch.set_num_threads(1)
    print("| classes | alpha | epsilon | envelope vs d objective | envelope vs d value | unrolled vs d value |")
    print("|---|---|---|---|---|---|")
    for classes, alpha, epsilon in ((3, 0.1, 0.1), (6, 0.1, 0.1), (6, 0.5, 0.1), (6, 0.5, 0.02)):
        generator = torch.Generator().manual_seed(classes)
        high = F.normalize(torch.randn(classes, 512, generator=generator, dtype=torch.float64), dim=-1)
        low = torch.randn(classes, 512, generator=generator, dtype=torch.float64)
        errors = {"objective": [], "value": [], "unrolled": []}
        for _ in range(3):
            direction = torch.randn(classes, 512, generator=generator, dtype=torch.float64)
            direction = direction / direction.norm()
            step = 1e-5

            def numbers(shift: float):
                with torch.no_grad():
                    result = solve(high, low + shift * direction, alpha, epsilon, "envelope")
                return float(result.objective), float(result.value)

            (obj_plus, val_plus), (obj_minus, val_minus) = numbers(step), numbers(-step)
            fd_objective = (obj_plus - obj_minus) / (2 * step)
            fd_value = (val_plus - val_minus) / (2 * step)
            leaf = low.clone().requires_grad_()
            (envelope,) = torch.autograd.grad(solve(high, leaf, alpha, epsilon, "envelope").objective, leaf)
            leaf = low.clone().requires_grad_()
            (unrolled,) = torch.autograd.grad(solve(high, leaf, alpha, epsilon, "unrolled").value, leaf)
            predicted, predicted_unrolled = float((envelope * direction).sum()), float((unrolled * direction).sum())
            errors["objective"].append(abs(predicted - fd_objective) / abs(fd_objective))
            errors["value"].append(abs(predicted - fd_value) / abs(fd_value))
            errors["unrolled"].append(abs(predicted_unrolled - fd_value) / abs(fd_value))
        cells = " | ".join(f"{min(v):.1e}–{max(v):.1e}" for v in errors.values())
        print(f"| {classes} | {alpha} | {epsilon} | {cells} |", flush=True)
    print("(relative error of the predicted directional derivative, 3 random directions each)")


if __name__ == "__main__":
    main()
