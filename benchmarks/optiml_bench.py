"""OPTiML pretraining: throughput, share of a step spent in the OT solve, peak memory per batch size,
and the synthetic linear-probe table (init / vicreg / vicregl / optiml x label fraction).

(a) **throughput**: optimiser steps of ``optiml`` (CV-SIM, dense OT, var/cov) on random 224-px view
pairs for each encoder (``lite``, ``resnet18``), through :class:`medot.train.Trainer` (LARS), timed
from the trainer's first "step" to the last; images/s counts source images (two views each).
(b) **OT share**: time inside :func:`medot.methods.optiml.losses.ot_plan` (wrapped with a timer)
over the whole step time, same runs.
(c) **peak memory** per batch size, each (encoder, batch size) in a fresh process: CUDA
``max_memory_allocated`` when a GPU is present; on the CPU the growth of the process's resident set
during training: the kernel's high-water mark ``VmHWM`` is reset (``echo 5 > /proc/self/clear_refs``)
once the model and the batches exist, and ``peak growth = VmHWM after the steps - VmRSS at the
reset`` (activations, gradients, LARS state, allocator caches of the warm-up and timed steps). Where
``clear_refs`` is not writable the growth of ``ru_maxrss`` is used instead (an underestimate when
building the model peaked higher). ``tracemalloc`` is not used: it sees only Python's allocator,
not torch's C++ tensor allocations, so it would report almost nothing.
(d) **probe table** (``--probe``): pretrain each method on the synthetic pool for ``--epochs``, then
``medot eval linear`` at 10 % and 100 % labels, seeds 1 2 3; plus the untrained encoder ("init")
and, with ``--lite``, the ImageNet-initialised ``lite`` tower on the same probe set and image size
(the reference that shows the probe set and the probe can separate the classes at all). Reported
as measured, never tuned to.

Run from the repository root::

    python -m benchmarks.optiml_bench --quick                       # a few steps, batch 4
    python -m benchmarks.optiml_bench                               # (a)-(c), batch 8 and 16
    python -m benchmarks.optiml_bench --batches 4 8 16 --steps 3    # as in benchmarks/README.md
    python -m benchmarks.optiml_bench --stages 3 4 --encoders resnet18   # dense terms on two stages
    python -m benchmarks.optiml_bench --probe --encoder resnet18 --image-size 96 --epochs 10
    python -m benchmarks.optiml_bench --probe --encoder resnet18 --image-size 64 --epochs 2 --batch 32 --pool 96 --lite
"""

from __future__ import annotations

import argparse
import json
import re
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from medot.methods.optiml import losses
from medot.methods.optiml import model as model_module
from medot.methods.optiml.config import OptimlConfig
from medot.methods.optiml.runner import PretrainRun, build_task
from medot.train import Trainer

SIZE = 224


def _step_batches(batch: int, steps: int, size: int):
    torch.manual_seed(0)
    views = torch.rand(batch, 1, size, size), torch.rand(batch, 1, size, size)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0, 0.0]]).repeat(batch, 1), torch.tensor([[0.1, 0.1, 0.8, 0.8, 1.0]]).repeat(batch, 1)
    return [(*views, *boxes)] * steps


def _status_kib(field: str) -> int | None:
    match = re.search(rf"^{field}:\s+(\d+) kB", Path("/proc/self/status").read_text(), re.MULTILINE)
    return int(match.group(1)) if match else None


