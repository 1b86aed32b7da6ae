"""PRADOT's cost in time and memory, and PRADOT against PatchCore on the synthetic benchmark.

Four measurements, printed as they finish:

* (a) **Memory at the paper's sizes**: one training step (cost, 100 log-domain Sinkhorn
  iterations, barycentres, EMA) of a stride-16 bank at batch 64: 64 x 14 x 14 = 12,544 embeddings
  (C = 1024, ResNet-50 layer3's width) against 16 x 14 x 14 = 3,136 prototypes. Peak memory is
  the growth of ``ru_maxrss`` over the step in a fresh subprocess (CPU) or
  ``torch.cuda.max_memory_allocated`` above the inputs (CUDA). The stride-8 member at the same
  batch (50,176 x 12,544 plan, 16x larger) is reported from the measured bytes per plan entry.
* (b) **Training time per epoch** with ``lite`` on the synthetic MVTec category's normal images,
  the default ensemble (``--layers`` x alphas 0 and 0.3, 16 prototypes per cell, batch
  ``min(64, N)``), features already cached (the backbone is not part of an epoch).
* (c) **Inference latency per image** with ``lite``: backbone encoding, PRADOT scoring of all
  members and PatchCore scoring, batches of 8, median over repeats.
* (d) **Synthetic-benchmark AUROCs**: PRADOT and PatchCore (same layers, coreset 10 %) on
  ``mvtec/phantom`` and ``mvfa/Phantom_AD``, through :func:`medot.methods.pradot.evaluation.benchmark_class`.

Issue #11's goals, side by side in one run (``--goals``: a, b and c; ``--goal X`` runs only X and
may be repeated), on the synthetic MVTec category with ``lite``:

* (g-a) **one epoch** of the previous default (stride8 + stride16, 16 prototypes per cell, uniform
  init, cold 100-iteration Sinkhorn, one batch of ``min(64, N)`` images) against the ``cpu`` preset
  (stride16, 4 prototypes per cell, data init, warm start with tolerance 1e-2, plan budget 2^21),
  on the same cached features: seconds and the ratio. ``--previous-cap S`` stops the previous
  default after S seconds and reports the ratio as a lower bound;
* (g-b) **image and pixel AUROC** of the one-epoch models of (g-a), of the ``cpu`` preset (10
  epochs), of PatchCore on the same features, and last (slow) of the ``paper`` preset (the paper's
  sizes with the #11 training) for ``--paper-epochs`` epochs (0 skips it; ``--paper-cap S`` stops it
  at the first epoch boundary past S seconds and names the epochs done), with the cpu - paper
  differences; ``--previous-epochs E`` adds the previous default trained E epochs;
* (g-c) **the paper-sized step** (12,544 x 3,136 plan: 64 images x 14 x 14 cells, 16 prototypes per
  cell): the second of two steps, cold with 100 fixed iterations (the authors), cold with tolerance
  1e-2, and warm-started with tolerance 1e-2: time, Sinkhorn iterations, marginal error and the L1
  difference of each plan to the cold-100 plan (total mass 1). Two problems: Gaussian features with
  C = 1024 (ResNet-50 layer3's width), and ``lite`` stride16 features (C = 112) of 2 x 64 synthetic
  training normals, for alpha 0 and 0.3;
* (init) with ``--goal init`` (not part of ``--goals``): the ``data`` and ``kmeans++`` prototype
  starts after ``--init-epochs`` epochs of the ``--init-presets`` presets (a report on the
  synthetic test set; the default start is not chosen from it).

Run from the repository root::

    python -m benchmarks.pradot_bench --quick   # stride16 only, 8 cases/class, 10 epochs, (a) at 10 iterations
    python -m benchmarks.pradot_bench           # the paper's settings (stride8 + stride16, 50 epochs): hours on CPU
    python -m benchmarks.pradot_bench --goals --n-per-class 8 --paper-epochs 1   # issue #11's goals
    python -m benchmarks.pradot_bench --goal c --goal a --goal init --goal b --n-per-class 20 \\
        --previous-cap 240 --paper-epochs 50 --paper-cap 480                     # the run in benchmarks/README.md

With ``--quick`` step (a) runs 10 Sinkhorn iterations (memory does not depend on the iteration
count) and the time of 100 is extrapolated, which the output says.
"""

