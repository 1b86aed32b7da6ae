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

Issue #11's goals, side by side in one run (``--goals``), on the synthetic MVTec category with ``lite``:

* (g-a) **one epoch** of the previous default (stride8 + stride16, 16 prototypes per cell, uniform
  init, cold 100-iteration Sinkhorn, one batch of ``min(64, N)`` images) against the ``cpu`` preset
  (stride16, 4 prototypes per cell, data init, warm start with tolerance 1e-2, plan budget 2^21),
  on the same cached features: seconds and the ratio;
* (g-b) **image and pixel AUROC** of both one-epoch models, of the ``cpu`` preset (10 epochs), of
  PatchCore on the same features, and last (slow) of the paper's sizes with and without the #11
  training changes for ``--paper-epochs`` epochs (0 skips them);
* (g-c) **the paper-sized step** (12,544 x 3,136 plan, C = 1024): the second of two consecutive
  steps, warm-started with tolerance 1e-2 against cold with 100 fixed iterations: time, Sinkhorn
  iterations and the L1 difference between the two plans (total mass 1).

Run from the repository root::

    python -m benchmarks.pradot_bench --quick   # stride16 only, 8 cases/class, 10 epochs, (a) at 10 iterations
    python -m benchmarks.pradot_bench           # the paper's settings (stride8 + stride16, 50 epochs): hours on CPU
    python -m benchmarks.pradot_bench --goals --n-per-class 8 --paper-epochs 1   # issue #11's goals

With ``--quick`` step (a) runs 10 Sinkhorn iterations (memory does not depend on the iteration
count) and the time of 100 is extrapolated, which the output says.
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
from pathlib import Path

import numpy as np
import torch

from medot.backbones import create_backbone
from medot.data.io import read_image
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.pradot import PatchCoreConfig, PatchCoreModel, PradotConfig, PrototypeBank, build_model, train_pradot
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
def previous_default(layers: tuple[str, ...], epochs: int) -> PradotConfig:
    """The settings PRADOT trained with before #11: the paper's sizes, uniform init, cold fixed solves."""
    return PradotConfig(layers=layers, epochs=epochs, init="uniform", warm_start=False, sinkhorn_tol=0.0)


def timed_training(config: PradotConfig, tokens, grids, device: torch.device):
    model = build_model(config, tokens, grids)
    started = time.perf_counter()
    result = train_pradot(model, tokens, config, device=device, progress=False)
    synchronize(device)
    return model, result, time.perf_counter() - started


