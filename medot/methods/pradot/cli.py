"""``medot train pradot``, ``medot benchmark pradot`` and ``medot predict-anomaly``.

Top-level imports stay light (argparse only); torch and the model load inside the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from medot.cli import seed_type
from medot.launch import mark_single_process

PREDICT_COMMAND = "predict-anomaly"
PRADOT_SINGLE_PROCESS = (
    "PRADOT's prototype update solves one OT problem over the whole batch, which is not split across processes"
)


def register(commands: Any, train_methods: Any, benchmark_methods: Any) -> None:
    """Add the PRADOT sub-commands to the ``medot`` parser (see the module docstring)."""
    train = train_methods.add_parser(
        "pradot",
        help="train a PRADOT ensemble (OT prototypes) on the normal images of one anomaly class",
        description="Train PRADOT (Trombetta & Lartizien 2025) on the normal training images of one MVTec "
        "category or MVFA object, evaluate it on the test split, and save one checkpoint holding every "
        "(layer, alpha) ensemble member (<out>/model), plus the PatchCore baseline fitted on the same "
        "features (<out>/patchcore).",
    )
    _add_data_options(train, several=False)
    _add_pradot_options(train)
    train.add_argument("--out", default=None, help="checkpoint folder (default: $MEDOT_HOME/models/pradot-<class>)")
    train.add_argument(
        "--calibration-fraction", type=float, default=0.2,
        help="share of the normal training images held out (never trained on) to calibrate the scores: "
        "percentile among normals and a normal/anomalous verdict at the normals' 99th percentile (default: 0.2)",
    )
    train.add_argument(
        "--no-patchcore", dest="patchcore", action="store_false",
        help="do not fit and save the PatchCore baseline beside the PRADOT model",
    )
    train.add_argument(
        "--resume", action="store_true",
        help="re-run an interrupted job into --out (PRADOT keeps no optimiser state: training starts over)",
    )
    train.set_defaults(run=_run_train)
    mark_single_process(train, PRADOT_SINGLE_PROCESS)

    benchmark = benchmark_methods.add_parser(
        "pradot",
        help="PRADOT against a PatchCore baseline on the same features, per class",
        description="For each class: train PRADOT and fit a PatchCore memory bank on the same cached patch "
        "features, then report image AUROC, pixel AUROC and AU-PRO (FPR limits 0.3 and 0.05).",
    )
    _add_data_options(benchmark, several=True)
    _add_pradot_options(benchmark)
    benchmark.add_argument("--coreset-ratio", type=float, default=0.1, help="PatchCore coreset fraction (default: 0.1)")
    benchmark.add_argument(
        "--reweight", action="store_true", help="PatchCore image score with the Eq. 7 re-weighting (default: plain max)"
    )
    benchmark.add_argument(
        "--ot-score", action="store_true", help="also evaluate PRADOT's per-image OT cost as image score (slow on CPU)"
    )
    benchmark.add_argument(
        "--out", default=None, help="folder for the CSV/JSON results (default: $MEDOT_HOME/benchmarks/pradot)"
    )
    benchmark.set_defaults(run=_run_benchmark)

    predict = commands.add_parser(
        PREDICT_COMMAND,
        help="anomaly map (PNG + .npy), image score and calibrated verdict from a PRADOT, PatchCore, MADPOT or MVFA model",
        description="Score images with a PRADOT model (<out>/model) or its PatchCore baseline (<out>/patchcore), "
        "or a MADPOT / MVFA model of `medot train madpot` (<out>/model). "
        "A model trained with held-out normals also reports each score's percentile among those normals and a "
        "verdict (anomalous above the normals' 99th percentile); the PNG shows the image, the map in units of the "
        "normals' 99th pixel percentile with the region above 1 outlined, and a colour bar.",
    )
    predict.add_argument("images", nargs="+", help="PNG/JPEG/BMP/TIFF/DICOM/.npy files")
    predict.add_argument("--model", required=True,
                         help="PRADOT or PatchCore checkpoint (<out>/model or <out>/patchcore of 'medot train "
                         "pradot'), or a MADPOT / MVFA one (<out>/model of 'medot train madpot'); with or without "
                         "suffix")
    predict.add_argument("--out", default=".", help="folder for <image>_<method>.png / .npy (default: .)")
    predict.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    predict.add_argument("--json", action="store_true", help="print machine-readable JSON")
    predict.set_defaults(run=_run_predict)


# ---------------------------------------------------------------------------------- options
def _add_data_options(parser: argparse.ArgumentParser, *, several: bool) -> None:
    parser.add_argument(
        "--data", "--dataset", dest="data", required=True,
        help="MVTec AD or MVFA dataset folder, or 'synthetic' (the demo phantoms under $MEDOT_HOME/synthetic)",
    )
    if several:
        parser.add_argument(
            "--category", "--object", dest="names", nargs="+", default=None,
            help="classes to run (MVTec categories / MVFA objects; default: all)",
        )
    else:
        parser.add_argument(
            "--category", "--object", dest="name", default=None,
            help="the MVTec category / MVFA object (needed when the folder holds several)",
        )
    parser.add_argument("--backbone", default="auto", help="backbone name (default: auto)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_pradot_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--preset", choices=("auto", "paper", "cpu"), default="auto",
        help="settings the options below start from: 'paper' (the authors' sizes: the backbone's two shallowest "
        "default layers, 16 prototypes per cell, batches of 64 images, 50 epochs), 'cpu' (the coarser of those "
        "layers, 4 prototypes per cell, OT batches of at most 2^21 plan entries, 10 epochs: minutes on a laptop "
        "CPU), 'auto' (paper with a CUDA GPU, else cpu; the default). Options given explicitly override it",
    )
    parser.add_argument(
        "--layers", nargs="+", default=None,
        help="backbone layers, one ensemble member per (layer, alpha) (default: from --preset; paper on lite: "
        "stride8 stride16, cpu on lite: stride16)",
    )
    parser.add_argument("--alpha", dest="alphas", type=float, nargs="+", default=[0.0, 0.3],
                        help="structure weights alpha in [0, 1] (default: 0 0.3)")
    parser.add_argument("--n-prototypes", type=int, default=None,
                        help="prototypes per grid location (default: paper 16, cpu 4)")
    parser.add_argument("--epochs", type=int, default=None, help="training epochs (default: paper 50, cpu 10)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help="most images per OT batch (default: 64; --plan-budget may lower it)")
    parser.add_argument(
        "--plan-budget", type=int, default=None,
        help="most OT plan entries (images x grid cells x prototypes) per training step; bounds memory and "
        "gives more EMA steps per epoch (default: paper none, cpu 2097152 = 8 MiB of float32)",
    )
    parser.add_argument(
        "--init", choices=("data", "kmeans++", "uniform"), default=None,
        help="prototype start: 'data' (training features at each prototype's cell, drawn at random; default), "
        "'kmeans++' (the same, chosen per cell by k-means++ seeding on cosine distance) or 'uniform' "
        "(the authors' U[0,1) noise, needs many more steps)",
    )
    parser.add_argument("--epsilon", type=float, default=None, help="entropic regularisation (default: 0.01)")
    parser.add_argument("--sinkhorn-iterations", type=int, default=None,
                        help="most Sinkhorn iterations per training step (default: 100)")
    parser.add_argument(
        "--sinkhorn-tol", type=float, default=None,
        help="stop a training step's Sinkhorn once the prototype marginal's L1 error is below this "
        "(default: 0.01; 0 runs every iteration, as the authors)",
    )
    parser.add_argument("--no-warm-start", dest="warm_start", action="store_const", const=False, default=None,
                        help="start every Sinkhorn solve cold (default: from the previous step's potentials)")
    parser.add_argument("--ema", type=float, default=None, help="EMA momentum of the prototypes (default: 0.95)")
    parser.add_argument("--update-positions", action="store_true", help="let prototype positions follow an EMA too")
    parser.add_argument("--seed", type=seed_type, default=0, help="random seed (default: 0)")


def _config(args: argparse.Namespace, backbone: Any, device: str = "cpu"):
    """The :class:`PradotConfig` of ``--preset`` (``auto``: ``paper`` on a CUDA ``device``, else ``cpu``)
    with the explicitly given options on top; prints which preset applies and why."""
    from medot.errors import MedotError
    from medot.methods.pradot.config import PradotConfig, resolve_preset

    cuda = str(device).startswith("cuda")
    preset = resolve_preset(args.preset, cuda)
    layers = tuple(args.layers) if args.layers else None
    config = PradotConfig.preset(
        args.preset, tuple(backbone.default_layers), cuda=cuda,
        layers=layers, alphas=tuple(args.alphas), n_prototypes=args.n_prototypes, epsilon=args.epsilon,
        sinkhorn_iterations=args.sinkhorn_iterations, sinkhorn_tol=args.sinkhorn_tol, warm_start=args.warm_start,
        ema=args.ema, update_positions=args.update_positions, epochs=args.epochs, batch_size=args.batch_size,
        plan_budget=args.plan_budget, init=args.init, seed=args.seed,
    )
    unknown = [layer for layer in config.layers if layer not in backbone.feature_layers]
    if unknown:
        raise MedotError(
            f"backbone {backbone.name} has no layer(s) {unknown}; choose from {list(backbone.feature_layers)}"
        )
    why = " (no CUDA GPU in use: the CPU preset; --preset paper for the authors' sizes)" if (
        args.preset == "auto" and preset == "cpu") else ""
    print(f"PRADOT preset {preset}{why}: layers {list(config.layers)}, {config.n_prototypes} prototypes per cell, "
          f"{config.epochs} epochs, init {config.init}")
    return config


def _device(args: argparse.Namespace) -> str:
    from medot.backbones.factory import default_device

    return default_device(args.device)


def _data_root(data: str) -> str:
    """``synthetic`` -> the demo benchmark's MVTec-layout folder (written on first use)."""
    if data != "synthetic":
        return data
    from medot.config import Settings
    from medot.data.synthetic import MVTEC_DIR, ensure_synthetic_benchmark

    return str(ensure_synthetic_benchmark(Settings.from_env().home / "synthetic") / MVTEC_DIR)


