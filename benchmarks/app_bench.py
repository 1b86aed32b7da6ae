"""App figures: cold start to the first served page, classify latency, concurrent classify requests.

Starts ``python app.py`` on a free port with a fresh MEDOT_HOME (as a user would), then measures
through gradio_client. Run from the repository root::

    python -m benchmarks.app_bench [--requests 20] [--sequential 10]
"""

from __future__ import annotations

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "examples" / "ct_nodule.png"
LABELS = "normal, nodule, opacity"
ZERO_SHOT, HIGH_END_PROMPTS = "zero-shot", "high-end prompts (w_H)"  # the Classify tab's choices


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_for_page(url: str, process: subprocess.Popen, timeout: float) -> float:
    start = time.perf_counter()
    while time.perf_counter() - start < timeout:
        if process.poll() is not None:
            raise SystemExit(f"app exited with status {process.returncode}")
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                response.read()
                return time.perf_counter() - start
        except OSError:
            time.sleep(0.2)
    raise SystemExit(f"no page at {url} after {timeout:.0f} s")


def _classify(client) -> float:
    from gradio_client import handle_file

    start = time.perf_counter()
    client.predict(handle_file(str(EXAMPLE)), LABELS, "lite", ZERO_SHOT, HIGH_END_PROMPTS, api_name="/classify")
    return time.perf_counter() - start


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="concurrent classify requests (default 20)")
    parser.add_argument("--sequential", type=int, default=10, help="timed sequential classify calls (default 10)")
    args = parser.parse_args()
    from gradio_client import Client

    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MEDOT_HOME": home, "MEDOT_PORT": str(port), "HF_HUB_OFFLINE": "1"}
        process = subprocess.Popen(
            [sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            url = f"http://127.0.0.1:{port}/"
            cold = _wait_for_page(url, process, timeout=300)
            client = Client(url, verbose=False)
            first = _classify(client)  # loads the backbone
            sequential = [_classify(client) for _ in range(args.sequential)]
            with ThreadPoolExecutor(args.requests) as pool:
                futures = [pool.submit(_classify, Client(url, verbose=False)) for _ in range(args.requests)]
                concurrent = [future.result() for future in futures]
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"cold start to first served page: {cold:.1f} s")
    print(f"first classify (loads lite): {first:.2f} s")
    print(f"classify latency, sequential x{len(sequential)}: median {1000 * statistics.median(sequential):.0f} ms")
    print(
        f"{args.requests} concurrent classify requests: all {len(concurrent)} succeeded; "
        f"p50 {1000 * _percentile(concurrent, 0.5):.0f} ms, p95 {1000 * _percentile(concurrent, 0.95):.0f} ms"
    )


if __name__ == "__main__":
    main()