from __future__ import annotations

import argparse
import json
import resource
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from medot.backbones import create_backbone
from medot.data.io import read_image
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.pradot import PatchCoreConfig, PatchCoreModel, PradotConfig, PrototypeBank, build_model, train_pradot
from medot.methods.pradot.config import DEFAULT_ALPHAS
from medot.methods.pradot.data import load_anomaly_splits
from medot.methods.pradot.evaluation import benchmark_class
from medot.methods.pradot.training import encode_tokens
from medot.train import FeatureCache

PAPER_BATCH, PAPER_CHANNELS, PAPER_PROTOTYPES = 64, 1024, 16


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ---------------------------------------------------------------------------------- (a) memory
def memory_worker(grid: int, iterations: int, device_name: str) -> None:
    """One training step at the paper's batch; prints JSON with its time and peak memory growth."""
    device = torch.device(device_name)
    generator = torch.Generator().manual_seed(0)
    bank = PrototypeBank("layer", PAPER_CHANNELS, (grid, grid), n_prototypes=PAPER_PROTOTYPES, alpha=0.3,
                         sinkhorn_iterations=iterations, generator=generator).to(device)
    tokens = torch.randn(PAPER_BATCH, grid * grid, PAPER_CHANNELS, generator=generator).to(device)
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        before = torch.cuda.memory_allocated(device)
    else:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    started = time.perf_counter()
    bank.fit_batch(tokens)
    synchronize(device)
    seconds = time.perf_counter() - started
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - before
    entries = PAPER_BATCH * grid * grid * bank.num_prototypes
    print(json.dumps({"seconds": seconds, "peak_bytes": peak, "entries": entries}))


def memory(device: torch.device, iterations: int) -> None:
    command = [sys.executable, "-m", "benchmarks.pradot_bench", "--memory-worker", "14", str(iterations), str(device)]
    result = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout.splitlines()[-1])
    rows, cols = PAPER_BATCH * 14 * 14, PAPER_PROTOTYPES * 14 * 14
    per_entry = result["peak_bytes"] / result["entries"]
    per_100 = result["seconds"] * 100 / iterations
    print(f"(a) one training step at the paper's stride-16 size: plan {rows:,} x {cols:,} (C={PAPER_CHANNELS}), "
          f"{device}")
    print(f"    peak memory growth {result['peak_bytes'] / 2**20:,.0f} MiB "
          f"({per_entry:.1f} bytes per plan entry; the float32 plan alone is {rows * cols * 4 / 2**20:,.0f} MiB)")
    timing = f"{result['seconds']:.1f} s for {iterations} Sinkhorn iterations"
    if iterations != 100:
        timing += f" (extrapolated: {per_100:.1f} s per 100-iteration step)"
    print(f"    {timing}")
    rows8, cols8 = PAPER_BATCH * 28 * 28, PAPER_PROTOTYPES * 28 * 28
    print(f"    stride-8 member at batch 64: plan {rows8:,} x {cols8:,} -> about "
          f"{per_entry * rows8 * cols8 / 2**30:,.1f} GiB at the same bytes per entry (not run)")


# ---------------------------------------------------------------------------------- (b) + (c)
def median_seconds(step, device: torch.device, repeats: int) -> float:
    timings = []
    for _ in range(repeats + 1):
        synchronize(device)
        started = time.perf_counter()
        step()
        synchronize(device)
        timings.append(time.perf_counter() - started)
    return statistics.median(timings[1:])


