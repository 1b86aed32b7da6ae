"""``medot train madpot`` and ``medot benchmark madpot``.

Top-level imports stay light (argparse only); torch and the model load inside the commands.
"""

from __future__ import annotations

import argparse
from typing import Any

from medot.cli import seed_type
from medot.launch import mark_single_process

SINGLE_PROCESS = "MADPOT trains few-shot adapters on a handful of cached images; one process is enough"


def register(commands: Any, train_methods: Any, benchmark_methods: Any) -> None:  # noqa: ARG001
    """Add the MADPOT sub-commands to the ``medot`` parser."""
    train = train_methods.add_parser(
        "madpot",
        help="few-shot / zero-shot anomaly detection and localisation (MADPOT, or its MVFA baseline)",
        description="Train MADPOT (adapters + multi-prompt partial OT + contrastive learning; Shiri et al., "
        "ICIAP 2025) or the MVFA baseline on k normal + k abnormal images of an MVFA-layout object's valid "
        "split (the fewshot_seed/<Obj>/<k>-shot.txt list when present, else seeded sampling; on an MVTec AD folder "
        "k normal images of train/good and k abnormal ones from --abnormal-shots DIR), evaluate the "
        "last epoch on its test split (image AUROC, pixel AUROC where masks exist) and save the model. "
        "--zero-shot trains on the other objects and tests on --object (leave-one-dataset-out); "
        "--train-on A B --object C trains on A, B and tests on C (cross-dataset).",
    )
    _add_data_options(train)
    train.add_argument("--object", default=None, help="the MVFA object to test on (needed when the folder holds several)")
    train.add_argument("--shots", type=int, default=4, help="k normal and k abnormal support images (default: 4)")
    train.add_argument("--seed", type=seed_type, default=1, help="random seed (default: 1)")
    train.add_argument("--method", choices=("madpot", "mvfa"), default="madpot", help="model to train (default: madpot)")
    train.add_argument("--object-name", default=None,
                       help="the object's name in prompts (default: known MVFA names, e.g. Brain -> 'brain MRI', "
                       "else the folder name)")
    protocol = train.add_mutually_exclusive_group()
    protocol.add_argument("--zero-shot", action="store_true",
                          help="train on every other object of --data, test on --object (no shot of it is used)")
    protocol.add_argument("--train-on", nargs="+", default=None, metavar="OBJ",
                          help="train on these objects, test on --object (cross-dataset, e.g. --train-on Retina_RESC "
                          "--object Retina_OCT2017)")
    _add_model_options(train)
    train.add_argument("--out", default=None, help="checkpoint folder (default: $MEDOT_HOME/models/madpot-<object>-k<k>-s<seed>)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run in --out")
    train.add_argument("--validation", type=int, default=0, metavar="N",
                       help="keep the best epoch by image AUROC on N normal + N abnormal valid/ images outside the "
                       "support set (default 0: keep the last epoch; the test split is never used for selection)")
    train.set_defaults(run=_run_train)
    mark_single_process(train, SINGLE_PROCESS)

    benchmark = benchmark_methods.add_parser(
        "madpot",
        help="the MVFA table: MADPOT, MVFA, zero-shot and PatchCore per object, k and seed",
        description="For each object, k and seed: train the chosen methods on the support set and report image "
        "AUROC (and pixel AUROC where the test split has masks) of the last epoch on the test split; prints the "
        "table of means over seeds with the average over objects and writes results.csv / results.json.",
    )
    _add_data_options(benchmark)
    benchmark.add_argument("--objects", nargs="+", default=None, help="objects to run (default: all)")
    benchmark.add_argument("--shots", type=int, nargs="+", default=[2, 4, 8, 16], help="k values (default: 2 4 8 16)")
    benchmark.add_argument("--seeds", type=seed_type, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
    benchmark.add_argument("--methods", default="madpot,mvfa,zeroshot,patchcore",
                           help="comma-separated methods (default: madpot,mvfa,zeroshot,patchcore)")
    benchmark.add_argument("--zero-shot", action="store_true",
                           help="leave-one-dataset-out: MADPOT trains on the k-shot supports of the other objects and "
                           "is tested on each held-out one (mvfa and patchcore need shots of it and are skipped)")
    _add_model_options(benchmark)
    benchmark.add_argument("--out", default=None, help="folder for results.csv / results.json "
                           "(default: $MEDOT_HOME/benchmarks/madpot)")
    benchmark.set_defaults(run=_run_benchmark)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", "--dataset", dest="data", required=True,
                        help="MVFA-layout folder (<Obj>_AD/{valid,test}, fewshot_seed/), an MVTec AD folder "
                        "(<category>/train/good, test/<defect>, ground_truth; see --abnormal-shots), or 'synthetic' (the "
                        "demo organs under $MEDOT_HOME/synthetic)")
    parser.add_argument("--abnormal-shots", default=None, metavar="DIR",
                        help="MVTec AD folders only (normal-only training): a folder of abnormal images (not in the test "
                        "split; DIR/<category>/ when it exists) to draw the k abnormal shots from, masks optional as "
                        "DIR/masks/<name>_mask.png. Without it MVTec AD runs only zeroshot and patchcore")
    parser.add_argument("--backbone", default="auto", help="backbone name (default: auto)")
    parser.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bars")