def _reset_peak_rss() -> int | None:
    """Reset the kernel's RSS high-water mark; the current RSS (KiB), or None where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return None
    return _status_kib("VmRSS")


def measure(encoder: str, batch: int, steps: int, size: int, device: str, stages: tuple[int, ...] = (4,)) -> dict:
    """One timed run in this process (see the module docstring)."""
    ot_time = [0.0]
    original = losses.ot_plan

    def timed_ot_plan(*args, **kwargs):
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        plan = original(*args, **kwargs)
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        ot_time[0] += time.perf_counter() - start
        return plan

    model_module.losses.ot_plan = timed_ot_plan
    config = OptimlConfig(encoder=encoder, image_size=size, **({"stages": stages} if tuple(stages) != (4,) else {}))
    task = build_task(config, seed=0)
    run = PretrainRun(epochs=1, batch_size=batch, warmup_epochs=0, device=device, progress=False)
    clock: list[float] = []
    trainer = Trainer(run.train_config(None).__class__(**{**run.train_config(None).__dict__, "event_every_steps": 1}))
    batches = _step_batches(batch, steps + 1, size)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rss_at_reset = _reset_peak_rss()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    def on_event(event):
        if event.kind == "step":
            clock.append(time.perf_counter())
            if len(clock) == 1:
                ot_time[0] = 0.0  # the first step (warm-up, allocation) is not timed

    trainer.fit(task, lambda context: batches, on_event=on_event)
    model_module.losses.ot_plan = original
    seconds = clock[-1] - clock[0]
    if torch.cuda.is_available():
        peak, memory = torch.cuda.max_memory_allocated() / 2**20, "cuda max_memory_allocated"
    elif rss_at_reset is not None:
        peak, memory = (_status_kib("VmHWM") - rss_at_reset) / 1024, "VmHWM growth after clear_refs"
    else:
        peak, memory = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024, "ru_maxrss growth"
    return {
        "encoder": encoder, "batch": batch, "steps": steps, "size": size, "stages": list(stages),
        "images_per_s": batch * steps / seconds, "seconds_per_step": seconds / steps,
        "ot_share": ot_time[0] / seconds, "peak_growth_mib": round(peak, 1), "memory": memory,
        "rss_before_mib": round((rss_at_reset or rss_before) / 1024, 1),
        "peak_rss_mib": round((_status_kib("VmHWM") or 0) / 1024, 1),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
        "device": "cuda" if torch.cuda.is_available() else "cpu", "threads": torch.get_num_threads(),
    }


def probe_table(args: argparse.Namespace) -> list[dict]:
    """(d): pretrain each method, then linear-probe every encoder (plus init) via the CLI."""
    from medot.cli import main
    from medot.data.synthetic import write_pretraining_set

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        data = write_pretraining_set(Path(tmp) / "syn", n_pool=args.pool, n_per_class=30, size=args.image_size + 32, progress=False)
        encoders = {"init": args.encoder, **({"lite (ImageNet init)": "lite"} if args.lite else {})}
        for method in ("vicreg", "vicregl", "optiml"):
            out = Path(tmp) / method
            argv = ["train", "optiml", "--data", str(data.pool), "--method", method, "--encoder", args.encoder,
                    "--image-size", str(args.image_size), "--epochs", str(args.epochs), "--batch-size", str(args.batch),
                    "--out", str(out), "--quiet", "--device", args.device]
            start = time.perf_counter()
            assert main(argv) == 0
            print(f"pretrained {method} in {time.perf_counter() - start:.0f} s", flush=True)
            encoders[method] = str(out / "encoder")
        for name, encoder in encoders.items():
            report = Path(tmp) / f"eval_{name}"
            argv = ["eval", "linear", "--encoder", encoder, "--data", str(data.labelled), "--fractions", "10", "100",
                    "--seeds", "1", "2", "3", "--image-size", str(args.image_size), "--out", str(report), "--quiet",
                    "--device", args.device]
            assert main(argv) == 0
            summary = json.loads((report / "eval.json").read_text())["summary"]
            for fraction, metrics in summary.items():
                rows.append({"encoder": name, "fraction": fraction, **{k: (v["mean"], v["std"]) for k, v in metrics.items()}})
                print(json.dumps(rows[-1]), flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="3 timed steps at batch 4")
    parser.add_argument("--encoders", nargs="+", default=["lite", "resnet18"])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 16])
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--stages", type=int, nargs="+", default=[4], help="encoder stages with dense terms (default: 4)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--probe", action="store_true", help="(d) the synthetic linear-probe table instead")
    parser.add_argument("--encoder", default="resnet18", help="(d) encoder to pretrain")
    parser.add_argument("--image-size", type=int, default=96, help="(d) view size")
    parser.add_argument("--epochs", type=int, default=10, help="(d) pretraining epochs")
    parser.add_argument("--batch", type=int, default=32, help="(d) pretraining batch")
    parser.add_argument("--pool", type=int, default=300, help="(d) synthetic pool size")
    parser.add_argument("--lite", action="store_true", help="(d) also probe the ImageNet-initialised lite tower")
    parser.add_argument("--worker", nargs=3, metavar=("ENCODER", "BATCH", "STEPS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        encoder, batch, steps = args.worker
        print(json.dumps(measure(encoder, int(batch), int(steps), SIZE, args.device, tuple(args.stages))))
        return
    if args.probe:
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average before: "
              f"{open('/proc/loadavg').read().split()[:3]}", flush=True)
        probe_table(args)
        print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average after: "
              f"{open('/proc/loadavg').read().split()[:3]}", flush=True)
        return
    batches, steps = ([4], 3) if args.quick else (args.batches, args.steps)
    print(f"load average before: {open('/proc/loadavg').read().split()[:3]}", flush=True)
    for encoder in args.encoders:
        for batch in batches:  # each in a fresh process: peak RSS is per process
            command = [sys.executable, "-m", "benchmarks.optiml_bench", "--worker", encoder, str(batch), str(steps),
                       "--device", args.device, "--stages", *map(str, args.stages)]
            result = subprocess.run(command, capture_output=True, text=True, check=True)
            print(result.stdout.strip().splitlines()[-1], flush=True)
    print(f"load average after: {open('/proc/loadavg').read().split()[:3]}", flush=True)


if __name__ == "__main__":
    main()