def goals(backbone, benchmark, device: torch.device, cache: FeatureCache, paper_epochs: int) -> None:
    from medot.methods.pradot.evaluation import EvaluationSet

    splits = load_anomaly_splits(benchmark.mvtec_root, benchmark.mvtec_category)
    old_layers = tuple(backbone.default_layers[:2])
    cpu = PradotConfig.preset("cpu", tuple(backbone.default_layers))
    tokens, grids = encode_tokens(backbone, splits.train, old_layers, cache=cache, progress=False)
    test_set = EvaluationSet.load(backbone, splits, old_layers, cache=cache, progress=False)
    size = (backbone.preprocess.image_size,) * 2
    cpu_tokens = {k: tokens[k] for k in cpu.layers}
    rows = []

    def evaluate(name: str, model, seconds: float) -> None:
        metrics = test_set.evaluate(lambda t: model(t, size), device)
        rows.append((name, seconds, metrics))
        print(f"    {name:<62} fit {seconds:7.1f} s  img AUROC {metrics['image_auroc']:.4f}  "
              f"px AUROC {metrics['pixel_auroc']:.4f}", flush=True)

    print(f"(g-a) one epoch, lite, {len(splits.train)} normal images of {splits.name}, features cached, {device}:")
    new_model, new_result, new_seconds = timed_training(PradotConfig(**{**cpu.to_dict(), "epochs": 1}), cpu_tokens,
                                                        grids, device)
    iterations = np.mean([max(step.values()) for step in new_result.sinkhorn_iterations])
    print(f"    cpu preset ({list(cpu.layers)}, 4/cell, {new_result.batches_per_epoch} batches of <= "
          f"{new_result.batch_size}, data init, warm tol 1e-2): {new_seconds:.1f} s "
          f"(mean Sinkhorn iterations per step {iterations:.1f})", flush=True)
    old_model, old_result, old_seconds = timed_training(previous_default(old_layers, 1), tokens, grids, device)
    print(f"    previous default ({list(old_layers)}, 16/cell, 1 batch of {old_result.batch_size}, uniform, cold 100 it): "
          f"{old_seconds:.1f} s")
    print(f"    speed-up {old_seconds / new_seconds:.1f}x (goal >= 10x)", flush=True)

    print(f"(g-b) accuracy on {splits.name}'s {len(splits.test)} test images (seed {benchmark.seed}):")
    evaluate("PRADOT previous default, 1 epoch", old_model, old_seconds)
    evaluate("PRADOT cpu preset, 1 epoch", new_model, new_seconds)
    cpu_model, _, cpu_seconds = timed_training(cpu, cpu_tokens, grids, device)
    evaluate(f"PRADOT cpu preset, {cpu.epochs} epochs", cpu_model, cpu_seconds)
    for layers in (cpu.layers, old_layers):
        baseline = PatchCoreModel(layers, grids, PatchCoreConfig()).to(device)
        started = time.perf_counter()
        baseline.fit({k: tokens[k].to(device) for k in layers})
        evaluate(f"PatchCore {list(layers)}", baseline, time.perf_counter() - started)

    print(f"(g-c) paper-sized step: plan {PAPER_BATCH * 196:,} x {PAPER_PROTOTYPES * 196:,}, C={PAPER_CHANNELS}, {device}:")
    generator = torch.Generator().manual_seed(0)
    centres = torch.randn(196, PAPER_CHANNELS, generator=generator)
    batches = [(centres + 0.5 * torch.randn(PAPER_BATCH, 196, PAPER_CHANNELS, generator=generator)).to(device)
               for _ in range(2)]
    bank = PrototypeBank("layer", PAPER_CHANNELS, (14, 14), n_prototypes=PAPER_PROTOTYPES, alpha=0.3,
                         sinkhorn_tol=1e-2, warm_start=True, generator=generator).to(device)
    bank.init_from_data(batches[0].cpu(), torch.Generator().manual_seed(1))
    bank.fit_batch(batches[0])
    timings = {}
    for label, warm, tol in (("cold", False, 0.0), ("warm", True, 1e-2)):
        bank.sinkhorn_tol = tol
        synchronize(device)
        started = time.perf_counter()
        solution = bank.transport_plan(batches[1], warm=warm)
        synchronize(device)
        timings[label] = (time.perf_counter() - started, int(solution.diagnostics.iterations), solution.plan,
                          float(solution.diagnostics.marginal_error))
    (cold_s, cold_it, cold_plan, cold_err), (warm_s, warm_it, warm_plan, warm_err) = timings.values()
    print(f"    cold, 100 fixed iterations: {cold_s:.1f} s (marginal error {cold_err:.4f}); warm, tol 1e-2: {warm_s:.1f} s, "
          f"{warm_it} iterations (marginal error {warm_err:.4f}); speed-up {cold_s / warm_s:.1f}x; "
          f"plan L1 difference {float((warm_plan - cold_plan).abs().sum()):.4f} (total mass 1)", flush=True)
    del batches, bank, cold_plan, warm_plan

    if paper_epochs > 0:
        print(f"(g-b, slow) the paper's sizes ({list(old_layers)}, 16/cell, batches of 64) for {paper_epochs} epochs:")
        model, _, seconds = timed_training(PradotConfig(layers=old_layers, epochs=paper_epochs), tokens, grids, device)
        evaluate(f"PRADOT paper sizes, data init + warm start, {paper_epochs} epochs", model, seconds)
        model, _, seconds = timed_training(previous_default(old_layers, paper_epochs), tokens, grids, device)
        evaluate(f"PRADOT previous default, {paper_epochs} epochs", model, seconds)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small settings that check the script end to end")
    parser.add_argument("--device", default="cpu", help="torch device (default: cpu)")
    parser.add_argument("--n-per-class", type=int, default=None, help="synthetic cases per class (default 20, quick 8)")
    parser.add_argument("--epochs", type=int, default=None, help="PRADOT epochs for (d) (default 50, quick 10)")
    parser.add_argument(
        "--layers", nargs="+", default=None, help="lite layers (default stride8 stride16, quick stride16)"
    )
    parser.add_argument("--goals", action="store_true", help="issue #11's side-by-side goals only")
    parser.add_argument("--paper-epochs", type=int, default=50,
                        help="epochs of the paper-sized runs at the end of --goals (default 50: hours on a CPU; 0 skips)")
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
    if args.goals:
        with tempfile.TemporaryDirectory() as folder:
            benchmark = write_synthetic_benchmark(Path(folder) / "synthetic", n_per_class=n_per_class, progress=False)
            goals(create_backbone("lite", device=device), benchmark, device, FeatureCache(Path(folder) / "cache"),
                  args.paper_epochs)
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