def speed(backbone, benchmark, config: PradotConfig, device: torch.device, cache: FeatureCache) -> None:
    splits = load_anomaly_splits(benchmark.mvtec_root, benchmark.mvtec_category)
    tokens, grids = encode_tokens(backbone, splits.train, config.layers, cache=cache, progress=False)
    one_epoch = PradotConfig(**{**config.to_dict(), "epochs": 1})
    model = build_model(one_epoch, tokens, grids)
    started = time.perf_counter()
    result = train_pradot(model, tokens, one_epoch, device=device, progress=False)
    synchronize(device)
    epoch = time.perf_counter() - started
    print(f"(b) training, lite, {len(splits.train)} normal images, batch {result.batch_size}, "
          f"{len(model.members)} members ({', '.join(m.name for m in model.members)}), {device}:")
    print(f"    {epoch:.1f} s per epoch ({epoch / result.steps:.1f} s per batch of all members)")

    model.eval()
    patchcore = PatchCoreModel(config.layers, grids, PatchCoreConfig()).to(device)
    patchcore.fit({k: v.to(device) for k, v in tokens.items()})
    images = [read_image(record.path).rgb() for record in splits.test[:8]]
    size = (backbone.preprocess.image_size,) * 2
    batch = backbone.transform_batch(images)
    with torch.inference_mode():
        features = backbone.encode_image(batch, config.layers)
    test_tokens = {layer: features.patch_tokens[layer].float() for layer in config.layers}

    def encode() -> None:
        with torch.inference_mode():
            backbone.encode_image(backbone.transform_batch(images), config.layers)

    per_image = {
        "lite encoding": median_seconds(encode, device, 3),
        "PRADOT scoring": median_seconds(lambda: model(test_tokens, size), device, 3),
        "PatchCore scoring": median_seconds(lambda: patchcore(test_tokens, size), device, 3),
    }
    print(f"(c) inference per image (batches of {len(images)}), {device}: "
          + ", ".join(f"{name} {1000 * seconds / len(images):.1f} ms" for name, seconds in per_image.items()))


# ---------------------------------------------------------------------------------- (d)
def accuracy(backbone, benchmark, config: PradotConfig, device: torch.device, cache: FeatureCache) -> None:
    print(f"(d) synthetic benchmark (seed {benchmark.seed}), lite, PRADOT {list(config.layers)} x "
          f"{list(config.alphas)}, {config.epochs} epochs, vs PatchCore (same layers, coreset 0.1):")
    print(f"    {'dataset':<18} {'method':<10} {'img AUROC':>9} {'px AUROC':>9} {'AU-PRO@0.3':>10} {'AU-PRO@0.05':>11}")
    for root, name in ((benchmark.mvtec_root, benchmark.mvtec_category), (benchmark.mvfa_root, benchmark.mvfa_object)):
        splits = load_anomaly_splits(root, name)
        result = benchmark_class(backbone, splits, config, device=device, cache=cache, progress=False)
        for row in result.rows:
            values = [row[key] for key in ("image_auroc", "pixel_auroc", "au_pro@0.3", "au_pro@0.05")]
            cells = " ".join(f"{'n/a' if v is None else f'{v:.4f}':>{w}}" for v, w in zip(values, (9, 9, 10, 11)))
            print(f"    {root.name + '/' + name:<18} {row['method']:<10} {cells}")


# ---------------------------------------------------------------------------------- issue #11 goals
GOALS = ("a", "b", "c")
EXTRAS = ("init",)


class TimeCapReached(Exception):
    """Raised by the SIGALRM handler of :func:`time_cap` inside the capped computation."""


@contextmanager
def time_cap(seconds: float | None):
    """Raise :class:`TimeCapReached` in the block after ``seconds`` of wall time (``None``: no cap).
    The signal is handled between torch operations, so the block stops within one operation."""
    if not seconds:
        yield
        return

    def handler(signum, frame):
        raise TimeCapReached()

    previous = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def loadavg() -> str:
    try:
        return " ".join(Path("/proc/loadavg").read_text().split()[:3])
    except OSError:
        return "n/a"


def previous_default(layers: tuple[str, ...], epochs: int) -> PradotConfig:
    """The settings PRADOT trained with before #11: the paper's sizes, uniform init, cold fixed solves."""
    return PradotConfig(layers=layers, epochs=epochs, init="uniform", warm_start=False, sinkhorn_tol=0.0)


def timed_training(config: PradotConfig, tokens, grids, device: torch.device, *, cap_seconds: float | None = None,
                   report_epochs: bool = False):
    """Build and train ``config``; with ``cap_seconds`` training stops at the first epoch boundary
    past the cap (the result's ``status`` is then ``cancelled``); ``report_epochs`` prints each epoch."""
    model = build_model(config, tokens, grids)
    started = time.perf_counter()

    def on_event(event) -> None:
        if report_epochs and event.kind == "epoch":
            print(f"      epoch {event.epoch}/{config.epochs} done at {time.perf_counter() - started:.1f} s, "
                  f"{event.metrics.get('sinkhorn_iterations', 0):.1f} Sinkhorn iterations per step, "
                  f"load {loadavg()}", flush=True)

    stop = (lambda: time.perf_counter() - started > cap_seconds) if cap_seconds else None
    result = train_pradot(model, tokens, config, device=device, progress=False, on_event=on_event,
                          should_stop=stop)
    synchronize(device)
    return model, result, time.perf_counter() - started


