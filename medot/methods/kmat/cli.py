"""``medot train kmat`` and ``medot benchmark kmat`` (docs/methods/kmat.md has examples).

Top-level imports stay light (argparse only) so ``medot --help`` is fast; the run functions import
torch and the method modules.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from medot.cli import seed_type
from medot.launch import mark_distributed

DEFAULT_BENCHMARK_METHODS = "zeroshot,zeroshot_desc,coop,cocoop,kgcoop,biomedcoop,kmat"


def register(commands, train_methods, benchmark_methods) -> None:
    """Add ``kmat`` under ``medot train`` and ``medot benchmark``, and ``medot task init``."""
    task = commands.add_parser("task", help="prepare a cross-modal task from your own image folders")
    task_commands = task.add_subparsers(dest="task_command", metavar="ACTION", required=True)
    init = task_commands.add_parser(
        "init",
        help="write task.json and split files from a folder tree, and print what was found",
        description="Read ROOT/<high>/{train,val,test}/<class>/ and ROOT/<low>/test/<class>/ (ROOT/<low>/val/ "
        "optional, never used), print the images per class x split x modality, check that every class has images "
        "in every split (and at least --shots training images), then write ROOT/task.json and "
        "ROOT/<modality>/split_<modality>.json (paths relative to the modality folder). The modality names are the "
        "folder names. Train with --task ROOT/task.json (or --task ROOT directly).",
    )
    init.add_argument("root", help="the task folder")
    init.add_argument("--descriptions", help="class-description JSON file (docs/descriptions.md); needed by kmat, "
                      "zeroshot_desc and biomedcoop")
    init.add_argument("--shots", type=int, default=16, help="check this many training images per class (default: 16)")
    init.add_argument("--force", action="store_true", help="overwrite an existing task.json / split files")
    init.set_defaults(run=_run_task_init)

    train = train_methods.add_parser(
        "kmat",
        help="train K-MaT (or a prompt-learning baseline) on high-end images, test on both modalities",
        description="Train K-MaT cross-modal prompt learning (Zeng & Albarqouni 2026) on the high-end images of a "
        "task and evaluate on the high-end and low-end test splits. No low-end image is used for training or "
        "model selection. --grid-anc/--grid-fgw choose the lambdas on high-end validation accuracy.",
    )
    _add_common(train)
    train.add_argument("--method", default="kmat", help="kmat (default), coop, cocoop, kgcoop or biomedcoop")
    train.add_argument(
        "--seed", type=seed_type, default=1, help="seed of the k-shot draw, views and initialisation (default: 1)"
    )
    train.add_argument("--resume", action="store_true", help="continue an interrupted run (or lambda grid) from --out")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    train.set_defaults(run=_run_train)
    mark_distributed(train)

    benchmark = benchmark_methods.add_parser(
        "kmat",
        help="K-MaT's Table 2: methods x seeds, accuracy and macro-F1 on high end, low end and their harmonic mean",
        description="Run K-MaT and its baselines over several seeds and print the paper's Table 2 layout "
        "(rows: methods; columns: Hi, Lo, H for accuracy and macro-F1; mean ± std over seeds). Writes "
        "kmat_benchmark.csv and kmat_benchmark.json to --out.",
    )
    _add_common(benchmark)
    benchmark.add_argument(
        "--methods", default=DEFAULT_BENCHMARK_METHODS, help=f"comma-separated (default: {DEFAULT_BENCHMARK_METHODS})"
    )
    benchmark.add_argument("--seeds", type=seed_type, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
    benchmark.add_argument(
        "--resume", action="store_true", help="continue an interrupted benchmark from --out (finished runs are kept)"
    )
    benchmark.set_defaults(run=_run_benchmark)


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--task", "--dataset", dest="task", required=True,
        help="'synthetic', skin_midas, skin_derm7pt, breast, chest, a task JSON file, or a folder "
        "ROOT/<high>/{train,val,test}/<class>/ + ROOT/<low>/test/<class>/ (modality names = folder names; "
        "'medot task init ROOT' checks it and writes a task JSON)",
    )
    parser.add_argument(
        "--descriptions", metavar="FILE",
        help="class-description JSON for a folder --task (docs/descriptions.md; example: assets/descriptions/chest.json); "
        "kmat, zeroshot_desc and biomedcoop need it",
    )
    parser.add_argument("--shots", type=int, default=16, help="high-end training images per class (default: 16)")
    parser.add_argument("--epochs", type=int, default=50, help="training epochs (default: 50)")
    parser.add_argument(
        "--batch-size", type=int, default=4, help="batch size per process (default: 4; global: x torchrun processes)"
    )
    parser.add_argument(
        "--lr", type=float, default=0.0025, help="SGD learning rate for the global batch, not scaled (default: 0.0025)"
    )
    parser.add_argument("--views", type=int, default=4, help="cached augmented views per training image (default: 4)")
    parser.add_argument("--patience", type=int, help="validate on high-end val each epoch; keep the best, stop early")
    parser.add_argument("--lambda-anc", type=float, default=1.0, help="weight of L_anc (default: 1.0)")
    parser.add_argument("--lambda-fgw", type=float, default=1.0, help="weight of L_fgw (default: 1.0)")
    parser.add_argument(
        "--grid-anc", type=float, nargs="+", metavar="L",
        help="lambda_anc values to search on high-end validation accuracy (kmat; per seed in a benchmark)",
    )
    parser.add_argument(
        "--grid-fgw", type=float, nargs="+", metavar="L",
        help="lambda_fgw values to search on high-end validation accuracy (kmat; per seed in a benchmark)",
    )
    parser.add_argument("--no-csc", action="store_true", help="ablation: context shared by all classes")
    parser.add_argument("--no-msc", action="store_true", help="ablation: the same context for both modalities")
    parser.add_argument("--no-anc", action="store_true", help="ablation: drop the knowledge-anchor loss")
    parser.add_argument("--no-fgw", action="store_true", help="ablation: drop the FGW manifold-transport loss")
    parser.add_argument(
        "--fgw-gradient", choices=("envelope", "unrolled"), default="envelope",
        help="L_fgw and its gradient: 'envelope' (default) = entropic FGW objective with its exact envelope "
        "gradient; 'unrolled' = FGW value E(plan) differentiated through every solver iteration (slower)",
    )
    baselines = parser.add_argument_group("baselines' weights (defaults: their authors')")
    baselines.add_argument(
        "--kgcoop-lambda", type=float, default=8.0,
        help="KgCoOp: weight of mean(1 - cos(w, w_clip)) (default: 8, as the authors' code)",
    )
    baselines.add_argument(
        "--biomedcoop-lambda1", type=float, default=1.0, help="BiomedCoOp: weight of L_SCCM (default: 1)"
    )
    baselines.add_argument(
        "--biomedcoop-lambda2", type=float, default=1.0, help="BiomedCoOp: weight of L_KDSP (default: 1)"
    )
    baselines.add_argument(
        "--biomedcoop-tau", type=float, default=1.5,
        help="BiomedCoOp: description-pruning threshold, robust z-score (default: 1.5)",
    )
    baselines.add_argument(
        "--cocoop-width", type=int, help="CoCoOp: meta-net hidden width (default: embedding dim / 16)"
    )
    parser.add_argument("--backbone", help="backbone name (default: $MEDOT_BACKBONE or auto)")
    parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda, cuda:1, ...")
    parser.add_argument("--out", help="output folder (default: under $MEDOT_HOME)")
    parser.add_argument(
        "--quiet", action="store_true", help="no progress bars (a benchmark still prints one line per finished run)"
    )


def _configs(args: argparse.Namespace, seed: int):
    from medot.errors import MedotError
    from medot.methods.kmat.model import KMaTConfig
    from medot.methods.kmat.runner import RunConfig
    from medot.methods.prompt_learning.baselines import BaselineConfig

    try:
        run = RunConfig(
            shots=args.shots,
            seed=seed,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            views=args.views,
            patience=args.patience,
            device=args.device,
            progress=not args.quiet,
        )
        run.train_config(None)  # checks epochs and lr before any data or model is loaded
        kmat = KMaTConfig(
            class_specific=not args.no_csc,
            modality_specific=not args.no_msc,
            anchor=not args.no_anc,
            transport=not args.no_fgw,
            lambda_anchor=args.lambda_anc,
            lambda_transport=args.lambda_fgw,
            fgw_gradient=args.fgw_gradient,
        )
        baselines = BaselineConfig(
            kgcoop_lambda=args.kgcoop_lambda,
            biomedcoop_lambda_sccm=args.biomedcoop_lambda1,
            biomedcoop_lambda_kdsp=args.biomedcoop_lambda2,
            biomedcoop_tau=args.biomedcoop_tau,
            cocoop_meta_hidden=args.cocoop_width,
        )
    except ValueError as error:
        raise MedotError(str(error)) from None
    if args.views < 1 or args.batch_size < 1:
        raise MedotError("--views and --batch-size must be at least 1")
    return run, kmat, baselines


def _setup(args: argparse.Namespace, methods):
    """Settings, the task (each of ``methods`` checked against it before any model is loaded) and the backbone."""
    from medot.backbones import create_backbone
    from medot.config import Settings
    from medot.methods.prompt_learning.crossmodal import resolve_task
    from medot.train.distributed import main_process_first

    if args.quiet:
        _quiet_libraries()
    settings = Settings.from_env()
    with main_process_first("preparing the task's data"):  # 'synthetic' is written on first use
        task = resolve_task(args.task, settings, descriptions=args.descriptions)
    for method in methods:
        task.require_descriptions(method)
    device = None if args.device == "auto" else args.device
    backbone = create_backbone(args.backbone or settings.backbone, device=device)
    return settings, task, backbone


def _quiet_libraries() -> None:
    """No Hugging Face progress bars (transformers' "Loading weights", hub downloads) under --quiet."""
    import os
    import sys

    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"  # read when transformers / huggingface_hub are imported
    if "huggingface_hub" in sys.modules:
        sys.modules["huggingface_hub"].utils.disable_progress_bars()
    if "transformers" in sys.modules:
        sys.modules["transformers"].utils.logging.disable_progress_bar()


def _format_metrics(metrics: dict[str, float]) -> str:
    columns = (("hi", "Hi"), ("lo", "Lo"), ("h", "H"))
    accuracy = " ".join(f"{name} {100 * metrics[f'acc_{key}']:.1f}" for key, name in columns)
    f1 = " ".join(f"{name} {100 * metrics[f'f1_{key}']:.1f}" for key, name in columns)
    return f"accuracy {accuracy} | macro-F1 {f1} (percent)"


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import asdict, replace

    from medot.errors import MedotError
    from medot.jobs.protocol import EXIT_CANCELLED, event_sink_from_env, stop_requested_from_signals
    from medot.methods.kmat.runner import (
        TRAINED_METHODS,
        TrainingCancelled,
        chance_levels,
        finish_run,
        format_chance,
        grid_search,
        run_method,
    )
    from medot.methods.prompt_learning.knowledge import embed_descriptions
    from medot.train import FeatureCache
    from medot.train.distributed import is_main_process

    if args.method not in TRAINED_METHODS:
        raise MedotError(f"--method {args.method!r}: choose one of {', '.join(TRAINED_METHODS)}")
    grid = args.grid_anc is not None or args.grid_fgw is not None
    if grid and args.method != "kmat":
        raise MedotError("--grid-anc/--grid-fgw search K-MaT's lambdas: use them with --method kmat")
    run, kmat, baselines = _configs(args, args.seed)
    main = is_main_process()  # under torchrun, only rank 0 prints and writes
    if not main:
        run = replace(run, progress=False)
    settings, task, backbone = _setup(args, [args.method])
    name = f"{task.name}_{args.method}_{args.shots}shot_seed{args.seed}"
    out = Path(args.out) if args.out else settings.models_dir / "kmat" / name
    cache = FeatureCache()
    knowledge = None if task.descriptions is None else embed_descriptions(backbone, task.descriptions, task.classes)
    summary: dict[str, object] = {}
    stop = stop_requested_from_signals()
    try:
        if grid:
            fitted, points, chosen = grid_search(
                backbone,
                task.high_end_data(run.shots, run.seed),
                classes=task.classes,
                modalities=task.modalities,
                knowledge=knowledge,
                run=run,
                kmat=kmat,
                lambdas_anchor=args.grid_anc or [kmat.lambda_anchor],
                lambdas_transport=args.grid_fgw or [kmat.lambda_transport],
                out_dir=out,
                cache=cache,
                on_event=event_sink_from_env(),
                should_stop=stop,
                resume=args.resume,
            )
            summary["grid"] = {"points": [asdict(point) for point in points], "chosen": asdict(chosen)}
            result = finish_run("kmat", fitted, backbone, task, run, cache)
        else:
            result = run_method(
                args.method, backbone, task, knowledge, run, kmat=kmat, baselines=baselines, out_dir=out, cache=cache,
                on_event=event_sink_from_env(), should_stop=stop, resume=args.resume,
            )
    except TrainingCancelled as cancelled:
        if main:
            print(f"medot: {cancelled}")
        return EXIT_CANCELLED
    if not main:
        return 0
    chance = chance_levels(task)
    summary.update(
        method=result.method, task=task.name, backbone=backbone.name, shots=run.shots, seed=run.seed,
        metrics=result.metrics, validation=result.validation, model=str(result.model_path), chance=chance,
    )
    (out / "metrics.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    if grid:
        for point in summary["grid"]["points"]:
            print(
                f"lambda_anc {point['lambda_anchor']:g}, lambda_fgw {point['lambda_transport']:g}: "
                f"high-end val accuracy {100 * point['val_accuracy']:.1f}, "
                f"cross-entropy {point['val_cross_entropy']:.4f}"
            )
        print(f"chosen: lambda_anc {chosen.lambda_anchor:g}, lambda_fgw {chosen.lambda_transport:g}")
    high, low = task.modalities
    print(f"{result.method} on {task.name} ({high} -> {low}, {run.shots} shots, seed {run.seed}):")
    print(f"  {_format_metrics(result.metrics)}")
    print(f"  {format_chance(chance)}")
    if task.descriptions is not None:
        print(f"  descriptions: {task.descriptions.describe_counts()}")
    print(f"  model: {result.model_path}")
    return 0


def _run_benchmark(args: argparse.Namespace) -> int:
    from medot.errors import MedotError
    from medot.jobs.protocol import EXIT_CANCELLED, stop_requested_from_signals
    from medot.methods.kmat.benchmark import format_run, format_table, run_benchmark, write_benchmark
    from medot.methods.kmat.runner import METHODS, TrainingCancelled

    methods = [method.strip() for method in args.methods.split(",") if method.strip()]
    unknown = [method for method in methods if method not in METHODS]
    if not methods or unknown or len(set(methods)) != len(methods):
        raise MedotError(f"--methods {args.methods!r}: give distinct names from {', '.join(METHODS)}")
    if len(set(args.seeds)) != len(args.seeds):
        raise MedotError(f"--seeds {args.seeds}: give distinct seeds")
    if (args.grid_anc is not None or args.grid_fgw is not None) and "kmat" not in methods:
        raise MedotError("--grid-anc/--grid-fgw search K-MaT's lambdas: include kmat in --methods")
    run, kmat, baselines = _configs(args, args.seeds[0])
    settings, task, backbone = _setup(args, methods)
    out = Path(args.out) if args.out else settings.home / "benchmarks" / "kmat" / task.name
    if task.descriptions is not None:
        print(f"descriptions: {task.descriptions.describe_counts()}", flush=True)
    try:
        result = run_benchmark(
            backbone, task, methods, args.seeds, run, kmat=kmat, baselines=baselines, out_dir=out,
            grid_anchor=args.grid_anc, grid_transport=args.grid_fgw, should_stop=stop_requested_from_signals(),
            resume=args.resume, on_run=lambda finished: print(format_run(finished), flush=True),
        )
    except TrainingCancelled as cancelled:
        print(f"medot: {cancelled}; continue the benchmark with --resume")
        return EXIT_CANCELLED
    csv_path, json_path = write_benchmark(result, out)
    print(format_table(result))
    print(f"wrote {csv_path} and {json_path}")
    return 0


def _run_task_init(args: argparse.Namespace) -> int:
    from medot.errors import MedotError
    from medot.methods.prompt_learning.crossmodal import (
        folder_task,
        split_count_table,
        task_problems,
        write_task_files,
    )

    root = Path(args.root).expanduser()
    if not root.is_dir():
        raise MedotError(f"{root.resolve()} is not a folder")
    task = folder_task(root, args.descriptions)
    high, low = task.modalities
    print(f"task {task.name!r}: {high} (high end) -> {low} (low end), {len(task.classes)} classes")
    print(split_count_table(task))
    if task.descriptions is None:
        print("no --descriptions: kmat, zeroshot_desc and biomedcoop will refuse; zeroshot, coop, cocoop, kgcoop run")
    else:
        print(f"descriptions: {task.descriptions.origin}")
    problems = task_problems(task, args.shots)
    if problems:
        raise MedotError("the task is not ready (nothing written):\n  " + "\n  ".join(problems))
    task_path, split_paths = write_task_files(task, root, force=args.force)
    print(f"wrote {task_path} and {', '.join(map(str, split_paths))}")
    print(f"next: medot train kmat --task {task_path}" + ("" if task.descriptions else " --method coop"))
    return 0