def _add_model_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--layers", nargs="+", default=None,
                        help="backbone layers to adapt (default: the backbone's default layers; ViT: 4 evenly spaced blocks)")
    parser.add_argument("--prompts", type=int, default=7, help="K learnable prompts per class (default: 7)")
    parser.add_argument("--single-prompt", action="store_true", help="ablation: K = 1")
    parser.add_argument("--n-ctx", type=int, default=8, help="context tokens per prompt (default: 8)")
    parser.add_argument("--mass", type=float, default=0.8, help="partial-OT transported mass gamma (default: 0.8)")
    parser.add_argument("--epsilon", type=float, default=0.1, help="entropic regularisation (default: 0.1)")
    parser.add_argument("--ot-iterations", type=int, default=100, help="partial-OT iterations (default: 100)")
    parser.add_argument("--balanced-prompts", action="store_true",
                        help="every prompt receives exactly gamma/K (balanced OT with a dummy column)")
    parser.add_argument("--no-pot", dest="pot", action="store_false", help="ablation: no partial-OT branch")
    parser.add_argument("--no-cl", dest="cl", action="store_false", help="ablation: no contrastive branch")
    parser.add_argument("--no-seg-loss", dest="seg_loss", action="store_false", help="ablation: no focal + Dice")
    parser.add_argument("--lambda-cl", type=float, default=1.0, help="weight of the contrastive loss (default: 1)")
    parser.add_argument("--epochs", type=int, default=60, help="training epochs (default: 60)")
    parser.add_argument("--batch-size", type=int, default=16, help="batch size (default: 16)")
    parser.add_argument("--lr", type=float, default=1e-3, help="Adam learning rate (default: 0.001)")
    parser.add_argument("--views", type=int, default=16, help="fixed augmentations per support image, 1-16 (default: 16)")


def _config(args: argparse.Namespace, seed: int):
    from medot.methods.madpot.config import MadpotConfig

    return MadpotConfig(
        layers=tuple(args.layers) if args.layers else None,
        n_prompts=1 if args.single_prompt else args.prompts,
        n_ctx=args.n_ctx, mass=args.mass, epsilon=args.epsilon, ot_iterations=args.ot_iterations,
        balanced_prompts=args.balanced_prompts, pot=args.pot, cl=args.cl, seg_loss=args.seg_loss,
        lambda_cl=args.lambda_cl, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
        views=args.views, seed=seed,
    )


def _device(args: argparse.Namespace) -> str:
    from medot.backbones.factory import default_device

    return default_device(args.device)


def _data_root(data: str) -> str:
    """``synthetic`` -> the demo benchmark's MVFA-layout folder (written on first use)."""
    if data != "synthetic":
        return data
    from medot.config import Settings
    from medot.data.synthetic import MVFA_DIR, ensure_synthetic_benchmark

    return str(ensure_synthetic_benchmark(Settings.from_env().home / "synthetic") / MVFA_DIR)


