"""K-MaT's Table 2 on one task: methods x seeds, accuracy and macro-F1 on Hi, Lo and H.

:func:`run_benchmark` runs every method on every seed (zero-shot methods are evaluated, the others
trained then evaluated), :func:`summarise` reports mean and sample standard deviation over seeds
(:func:`medot.eval.summarise_seeds`), :func:`format_table` prints the paper's layout (percent) and
:func:`write_benchmark` writes ``kmat_benchmark.csv`` (one row per method) and
``kmat_benchmark.json`` (settings, summaries and every run).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medot.backbones.base import VisionLanguageBackbone
from medot.eval import SeedSummary, summarise_seeds
from medot.methods.kmat.model import KMaTConfig
from medot.methods.kmat.runner import METRICS, MethodRun, RunConfig, run_method
from medot.methods.prompt_learning.baselines import BaselineConfig
from medot.methods.prompt_learning.crossmodal import CrossModalTask
from medot.methods.prompt_learning.knowledge import embed_descriptions
from medot.train import FeatureCache

CSV_NAME, JSON_NAME = "kmat_benchmark.csv", "kmat_benchmark.json"
COLUMNS = (
    ("acc_hi", "Acc Hi"),
    ("acc_lo", "Acc Lo"),
    ("acc_h", "Acc H"),
    ("f1_hi", "F1 Hi"),
    ("f1_lo", "F1 Lo"),
    ("f1_h", "F1 H"),
)


@dataclass
class BenchmarkResult:
    """Every run of a benchmark and the settings it ran under."""

    task: str
    backbone: str
    methods: tuple[str, ...]
    seeds: tuple[int, ...]
    settings: dict[str, Any]
    runs: list[MethodRun] = field(default_factory=list)

    def summarise(self) -> dict[str, dict[str, SeedSummary]]:
        """``{method: {metric: SeedSummary}}`` over the seeds, in method order."""
        return {
            method: summarise_seeds([run.metrics for run in self.runs if run.method == method])
            for method in self.methods
        }


def run_benchmark(
    backbone: VisionLanguageBackbone,
    task: CrossModalTask,
    methods: Sequence[str],
    seeds: Sequence[int],
    run: RunConfig,
    *,
    kmat: KMaTConfig | None = None,
    baselines: BaselineConfig | None = None,
    out_dir: Path,
    cache: FeatureCache | None = None,
) -> BenchmarkResult:
    """Run ``methods`` x ``seeds`` on ``task``; each trained run checkpoints to ``out_dir/<method>/seed<s>``."""
    cache = cache or FeatureCache()
    kmat = kmat or KMaTConfig()
    baselines = baselines or BaselineConfig()
    for method in methods:
        task.require_descriptions(method)
    knowledge = None if task.descriptions is None else embed_descriptions(backbone, task.descriptions, task.classes)
    settings = {"run": asdict(run), "kmat": kmat.to_dict(), "baselines": baselines.to_dict()}
    settings["run"].pop("seed")
    result = BenchmarkResult(task.name, backbone.name, tuple(methods), tuple(seeds), settings)
    for method in methods:
        for seed in seeds:
            result.runs.append(
                run_method(
                    method,
                    backbone,
                    task,
                    knowledge,
                    replace(run, seed=seed),
                    kmat=kmat,
                    baselines=baselines,
                    out_dir=out_dir / method / f"seed{seed}",
                    cache=cache,
                )
            )
    return result


def format_table(result: BenchmarkResult) -> str:
    """The paper's Table 2 layout: a row per method, mean +- std over seeds, in percent."""
    summary = result.summarise()
    width = max(len("Method"), *(len(method) for method in result.methods))
    header = f"{'Method':<{width}} | " + " | ".join(f"{title:^13}" for _, title in COLUMNS)
    lines = [
        f"{result.task}: high-end -> low-end transfer, {len(result.seeds)} seed(s) {list(result.seeds)}, "
        f"backbone {result.backbone} (percent, mean ± std)",
        header,
        "-" * len(header),
    ]
    for method, metrics in summary.items():
        cells = [f"{100 * metrics[key].mean:5.1f} ± {100 * metrics[key].std:4.1f}" for key, _ in COLUMNS]
        lines.append(f"{method:<{width}} | " + " | ".join(f"{cell:^13}" for cell in cells))
    return "\n".join(lines)


def write_benchmark(result: BenchmarkResult, out_dir: Path) -> tuple[Path, Path]:
    """Write the CSV (per method: mean and std of each metric, as fractions) and the JSON."""
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = result.summarise()
    csv_path, json_path = out_dir / CSV_NAME, out_dir / JSON_NAME
    with csv_path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["method", "seeds", *(f"{key}_{stat}" for key in METRICS for stat in ("mean", "std"))])
        for method, metrics in summary.items():
            values = [f"{getattr(metrics[key], stat):.6f}" for key in METRICS for stat in ("mean", "std")]
            writer.writerow([method, len(result.seeds), *values])
    document = {
        "task": result.task,
        "backbone": result.backbone,
        "methods": list(result.methods),
        "seeds": list(result.seeds),
        "settings": result.settings,
        "summary": {
            method: {key: asdict(value) for key, value in metrics.items()} for method, metrics in summary.items()
        },
        "runs": [
            {
                "method": run.method,
                "seed": run.seed,
                "metrics": run.metrics,
                "validation": run.validation,
                "model": None if run.model_path is None else str(run.model_path),
            }
            for run in result.runs
        ],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path