class GoalRun:
    """The synthetic MVTec category's cached features and test set, shared by the goals of one run."""

    def __init__(self, backbone, benchmark, device: torch.device, cache: FeatureCache) -> None:
        from medot.methods.pradot.evaluation import EvaluationSet

        self.device = device
        self.splits = load_anomaly_splits(benchmark.mvtec_root, benchmark.mvtec_category)
        self.seed = benchmark.seed
        self.old_layers = tuple(backbone.default_layers[:2])
        self.cpu = PradotConfig.preset("cpu", tuple(backbone.default_layers))
        self.paper = PradotConfig.preset("paper", tuple(backbone.default_layers))
        self.tokens, self.grids = encode_tokens(backbone, self.splits.train, self.old_layers, cache=cache,
                                                progress=False)
        self.test_set = EvaluationSet.load(backbone, self.splits, self.old_layers, cache=cache, progress=False)
        self.size = (backbone.preprocess.image_size,) * 2
        self.cpu_tokens = {k: self.tokens[k] for k in self.cpu.layers}
        self.one_epoch: list[tuple[str, object, float]] = []  # (g-a)'s finished models, evaluated in (g-b)

    def evaluate(self, name: str, model, seconds: float) -> None:
        metrics = self.test_set.evaluate(lambda t: model(t, self.size), self.device)
        print(f"    {name:<66} fit {seconds:7.1f} s  img AUROC {metrics['image_auroc']:.4f}  "
              f"px AUROC {metrics['pixel_auroc']:.4f}", flush=True)
        return metrics


def goal_a(run: GoalRun, previous_cap: float | None) -> None:
    print(f"(g-a) one epoch, lite, {len(run.splits.train)} normal images of {run.splits.name}, features cached, "
          f"{run.device} (load {loadavg()}):")
    cpu = PradotConfig(**{**run.cpu.to_dict(), "epochs": 1})
    model, result, seconds = timed_training(cpu, run.cpu_tokens, run.grids, run.device)
    iterations = np.mean([max(step.values()) for step in result.sinkhorn_iterations])
    print(f"    cpu preset ({list(cpu.layers)}, 4/cell, {result.batches_per_epoch} batches of <= "
          f"{result.batch_size}, data init, warm tol 1e-2): {seconds:.1f} s "
          f"(mean Sinkhorn iterations per step {iterations:.1f})", flush=True)
    run.one_epoch.append(("PRADOT cpu preset, 1 epoch", model, seconds))
    try:
        with time_cap(previous_cap):
            old_model, old_result, old_seconds = timed_training(previous_default(run.old_layers, 1), run.tokens,
                                                                run.grids, run.device)
    except TimeCapReached:
        print(f"    previous default ({list(run.old_layers)}, 16/cell, 1 batch, uniform, cold 100 it): "
              f"NOT FINISHED after the cap of {previous_cap:.0f} s (stopped)")
        print(f"    speed-up >= {previous_cap / seconds:.1f}x (lower bound; goal >= 10x) (load {loadavg()})", flush=True)
        return
    print(f"    previous default ({list(run.old_layers)}, 16/cell, 1 batch of {old_result.batch_size}, uniform, "
          f"cold 100 it): {old_seconds:.1f} s")
    print(f"    speed-up {old_seconds / seconds:.1f}x (goal >= 10x) (load {loadavg()})", flush=True)
    run.one_epoch.insert(0, ("PRADOT previous default, 1 epoch", old_model, old_seconds))