# ---------------------------------------------------------------------------------- train
def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medot.backbones import create_backbone
    from medot.config import Settings
    from medot.methods.pradot.data import hold_out_normals, load_anomaly_splits, resolve_class
    from medot.methods.pradot.detector import save_pradot
    from medot.methods.pradot.evaluation import EvaluationSet, calibrate
    from medot.jobs.protocol import EXIT_CANCELLED, event_sink_from_env, stop_requested_from_signals
    from medot.methods.pradot.training import build_model, encode_tokens, train_pradot

    args.data = _data_root(args.data)
    name = resolve_class(args.data, args.name)
    splits = load_anomaly_splits(args.data, name)
    device = _device(args)
    backbone = create_backbone(args.backbone, device=device, image_only=True)
    config = _config(args, backbone, device)
    progress = not args.quiet
    train_paths, held_out = hold_out_normals(splits.train, args.calibration_fraction, args.seed)
    tokens, grids = encode_tokens(backbone, train_paths, config.layers, progress=progress)
    model = build_model(config, tokens, grids)
    print(f"PRADOT on {name} ({len(train_paths)} normal training images, {len(held_out)} held out for "
          f"calibration), backbone {backbone.name}, {len(model.members)} members: "
          f"{', '.join(m.name for m in model.members)}")
    result = train_pradot(
        model, tokens, config, device=device, progress=progress,
        on_event=event_sink_from_env(), should_stop=stop_requested_from_signals(),
    )
    if result.status == "cancelled":
        print("training cancelled; nothing saved (re-run, or resume the job, to train again)")
        return EXIT_CANCELLED
    model.eval()
    size = (backbone.preprocess.image_size,) * 2
    test_set = EvaluationSet.load(backbone, splits, config.layers, progress=progress)
    metrics = {"class": name, **test_set.evaluate(lambda t: model(t, size), model.members[0].features.device)}
    domain = {"dataset": str(args.data), "class": name, "train_images": len(train_paths),
              "held_out_normals": len(held_out)}
    held_tokens = encode_tokens(backbone, held_out, config.layers, progress=progress)[0] if held_out else None
    source = f"{len(held_out)} held-out normal training images of {name}"
    calibration = (calibrate(lambda t: model(t, size), held_tokens, model.members[0].features.device, source)
                   if held_tokens is not None else None)
    if calibration is None:
        print("warning: too few normal images to hold any out: scores are saved without a calibrated scale")
    out = Path(args.out) if args.out else Settings.from_env().models_dir / f"pradot-{name}"
    iterations = [max(step.values()) for step in result.sinkhorn_iterations]
    training = {"status": result.status, "batch_size": result.batch_size, "steps": result.steps,
                "batches_per_epoch": result.batches_per_epoch, "history": result.history,
                "preset": args.preset, **domain,
                "sinkhorn_iterations_per_step": sum(iterations) / max(1, len(iterations))}
    print(f"trained {result.steps} OT steps ({result.batches_per_epoch} per epoch, up to {result.batch_size} images "
          f"each), {training['sinkhorn_iterations_per_step']:.1f} Sinkhorn iterations per step on average")
    path = save_pradot(out / "model", model, backbone=backbone.name, image_size=size[0], config=config,
                       metrics=metrics, training=training, calibration=calibration)
    rows = [{"method": "PRADOT", **metrics}]
    if args.patchcore:
        rows.append(_fit_patchcore(config, backbone, tokens, grids, test_set, out / "patchcore", name, device,
                                   held_tokens, domain))
    print(_format_table(rows))
    print(f"saved the PRADOT model to {path}")
    if args.patchcore:
        print(f"saved the PatchCore baseline to {out / 'patchcore.safetensors'}")
    return 0


