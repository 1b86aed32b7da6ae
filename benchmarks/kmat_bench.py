"""K-MaT training cost with ``lite`` on the synthetic CT -> X-ray task.

* (a) One K-MaT epoch (``--shots`` x 3 classes, batch 4) with the image embeddings taken from the
  feature cache, against the same epoch, same batches, when every step reads its images, preprocesses
  them and runs the frozen image tower again (what training without the cache costs). Both run in
  the same process, alternately, ``--repeats`` times; medians and their ratio are printed.
* (b) A full K-MaT run with the paper's protocol (16 shots, 50 epochs, batch 4, 4 cached views)
  through :func:`medot.methods.kmat.runner.fit_method`: wall time of encoding the training and
  validation images into an empty cache, and of the training itself.

* (c) ``--gradients`` (issue #16 item 1): which :math:`\mathcal{L}_{fgw}` to train on. For each seed
  of ``--seeds``, K-MaT is trained twice with the same data, initialisation and batches: with the
  default ``fgw_gradient="envelope"`` (the entropic objective, descended along its exact envelope
  gradient) and with ``"unrolled"`` (the FGW value :math:`\mathcal{E}(\Gamma^\star)`, autograd
  through every solver iteration: also an exact derivative). A third variant, ``value`` carrying the
  plan-fixed gradient (the previous L_fgw), back-propagates the very same tensor as the envelope
  run, so its training is identical to it and is not run again. Printed per run and as means over
  seeds: low-end (Lo) and high-end (Hi) test accuracy and macro-F1, the final entropic objective and
  :math:`\mathcal{E}(\Gamma^\star)` at the trained prompts, and training time per step
  (encoding excluded: features are cached once before either run).

The synthetic task is written to ``$MEDOT_HOME/synthetic`` if absent; the feature cache is a
temporary folder. Run from the repository root::

    python -m benchmarks.kmat_bench --quick        # 4 shots, 2 epochs: checks the script end to end
    python -m benchmarks.kmat_bench                # the figures above (CPU)
    python -m benchmarks.kmat_bench --threads 1    # on a busy shared CPU, one thread is often faster
    python -m benchmarks.kmat_bench --gradients --shots 8 --epochs 10 --seeds 1 2 3 --threads 1
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from medot.backbones import create_backbone
from medot.data.io import read_image
from medot.methods.kmat.model import KMaTConfig
from medot.methods.kmat.runner import RunConfig, build_task, finish_run, fit_method
from medot.methods.prompt_learning.crossmodal import resolve_task
from medot.methods.prompt_learning.features import encode_records
from medot.methods.prompt_learning.knowledge import embed_descriptions
from medot.train import EpochContext, FeatureCache, TensorBatches, epoch_generator


def epoch_seconds(task, batches, step_inputs) -> float:
    """Wall time of one epoch of SGD steps; ``step_inputs(indices)`` yields the batch's embeddings."""
    optimizer = torch.optim.SGD([p for p in task.parameters() if p.requires_grad], lr=0.0025, momentum=0.9)
    start = time.perf_counter()
    for indices, labels in batches:
        loss = task.training_step((step_inputs(indices), labels))["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shots", type=int, default=16, help="training images per class (default: 16)")
    parser.add_argument("--epochs", type=int, default=50, help="epochs of the full run (default: 50)")
    parser.add_argument("--repeats", type=int, default=3, help="timed epochs of each kind in (a) (default: 3)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--quick", action="store_true", help="4 shots, 2 epochs, 1 repeat")
    parser.add_argument(
        "--gradients", action="store_true",
        help="only (c): train K-MaT with the envelope and the unrolled L_fgw gradient on --seeds and compare",
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3], help="seeds of (c) (default: 1 2 3)")
    args = parser.parse_args()
    if args.quick:
        args.shots, args.epochs, args.repeats = 4, 2, 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    if args.gradients:
        compare_gradients(args.shots, args.epochs, args.seeds)
        return

    backbone = create_backbone("lite", device="cpu")
    task = resolve_task("synthetic")
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    data = task.high_end_data(args.shots, seed=1)
    threads, classes = torch.get_num_threads(), len(task.classes)
    print(f"lite on CPU, {threads} thread(s); synthetic task, {args.shots} shots x {classes} classes")

    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(Path(folder) / "a")
        train = encode_records(backbone, data.train, cache, progress=False)
        torch.manual_seed(1)
        kmat = build_task("kmat", backbone, task.classes, task.modalities, knowledge, KMaTConfig())
        context = EpochContext(0, epoch_generator(1, 0))
        batches = list(TensorBatches(torch.arange(len(data.train)), train.labels, batch_size=4)(context))
        paths = [record.path for record in data.train]

        def reencode(indices: torch.Tensor) -> torch.Tensor:
            with torch.no_grad():
                images = [read_image(paths[i]).rgb() for i in indices.tolist()]
                return backbone.encode_image(backbone.transform_batch(images), layers=()).embedding

        cached, uncached = [], []
        for _ in range(args.repeats):
            cached.append(epoch_seconds(kmat, batches, lambda indices: train.plain[indices]))
            uncached.append(epoch_seconds(kmat, batches, reencode))
        cached_s, uncached_s = statistics.median(cached), statistics.median(uncached)
        print(
            f"(a) one epoch ({len(batches)} steps): cached features {cached_s:.2f} s, re-encoding images "
            f"{uncached_s:.2f} s -> the cache is {uncached_s / cached_s:.1f}x faster"
        )

        run = RunConfig(shots=args.shots, seed=1, epochs=args.epochs, views=4, progress=False)
        cold = FeatureCache(Path(folder) / "b")
        start = time.perf_counter()
        encode_records(backbone, data.train, cold, views=run.views, seed=run.seed, progress=False)
        encode_records(backbone, data.val, cold, progress=False)
        encoded = time.perf_counter()
        fitted = fit_method(
            "kmat", backbone, data, classes=task.classes, modalities=task.modalities, knowledge=knowledge,
            run=run, cache=cold,
        )
        done = time.perf_counter()
        print(
            f"(b) full run ({args.shots} shots, {args.epochs} epochs, {fitted.result.global_step} steps, "
            f"{run.views} views): encoding {encoded - start:.1f} s + training {done - encoded:.1f} s "
            f"= {done - start:.1f} s wall; high-end val accuracy {100 * fitted.validation['accuracy']:.1f} %"
        )


