"""PRADOT-sized Sinkhorn at 1 and 2 torch threads, against the hardware floors (issue #16 item 3).

Times ``sinkhorn(cost, epsilon=0.01, max_iter=ITERATIONS, tol=0)`` (float32, no gradient, costs
uniform in [0, 2)) with the CPU loop of ``medot.ot.sinkhorn``:

* ``one exp``: the default no-grad CPU loop, one exponentiation of the kernel per iteration
  (``medot.ot._kernels.scaling_pair``: the second half-update re-uses the first one's exponentials);
  blocks of 128 Ki elements at 1 thread, at most 8 blocks per pass at several threads;
* ``two LSE``: the previous loop, two blocked log-sum-exp reductions per iteration (what autograd
  records, and what runs off the CPU), selected here by switching the one-exp loop off.

Both loops and both thread counts are interleaved in one process, ``--repeats`` rounds, and the
median is printed next to two floors measured in the same process: the **exp floor**,
``ITERATIONS`` x the time of ``torch.exp(kernel, out=buffer)`` over the whole ``[N, M]`` kernel
(a log-domain solver must exponentiate every entry at least once per iteration; the kernel is
clamped at ``medot.ot._kernels._exponent_floor`` first, as the solver does, so that no result is
subnormal), and the
**bandwidth floor**, ``2 x ITERATIONS`` reads of the kernel (``kernel.sum()``), which is what a
multiplicative (kernel-domain) Sinkhorn, two matrix-vector products per iteration, would need if it
were usable (at epsilon = 0.01 on costs in [0, 2) its float32 kernel ``exp(-C/epsilon)`` underflows
for C > 0.87, so medot stays in the log domain). Run from the repository root::

    python -m benchmarks.ot_threads_bench                  # 12,544 x 3,136, 100 iterations
    python -m benchmarks.ot_threads_bench --quick          # 3,136 x 784, 10 iterations
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

import medot.ot._kernels as kernels
from medot.ot import sinkhorn

SINKHORN_MODULE = sys.modules["medot.ot.sinkhorn"]
ONE_EXP = SINKHORN_MODULE._fusable


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="3,136 x 784 and 10 iterations")
    parser.add_argument("--repeats", type=int, default=1, help="interleaved rounds (default: 1)")
    parser.add_argument("--iterations", type=int, default=None, help="Sinkhorn iterations (default: 100; quick 10)")
    args = parser.parse_args()
    rows, cols = (3136, 784) if args.quick else (12544, 3136)
    iterations = args.iterations or (10 if args.quick else 100)
    cost = torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)) * 2.0
    kernel = (cost / -0.01).clamp_(min=kernels._exponent_floor(cost.dtype))  # no subnormal results either
    buffer = torch.empty_like(kernel)
    loops = {"one exp": ONE_EXP, "two LSE": lambda *tensors: False}
    timings: dict[tuple[str, int], list[float]] = {}
    exp_floor: dict[int, list[float]] = {}
    read_floor: dict[int, list[float]] = {}

    def solve() -> None:
        with torch.no_grad():
            sinkhorn(cost, epsilon=0.01, max_iter=iterations, tol=0.0)

    for _ in range(args.repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            exp_floor.setdefault(threads, []).append(
                iterations * min(timed(lambda: torch.exp(kernel, out=buffer)) for _ in range(3))
            )
            read_floor.setdefault(threads, []).append(2 * iterations * min(timed(kernel.sum) for _ in range(3)))
            for name, choice in loops.items():
                SINKHORN_MODULE._fusable = choice
                timings.setdefault((name, threads), []).append(timed(solve))
                print(f"  round: {threads} thread(s), {name}: {timings[(name, threads)][-1]:.2f} s", flush=True)
    SINKHORN_MODULE._fusable = ONE_EXP
    print(f"Sinkhorn {rows:,} x {cols:,} float32, {iterations} iterations, median of {args.repeats} round(s):")
    for threads in (1, 2):
        floor = statistics.median(exp_floor[threads])
        reads = statistics.median(read_floor[threads])
        print(
            f"  {threads} thread(s): exp floor ({iterations} exp passes) {floor:.2f} s; "
            f"bandwidth floor ({2 * iterations} reads) {reads:.2f} s"
        )
        for name in loops:
            values = timings[(name, threads)]
            median = statistics.median(values)
            print(
                f"    {name}: {median:.2f} s (range {min(values):.2f}-{max(values):.2f}), "
                f"{median / floor:.2f}x the exp floor, {median / reads:.1f}x the bandwidth floor"
            )


if __name__ == "__main__":
    main()