def _run_train(args: argparse.Namespace) -> int:
    from pathlib import Path

    from medot.backbones import create_backbone
    from medot.config import Settings
    from medot.jobs.protocol import EXIT_CANCELLED, event_sink_from_env, stop_requested_from_signals
    from medot.methods.madpot.config import MadpotError
    from medot.methods.madpot.detector import save_madpot
    from medot.methods.madpot.data import NORMAL_ONLY
    from medot.methods.madpot.runner import (
        evaluate,
        mvfa_objects,
        normal_only,
        resolve_object,
        test_splits,
        train_few_shot,
    )
    from medot.train import FeatureCache

    args.data = _data_root(args.data)
    config = _config(args, args.seed)  # checks the settings before anything is loaded
    target = resolve_object(args.data, args.object)
    if args.validation < 0:
        raise MadpotError(f"--validation must be 0 (keep the last epoch) or a positive count, got {args.validation}")
    if args.zero_shot:
        sources = [obj for obj in mvfa_objects(args.data) if obj != target]
        if not sources:
            raise MadpotError(f"--zero-shot needs other objects than {target} in {args.data} to train on")
    elif args.train_on:
        sources = [resolve_object(args.data, obj) for obj in args.train_on]
        if target in sources:
            raise MadpotError(f"--train-on includes the test object {target}: that is not cross-dataset")
    else:
        sources = [target]
    if args.method == "mvfa" and len(sources) != 1:
        raise MadpotError("the MVFA baseline trains on one object: use --method madpot for --zero-shot / --train-on")
    if normal_only(args.data):
        if args.abnormal_shots is None:
            raise MadpotError(NORMAL_ONLY.format(root=args.data, what=args.method.upper()))
        if args.validation:
            raise MadpotError("--validation needs a labelled validation split, which an MVTec AD folder does not have")
    elif args.abnormal_shots is not None:
        raise MadpotError("--abnormal-shots is for MVTec AD folders (normal-only training); an MVFA folder has its "
                          "abnormal shots in <Obj>_AD/valid/Ungood")
    device = _device(args)
    backbone = create_backbone(args.backbone, device=device)
    progress = not args.quiet
    setting = "few-shot" if sources == [target] else f"trained on {', '.join(sources)}, tested on {target}"
    out = Path(args.out) if args.out else Settings.from_env().models_dir / f"{args.method}-{target}-k{args.shots}-s{args.seed}"
    print(f"{args.method.upper()} on {target} ({setting}, k = {args.shots}, seed {args.seed}), backbone {backbone.name}")
    cache = FeatureCache()
    names = {target: args.object_name} if args.object_name else None
    fitted, supports, fit_seconds = train_few_shot(
        args.method, backbone, [(args.data, obj) for obj in sources], config, shots=args.shots, object_names=names,
        cache=cache, device=device, progress=progress, out_dir=out, on_event=event_sink_from_env(),
        should_stop=stop_requested_from_signals(), resume=args.resume, validation=args.validation,
        abnormal_shots=args.abnormal_shots,
    )
    if fitted.result.status == "cancelled":
        print(f"training cancelled; its state is in {out} (re-run with --resume to continue)")
        return EXIT_CANCELLED
    model = fitted.model
    splits = test_splits(args.data, target)  # indexed only now, after training
    if sources != [target]:
        from medot.methods.madpot.config import object_prompt_name

        model.set_object(object_prompt_name(target, args.object_name))
        model.localised = splits.has_masks
    metrics = evaluate(model, backbone, splits, cache=cache, device=device, progress=progress)
    training = {
        "status": fitted.result.status, "epochs": fitted.result.epochs_completed, "history": fitted.result.history,
        "fit_seconds": fit_seconds, "shots": args.shots, "seed": args.seed, "trained_on": sources,
        "tested_on": target, "support": {s.name: {"source": s.source,
                                                  "images": [str(r.path) for r in s.records]} for s in supports},
        "prompt_mass": fitted.prompt_mass,
        "selection": (f"best epoch {fitted.result.best_epoch} by image AUROC on {args.validation} + {args.validation} "
                      "valid/ images outside the support set" if args.validation
                      else "last epoch (no selection on test data)"),
    }
    size = backbone.preprocess.image_size
    calibration = None
    if sources == [target]:  # zero-shot / cross-dataset runs see no image of the target before testing
        calibration = _calibrate(model, backbone, args.data, target, training, cache, device, progress)
    path = save_madpot(out / "model", model, backbone=backbone.name, image_size=size,
                       metrics={"object": target, **metrics}, training=training, calibration=calibration)
    print(f"{target}: image AUROC {_fmt(metrics['image_auroc'])}, pixel AUROC {_fmt(metrics['pixel_auroc'])} "
          f"({training['selection']})")
    if fitted.prompt_mass is not None:
        normal, abnormal = fitted.prompt_mass
        print("mass per prompt (last step, of gamma = {:g}): normal {} / abnormal {}".format(
            config.mass, " ".join(f"{m:.3f}" for m in normal), " ".join(f"{m:.3f}" for m in abnormal)))
    print(f"saved the model to {path}")
    return 0


