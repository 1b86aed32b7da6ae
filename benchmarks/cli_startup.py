"""Where the start-up time of ``medot backbones`` and ``medot predict`` goes.

Each figure is the median wall time of ``--repeats`` fresh Python processes (the OS file cache warm
after the first): bare interpreter, ``import medot.cli``, the heavy imports one by one (torch,
torchvision, timm, transformers, open_clip), ``medot backbones``, ``medot predict`` refusing a bad
label list, and ``medot predict`` on one bundled example with ``lite`` — then the ``-X importtime``
top entries of ``medot backbones`` and of that ``medot predict``. The machine's load average is printed beside them (figures taken on a busy machine are inflated).
Run from the repository root::

    python -m benchmarks.cli_startup [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "assets" / "examples" / "ct_nodule.png"
STEPS = {
    "python (bare interpreter)": ["-c", "pass"],
    "import medot.cli": ["-c", "import medot.cli"],
    "import torch": ["-c", "import torch"],
    "import torchvision": ["-c", "import torchvision"],
    "import timm": ["-c", "import timm"],
    "import transformers": ["-c", "import transformers"],
    "import open_clip": ["-c", "import open_clip"],
    "medot backbones": ["-m", "medot", "backbones"],
    "medot predict, bad --labels (refused)": ["-m", "medot", "predict", str(EXAMPLE), "--labels", "normal"],
    "medot predict (lite, one image)": ["-m", "medot", "predict", str(EXAMPLE), "--labels", "normal,nodule,opacity",
                                        "--backbone", "lite", "--device", "cpu"],
}
#: steps that must end with medot's user-error status 2 (a refused argument), not 0
REFUSED = {"medot predict, bad --labels (refused)"}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def timed(arguments: list[str], status: int = 0) -> tuple[float, str]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, *arguments], cwd=REPO, env=_env(), capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != status:
        raise SystemExit(f"{' '.join(arguments)} failed:\n{done.stderr}")
    return elapsed, done.stderr


def import_breakdown(arguments: list[str], top: int = 12) -> list[tuple[float, str]]:
    """``(cumulative seconds, module)`` of the slowest top-level imports under ``-X importtime``."""
    _, stderr = timed(["-X", "importtime", *arguments])
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "|" not in line:
            continue
        _, cumulative, name = (part.strip() for part in line[len("import time:"):].split("|"))
        if cumulative.isdigit() and not name.startswith(" ") and not line.split("|")[2].startswith("  "):
            rows.append((int(cumulative) / 1e6, name))
    return sorted(rows, reverse=True)[:top]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per step (default 3)")
    args = parser.parse_args()
    print(f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())}; {os.cpu_count()} CPUs")
    for name, arguments in STEPS.items():
        times = [timed(arguments, 2 if name in REFUSED else 0)[0] for _ in range(args.repeats)]
        print(f"{name:<40} median {statistics.median(times):6.2f} s  (min {min(times):.2f}, max {max(times):.2f})")
    for name in ("medot backbones", "medot predict (lite, one image)"):
        print(f"\ntop-level imports of `{name}` (-X importtime, cumulative):")
        for seconds, module in import_breakdown(STEPS[name], top=8):
            print(f"  {seconds:6.2f} s  {module}")
    print(f"load average after: {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