def _fit_patchcore(config: Any, backbone: Any, tokens: dict, grids: dict, test_set: Any, path: Any, name: str,
                   device: str, held_tokens: dict | None = None, domain: dict | None = None) -> dict[str, Any]:
    """Fit PatchCore (default ``PatchCoreConfig``, PRADOT's layers and seed) on the training tokens
    PRADOT used, evaluate it on the same test set, calibrate it on the same held-out normals, save it
    at ``path``; returns its table row."""
    import time

    from medot.methods.pradot.config import PatchCoreConfig
    from medot.methods.pradot.patchcore import PatchCoreModel
    from medot.methods.pradot.patchcore_io import save_patchcore

    size = (backbone.preprocess.image_size,) * 2
    baseline = PatchCoreModel(config.layers, grids, PatchCoreConfig(seed=config.seed)).to(device)
    started = time.perf_counter()
    baseline.fit({layer: value.to(device) for layer, value in tokens.items()})
    fit_seconds = time.perf_counter() - started
    from medot.methods.pradot.evaluation import calibrate

    scored = test_set.evaluate(lambda t: baseline(t, size), baseline.memory_bank.device)
    metrics = {"class": name, "fit_seconds": fit_seconds, **scored}
    calibration = None
    if held_tokens is not None:
        source = f"{(domain or {}).get('held_out_normals', '?')} held-out normal training images of {name}"
        calibration = calibrate(lambda t: baseline(t, size), held_tokens, baseline.memory_bank.device, source)
    save_patchcore(path, baseline, backbone=backbone.name, image_size=size[0], metrics=metrics,
                   calibration=calibration, training=domain)
    return {"method": "PatchCore", **metrics}


