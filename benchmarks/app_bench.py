"""App figures: cold start to the first served page, classify latency, concurrent classify requests,
model lists on a fresh page load, and the first UMAP map after start-up; with ``--deployment`` the
figures of a shared deployment (issue 13) instead.

Starts ``python app.py`` on a free port with a fresh MEDOT_HOME (as a user would), then measures
through gradio_client. A K-MaT checkpoint (stored class embeddings only, as the map needs) is
written into MEDOT_HOME *after* the app started: the page-load list call must find it. With
``--umap`` (or ``--umap-only``) the first UMAP map is timed from the request, asked the moment the page
is served, with the app's background warm-up on (the default) and, in a second app, off
(``MEDOT_WARM_UMAP=0``), each on its own empty numba cache; then with the warm-up on and the map asked
``--umap-wait`` seconds after the page, and in an app started again on the first app's MEDOT_HOME
(whose numba cache holds the compiled code). Run from the repository root::

    python -m benchmarks.app_bench [--requests 20] [--sequential 10] [--umap | --umap-only] [--umap-wait 60]
    python -m benchmarks.app_bench --deployment [--sessions 150] [--kills 20]

``--deployment`` measures, side by side in one run:

* the app's RSS after ``--sessions`` fresh sessions (one gradio_client each) per endpoint
  (``/classify``, ``/detect_anomalies``), for Gradio's own session bound (10,000 kept, never
  expired) and for ``--max-sessions 50``;
* the app's peak RSS (``VmHWM``) over 4 concurrent heavy requests across endpoints (2 classify +
  2 anomaly maps of one 5600 x 5600 PNG), and reading that PNG with and without the app's
  downscaling (:data:`app.feedback.MAX_SIDE`), each in a fresh process (time, and the growth of
  its peak RSS above its RSS just before the read, the peak counter reset there);
* the kill-during-save resume check: a process saving a checkpoint over and over is SIGKILLed at
  random instants ``--kills`` times; after each kill ``load_checkpoint(..., fallback=True)`` (what
  ``--resume`` uses) must load a complete state.
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


def first_umap(warm: bool, home: Path, wait: float = 0.0) -> tuple[float, float]:
    """(seconds from the request to the first UMAP map, cold start) in a fresh app on ``home``; the
    map is asked for ``wait`` seconds after the page is served."""
    from gradio_client import Client

    port = _free_port()
    env = {**os.environ, "MEDOT_HOME": str(home), "MEDOT_PORT": str(port), "HF_HUB_OFFLINE": "1",
           "MEDOT_WARM_UMAP": "1" if warm else "0",
           # the numba cache the warm-up uses ($MEDOT_HOME/cache/numba), for both apps: without it
           # the warm-up-off app would read and fill numba's cache next to umap's sources
           "NUMBA_CACHE_DIR": str(home / "cache" / "numba")}
    model = home / "models" / "stored" / "model"
    if not model.with_suffix(".json").is_file():
        write_stored_kmat(model)
    process = subprocess.Popen([sys.executable, "app.py"], cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}/"
        cold = _wait_for_page(url, process, timeout=300)
        client = Client(url, verbose=False)
        time.sleep(wait)
        start = time.perf_counter()
        client.predict("models/stored/model.safetensors", "", "umap", True, api_name="/manifold")  # its id
        return time.perf_counter() - start, cold
    finally:
        process.terminate()
        process.wait(timeout=30)


def umap_figures(wait: float) -> None:
    """First UMAP map with the warm-up on and off (each on an empty numba cache), on after ``wait``
    seconds, and on a second start that finds the first one's compiled code."""
    with tempfile.TemporaryDirectory() as first, tempfile.TemporaryDirectory() as second, \
            tempfile.TemporaryDirectory() as third:
        runs = [("warm-up on, asked at once", True, Path(first), 0.0),
                ("warm-up off, asked at once", False, Path(second), 0.0),
                (f"warm-up on, asked {wait:.0f} s after the page", True, Path(third), wait),
                ("second start on the first run's MEDOT_HOME (compiled code cached), asked at once", True,
                 Path(first), 0.0)]
        for name, warm, home, delay in runs:
            seconds, cold_start = first_umap(warm, home, delay)
            print(f"first UMAP map, {name}: {seconds:.1f} s (page after {cold_start:.1f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="concurrent classify requests (default 20)")
    parser.add_argument("--sequential", type=int, default=10, help="timed sequential classify calls (default 10)")
    parser.add_argument("--umap", action="store_true", help="also time the first UMAP map, warm-up on vs off")
    parser.add_argument("--umap-only", action="store_true", help="only the UMAP figures (no classify figures)")
    parser.add_argument("--umap-wait", type=float, default=60.0,
                        help="seconds after the page before the map in the third UMAP run (default 60)")
    parser.add_argument("--deployment", action="store_true", help="the deployment figures instead (module docstring)")
    parser.add_argument("--sessions", type=int, default=150, help="fresh sessions per endpoint (default 150)")
    parser.add_argument("--kills", type=int, default=20, help="kills during checkpoint saves (default 20)")
    args = parser.parse_args()
    print(f"load average: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    if args.deployment:
        deployment(args)
        return
    if args.umap_only:
        umap_figures(args.umap_wait)
        return
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
            model_id = Path(model).relative_to(home).as_posix()  # the lists offer ids relative to MEDOT_HOME
            listed = [model_id in [choice[1] for choice in update["choices"]] for update in lists[:4]]
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
        umap_figures(args.umap_wait)


# --------------------------------------------------------------------------- --deployment


def _status_kib(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise SystemExit(f"no {field} for process {pid}")


def _write_patchcore(home: Path) -> Path:
    """A PatchCore model (fast to fit) on the synthetic phantoms, where the app lists models."""
    from medot.backbones import create_backbone
    from medot.data.synthetic import write_synthetic_benchmark
    from medot.methods.pradot.config import PatchCoreConfig
    from medot.methods.pradot.data import load_anomaly_splits
    from medot.methods.pradot.patchcore import PatchCoreModel
    from medot.methods.pradot.patchcore_io import save_patchcore
    from medot.methods.pradot.training import encode_tokens

    data = home / "bench-data"
    write_synthetic_benchmark(data, size=64, n_per_class=4, progress=False)
    backbone = create_backbone("lite", device="cpu")
    tokens, grids = encode_tokens(backbone, load_anomaly_splits(data / "mvtec", "phantom").train, ("stride16",),
                                  progress=False)
    model = PatchCoreModel(("stride16",), grids, PatchCoreConfig())
    model.fit(tokens)
    return save_patchcore(home / "models" / "patchcore-phantom" / "patchcore", model, backbone="lite",
                          image_size=backbone.preprocess.image_size)


class _App:
    def __init__(self, home: Path, *flags: str) -> None:
        self.port = _free_port()
        env = {**os.environ, "MEDOT_HOME": str(home), "MEDOT_BACKBONE": "lite", "HF_HUB_OFFLINE": "1",
               "MEDOT_PORT": str(self.port)}
        self.process = subprocess.Popen([sys.executable, "app.py", *flags], cwd=REPO, env=env,
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"
        _wait_for_page(self.url, self.process, timeout=300)

    def rss_mib(self) -> float:
        return _status_kib(self.process.pid, "VmRSS") / 1024

    def peak_mib(self) -> float:
        return _status_kib(self.process.pid, "VmHWM") / 1024

    def close(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=60)


def _calls(model: str, image: Path) -> dict:
    from gradio_client import handle_file

    return {
        "/classify": lambda c: c.predict(handle_file(str(image)), LABELS, "lite", ZERO_SHOT, HIGH_END_PROMPTS,
                                         api_name="/classify"),
        "/detect_anomalies": lambda c: c.predict(handle_file(str(image)), model, 0.5, 1.0,
                                                 api_name="/detect_anomalies"),
    }


SESSION_STEP = 50  # the RSS is also read after every this many sessions: does it level off?


def _session_growth(home: Path, model: str, sessions: int, *flags: str) -> dict[str, list[float]]:
    """Per endpoint, the app's RSS (MiB) before ``sessions`` fresh sessions, after every
    :data:`SESSION_STEP` of them, and after the last."""
    from gradio_client import Client

    app = _App(home, *flags)
    try:
        growth = {}
        for endpoint, call in _calls(model, EXAMPLE).items():
            call(Client(app.url, verbose=False))  # warm: backbone and model loaded
            trace = [app.rss_mib()]
            for done in range(1, sessions + 1):
                call(Client(app.url, verbose=False))
                if done % SESSION_STEP == 0 or done == sessions:
                    trace.append(app.rss_mib())
                    print(f"  {endpoint}: {done} sessions, RSS {trace[-1]:.0f} MiB", file=sys.stderr, flush=True)
            growth[endpoint] = trace
        return growth
    finally:
        app.close()


_READ = """
import sys, time
from pathlib import Path
from medot.data.io import read_image

def kib(field):
    return next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith(field + ":"))

Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS now (Linux): the imports' own peak is forgotten
before = kib("VmRSS")
start = time.perf_counter()
image = read_image(sys.argv[1], max_side=int(sys.argv[2]) or None)
seconds = time.perf_counter() - start
print(seconds, (kib("VmHWM") - before) / 1024, (kib("VmRSS") - before) / 1024, *image.pixels.shape[:2])
"""


def _read_in_fresh_process(path: Path, max_side: int) -> tuple[float, float, float, tuple[int, int]]:
    """(seconds, peak RSS growth MiB, RSS growth MiB still held by the result, decoded shape) of one
    ``read_image`` in a fresh process. Both growths are measured inside that process from its RSS
    just before the call: the peak counter ``VmHWM`` is reset there (``/proc/self/clear_refs``), so
    the peak of importing torch/PIL does not hide (or pad) the read's own peak."""
    out = subprocess.run([sys.executable, "-c", _READ, str(path), str(max_side)], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout.split()
    return float(out[0]), float(out[1]), float(out[2]), (int(out[3]), int(out[4]))


def _peak_for_concurrent_heavy(home: Path, model: str, large: Path) -> tuple[float, float]:
    """App RSS before and peak RSS (VmHWM) over 2 classify + 2 anomaly requests at once on ``large``."""
    from gradio_client import Client

    app = _App(home)
    try:
        for call in _calls(model, EXAMPLE).values():
            call(Client(app.url, verbose=False))  # warm
        before = app.rss_mib()
        calls = list(_calls(model, large).values()) * 2
        with ThreadPoolExecutor(len(calls)) as pool:
            for future in [pool.submit(call, Client(app.url, verbose=False)) for call in calls]:
                future.result()
        return before, app.peak_mib()
    finally:
        app.close()


_SAVER = """
import sys, torch
from medot.checkpoint import Checkpoint, save_checkpoint
step = 0
while True:
    step += 1
    tensors = {"w": torch.full((256, 1024), float(step)), "step": torch.tensor(step)}
    save_checkpoint(sys.argv[1], Checkpoint(tensors, {"method": "bench", "backbone": "lite", "trainer": {"step": step}}))
    print(step, flush=True)
"""


def _kill_during_save(folder: Path, kills: int, seed: int = 0) -> tuple[int, int]:
    """(kills after which the state loaded, kills made)."""
    import random

    import torch

    from medot.checkpoint import load_checkpoint

    rng = random.Random(seed)
    path = folder / "state"
    loaded = 0
    for _ in range(kills):
        saver = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], cwd=REPO, stdout=subprocess.PIPE, text=True)
        for _ in range(rng.randint(1, 3)):  # let it finish a few saves, then kill it at a random instant
            saver.stdout.readline()
        time.sleep(rng.uniform(0.0, 0.2))
        saver.kill()
        saver.wait()
        saver.stdout.close()
        checkpoint = load_checkpoint(path, fallback=True)
        step = int(checkpoint.tensors["step"])
        loaded += bool(torch.all(checkpoint.tensors["w"] == step))
    return loaded, kills


def deployment(args: argparse.Namespace) -> None:
    from PIL import Image

    from app.feedback import MAX_SIDE

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        model = Path(_write_patchcore(home)).relative_to(home).as_posix()  # the id the app lists and takes
        large = home / "large.png"
        Image.open(EXAMPLE).convert("RGB").resize((5600, 5600)).save(large)
        started = time.perf_counter()

        def phase(name: str) -> None:  # progress on stderr, the figures on stdout
            print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)

        phase("sessions, 10,000 kept")
        unbounded = _session_growth(home, model, args.sessions, "--max-sessions", "10000", "--session-ttl", "1000000")
        phase("sessions, --max-sessions 50")
        bounded = _session_growth(home, model, args.sessions, "--max-sessions", "50")
        phase("reading the large PNG")
        full = _read_in_fresh_process(large, 0)
        reduced = _read_in_fresh_process(large, MAX_SIDE)
        phase("concurrent heavy requests")
        before, peak = _peak_for_concurrent_heavy(home, model, large)
        phase("kill during save")
        resumed, kills = _kill_during_save(home / "kill", args.kills)
        phase("done")
    print(f"RSS after {args.sessions} fresh sessions per endpoint (MiB, growth per session in KiB):")
    for endpoint in unbounded:
        (b0, a0), (b1, a1) = (unbounded[endpoint][0], unbounded[endpoint][-1]), (bounded[endpoint][0], bounded[endpoint][-1])
        print(f"  {endpoint}: 10,000 sessions kept {b0:.0f} -> {a0:.0f} (+{1024 * (a0 - b0) / args.sessions:.0f} "
              f"KiB/session); --max-sessions 50 {b1:.0f} -> {a1:.0f} (+{1024 * (a1 - b1) / args.sessions:.0f} "
              "KiB/session)")
        for label, trace in (("10,000 kept", unbounded[endpoint]), ("--max-sessions 50", bounded[endpoint])):
            print(f"    {label}, RSS every {SESSION_STEP} sessions: {' -> '.join(f'{rss:.0f}' for rss in trace)} MiB")
    print(f"reading a 5600x5600 RGB PNG, each in a fresh process, growth above its RSS just before the read: "
          f"full {full[3]} {full[0]:.2f} s, peak +{full[1]:.0f} MiB, held +{full[2]:.0f} MiB; downscaled to "
          f"{reduced[3]} {reduced[0]:.2f} s, peak +{reduced[1]:.0f} MiB, held +{reduced[2]:.0f} MiB "
          f"({full[1] / max(reduced[1], 1):.1f}x lower peak, {full[0] / max(reduced[0], 1e-9):.1f}x faster)")
    print(f"4 concurrent heavy requests (2 classify + 2 anomaly, that PNG), heavy group of 2: RSS {before:.0f} MiB "
          f"before, peak {peak:.0f} MiB (+{peak - before:.0f} MiB)")
    print(f"kill -9 during checkpoint saves: {resumed}/{kills} kills left a state that loads (fallback=True)")


if __name__ == "__main__":
    main()
