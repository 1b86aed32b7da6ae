"""App figures: cold start to the first served page, classify latency, concurrent classify requests,
model lists on a fresh page load, and the first UMAP map after start-up.

Starts ``python app.py`` on a free port with a fresh MEDOT_HOME (as a user would), then measures
through gradio_client. A K-MaT checkpoint (stored class embeddings only, as the map needs) is
written into MEDOT_HOME *after* the app started: the page-load list call must find it. With
``--umap`` the first UMAP map is timed from the moment the page is served, with the app's background
warm-up on (the default) and, in a second app, off (``MEDOT_WARM_UMAP=0``), each on its own empty
numba cache. Run from the repository root::

    python -m benchmarks.app_bench [--requests 20] [--sequential 10] [--umap]
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
ZERO_SHOT, HIGH_END_PROMPTS = "zero-shot", "high"  # the Classify tab's model and modality values


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


def write_stored_kmat(path: Path, dim: int = 32, classes: int = 3) -> str:
    """A K-MaT checkpoint holding only the stored embeddings and plan the figures read."""
    import torch
    import torch.nn.functional as F

    from medot.checkpoint import Checkpoint, save_checkpoint

    generator = torch.Generator().manual_seed(0)
    unit = lambda n: F.normalize(torch.randn(n, dim, generator=generator), dim=-1)  # noqa: E731
    tensors = {"artefacts.w_high": unit(classes), "artefacts.w_low": unit(classes),
               "artefacts.anchors_high": unit(classes), "artefacts.anchors_low": unit(classes),
               "artefacts.description_embeddings": unit(4 * classes),
               "artefacts.description_class": torch.arange(classes).repeat_interleave(4),
               "artefacts.description_modality": torch.arange(2).repeat(2 * classes),
               "artefacts.fgw_plan": torch.full((classes, classes), 1 / classes**2)}
    meta = {"method": "kmat", "backbone": "lite", "class_names": [f"class {k}" for k in range(classes)],
            "modalities": {"high": "ct", "low": "xray"}, "hyper_parameters": {"fgw_alpha": 0.1, "fgw_epsilon": 0.1}}
    return str(save_checkpoint(path, Checkpoint(tensors, meta)))


def first_umap(warm: bool) -> tuple[float, float]:
    """(seconds from the served page to the first UMAP map, cold start) in a fresh app."""
    from gradio_client import Client

    port = _free_port()
    with tempfile.TemporaryDirectory() as home:
        env = {**os.environ, "MEDOT_HOME": home, "MEDOT_PORT": str(port), "HF_HUB_OFFLINE": "1",
               "MEDOT_WARM_UMAP": "1" if warm else "0"}
        env.pop("NUMBA_CACHE_DIR", None)
        model = write_stored_kmat(Path(home) / "models" / "stored" / "model")
        process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.DEVNULL)
        try:
            url = f"http://127.0.0.1:{port}/"
            cold = _wait_for_page(url, process, timeout=300)
            client = Client(url, verbose=False)
            start = time.perf_counter()
            client.predict(model, "", "umap", True, api_name="/manifold")
            return time.perf_counter() - start, cold
        finally:
            process.terminate()
            process.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="concurrent classify requests (default 20)")
    parser.add_argument("--sequential", type=int, default=10, help="timed sequential classify calls (default 10)")
    parser.add_argument("--umap", action="store_true", help="also time the first UMAP map, warm-up on vs off")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
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
            model = write_stored_kmat(Path(home) / "models" / "after-start" / "model")
            start = time.perf_counter()
            inputs = len(client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/model_lists"]
                         ["parameters"])
            lists = client.predict("zero-shot", None, "", *[None] * (inputs - 3), api_name="/model_lists")
            lists_time = time.perf_counter() - start
            listed = [model in [choice[1] for choice in update["choices"]] for update in lists[:4]]
            first = _classify(client)  # loads the backbone
            sequential = [_classify(client) for _ in range(args.sequential)]
            with ThreadPoolExecutor(args.requests) as pool:
                futures = [pool.submit(_classify, Client(url, verbose=False)) for _ in range(args.requests)]
                concurrent = [future.result() for future in futures]
        finally:
            process.terminate()
            process.wait(timeout=30)
    print(f"cold start to first served page: {cold:.1f} s")
    print(f"model lists on a fresh page load: {sum(listed)}/4 prompt-model lists hold the model written after "
          f"start-up ({1000 * lists_time:.0f} ms)")
    print(f"first classify (loads lite): {first:.2f} s")
    print(f"classify latency, sequential x{len(sequential)}: median {1000 * statistics.median(sequential):.0f} ms")
    print(
        f"{args.requests} concurrent classify requests: all {len(concurrent)} succeeded; "
        f"p50 {1000 * _percentile(concurrent, 0.5):.0f} ms, p95 {1000 * _percentile(concurrent, 0.95):.0f} ms"
    )
    if args.umap:
        for warm in (True, False):
            seconds, cold_start = first_umap(warm)
            print(f"first UMAP map after the page is served, warm-up {'on' if warm else 'off'}: {seconds:.1f} s "
                  f"(page after {cold_start:.1f} s)")


if __name__ == "__main__":
    main()