def goal_b(run: GoalRun, paper_epochs: int, paper_cap: float | None, previous_epochs: int) -> None:
    print(f"(g-b) accuracy on {run.splits.name}'s {len(run.splits.test)} test images, "
          f"{len(run.splits.train)} training normals (seed {run.seed}) (load {loadavg()}):")
    for name, model, seconds in run.one_epoch:
        run.evaluate(name, model, seconds)
    cpu_model, _, cpu_seconds = timed_training(run.cpu, run.cpu_tokens, run.grids, run.device)
    cpu_metrics = run.evaluate(f"PRADOT cpu preset, {run.cpu.epochs} epochs", cpu_model, cpu_seconds)
    for layers in (run.cpu.layers, run.old_layers):
        baseline = PatchCoreModel(layers, run.grids, PatchCoreConfig()).to(run.device)
        started = time.perf_counter()
        baseline.fit({k: run.tokens[k].to(run.device) for k in layers})
        run.evaluate(f"PatchCore {list(layers)}", baseline, time.perf_counter() - started)
    if paper_epochs > 0:
        config = PradotConfig(**{**run.paper.to_dict(), "epochs": paper_epochs})
        cap = f", stopped at the first epoch past {paper_cap:.0f} s" if paper_cap else ""
        print(f"    the paper preset ({list(config.layers)} x {list(config.alphas)}, {config.n_prototypes}/cell, "
              f"batches of <= {config.batch_size}, data init, warm start tol {config.sinkhorn_tol:g}) for "
              f"{paper_epochs} epochs{cap} (load {loadavg()}):", flush=True)
        model, result, seconds = timed_training(config, run.tokens, run.grids, run.device, cap_seconds=paper_cap,
                                                report_epochs=True)
        metrics = run.evaluate(f"PRADOT paper preset, {result.epochs_completed} epochs", model, seconds)
        print(f"    cpu preset - paper preset: image AUROC {cpu_metrics['image_auroc'] - metrics['image_auroc']:+.4f}, "
              f"pixel AUROC {cpu_metrics['pixel_auroc'] - metrics['pixel_auroc']:+.4f} (goal: within 0.02)", flush=True)
    if previous_epochs > 0:
        print(f"    the previous default (uniform init, cold 100 iterations) for {previous_epochs} epochs:", flush=True)
        model, result, seconds = timed_training(previous_default(run.old_layers, previous_epochs), run.tokens,
                                                run.grids, run.device, report_epochs=True)
        run.evaluate(f"PRADOT previous default, {previous_epochs} epochs", model, seconds)
    print(f"    (load {loadavg()})", flush=True)


def compare_step(bank: PrototypeBank, batches: list[torch.Tensor], device: torch.device, repeats: int = 3) -> None:
    """Data-initialise ``bank`` on ``batches[0]``, take its (cold) first step there, then solve the
    second step on ``batches[1]`` three ways: cold with 100 fixed iterations (the authors), cold
    with tolerance 1e-2, warm-started with tolerance 1e-2 (the default here). Prints time,
    iterations, the marginal error reached and the L1 distance of each plan to the cold-100 plan; the
    time is the median of ``repeats`` solves (each solve changes no state, so they are identical)."""
    bank.init_from_data(batches[0].cpu(), torch.Generator().manual_seed(1))
    bank.sinkhorn_tol, bank.warm_start = 1e-2, True
    bank.fit_batch(batches[0])
    timings = {}
    modes = (("cold, 100 fixed iterations", False, 0.0), ("cold, tol 1e-2", False, 1e-2), ("warm, tol 1e-2", True, 1e-2))
    samples: dict[str, list[float]] = {label: [] for label, _, _ in modes}
    for _ in range(repeats):  # interleaved, so that a burst of load hits every mode alike
        for label, warm, tol in modes:
            bank.sinkhorn_tol = tol
            synchronize(device)
            started = time.perf_counter()
            solution = bank.transport_plan(batches[1], warm=warm)
            synchronize(device)
            samples[label].append(time.perf_counter() - started)
            timings[label] = (statistics.median(samples[label]), int(solution.diagnostics.iterations), solution.plan,
                              float(solution.diagnostics.marginal_error))
    reference = timings["cold, 100 fixed iterations"][2]
    for label, (seconds, iterations, plan, error) in timings.items():
        print(f"      {label:<28} {seconds:6.1f} s (median of {repeats}), {iterations:3d} iterations, marginal error {error:.4f}, "
              f"plan L1 difference to cold-100 {float((plan - reference).abs().sum()):.4f} (total mass 1)")
    cold, tol, warm = (timings[label][0] for label in timings)
    print(f"      warm/tol speed-up: {cold / warm:.1f}x vs cold-100, {tol / warm:.1f}x vs cold/tol "
          f"(load {loadavg()})", flush=True)


