"""medot.ot against a Python loop over POT on the three medot workloads, side by side in one run.

* (a) MADPOT-like: entropic partial OT, 32 images x 289 patch tokens x 14 prompts (cosine costs
  of tokens drawn around random prompts, mass 0.8, epsilon 0.1). Timed twice: exactly 100 cycles
  for both (``tol=0`` here, ``stopThr=-1`` for POT), and each with its default stopping rule
  (``tol`` 1e-4 in float32 here; POT's ``stopThr=1e-100``, which in float32 fires once its
  iterate stops changing exactly). Target >= 5x faster on CPU.
* (b) PRADOT-like: balanced log-domain Sinkhorn, 12,544 embeddings x 3,136 prototypes, d=1024
  (cosine costs, epsilon 0.01, exactly 100 iterations for both, no gradient). Target: no slower
  on CPU. Peak memory is the growth of ``ru_maxrss`` during the solve, each solver in its own
  subprocess (CPU), or ``torch.cuda.max_memory_allocated`` above the inputs (CUDA).
* (c) K-MaT-like: entropic FGW between 6 and 6 class embeddings (d=512, squared-Euclidean costs
  normalised by their max so that POT's multiplicative inner Sinkhorn works in float32, alpha 0.1,
  epsilon 0.1, <= 100 outer iterations, outer and inner tolerances 1e-4 for both), forward +
  backward, repeated calls. Target >= 3x faster.

Baselines, on the same problems and device: on CPU, POT's numpy backend for (a) and (b) (its
``method="sinkhorn"`` default for (a), ``method="sinkhorn_log"`` for (b)) and POT's torch backend
for (c) (the only POT path with a backward for entropic FGW: autograd through its iterations; the
numpy forward alone is printed for reference). On CUDA, POT's torch backend on the GPU throughout.
All problems are float32. Run from the repository root::

    python -m benchmarks.ot_bench --quick            # small sizes, checks the script end to end
    python -m benchmarks.ot_bench                    # the sizes above on CPU (+ CUDA if present)
    python -m benchmarks.ot_bench --device cuda      # CUDA only
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
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import ot
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
FGW_OPTIONS = {"alpha": 0.1, "epsilon": 0.1, "max_iter": 100}
POT_FGW_TOLERANCES = {"tol": 1e-4, "stopThr": 1e-4}
"""medot's float32 defaults, given to POT too: its own (1e-9 outer and inner) are out of float32's
reach, so it would always run 100 x 1000 inner iterations."""


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


def median_seconds(step: Callable[[], object], device: torch.device, repeats: int) -> float:
    """Median wall time of ``step`` over ``repeats`` runs after one untimed warm-up run."""
    step()
    timings = []
    for _ in range(repeats):
        synchronize(device)
        start = time.perf_counter()
        step()
        synchronize(device)
        timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def report(name: str, ours: float, theirs: float, target: float) -> None:
    ratio = theirs / ours
    verdict = "meets" if ratio >= target else "misses"
    timings = f"medot {ours:.4f} s | POT {theirs:.4f} s"
    print(f"  {name}: {timings} | POT/medot x{ratio:.2f} ({verdict} x{target:g})")


def as_numpy(array: torch.Tensor | np.ndarray) -> np.ndarray:
    return array.detach().cpu().numpy() if isinstance(array, torch.Tensor) else np.asarray(array)


def madpot(device: torch.device, sizes: Sizes) -> None:
    generator = torch.Generator().manual_seed(0)
    prompts = torch.randn(sizes.prompts, 512, generator=generator)
    nearest = torch.randint(0, sizes.prompts, (sizes.images, sizes.tokens), generator=generator)
    tokens = prompts[nearest] + 1.5 * torch.randn(sizes.images, sizes.tokens, 512, generator=generator)
    cost = cosine_cost(tokens.to(device), prompts.to(device).expand(sizes.images, -1, -1)).contiguous()
    problems = [c.numpy() for c in cost] if device.type == "cpu" else list(cost)

    def ours(tol: float | None) -> Callable[[], torch.Tensor]:
        return lambda: entropic_partial_wasserstein(cost, mass=0.8, epsilon=0.1, max_iter=100, tol=tol).plan

    def theirs(stop_threshold: float) -> Callable[[], list]:
        def solve(c):
            a, b = ot.unif(sizes.tokens, type_as=c), ot.unif(sizes.prompts, type_as=c)
            return ot.partial.entropic_partial_wasserstein(
                a, b, c, 0.1, m=0.8, numItermax=100, stopThr=stop_threshold
            )

        return lambda: [solve(c) for c in problems]

    gap = float(np.abs(as_numpy(ours(0.0)()[0]) - as_numpy(theirs(-1.0)()[0])).max())
    shape = f"{sizes.images} x {sizes.tokens} x {sizes.prompts}"
    print(f"(a) MADPOT-like partial OT, {shape}, float32 (largest plan gap to POT {gap:.1e}):")
    runs = (
        ("100 cycles each, one batched call vs loop", 0.0, -1.0),
        ("default stopping rules, one batched call vs loop", None, 1e-100),
    )
    for label, tol, stop_threshold in runs:
        ours_time = median_seconds(ours(tol), device, sizes.repeats)
        theirs_time = median_seconds(theirs(stop_threshold), device, sizes.repeats)
        report(label, ours_time, theirs_time, MADPOT_TARGET)


def pradot_cost(sizes: Sizes, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(1)
    embeddings = torch.randn(sizes.embeddings, sizes.embedding_dim, generator=generator)
    prototypes = torch.randn(sizes.prototypes, sizes.embedding_dim, generator=generator)
    return cosine_cost(embeddings.to(device), prototypes.to(device))


def solve_pradot(solver: str, cost: torch.Tensor | np.ndarray) -> object:
    if solver == "medot":
        with torch.no_grad():
            return sinkhorn(cost, epsilon=0.01, max_iter=100, tol=0.0).plan
    a, b = ot.unif(cost.shape[0], type_as=cost), ot.unif(cost.shape[1], type_as=cost)
    return ot.sinkhorn(a, b, cost, 0.01, method="sinkhorn_log", numItermax=100, stopThr=0.0, warn=False)


def pradot_worker(solver: str, cost_file: str) -> None:
    """Subprocess body: load the cost, then time one solve and measure the growth of the peak RSS."""
    cost = np.load(cost_file)
    cost_input = torch.from_numpy(cost) if solver == "medot" else cost
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
            for solver in ("medot", "pot"):
                results[solver] = run_worker(solver, cost_file)
    else:
        for solver in ("medot", "pot"):
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
            seconds = median_seconds(lambda s=solver: solve_pradot(s, cost), device, 1)
            peak = (torch.cuda.max_memory_allocated(device) - base) / 2**20
            results[solver] = {"seconds": seconds, "peak_mib": peak}
    report("one solve", results["medot"]["seconds"], results["pot"]["seconds"], PRADOT_TARGET)
    peaks = f"medot {results['medot']['peak_mib']:.0f} MiB | POT {results['pot']['peak_mib']:.0f} MiB"
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

    def ours_loop() -> None:
        for X, Y in zip(*leaves()):
            entropic_fused_gromov_wasserstein(*costs(X, Y), **FGW_OPTIONS).value.backward()

    def ours_batched() -> None:
        X, Y = leaves()
        entropic_fused_gromov_wasserstein(*costs(X, Y), **FGW_OPTIONS).value.sum().backward()

    def theirs_torch() -> None:
        for X, Y in zip(*leaves()):
            fgw = ot.gromov.entropic_fused_gromov_wasserstein2
            fgw(*costs(X, Y), **FGW_OPTIONS, **POT_FGW_TOLERANCES).backward()

    def theirs_numpy_forward() -> None:
        for X, Y in zip(source.cpu(), target.cpu()):
            matrices = [c.numpy() for c in costs(X, Y)]
            ot.gromov.entropic_fused_gromov_wasserstein2(*matrices, **FGW_OPTIONS, **POT_FGW_TOLERANCES)

    print(f"(c) K-MaT-like entropic FGW 6 x 6, d=512, float32, forward + backward, {sizes.fgw_calls} calls:")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pot_time = median_seconds(theirs_torch, device, 1)
        loop_time = median_seconds(ours_loop, device, 1)
        batched_time = median_seconds(ours_batched, device, 1)
        report("one call per problem vs POT torch loop", loop_time, pot_time, KMAT_TARGET)
        report("one batched call vs POT torch loop", batched_time, pot_time, KMAT_TARGET)
        numpy_forward = median_seconds(theirs_numpy_forward, torch.device("cpu"), 1)
    print(f"  for reference, POT numpy loop, forward only (no gradient): {numpy_forward:.4f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default=None, help="cpu or cuda (default: cpu, then cuda if available)")
    parser.add_argument("--quick", action="store_true", help="small sizes, few repeats (checks the script)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--pradot-worker", nargs=2, metavar=("SOLVER", "COST_FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.pradot_worker:
        pradot_worker(*args.pradot_worker)
        return
    sizes = QUICK if args.quick else FULL
    devices = [args.device] if args.device else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    for name in devices:
        device = torch.device(name)
        label = " [quick sizes]" if args.quick else ""
        print(f"== device {device}, torch threads {torch.get_num_threads()}{label}")
        madpot(device, sizes)
        pradot(device, sizes)
        kmat(device, sizes)


if __name__ == "__main__":
    main()
