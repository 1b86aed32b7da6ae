"""Data-parallel K-MaT training: optimiser steps per second on 1 process vs N (``torchrun``).

Both runs train K-MaT with ``lite`` on the synthetic CT -> X-ray task through
:func:`medot.methods.kmat.runner.fit_method` with the same **global** batch (``--global-batch``):
one process with that batch, then ``torchrun --standalone --nproc_per_node=N`` with
``global-batch / N`` per process (the rule of ``medot train kmat --help``), so both take the same
number of steps. The clock runs from the trainer's "start" event to its "done" event on rank 0
(training only: the feature cache is filled before, by the first run). Printed: steps/s of each run
and their ratio (N processes / 1).

On GPUs each process takes one device (nccl); without CUDA the processes share the CPU (gloo, one
thread each), where the ratio says little about GPUs. Run from the repository root::

    python -m benchmarks.distributed_bench --quick           # 2 processes, 2 epochs: end to end
    python -m benchmarks.distributed_bench --nproc 2         # the figure in benchmarks/README.md
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from medot.backbones import create_backbone
from medot.methods.kmat.runner import RunConfig, fit_method
from medot.methods.prompt_learning.crossmodal import resolve_task
from medot.methods.prompt_learning.knowledge import embed_descriptions
from medot.train import FeatureCache, distributed_session, is_main_process, main_process_first


def worker(args: argparse.Namespace) -> None:
    """One process of a run: train, and on rank 0 write ``{"steps", "seconds", "world_size"}``."""
    with distributed_session(args.device) as env:
        with main_process_first("writing the synthetic task"):
            task = resolve_task("synthetic")
        device = None if args.device == "auto" else args.device
        backbone = create_backbone(args.backbone, device=device)
        knowledge = embed_descriptions(backbone, task.descriptions, task.classes)
        run = RunConfig(
            shots=args.shots, seed=1, epochs=args.epochs, batch_size=args.global_batch // env.world_size,
            views=1, device=args.device, progress=False,
        )
        clock: dict[str, float] = {}

        def on_event(event) -> None:
            if event.kind in ("start", "done"):
                clock[event.kind] = time.perf_counter()

        fitted = fit_method(
            "kmat", backbone, task.high_end_data(run.shots, run.seed), classes=task.classes,
            modalities=task.modalities, knowledge=knowledge, run=run, cache=FeatureCache(), on_event=on_event,
        )
        if is_main_process():
            seconds = clock["done"] - clock["start"]
            result = {"steps": fitted.result.global_step, "seconds": seconds, "world_size": env.world_size}
            Path(args.result).write_text(json.dumps(result))


def launch(args: argparse.Namespace, nproc: int, result: Path) -> dict:
    forwarded = ["--worker", "--result", str(result), "--shots", str(args.shots), "--epochs", str(args.epochs),
                 "--global-batch", str(args.global_batch), "--device", args.device, "--backbone", args.backbone]
    if nproc == 1:
        command = [sys.executable, "-m", "benchmarks.distributed_bench", *forwarded]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                   "-m", "benchmarks.distributed_bench", *forwarded]
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
    return json.loads(result.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nproc", type=int, default=2, help="processes of the data-parallel run (default: 2)")
    parser.add_argument("--shots", type=int, default=16, help="training images per class (default: 16)")
    parser.add_argument("--epochs", type=int, default=5, help="epochs (default: 5)")
    parser.add_argument("--global-batch", type=int, default=8, help="global batch, divisible by --nproc (default: 8)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu, cuda (default: auto)")
    parser.add_argument("--backbone", default="lite", help="backbone (default: lite)")
    parser.add_argument("--quick", action="store_true", help="4 shots, 2 epochs")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--result", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    if args.quick:
        args.shots, args.epochs = 4, 2
    if args.global_batch % args.nproc:
        parser.error(f"--global-batch {args.global_batch} is not divisible by --nproc {args.nproc}")
    gpus = torch.cuda.device_count() if args.device != "cpu" else 0
    where = f"{gpus} CUDA device(s): {torch.cuda.get_device_name(0)}" if gpus else "CPU (gloo, 1 thread per process)"
    print(f"K-MaT, lite, synthetic, {args.shots} shots x 3 classes, {args.epochs} epochs, global batch "
          f"{args.global_batch}; {where}")
    with tempfile.TemporaryDirectory() as folder:
        os.environ.setdefault("MEDOT_HOME", str(Path(folder) / "home"))
        one = launch(args, 1, Path(folder) / "one.json")
        many = launch(args, args.nproc, Path(folder) / "many.json")
    rates = {run["world_size"]: run["steps"] / run["seconds"] for run in (one, many)}
    for run in (one, many):
        print(f"{run['world_size']} process(es), batch {args.global_batch // run['world_size']} each: "
              f"{run['steps']} steps in {run['seconds']:.2f} s = {rates[run['world_size']]:.2f} steps/s")
    print(f"ratio ({args.nproc} processes / 1): {rates[args.nproc] / rates[1]:.2f}x")


if __name__ == "__main__":
    main()
