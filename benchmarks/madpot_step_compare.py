"""One MADPOT training step with the current ``model.py`` vs the ``model.py`` of an earlier commit.

Same batch (synthetic ``Retina``, 4 normal + 4 abnormal images, ``--views`` views, batch 16,
``lite``), same initial weights: prints the loss terms and the relative difference of every
gradient (the two must agree), then the wall time of ``--repeats`` interleaved steps of each.

    python -m benchmarks.madpot_step_compare --commit 1ebc35b --repeats 6
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import medot.methods.madpot.model as current
from medot.backbones import create_backbone
from medot.data.synthetic import write_synthetic_benchmark
from medot.methods.madpot.config import MadpotConfig
from medot.methods.madpot.data import encode_support, load_support
from medot.methods.madpot.task import MadpotTask, support_batches
from medot.train import EpochContext, FeatureCache


def _module_at(commit: str, work: Path):
    source = subprocess.run(["git", "show", f"{commit}:medot/methods/madpot/model.py"], check=True,
                            capture_output=True, text=True).stdout
    path = work / "old_model.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("old_madpot_model", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--commit", required=True, help="the commit whose model.py is the reference")
    parser.add_argument("--repeats", type=int, default=6)
    parser.add_argument("--views", type=int, default=4)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="madpot_compare_"))
    old = _module_at(args.commit, work)
    backbone = create_backbone("lite", device="cpu")
    synthetic = write_synthetic_benchmark(work / "synthetic", n_per_class=8, size=224, progress=False)
    config = MadpotConfig(views=args.views, epochs=1, seed=1)
    layers = tuple(backbone.default_layers)
    support = load_support(synthetic.mvfa_root, "Retina", 4, 1)
    encoded = encode_support(backbone, support.records, layers, views=args.views, cache=FeatureCache(work / "c"),
                             progress=False)
    channels = {layer: int(t.shape[-1]) for layer, t in encoded.tokens.items()}
    tasks = {}
    for name, module in (("old", old), ("new", current)):
        torch.manual_seed(0)
        model = module.MadpotModel(backbone, config, layers, channels, encoded.grids, ["retinal OCT"], localised=True)
        tasks[name] = MadpotTask(model)
    batch = next(iter(support_batches([encoded], 16)(EpochContext(0, torch.Generator().manual_seed(0)))))
    grads = {}
    for name, task in tasks.items():
        task.zero_grad()
        out = task.training_step(batch)
        out["loss"].backward()
        print(name, {key: round(float(value.detach()), 6) for key, value in out.items()})
        grads[name] = {n: p.grad.clone() for n, p in task.named_parameters() if p.grad is not None}
    worst = max(float((g - grads["new"][n]).norm() / g.norm().clamp_min(1e-30)) for n, g in grads["old"].items())
    print(f"largest relative gradient difference over {len(grads['old'])} parameters: {worst:.2e}")
    times = {"old": [], "new": []}
    for _ in range(args.repeats):
        for name, task in tasks.items():
            t0 = time.perf_counter()
            task.training_step(batch)["loss"].backward()
            times[name].append(time.perf_counter() - t0)
    for name, values in times.items():
        print(f"{name}: step {statistics.median(values):.3f} s median of {[round(v, 2) for v in values]}")
    print(f"speed-up {statistics.median(times['old']) / statistics.median(times['new']):.2f}x")


if __name__ == "__main__":
    main()
