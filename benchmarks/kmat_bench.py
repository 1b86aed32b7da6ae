"""K-MaT training cost with ``lite`` on the synthetic CT -> X-ray task.

* (a) One K-MaT epoch (``--shots`` x 3 classes, batch 4) with the image embeddings taken from the
  feature cache, against the same epoch, same batches, when every step reads its images, preprocesses
  them and runs the frozen image tower again (what training without the cache costs). Both run in
  the same process, alternately, ``--repeats`` times; medians and their ratio are printed.
* (b) A full K-MaT run with the paper's protocol (16 shots, 50 epochs, batch 4, 4 cached views)
  through :func:`medot.methods.kmat.runner.fit_method`: wall time of encoding the training and
  validation images into an empty cache, and of the training itself.

The synthetic task is written to ``$MEDOT_HOME/synthetic`` if absent; the feature cache is a
temporary folder. Run from the repository root::

    python -m benchmarks.kmat_bench --quick        # 4 shots, 2 epochs: checks the script end to end
    python -m benchmarks.kmat_bench                # the figures above (CPU)
    python -m benchmarks.kmat_bench --threads 1    # on a busy shared CPU, one thread is often faster
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
from medot.methods.kmat.runner import RunConfig, build_task, fit_method
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
    args = parser.parse_args()
    if args.quick:
        args.shots, args.epochs, args.repeats = 4, 2, 1
    if args.threads is not None:
        torch.set_num_threads(args.threads)

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


if __name__ == "__main__":
    main()
