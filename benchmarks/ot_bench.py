"""medot.ot against POT on the three medot workloads, like for like, side by side in one run.

Every row states, and equalises between the solvers it compares, the torch threads (``--threads``,
default 1; POT's numpy backend is single-threaded), the dtype (float32), the stopping rule (a fixed
number of iterations for both: ``tol=0`` here, ``stopThr=0`` / ``-1`` in POT) and the gradient
(none, or the same kind on both sides). Batching is a separate row, never folded into a ratio
against a loop.

* (a) MADPOT-like entropic partial OT, 32 images x 289 patch tokens x 14 prompts (cosine costs,
  mass 0.8, epsilon 0.1), 100 Dykstra cycles, no gradient: medot one problem per call vs POT's
  numpy loop (same loop); medot one batched call vs the same POT loop (batching). POT 0.9.7's
  ``ot.batch`` has no partial solver.
* (b) PRADOT-like balanced log-Sinkhorn 12,544 x 3,136, d = 1024 (cosine costs, epsilon 0.01),
  100 iterations, no gradient: medot vs POT numpy ``sinkhorn_log`` (1 thread), POT's torch backend
  and ``ot.batch.solve_batch(method="log_sinkhorn")`` at the same torch threads. Peak memory: growth
  of ``ru_maxrss`` in a subprocess per solver (CPU), ``max_memory_allocated`` (CUDA).
* (c) K-MaT-like entropic FGW 6 x 6, d = 512 (squared-Euclidean costs normalised by their max,
  alpha 0.1, epsilon 0.1), fixed 20 outer x 50 inner iterations for both, forward + backward:
  medot ``gradient="unrolled"`` vs POT torch ``entropic_fused_gromov_wasserstein2`` (both autograd
  through every iteration: the same gradient), one call per problem; then medot's envelope gradient
  (the one K-MaT trains on) one call per problem and batched, as separate rows against medot's own
  unrolled loop. ``ot.batch.solve_gromov_batch`` solves a different problem (proximal point on the
  unregularised FGW), so it is not a baseline here.

Run from the repository root::

    python -m benchmarks.ot_bench --quick            # small sizes, checks the script end to end
    python -m benchmarks.ot_bench                    # the sizes above on CPU (+ CUDA if present)
    python -m benchmarks.ot_bench --threads 2        # both sides at 2 torch threads
    python -m benchmarks.ot_bench --fgw-calls 100    # full sizes, fewer FGW problems in (c)
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import ot
import ot.batch
import torch

from medot.ot import (
    cosine_cost,
    entropic_fused_gromov_wasserstein,
    entropic_partial_wasserstein,
    normalize_by_max,
    sinkhorn,
    squared_euclidean_cost,
)

MADPOT_TARGET = 5.0
PRADOT_TARGET = 1.0
KMAT_TARGET = 3.0
FGW_OUTER, FGW_INNER = 20, 50
FGW_OPTIONS = {"alpha": 0.1, "epsilon": 0.1}
MEDOT_FGW_STOPPING = {"max_iter": FGW_OUTER, "tol": 0.0, "inner_max_iter": FGW_INNER, "inner_tol": 0.0}
POT_FGW_STOPPING = {"max_iter": FGW_OUTER, "tol": 0.0, "numItermax": FGW_INNER, "stopThr": 0.0}
"""The same fixed iteration counts on both sides (POT forwards ``numItermax`` / ``stopThr`` to its
inner Sinkhorn)."""


@dataclass(frozen=True)
class Sizes:
    """Problem sizes of one run (full or ``--quick``)."""

    images: int
    tokens: int
    prompts: int
    embeddings: int
    prototypes: int
    embedding_dim: int
    fgw_calls: int
    repeats: int


FULL = Sizes(
    images=32, tokens=289, prompts=14, embeddings=12544, prototypes=3136, embedding_dim=1024,
    fgw_calls=500, repeats=5,
)
QUICK = Sizes(
    images=8, tokens=289, prompts=14, embeddings=1024, prototypes=256, embedding_dim=128,
    fgw_calls=10, repeats=2,
)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(
    step: Callable[[], object], device: torch.device, repeats: int, warmup: Callable[[], object] | None = None
) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after one untimed warm-up run (of
    ``warmup`` if given, e.g. a single call of a loop, else of ``step``)."""
    (warmup or step)()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def report(name: str, ours: float, theirs: float, target: float | None, conditions: str) -> None:
    """One row: what is compared, under which equal conditions, both times and the ratio."""
    ratio = theirs / ours
    verdict = "" if target is None else (" (meets" if ratio >= target else " (misses") + f" x{target:g})"
    timings = f"{ours:.4f} s vs {theirs:.4f} s"
    print(f"  {name} [{conditions}]: {timings} | ratio x{ratio:.2f}{verdict}")