GRADIENTS = ("envelope", "unrolled")
METRICS = ("acc_lo", "f1_lo", "acc_hi", "f1_hi")


def compare_gradients(shots: int, epochs: int, seeds: list[int]) -> None:
    """(c): K-MaT trained on each L_fgw gradient, same seeds; test metrics, final FGW numbers, s/step."""
    backbone = create_backbone("lite", device="cpu")
    task = resolve_task("synthetic")
    knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
    print(
        f"(c) L_fgw gradient: lite on CPU, {torch.get_num_threads()} thread(s); synthetic task, {shots} shots x "
        f"{len(task.classes)} classes, {epochs} epochs, batch 4, 4 views, seeds {seeds}"
    )
    rows: dict[str, list[dict[str, float]]] = {gradient: [] for gradient in GRADIENTS}
    with tempfile.TemporaryDirectory() as folder:
        cache = FeatureCache(Path(folder))
        for seed in seeds:
            run = RunConfig(shots=shots, seed=seed, epochs=epochs, views=4, progress=False, device="cpu")
            data = task.high_end_data(shots, seed)
            encode_records(backbone, data.train, cache, views=run.views, seed=seed, progress=False)
            encode_records(backbone, data.val, cache, progress=False)
            for gradient in GRADIENTS:
                config = KMaTConfig(fgw_gradient=gradient)
                start = time.perf_counter()
                fitted = fit_method(
                    "kmat", backbone, data, classes=task.classes, modalities=task.modalities,
                    knowledge=knowledge, run=run, kmat=config, cache=cache,
                )
                seconds = time.perf_counter() - start
                with torch.no_grad():
                    final = fitted.task.transport(*fitted.task.class_embeddings()).result
                metrics = finish_run("kmat", fitted, backbone, task, run, cache).metrics
                row = {
                    **{key: 100 * metrics[key] for key in METRICS},
                    "objective": float(final.objective),
                    "value": float(final.value),
                    "s_per_step": seconds / fitted.result.global_step,
                }
                rows[gradient].append(row)
                print(f"  seed {seed} {gradient}: " + ", ".join(f"{k} {v:.4g}" for k, v in row.items()), flush=True)
    print("| L_fgw (gradient) | Lo acc | Lo macro-F1 | Hi acc | Hi macro-F1 | final objective | final E(plan) | s/step |")
    print("|---|---|---|---|---|---|---|---|")
    for gradient in GRADIENTS:
        columns = (*METRICS, "objective", "value", "s_per_step")
        cells = []
        for key in columns:
            values = [row[key] for row in rows[gradient]]
            spread = statistics.pstdev(values) if len(values) > 1 else 0.0
            digits = 1 if key in METRICS else 4
            cells.append(f"{statistics.mean(values):.{digits}f} ± {spread:.{digits}f}")
        label = "objective (envelope)" if gradient == "envelope" else "E(plan) (unrolled)"
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("(mean ± population std over seeds; the plan-fixed value gradient trains exactly as the envelope row)")


if __name__ == "__main__":
    main()
