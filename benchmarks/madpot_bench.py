"""MADPOT's cost in time and memory, and the synthetic MVFA table, with the ``lite`` backbone.

Measurements, printed as they finish (side by side in one run):

* (a) **One k-shot run** (k normal + k abnormal images of the synthetic ``Retina``, ``--views``
  fixed augmentations each, ``--epochs`` epochs, batch 16): encoding wall time and training wall
  time; and the **ratio** of a training step on cached tokens to the same step when the batch's
  rows are re-made first (each row's view augmented and encoded by the frozen tower; median over
  steps).
* (b) **Share of a training step spent in partial OT** (the ``transport_plans`` calls, timed inside
  the step), and the batched medot solve of one step's OT problems vs a Python loop of
  ``ot.partial.entropic_partial_wasserstein`` on the same problems (same iterations).
* (c) **Inference per image**: encoding + MADPOT scoring, batches of 8, median over repeats; peak
  memory as the growth of ``ru_maxrss`` (CPU) or ``torch.cuda.max_memory_allocated`` (CUDA).
* (d) **Synthetic MVFA table**: MADPOT, MVFA, zero-shot and PatchCore on the three synthetic organs,
  k = ``--shots``, seeds 1-3, last epoch (nothing tuned to this set).

Run from the repository root::

    python -m benchmarks.madpot_bench --quick     # 4 views, 10 epochs, seed 1 only, 8 cases per class
    python -m benchmarks.madpot_bench             # the issue's settings: 4-shot, 16 views, 60 epochs, seeds 1-3
    python -m benchmarks.madpot_bench --quick --inference-only   # (c) alone, on an untrained model
    python -m benchmarks.madpot_bench --backbone biomedclip-shaped --skip-table --epochs 1

``--backbone biomedclip-shaped`` times BiomedCLIP's architecture (ViT-B/16 image tower, BERT-base
text tower; :mod:`benchmarks.biomedclip_shaped`) with **random weights**, written to a temporary
folder first (about 0.8 GB, removed at the end): times and memory are meaningful, scores are not.
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import medot.methods.madpot.model as madpot_model
from medot.backbones import create_backbone
from medot.data.io import read_image
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.madpot.config import MadpotConfig
from medot.methods.madpot.data import augment, encode_support, load_support
from medot.methods.madpot.runner import benchmark, format_table, summarise
from medot.methods.madpot.task import MadpotTask, fit, support_batches
from medot.train import EpochContext, FeatureCache

from benchmarks import biomedclip_shaped


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _inference(backbone, model, images, layers) -> None:
    """(c): encoding + MADPOT scoring of batches of 8, median over 5 repeats; peak RSS growth."""
    before = _peak_mib()
    chunk = images[:8]
    times = []
    for _ in range(5):
        t0 = time.perf_counter()
        with torch.inference_mode():
            features = backbone.encode_image(backbone.transform_batch(chunk), layers)
            model({layer: features.patch_tokens[layer].float() for layer in layers}, (224, 224))
        times.append((time.perf_counter() - t0) / len(chunk))
    print(f"(c) inference (encoding + MADPOT scoring, batches of {len(chunk)}): {1000 * statistics.median(times):.1f} ms "
          f"per image; peak RSS growth {_peak_mib() - before:.0f} MiB (total peak {_peak_mib():.0f} MiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--backbone", default="lite",
                        help=f"a medot backbone name, or {biomedclip_shaped.NAME!r}: BiomedCLIP's architecture with "
                             "random weights (for timing only)")
    parser.add_argument("--shots", type=int, default=4)
    parser.add_argument("--skip-table", action="store_true")
    parser.add_argument("--inference-only", action="store_true",
                        help="only (c), on an untrained model (inference cost does not depend on the weights)")
    parser.add_argument("--epochs", type=int, default=None, help="override the epochs (sizing runs)")
    parser.add_argument("--views", type=int, default=None, help="override the views per support image")
    args = parser.parse_args()
    device = args.device
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {device}")
    work = Path(tempfile.mkdtemp(prefix="madpot_bench_"))
    if args.backbone == biomedclip_shaped.NAME:
        print(biomedclip_shaped.WARNING, flush=True)
        try:
            backbone = create_backbone(biomedclip_shaped.write_biomedclip_shaped(work / "biomedclip_shaped"),
                                       device=device)
        finally:
            shutil.rmtree(work / "biomedclip_shaped", ignore_errors=True)  # the weights are in memory now
        label = biomedclip_shaped.NAME + " (RANDOM weights)"
    else:
        backbone = create_backbone(args.backbone, device=device)
        label = backbone.name
    try:
        _run(args, backbone, label, work)
    finally:
        if args.backbone == biomedclip_shaped.NAME:
            print(biomedclip_shaped.WARNING)


def _run(args: argparse.Namespace, backbone, label: str, work: Path) -> None:
    views, epochs, seeds, cases = (4, 10, [1], 8) if args.quick else (16, 60, [1, 2, 3], 20)
    views, epochs = args.views or views, args.epochs or epochs
    device = args.device
    print(f"backbone {label}: layers {', '.join(backbone.default_layers)}")
    synthetic = write_synthetic_benchmark(work / "synthetic", n_per_class=cases, size=224, progress=False)
    cache = FeatureCache(work / "cache")
    config = MadpotConfig(views=views, epochs=epochs, seed=1)
    layers = tuple(backbone.default_layers)

    support = load_support(synthetic.mvfa_root, "Retina", args.shots, 1)
    if args.inference_only:
        from medot.methods.madpot.detector import layer_geometry
        from medot.methods.madpot.model import MadpotModel

        channels, grids = layer_geometry(backbone)
        model = MadpotModel(backbone, config, layers, channels, grids, ["retinal OCT"], localised=True).eval()
        _inference(backbone, model, [read_image(r.path).rgb() for r in support.records], layers)
        return

    # (a) one k-shot run
    started = time.perf_counter()
    encoded = encode_support(backbone, support.records, layers, views=views, cache=cache, progress=False)
    encode_seconds = time.perf_counter() - started
    started = time.perf_counter()
    fitted = fit("madpot", backbone, [encoded], ["retinal OCT"], config, device=device, progress=False)
    train_seconds = time.perf_counter() - started
    print(f"(a) {args.shots}-shot run, {views} views, {epochs} epochs, backbone {label}: encoding "
          f"{encode_seconds:.1f} s + training {train_seconds:.1f} s = {encode_seconds + train_seconds:.1f} s wall; "
          f"peak RSS so far {_peak_mib():.0f} MiB")

    task = MadpotTask(fitted.model).to(device)
    batches = list(support_batches([encoded], config.batch_size)(EpochContext(0, torch.Generator().manual_seed(0))))
    images = [read_image(r.path).rgb() for r in support.records]
    cached, reencoded, ot_share = [], [], []
    real_plans = madpot_model.transport_plans
    ot_time = [0.0]

    def timed_plans(*a, **k):
        t0 = time.perf_counter()
        out = real_plans(*a, **k)
        ot_time[0] += time.perf_counter() - t0
        return out

    real_prompts = task.model.object_prompts
    text_time = [0.0]
    text_share = []

    def timed_prompts(*a, **k):
        t0 = time.perf_counter()
        out = real_prompts(*a, **k)
        text_time[0] += time.perf_counter() - t0
        return out

    real_solver = madpot_model.entropic_partial_wasserstein
    cycles: list[int] = []

    def counted_solver(*a, **k):
        result = real_solver(*a, **k)
        cycles.extend(result.diagnostics.iterations.flatten().tolist())
        return result

    madpot_model.transport_plans = timed_plans
    madpot_model.entropic_partial_wasserstein = counted_solver
    task.model.object_prompts = timed_prompts
    try:
        for batch in batches:
            batch = [t.to(device) for t in batch]
            ot_time[0] = text_time[0] = 0.0
            t0 = time.perf_counter()
            task.training_step(batch)["loss"].backward()
            step = time.perf_counter() - t0
            cached.append(step)
            ot_share.append(ot_time[0] / step)
            text_share.append(text_time[0] / step)
            t0 = time.perf_counter()
            with torch.inference_mode():  # the batch's rows as fresh views: augment + encode each of them
                rows = len(batch[0])
                views_now = [augment(images[i % len(images)], None, (i // len(images)) % views)[0] for i in range(rows)]
                backbone.encode_image(backbone.transform_batch(views_now), layers)
            task.training_step(batch)["loss"].backward()
            reencoded.append(time.perf_counter() - t0)
    finally:
        madpot_model.transport_plans = real_plans
        madpot_model.entropic_partial_wasserstein = real_solver
        del task.model.object_prompts
    ratio = statistics.median(reencoded) / statistics.median(cached)
    print(f"    step on cached tokens {1000 * statistics.median(cached):.0f} ms vs re-encoding the batch first "
          f"{1000 * statistics.median(reencoded):.0f} ms: cache {ratio:.1f}x faster (target >= 10x)")
    print(f"(b) share of a training step in partial OT: {100 * statistics.median(ot_share):.0f} % (target < 30 %); "
          f"text-tower forward (2K prompts, once per step): {100 * statistics.median(text_share):.0f} %")
    if cycles:
        print(f"    Dykstra cycles per partial-OT problem after training (cap {config.ot_iterations}): median "
              f"{statistics.median(cycles):.0f}, max {max(cycles)}, {sum(c >= config.ot_iterations for c in cycles)} "
              f"of {len(cycles)} at the cap")

    import ot

    tokens = {layer: t.to(device) for layer, t in zip(layers, batches[0][4:], strict=True)}
    prompts = fitted.model.object_prompts(torch.zeros(len(batches[0][0]), dtype=torch.long, device=device))
    det, _ = fitted.model.adapters[madpot_model.layer_key(layers[0])](tokens[layers[0]])
    similarity = torch.einsum("bmd,bckd->bcmk", det, prompts).detach()
    flat = similarity.reshape(-1, *similarity.shape[-2:])
    t0 = time.perf_counter()
    madpot_model.transport_plans(flat, mass=config.mass, epsilon=config.epsilon, max_iter=config.ot_iterations)
    batched = time.perf_counter() - t0
    rows, cols = flat.shape[-2:]
    t0 = time.perf_counter()
    for problem in (1 - flat).double().cpu().numpy():
        ot.partial.entropic_partial_wasserstein(np.full(rows, 1 / rows), np.full(cols, 1 / cols), problem,
                                                reg=config.epsilon, m=config.mass, numItermax=config.ot_iterations)
    loop = time.perf_counter() - t0
    print(f"    {len(flat)} problems {rows} x {cols}: medot batched {1000 * batched:.1f} ms vs POT loop "
          f"{1000 * loop:.1f} ms ({loop / batched:.1f}x)")

    # (c) inference per image
    _inference(backbone, fitted.model, images, layers)

    if args.skip_table:
        return
    rows_ = benchmark(backbone, synthetic.mvfa_root, ("Histo", "Phantom", "Retina"),
                      ("madpot", "mvfa", "zeroshot", "patchcore"), [args.shots], seeds, config, cache=cache,
                      device=device, progress=False, log=lambda _: None)
    print(f"(d) synthetic MVFA table, k = {args.shots}, seeds {seeds}, last epoch:")
    print(format_table(summarise(rows_)))


if __name__ == "__main__":
    main()