def as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def madpot(device: torch.device, sizes: Sizes) -> None:
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randn(sizes.prompts, 512, generator=generator)
    nearest = torch.randint(0, sizes.prompts, (sizes.images, sizes.tokens), generator=generator)
    tokens = prompts[nearest] + 1.5 * torch.randn(sizes.images, sizes.tokens, 512, generator=generator)
    cost = cosine_cost(tokens.to(device), prompts.to(device).expand(sizes.images, -1, -1)).contiguous()
    problems = [c.numpy() for c in cost] if device.type == "cpu" else list(cost)

    def ours_batched() -> torch.Tensor:
        return entropic_partial_wasserstein(cost, mass=0.8, epsilon=0.1, max_iter=100, tol=0.0).plan

    def ours_loop() -> list:
        return [entropic_partial_wasserstein(c, mass=0.8, epsilon=0.1, max_iter=100, tol=0.0).plan for c in cost]

    def theirs() -> list:
        def solve(c):
            a, b = ot.unif(sizes.tokens, type_as=c), ot.unif(sizes.prompts, type_as=c)
            return ot.partial.entropic_partial_wasserstein(a, b, c, 0.1, m=0.8, numItermax=100, stopThr=-1.0)

        return [solve(c) for c in problems]

    gap = float(np.abs(as_numpy(ours_batched()[0]) - as_numpy(theirs()[0])).max())
    shape = f"{sizes.images} x {sizes.tokens} x {sizes.prompts}"
    print(f"(a) MADPOT-like partial OT, {shape}, float32 (largest plan gap to POT {gap:.1e}):")
    conditions = f"{torch.get_num_threads()} torch thread(s) vs POT numpy, float32, 100 cycles each, no gradient"
    loop_time = median_seconds(ours_loop, device, sizes.repeats)
    batched_time = median_seconds(ours_batched, device, sizes.repeats)
    pot_time = median_seconds(theirs, device, sizes.repeats)
    report("medot loop vs POT loop", loop_time, pot_time, MADPOT_TARGET, conditions)
    report("batching: medot one call vs medot loop", batched_time, loop_time, None, conditions)