def compare_inits(run: GoalRun, epochs: int, presets: tuple[str, ...]) -> None:
    """The cpu and paper presets after ``epochs`` epoch(s) from the ``data`` and the ``kmeans++`` starts
    (a report on the synthetic test set: the default is not chosen from it)."""
    print(f"(init) data vs kmeans++ prototype start after {epochs} epoch(s), {run.splits.name}, "
          f"{len(run.splits.train)} training normals, {len(run.splits.test)} test images (load {loadavg()}):")
    for preset in (run.cpu if name == "cpu" else run.paper for name in presets):
        tokens = {k: run.tokens[k] for k in preset.layers}
        for init in ("data", "kmeans++"):
            config = PradotConfig(**{**preset.to_dict(), "epochs": epochs, "init": init})
            started = time.perf_counter()
            model = build_model(config, tokens, run.grids)
            init_seconds = time.perf_counter() - started
            train_pradot(model, tokens, config, device=run.device, progress=False)
            label = "cpu" if preset is run.cpu else "paper"
            run.evaluate(f"{label} preset, init {init} ({init_seconds:.1f} s), {epochs} epoch(s)", model,
                         time.perf_counter() - started)
    print(f"    (load {loadavg()})", flush=True)


def goal_c(device: torch.device, folder: Path, repeats: int = 3) -> None:
    rows, cols = PAPER_BATCH * 196, PAPER_PROTOTYPES * 196
    print(f"(g-c) paper-sized step: plan {rows:,} x {cols:,} (64 images x 14 x 14 cells, 16 prototypes per cell), "
          f"second of two steps, {device} (load {loadavg()}):")
    print(f"    Gaussian features, C={PAPER_CHANNELS} (cell centres + noise 0.5), alpha 0.3:")
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(196, PAPER_CHANNELS, generator=generator)
    batches = [(centres + 0.5 * torch.randn(PAPER_BATCH, 196, PAPER_CHANNELS, generator=generator)).to(device)
               for _ in range(2)]
    bank = PrototypeBank("layer", PAPER_CHANNELS, (14, 14), n_prototypes=PAPER_PROTOTYPES, alpha=0.3,
                         generator=generator).to(device)
    compare_step(bank, batches, device, repeats=1)  # converges in one iteration: one solve of each says it all
    del batches, bank
    benchmark = write_synthetic_benchmark(folder / "synthetic-c", n_per_class=2 * PAPER_BATCH, progress=False)
    splits = load_anomaly_splits(benchmark.mvtec_root, benchmark.mvtec_category)
    backbone = create_backbone("lite", device=device)
    tokens, _ = encode_tokens(backbone, splits.train[: 2 * PAPER_BATCH], ("stride16",),
                              cache=FeatureCache(folder / "cache-c"), progress=False)
    tokens = tokens["stride16"]
    batches = [tokens[:PAPER_BATCH].to(device), tokens[PAPER_BATCH:].to(device)]
    for alpha in DEFAULT_ALPHAS:
        print(f"    lite stride16 features of the synthetic {splits.name} normals (two batches of 64 of "
              f"{len(splits.train)}), C={tokens.shape[-1]}, alpha {alpha}:")
        bank = PrototypeBank("stride16", tokens.shape[-1], (14, 14), n_prototypes=PAPER_PROTOTYPES, alpha=alpha,
                             generator=torch.Generator().manual_seed(0)).to(device)
        compare_step(bank, batches, device, repeats=repeats)