# ---------------------------------------------------------------------------------- benchmark
COLUMNS = (
    ("class", "class", "{}"),
    ("method", "method", "{}"),
    ("image_auroc", "img AUROC", "{:.4f}"),
    ("pixel_auroc", "px AUROC", "{:.4f}"),
    ("au_pro@0.3", "AU-PRO@0.3", "{:.4f}"),
    ("au_pro@0.05", "AU-PRO@0.05", "{:.4f}"),
    ("image_auroc_ot", "img AUROC (OT)", "{:.4f}"),
    ("fit_seconds", "fit s", "{:.1f}"),
    ("ms_per_image", "ms/img", "{:.1f}"),
)


def _format_table(rows: list[dict[str, Any]]) -> str:
    """Rows as aligned text; a column is shown only if some row has it, missing values as 'n/a'."""
    shown = [(key, title, fmt) for key, title, fmt in COLUMNS if any(row.get(key) is not None for row in rows)]
    cells = [[title for _, title, _ in shown]]
    for row in rows:
        cells.append(["n/a" if row.get(key) is None else fmt.format(row[key]) for key, _, fmt in shown])
    widths = [max(len(line[i]) for line in cells) for i in range(len(shown))]
    lines = ["  ".join(text.ljust(width) for text, width in zip(line, widths)) for line in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    lines.append("AU-PRO@L: area under the per-region-overlap curve up to FPR L, normalised by L.")
    return "\n".join(lines)


def _mean_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One 'mean' row per method over its classes (metrics defined in every class only)."""
    means = []
    for method in dict.fromkeys(row["method"] for row in rows):
        mine = [row for row in rows if row["method"] == method]
        mean: dict[str, Any] = {"class": "mean", "method": method}
        for key, _, _ in COLUMNS[2:]:
            values = [row.get(key) for row in mine]
            mean[key] = None if any(v is None for v in values) else sum(values) / len(values)
        means.append(mean)
    return means


def _run_benchmark(args: argparse.Namespace) -> int:
    import csv
    import json
    from pathlib import Path

    from medot.backbones import create_backbone
    from medot.config import Settings
    from medot.methods.pradot.config import PatchCoreConfig
    from medot.methods.pradot.data import anomaly_classes, load_anomaly_splits, resolve_class
    from medot.methods.pradot.evaluation import benchmark_class

    args.data = _data_root(args.data)
    _, available = anomaly_classes(args.data)
    names = [resolve_class(args.data, name) for name in args.names] if args.names else list(available)
    device = _device(args)
    backbone = create_backbone(args.backbone, device=device, image_only=True)
    config = _config(args, backbone, device)
    patchcore = PatchCoreConfig(coreset_ratio=args.coreset_ratio, reweight=args.reweight, seed=args.seed)
    rows: list[dict[str, Any]] = []
    for name in names:
        splits = load_anomaly_splits(args.data, name)
        print(f"{name}: {len(splits.train)} normal training images, {len(splits.test)} test images")
        result = benchmark_class(backbone, splits, config, patchcore, device=device, ot_score=args.ot_score,
                                 progress=not args.quiet)
        rows.extend(result.rows)
    table_rows = rows + (_mean_rows(rows) if len(names) > 1 else [])
    print(f"backbone {backbone.name}; PRADOT members: layers {list(config.layers)} x alphas {list(config.alphas)}; "
          f"PatchCore on the same layers, coreset {patchcore.coreset_ratio:g}")
    print(_format_table(table_rows))
    out = Path(args.out) if args.out else Settings.from_env().home / "benchmarks" / "pradot"
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(key for row in table_rows for key in row))
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(table_rows)
    summary = {"backbone": backbone.name, "data": str(args.data), "pradot": config.to_dict(),
               "patchcore": {"coreset_ratio": patchcore.coreset_ratio, "reweight": patchcore.reweight,
                             "projection_eps": patchcore.projection_eps, "blur_sigma": patchcore.blur_sigma},
               "fpr_limits": [0.3, 0.05], "rows": table_rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'results.csv'} and {out / 'results.json'}")
    return 0


# ---------------------------------------------------------------------------------- predict
def _output_stems(paths: list) -> list[str]:
    """File stems for the outputs; a stem shared by several inputs gets ``-1``, ``-2``... in input order."""
    stems = [path.stem for path in paths]
    seen: dict[str, int] = {}
    unique = []
    for stem in stems:
        if stems.count(stem) == 1:
            unique.append(stem)
            continue
        seen[stem] = seen.get(stem, 0) + 1
        unique.append(f"{stem}-{seen[stem]}")
    return unique


def _run_predict(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    import numpy as np
    from PIL import Image

    from medot.data.io import read_image
    from medot.methods.pradot.data import view_image
    from medot.methods.pradot.detector import METHOD as PRADOT
    from medot.methods.pradot.overlay import save_overlay
    from medot.methods.pradot.patchcore_io import load_anomaly_detector
    from medot.viz.anomaly_panel import anomaly_panel

    detector = load_anomaly_detector(args.model, device=_device(args))
    method = detector.meta["method"]
    calibration = detector.calibration
    images = [read_image(path).rgb() for path in args.images]
    maps, scores = detector.predict(images)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = []
    stems = _output_stems([Path(path) for path in args.images])
    outputs = zip(args.images, stems, images, maps.numpy(), scores.tolist(), strict=True)
    for path, stem, image, anomaly_map, score in outputs:
        npy = out / f"{stem}_{method}.npy"
        np.save(npy, anomaly_map)
        png = out / f"{stem}_{method}.png"
        view = view_image(detector.backbone, image)
        result: dict = {"image": str(path), "method": method, "score": score, "overlay": str(png), "map": str(npy)}
        if calibration is not None:
            scaled = calibration.pixel_scale(anomaly_map)
            Image.fromarray(anomaly_panel(view, scaled)).save(png, format="PNG")
            result.update(calibration.summary(score))
            result["region_fraction"] = float((scaled >= 1.0).mean())
            result["reading"] = calibration.describe(score)
        elif method == PRADOT:
            save_overlay(png, view, anomaly_map)
        else:
            unit = "distance" if method == "patchcore" else "score"
            Image.fromarray(anomaly_panel(view, anomaly_map, vmax=float(anomaly_map.max()) or 1.0, threshold=None,
                                          unit=unit)).save(png, format="PNG")
        results.append(result)
    if args.json:
        print(json.dumps({"backbone": detector.backbone.name, "method": method, "calibrated": calibration is not None,
                          "results": results}, indent=2))
        return 0
    if calibration is None:
        print("this model has no calibration (trained before calibration or on a single normal image): raw scores "
              "only, no verdict")
    for result in results:
        line = f"{result['image']}: anomaly score {result['score']:.4f}"
        if calibration is not None:
            line += (f", {result['verdict'].upper()} ({result['percentile_among_normals']:.0f}th percentile among "
                     f"{calibration.count} held-out normals; threshold {calibration.image_threshold:.4f} = their "
                     f"{100 * calibration.quantile:g}th percentile; {100 * result['region_fraction']:.1f} % of "
                     "pixels above the calibrated pixel threshold)")
        print(f"{line} (map: {result['map']}, overlay: {result['overlay']})")
    return 0