def pradot_cost(sizes: Sizes, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(sizes.embeddings, sizes.embedding_dim, generator=generator)
    prototypes = torch.randn(sizes.prototypes, sizes.embedding_dim, generator=generator)
    return cosine_cost(embeddings.to(device), prototypes.to(device))


PRADOT_SOLVERS = ("medot", "pot-numpy", "pot-torch", "pot-batch")


def solve_pradot(solver: str, cost: torch.Tensor | np.ndarray) -> object:
    """100 iterations, no stopping test, no gradient, on ``cost`` (numpy for POT's numpy backend)."""
    if solver == "medot":
        with torch.no_grad():
            return sinkhorn(cost, epsilon=0.01, max_iter=100, tol=0.0).plan
    if solver == "pot-batch":
        with torch.no_grad():
            return ot.batch.solve_batch(
                cost.unsqueeze(0), reg=0.01, max_iter=100, tol=0.0, method="log_sinkhorn", grad="detach"
            ).plan
    a, b = ot.unif(cost.shape[0], type_as=cost), ot.unif(cost.shape[1], type_as=cost)
    with torch.no_grad():
        return ot.sinkhorn(a, b, cost, 0.01, method="sinkhorn_log", numItermax=100, stopThr=0.0, warn=False)


def pradot_worker(solver: str, cost_file: str) -> None:
    """Subprocess body: load the cost, then time one solve and measure the growth of the peak RSS."""
    cost = np.load(cost_file)
    cost_input = cost if solver == "pot-numpy" else torch.from_numpy(cost)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    start = time.perf_counter()
    solve_pradot(solver, cost_input)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": seconds, "peak_mib": (after - before) / 1024}))


def run_worker(solver: str, cost_file: str) -> dict[str, float]:
    command = [
        sys.executable, "-m", "benchmarks.ot_bench", "--threads", str(torch.get_num_threads()),
        "--pradot-worker", solver, cost_file,
    ]
    output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def pradot(device: torch.device, sizes: Sizes) -> None:
    cost = pradot_cost(sizes, device)
    matrix_mib = cost.numel() * cost.element_size() / 2**20
    shape = f"{sizes.embeddings} x {sizes.prototypes}, d={sizes.embedding_dim}"
    print(f"(b) PRADOT-like log-Sinkhorn, {shape}, 100 iterations, float32 ({matrix_mib:.0f} MiB cost):")
    results = {}
    if device.type == "cpu":
        with tempfile.TemporaryDirectory() as folder:
            cost_file = str(Path(folder) / "cost.npy")
            np.save(cost_file, cost.numpy())
            del cost
            for solver in PRADOT_SOLVERS:
                results[solver] = run_worker(solver, cost_file)
    else:
        for solver in PRADOT_SOLVERS:
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            seconds = median_seconds(lambda s=solver: solve_pradot(s, cost), device, 1)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            results[solver] = {"seconds": seconds, "peak_mib": peak}
    threads = torch.get_num_threads()
    for solver, label in (
        ("pot-numpy", "medot vs POT numpy sinkhorn_log (1 thread)"),
        ("pot-torch", "medot vs POT torch backend sinkhorn_log"),
        ("pot-batch", "medot vs ot.batch.solve_batch log_sinkhorn"),
    ):
        pot_threads = 1 if solver == "pot-numpy" else threads
        conditions = f"{threads} vs {pot_threads} thread(s), float32, 100 iterations, no gradient"
        report(label, results["medot"]["seconds"], results[solver]["seconds"], PRADOT_TARGET, conditions)
    peaks = " | ".join(f"{solver} {results[solver]['peak_mib']:.0f} MiB" for solver in PRADOT_SOLVERS)
    print(f"  peak memory above the cost matrix: {peaks}")


def kmat(device: torch.device, sizes: Sizes) -> None:
    generator = torch.Generator().manual_seed(2)
    source = torch.randn(sizes.fgw_calls, 6, 512, generator=generator).mul_(0.16).to(device)
    target = torch.randn(sizes.fgw_calls, 6, 512, generator=generator).mul_(0.16).to(device)

    def costs(X: torch.Tensor, Y: torch.Tensor) -> list[torch.Tensor]:
        pairs = ((X, Y), (X, X), (Y, Y))
        return [normalize_by_max(squared_euclidean_cost(left, right)) for left, right in pairs]

    def leaves() -> tuple[torch.Tensor, torch.Tensor]:
        return source.clone().requires_grad_(), target.clone().requires_grad_()

    def ours(gradient: str, batched: bool, calls: int | None = None) -> Callable[[], None]:
        def step() -> None:
            X, Y = (t[:calls] for t in leaves())
            options = {**FGW_OPTIONS, **MEDOT_FGW_STOPPING, "gradient": gradient}
            if batched:
                result = entropic_fused_gromov_wasserstein(*costs(X, Y), **options)
                loss = result.objective if gradient == "envelope" else result.value
                loss.sum().backward()
                return
            for x, y in zip(X, Y):
                result = entropic_fused_gromov_wasserstein(*costs(x, y), **options)
                (result.objective if gradient == "envelope" else result.value).backward()

        return step

    def theirs_torch(calls: int | None = None) -> None:
        for X, Y in zip(*(t[:calls] for t in leaves())):
            fgw = ot.gromov.entropic_fused_gromov_wasserstein2
            fgw(*costs(X, Y), **FGW_OPTIONS, **POT_FGW_STOPPING).backward()

    print(f"(c) K-MaT-like entropic FGW 6 x 6, d=512, float32, forward + backward, {sizes.fgw_calls} calls:")
    threads = torch.get_num_threads()
    fixed = f"{FGW_OUTER} outer x {FGW_INNER} inner iterations"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot_time = median_seconds(theirs_torch, device, 1, warmup=lambda: theirs_torch(1))
        unrolled_loop = median_seconds(ours("unrolled", False), device, 1, warmup=ours("unrolled", False, 1))
        envelope_loop = median_seconds(ours("envelope", False), device, 1, warmup=ours("envelope", False, 1))
        envelope_batched = median_seconds(ours("envelope", True), device, 1)
    conditions = f"{threads} torch thread(s) both, float32, {fixed}, autograd through the iterations both"
    report("medot unrolled loop vs POT torch loop", unrolled_loop, pot_time, KMAT_TARGET, conditions)
    conditions = f"{threads} torch thread(s), float32, {fixed}"
    report("envelope vs unrolled gradient, medot loops", envelope_loop, unrolled_loop, None, conditions)
    report("batching: envelope, one call vs loop", envelope_batched, envelope_loop, None, conditions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda if available)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (checks the script)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads for both sides (default: 1)")
    parser.add_argument("--fgw-calls", type=int, default=None, help="FGW problems in (c) (default: 500; quick 10)")
    parser.add_argument(
        "--only", choices=("madpot", "pradot", "kmat"), nargs="+", default=None, help="run only these rows (default: all)"
    )
    parser.add_argument("--pradot-worker", nargs=2, metavar=("SOLVER", "COST_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pradot_worker:
        pradot_worker(*args.pradot_worker)
        return
    sizes = QUICK if args.quick else FULL
    if args.fgw_calls:
        sizes = replace(sizes, fgw_calls=args.fgw_calls)
    parts = {"madpot": madpot, "pradot": pradot, "kmat": kmat}
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        device = torch.device(name)
        label = " [quick sizes]" if args.quick else ""
        print(f"== device {device}, torch threads {torch.get_num_threads()}{label}")
        for name, part in parts.items():
            if args.only is None or name in args.only:
                part(device, sizes)


if __name__ == "__main__":
    main()
