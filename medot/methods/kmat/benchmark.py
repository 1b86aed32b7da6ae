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
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from medot.backbones.base import VisionLanguageBackbone
from medot.eval import SeedSummary, summarise_seeds
from medot.methods.kmat.model import KMaTConfig
from medot.methods.kmat.runner import (
    METRICS,
    MethodRun,
    RunConfig,
    chance_levels,
    finish_run,
    format_chance,
    grid_search,
    run_method,
)
from medot.methods.prompt_learning.baselines import BaselineConfig
from medot.methods.prompt_learning.crossmodal import CrossModalTask
from medot.methods.prompt_learning.knowledge import anchor_separation, embed_descriptions, format_anchor_separation
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
    chance: dict[str, float] = field(default_factory=dict)
    anchors: dict[str, Any] | None = None
    """:func:`~medot.methods.prompt_learning.knowledge.anchor_separation` (None without descriptions)."""

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
    grid_anchor: Sequence[float] | None = None,
    grid_transport: Sequence[float] | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    on_run: Callable[[MethodRun], None] | None = None,
) -> BenchmarkResult:
    """Run ``methods`` x ``seeds`` on ``task``; each trained run checkpoints to ``out_dir/<method>/seed<s>``.

    With ``grid_anchor`` / ``grid_transport`` (either may be None: the ``kmat`` value), K-MaT's
    lambdas are chosen **per seed** on the high-end validation split by
    :func:`~medot.methods.kmat.runner.grid_search` (the paper's protocol), in
    ``out_dir/kmat/seed<s>/grid/``; the choice is recorded in each run's ``selection``. No test image
    is scored before the choice is made. ``on_run`` is called with each finished run; ``should_stop``
    and ``resume`` as in :func:`~medot.methods.kmat.runner.run_method` (finished runs are reloaded)."""
    cache = cache or FeatureCache()
    kmat = kmat or KMaTConfig()
    baselines = baselines or BaselineConfig()
    for method in methods:
        task.require_descriptions(method)
    knowledge = None if task.descriptions is None else embed_descriptions(backbone, task.descriptions, task.classes)
    grid = grid_anchor is not None or grid_transport is not None
    lambdas_anchor = list(grid_anchor or [kmat.lambda_anchor])
    lambdas_transport = list(grid_transport or [kmat.lambda_transport])
    settings = {"run": asdict(run), "kmat": kmat.to_dict(), "baselines": baselines.to_dict()}
    settings["run"].pop("seed")
    if grid:
        settings["kmat_grid"] = {
            "lambda_anchor": lambdas_anchor,
            "lambda_transport": lambdas_transport,
            "selection": "per seed: max high-end validation accuracy, ties: min validation cross-entropy",
        }
    result = BenchmarkResult(task.name, backbone.name, tuple(methods), tuple(seeds), settings)
    result.chance = chance_levels(task)
    if knowledge is not None:
        result.anchors = anchor_separation(knowledge, task.classes, task.modalities)
    for method in methods:
        for seed in seeds:
            seed_run, seed_dir = replace(run, seed=seed), out_dir / method / f"seed{seed}"
            if method == "kmat" and grid:
                fitted, points, chosen = grid_search(
                    backbone,
                    task.high_end_data(seed_run.shots, seed),
                    classes=task.classes,
                    modalities=task.modalities,
                    knowledge=knowledge,
                    run=seed_run,
                    kmat=kmat,
                    lambdas_anchor=lambdas_anchor,
                    lambdas_transport=lambdas_transport,
                    out_dir=seed_dir,
                    cache=cache,
                    should_stop=should_stop,
                    resume=resume,
                )
                finished = finish_run("kmat", fitted, backbone, task, seed_run, cache)
                selection = {**asdict(chosen), "grid": [asdict(point) for point in points]}
                finished = replace(finished, selection=selection)
            else:
                finished = run_method(
                    method,
                    backbone,
                    task,
                    knowledge,
                    seed_run,
                    kmat=kmat,
                    baselines=baselines,
                    out_dir=seed_dir,
                    cache=cache,
                    should_stop=should_stop,
                    resume=resume,
                )
            result.runs.append(finished)
            if on_run is not None:
                on_run(finished)
    return result


def format_run(run: MethodRun) -> str:
    """One line per finished run: method, seed, accuracy Hi / Lo / H (and the chosen lambdas)."""
    metrics = run.metrics
    line = (
        f"{run.method} seed {run.seed}: accuracy Hi {100 * metrics['acc_hi']:.1f} Lo {100 * metrics['acc_lo']:.1f} "
        f"H {100 * metrics['acc_h']:.1f} (percent)"
    )
    if run.selection is not None:
        line += f", lambda_anc {run.selection['lambda_anchor']:g}, lambda_fgw {run.selection['lambda_transport']:g}"
    return line


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
    if result.chance:
        lines.append(format_chance(result.chance))
    chosen = [run for run in result.runs if run.selection is not None]
    if chosen:
        lines.append(
            "kmat lambdas chosen per seed on high-end validation accuracy: "
            + "; ".join(
                f"seed {run.seed}: lambda_anc {run.selection['lambda_anchor']:g}, "
                f"lambda_fgw {run.selection['lambda_transport']:g} (val acc {100 * run.selection['val_accuracy']:.1f})"
                for run in chosen
            )
        )
    elif "kmat" in result.methods:
        kmat = result.settings["kmat"]
        lines.append(
            f"kmat lambdas fixed: lambda_anc {kmat['lambda_anchor']:g}, lambda_fgw {kmat['lambda_transport']:g} "
            "(the paper selects them on high-end validation: --grid-anc/--grid-fgw)"
        )
    if result.anchors is not None:
        lines.append(format_anchor_separation(result.anchors))
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
        "chance": result.chance,
        "anchor_separation": result.anchors,
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
                **({"selection": run.selection} if run.selection is not None else {}),
            }
            for run in result.runs
        ],
    }
    json_path.write_text(json.dumps(document, indent=2) + "\n", encoding="utf-8")
    return csv_path, json_path
