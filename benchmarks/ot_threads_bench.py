"""Sinkhorn on a PRADOT-sized problem at 1 and 2 torch threads: old vs new CPU blocking (issue #16 item 3).

The log-domain reductions run block of rows by block of rows (``medot.ot._kernels``). The old
policy used cache-sized blocks (128 Ki elements: ~300 blocks, ~1,500 parallel regions per
reduction at 12,544 x 3,136); the new one caps a reduction at 8 blocks. Both policies and both
thread counts are timed interleaved in one process, ``--repeats`` rounds, 10 Sinkhorn iterations
each (``tol=0``, no gradient, float32, costs uniform in [0, 2), epsilon 0.01), and the median is
printed with the memory-bandwidth floor: one reduction must read the ``[N, M]`` log-kernel once,
so 10 iterations (20 reductions) cannot beat 20 x the time of ``kernel.sum()`` (a single pass).
Run from the repository root::

    python -m benchmarks.ot_threads_bench            # 12,544 x 3,136
    python -m benchmarks.ot_threads_bench --quick    # 3,136 x 784
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import medot.ot._kernels as kernels
from medot.ot import sinkhorn

OLD_MAX_BLOCKS = 1 << 30  # the old policy: blocks of _BLOCK_ELEMENTS_CPU, however many


def timed(step) -> float:
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    rows, cols = (3136, 784) if args.quick else (12544, 3136)
    cost = torch.rand(rows, cols, generator=torch.Generator().manual_seed(0)) * 2.0
    kernel = cost / -0.01
    new_max_blocks = kernels._MAX_CPU_BLOCKS
    policies = {"old (128 Ki-element blocks)": OLD_MAX_BLOCKS, "new (<= 8 blocks)": new_max_blocks}
    timings: dict[tuple[str, int], list[float]] = {}
    floors: dict[int, list[float]] = {}

    def solve() -> None:
        with torch.no_grad():
            sinkhorn(cost, epsilon=0.01, max_iter=10, tol=0.0)

    for _ in range(args.repeats):
        for threads in (1, 2):
            torch.set_num_threads(threads)
            floors.setdefault(threads, []).append(20 * min(timed(kernel.sum) for _ in range(3)))
            for name, max_blocks in policies.items():
                kernels._MAX_CPU_BLOCKS = max_blocks
                timings.setdefault((name, threads), []).append(timed(solve))
                print(f"  round: {threads} thread(s), {name}: {timings[(name, threads)][-1]:.2f} s", flush=True)
    kernels._MAX_CPU_BLOCKS = new_max_blocks
    print(f"Sinkhorn {rows:,} x {cols:,} float32, 10 iterations, median of {args.repeats} interleaved rounds:")
    for threads in (1, 2):
        floor = statistics.median(floors[threads])
        print(f"  {threads} thread(s): bandwidth floor (20 passes over the kernel) {floor:.2f} s")
        for name in policies:
            median = statistics.median(timings[(name, threads)])
            spread = f"{min(timings[(name, threads)]):.2f}-{max(timings[(name, threads)]):.2f}"
            print(f"    {name}: {median:.2f} s (range {spread}), {median / floor:.1f}x the floor")


if __name__ == "__main__":
    main()
