"""Speed of ``lite`` image encoding with patch tokens (the default layers) at 224 x 224.

Prints the batch-1 latency (median over ``--runs`` after ``--warmup`` runs) and the throughput of
batches of ``--batch-size`` against the targets (<= 60 ms, >= 40 images/s on a 2-core CPU)::

    python -m benchmarks.lite_encode                 # CPU (run from the repository root)
    python -m benchmarks.lite_encode --device cuda   # GPU, if there is one
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import skimage.data
import torch
from PIL import Image

from medot.backbones import create_backbone

LATENCY_TARGET_MS = 60.0
THROUGHPUT_TARGET = 40.0


def median_seconds(step: Callable[[], object], device: torch.device, runs: int, warmup: int) -> float:
    """Median wall time of ``step`` over ``runs`` calls after ``warmup`` calls (CUDA synchronised)."""
    timings = []
    for index in range(warmup + runs):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if index >= warmup:
            timings.append(time.perf_counter() - start)
    return statistics.median(timings)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda (default: cpu)")
    parser.add_argument("--runs", type=int, default=30, help="timed batch-1 runs (default: 30)")
    parser.add_argument("--batch-runs", type=int, default=5, help="timed batched runs (default: 5)")
    parser.add_argument("--warmup", type=int, default=5, help="untimed runs first (default: 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="throughput batch size (default: 32)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = parser.parse_args()

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    backbone = create_backbone("lite", device=device)
    image = backbone.transform(Image.fromarray(skimage.data.chelsea())).to(device)
    single = image[None]
    batch = image.expand(args.batch_size, -1, -1, -1).contiguous()

    with torch.inference_mode():
        latency = median_seconds(lambda: backbone.encode_image(single), device, args.runs, args.warmup)
        batched = median_seconds(lambda: backbone.encode_image(batch), device, args.batch_runs, 1)
    throughput = args.batch_size / batched

    where = f"{device}" + (f", {torch.get_num_threads()} threads" if device.type == "cpu" else "")
    print(f"lite encode_image 224x224, layers {backbone.default_layers} ({where})")
    print(
        f"batch 1: {latency * 1e3:.1f} ms median of {args.runs} "
        f"(target <= {LATENCY_TARGET_MS:.0f} ms: {latency * 1e3 / LATENCY_TARGET_MS:.2f} x budget)"
    )
    print(
        f"batch {args.batch_size}: {throughput:.1f} images/s ({batched * 1e3:.0f} ms per batch, median of "
        f"{args.batch_runs}; target >= {THROUGHPUT_TARGET:.0f}: {throughput / THROUGHPUT_TARGET:.2f} x target)"
    )


if __name__ == "__main__":
    main()