def _calibrate(model: Any, backbone: Any, root: str, target: str, training: dict, cache: Any, device: str,
               progress: bool) -> Any:
    """Calibrate the scores on the target's valid/ normal images outside the support set (never
    trained on; with --validation some of them also chose the epoch); None, with a warning, when
    none is left."""
    import torch

    from medot.data.datasets import load_mvfa
    from medot.methods.pradot.evaluation import calibrate
    from medot.methods.pradot.training import encode_tokens

    from medot.data.datasets import MVTEC, detect_layout, load_mvtec

    used = {path for support in training["support"].values() for path in support["images"]}
    mvtec = detect_layout(root).kind == MVTEC
    pool = load_mvtec(root, target, "train") if mvtec else load_mvfa(root, target, "valid")
    normals = [r.path for r in pool if r.label == 0 and str(r.path) not in used]
    if not normals:
        print("warning: no valid/ normal image is left outside the support set: the model is saved without a "
              "calibrated scale")
        return None
    tokens, _ = encode_tokens(backbone, normals, tuple(model.layers), cache=cache, progress=progress)
    size = (backbone.preprocess.image_size,) * 2
    split = "train/good" if mvtec else "valid/"
    source = f"{len(normals)} {split} normal images of {target} outside the support set"
    training["held_out_normals"] = len(normals)
    return calibrate(lambda t: model(t, size), tokens, torch.device(device), source)


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def _run_benchmark(args: argparse.Namespace) -> int:
    import csv
    import json
    from pathlib import Path

    from medot.backbones import create_backbone
    from medot.config import Settings
    from medot.methods.madpot.runner import benchmark, format_table, mvfa_objects, resolve_object, summarise

    args.data = _data_root(args.data)
    config = _config(args, args.seeds[0])
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    objects = [resolve_object(args.data, o) for o in args.objects] if args.objects else list(mvfa_objects(args.data))
    device = _device(args)
    backbone = create_backbone(args.backbone, device=device)
    rows = benchmark(backbone, args.data, objects, methods, args.shots, args.seeds, config, device=device,
                     progress=not args.quiet, zero_shot=args.zero_shot, sources=mvfa_objects(args.data),
                     abnormal_shots=args.abnormal_shots)
    table = summarise(rows)
    protocol = "zero-shot (leave one object out)" if args.zero_shot else "few-shot"
    print(f"backbone {backbone.name}; {protocol}; last epoch of each run (no selection on test data)")
    print(format_table(table))
    out = Path(args.out) if args.out else Settings.from_env().home / "benchmarks" / "madpot"
    out.mkdir(parents=True, exist_ok=True)
    keys = list(dict.fromkeys(key for row in rows for key in row))
    with (out / "results.csv").open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    summary = {"backbone": backbone.name, "data": str(args.data), "protocol": protocol, "config": config.to_dict(),
               "methods": methods,
               "shots": args.shots, "seeds": args.seeds, "table": table, "rows": rows}
    (out / "results.json").write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {out / 'results.csv'} and {out / 'results.json'}")
    return 0