def goals(backbone, benchmark, device: torch.device, cache: FeatureCache, folder: Path, chosen: tuple[str, ...], *,
          paper_epochs: int, paper_cap: float | None, previous_cap: float | None, previous_epochs: int,
          init_epochs: int = 1, init_presets: tuple[str, ...] = ("cpu",), repeats: int = 3) -> None:
    if "c" in chosen:
        goal_c(device, folder, repeats)
    if set(chosen) & {"a", "b", "init"}:
        run = GoalRun(backbone, benchmark, device, cache)
        if "a" in chosen:
            goal_a(run, previous_cap)
        if "init" in chosen:
            compare_inits(run, init_epochs, init_presets)
        if "b" in chosen:
            goal_b(run, paper_epochs, paper_cap, previous_epochs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings that check the script end to end")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--n-per-class", type=int, default=None, help="synthetic cases per class (default 20, quick 8)")
    parser.add_argument("--epochs", type=int, default=None, help="PRADOT epochs for (d) (default 50, quick 10)")
    parser.add_argument(
        "--layers", nargs="+", default=None, help="lite layers (default stride8 stride16, quick stride16)"
    )
    parser.add_argument("--goals", action="store_true", help="issue #11's side-by-side goals only (all of a, b, c)")
    parser.add_argument("--goal", action="append", choices=GOALS + EXTRAS, default=None,
                        help="run only this #11 goal (repeatable; implies --goals): a = one epoch, cpu preset vs "
                             "the previous default; b = AUROCs, cpu preset vs the paper preset and PatchCore; "
                             "c = the paper-sized step, warm vs cold; init = data vs kmeans++ prototype start "
                             "after --init-epochs (not part of --goals)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="goal c: solves per mode on the lite features, the median time is reported (default 3)")
    parser.add_argument("--init-epochs", type=int, default=1, help="epochs of the --goal init comparison (default 1)")
    parser.add_argument("--init-presets", nargs="+", choices=("cpu", "paper"), default=["cpu"],
                        help="presets of the --goal init comparison (default: cpu)")
    parser.add_argument("--paper-epochs", type=int, default=50,
                        help="epochs of the paper preset in goal b (default 50: hours on a CPU; 0 skips it)")
    parser.add_argument("--paper-cap", type=float, default=None, metavar="SECONDS",
                        help="goal b: stop the paper preset at the first epoch boundary past this wall time "
                             "(the output names the epochs it completed)")
    parser.add_argument("--previous-cap", type=float, default=None, metavar="SECONDS",
                        help="goal a: stop the previous default's epoch after this wall time and report a lower bound")
    parser.add_argument("--previous-epochs", type=int, default=0,
                        help="goal b: also train the previous default (uniform init, cold solves) this many epochs "
                             "(default 0: skipped)")
    parser.add_argument("--memory-worker", nargs=3, metavar=("GRID", "ITERATIONS", "DEVICE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_worker:
        grid, iterations, device_name = args.memory_worker
        memory_worker(int(grid), int(iterations), device_name)
        return
    device = torch.device(args.device)
    torch.manual_seed(0)
    np.random.seed(0)
    layers = tuple(args.layers or (("stride16",) if args.quick else ("stride8", "stride16")))
    epochs = args.epochs or (10 if args.quick else 50)
    n_per_class = args.n_per_class or (8 if args.quick else 20)
    config = PradotConfig(layers=layers, epochs=epochs)
    if args.goals or args.goal:
        chosen = tuple(args.goal or GOALS)
        print(f"load average at the start: {loadavg()}", flush=True)
        with tempfile.TemporaryDirectory() as folder:
            backbone = benchmark = cache = None
            if set(chosen) & {"a", "b", "init"}:
                benchmark = write_synthetic_benchmark(Path(folder) / "synthetic", n_per_class=n_per_class,
                                                      progress=False)
                backbone, cache = create_backbone("lite", device=device), FeatureCache(Path(folder) / "cache")
            goals(backbone, benchmark, device, cache, Path(folder), chosen, paper_epochs=args.paper_epochs,
                  paper_cap=args.paper_cap, previous_cap=args.previous_cap, previous_epochs=args.previous_epochs,
                  init_epochs=args.init_epochs, init_presets=tuple(args.init_presets), repeats=args.repeats)
        print(f"load average at the end: {loadavg()}", flush=True)
        return
    memory(device, 10 if args.quick else 100)
    with tempfile.TemporaryDirectory() as folder:
        benchmark = write_synthetic_benchmark(Path(folder) / "synthetic", n_per_class=n_per_class, progress=False)
        cache = FeatureCache(Path(folder) / "cache")
        backbone = create_backbone("lite", device=device)
        speed(backbone, benchmark, config, device, cache)
        accuracy(backbone, benchmark, config, device, cache)


if __name__ == "__main__":
    main()
