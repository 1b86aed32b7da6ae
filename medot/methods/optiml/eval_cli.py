"""``medot eval linear|finetune``: the label-efficiency evaluation of a pretrained encoder.

``--encoder`` is an encoder checkpoint (``PATH``, ``encoder:PATH``: what ``medot train optiml``
writes as ``<out>/encoder``), ``lite`` (EfficientNet-Lite0, ImageNet init) or ``resnet18`` /
``resnet50`` (random init, the lower reference), so the table "init / vicreg / vicregl / optiml x
fraction" comes from the same command. Protocol and leakage guard: :mod:`medot.eval.probe`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import json
import math
from pathlib import Path
from typing import Any

from medot.cli import seed_type
from medot.launch import mark_single_process

BUILTIN_ENCODERS = ("lite", "resnet18", "resnet50", "tiny")


def register(commands: Any) -> None:
    evaluate = commands.add_parser(
        "eval",
        help="evaluate a pretrained encoder: linear probe or fine-tuning, with label fractions",
        description="Label-efficiency evaluation of an image encoder on a labelled folder "
        "(DIR/train/<class>/, DIR/test/<class>/, optional DIR/val/<class>/; or NIH ChestX-ray14: "
        "Data_Entry_2017.csv + train_val_list.txt + test_list.txt, 14 findings, mean AUROC): for each label fraction and "
        "seed, train a linear classifier on frozen features (linear; AdamW 3e-3) or the whole encoder "
        "(finetune; AdamW 3e-4), keep the epoch with the best validation AUROC (early stopping, patience 10; "
        "validation carved from the training images only), then report test accuracy, macro-F1 and AUROC. "
        "The test split is never used for any choice.",
    )
    modes = evaluate.add_subparsers(dest="mode", metavar="MODE", required=True)
    for mode, text in (("linear", "linear probe on frozen features"), ("finetune", "fine-tune encoder + classifier")):
        parser = modes.add_parser(mode, help=text, description=evaluate.description)
        parser.add_argument(
            "--encoder", required=True,
            help="encoder checkpoint (PATH or encoder:PATH, from 'medot train optiml'), or lite / resnet18 / resnet50",
        )
        parser.add_argument("--data", required=True, help="labelled folder, or 'synthetic' (the OPTiML synthetic probe set)")
        parser.add_argument(
            "--fractions", type=float, nargs="+", default=[1.0, 10.0, 100.0],
            help="label fractions in percent of the training images (default: 1 10 100)",
        )
        parser.add_argument("--seeds", type=seed_type, nargs="+", default=[1, 2, 3], help="seeds (default: 1 2 3)")
        parser.add_argument("--epochs", type=int, default=100, help="epochs at most (default: 100)")
        parser.add_argument("--patience", type=int, default=10, help="early-stopping patience in epochs (default: 10)")
        parser.add_argument("--batch-size", type=int, default=64, help="batch size (default: 64)")
        parser.add_argument("--lr", type=float, default=None, help="AdamW lr (default: 3e-3 linear, 3e-4 finetune)")
        parser.add_argument("--image-size", type=int, default=None, help="input size (default: the encoder's, 224)")
        parser.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
        parser.add_argument("--out", default=None, help="folder for eval.csv / eval.json (default: none written)")
        parser.add_argument(
            "--save-models", action="store_true",
            help="also save every run's classifier (encoder + head) under --out/models, or $MEDOT_HOME/models/probe "
            "without --out: the app's Classify tab lists them with their classes",
        )
        parser.add_argument("--json", action="store_true", help="print the results as JSON")
        parser.add_argument("--quiet", action="store_true", help="no progress bars")
        parser.set_defaults(run=_run_eval)
        mark_single_process(parser, "the evaluation runs many small trainings; run several seeds as separate jobs instead")


def load_any_encoder(spec: str, seed: int = 0):
    """``(encoder module, name, image size)`` for an ``--encoder`` value (see the module docstring)."""
    from medot.errors import MedotError
    from medot.methods.optiml.encoder import Encoder, load_encoder
    from medot.train import seed_everything

    spec = spec.strip()
    if spec in BUILTIN_ENCODERS:
        seed_everything(seed)
        return Encoder(spec), f"{spec} ({'ImageNet' if spec == 'lite' else 'random'} init)", 224
    path = spec[len("encoder:") :] if spec.startswith("encoder:") else spec
    stem = Path(path).expanduser()
    if not (stem.with_name(stem.name + ".json").is_file() or stem.suffix in (".json", ".safetensors") and stem.is_file()):
        raise MedotError(
            f"--encoder {spec!r}: no encoder checkpoint there (expected PATH.safetensors + PATH.json from "
            f"'medot train optiml'), and not one of {', '.join(BUILTIN_ENCODERS)}"
        )
    encoder, meta = load_encoder(stem)
    name = meta.get("pretraining_method", "encoder") + f" ({meta['arch']}, {stem})"
    return encoder, name, int(meta["preprocess"]["image_size"])


def _images(records, size: int):
    import torch

    from medot.methods.optiml.classifier import centre_crop
    from medot.methods.optiml.data import load_grey

    return torch.stack([centre_crop(load_grey(record.path, size), size) for record in records])


def _run_eval(args: argparse.Namespace) -> int:
    import torch

    from medot.errors import MedotError
    from medot.eval.classification import summarise_seeds
    from medot.eval.probe import ProbeRun, is_nih_layout, label_fraction, load_labelled_splits, load_nih_splits, run_probe
    from medot.methods.optiml.classifier import PooledGrey, save_classifier
    from medot.train.distributed import resolve_device

    if len(set(args.seeds)) != len(args.seeds) or any(s < 0 for s in args.seeds):
        raise MedotError(f"--seeds {args.seeds}: give distinct non-negative seeds")
    bad = [f for f in args.fractions if not 0 < f <= 100]
    if bad:
        raise MedotError(f"--fractions {bad}: give percentages in (0, 100]")
    try:
        run = ProbeRun(
            mode=args.mode, epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, patience=args.patience,
            device=args.device, progress=False,
        )
    except ValueError as error:
        raise MedotError(str(error)) from None
    data = Path(args.data)
    if args.data == "synthetic":
        from medot.methods.optiml.cli import synthetic_pool_dir

        data = synthetic_pool_dir() / "labelled"
    encoder, name, size = load_any_encoder(args.encoder)
    splits = load_nih_splits(data, seed=0) if is_nih_layout(data) else load_labelled_splits(data, seed=0)
    size = args.image_size or size
    device = resolve_device(args.device)
    grey = {split: _images(getattr(splits, split), size) for split in ("train", "val", "test")}
    labels = {split: splits.label_tensor(split) for split in ("train", "val", "test")}
    if args.mode == "linear":
        body = PooledGrey(encoder).to(device).eval()
        with torch.no_grad():
            inputs = {
                split: torch.cat([body(chunk.to(device)).cpu() for chunk in images.split(32)])
                for split, images in grey.items()
            }
    else:
        inputs = grey
    results, saved_models = [], []
    if args.save_models:
        from medot.config import Settings

        stem = Path(args.encoder.removeprefix("encoder:")).parent.name or args.encoder
        models_dir = Path(args.out) / "models" if args.out else Settings.from_env().models_dir / "probe" / f"{args.mode}-{stem}"
    for fraction in args.fractions:
        for seed in args.seeds:
            chosen = label_fraction(splits.train, len(splits.classes), fraction / 100, seed, splits.multilabel)
            index = {str(r.path): i for i, r in enumerate(splits.train)}
            indices = [index[str(r.path)] for r in chosen]
            result = run_probe(
                inputs, labels, splits.classes, indices, seed, run,
                body_factory=lambda: PooledGrey(copy.deepcopy(encoder)),
                meta={"method": f"{args.mode}-probe", "backbone": args.encoder}, fraction=fraction,
                multilabel=splits.multilabel,
            )
            results.append(result)
            if args.save_models:
                trained = result.classifier.body.encoder if result.classifier.body is not None else encoder
                saved = save_classifier(
                    models_dir / f"{args.mode}-{fraction:g}pct-seed{seed}", result.classifier, trained, size,
                    {"backbone": args.encoder, "fraction": fraction, "seed": seed, "metrics": result.metrics},
                )
                saved_models.append(str(saved))
            if not args.quiet and not args.json:
                m = result.metrics
                shown = (f"mean AUROC {m['mean_auroc']:.4f}" if splits.multilabel else
                         f"accuracy {m['accuracy']:.4f}, macro-F1 {m['macro_f1']:.4f}, AUROC {m['auroc']:.4f}")
                print(f"  {fraction:g}% seed {seed}: {shown} (best epoch {result.best_epoch}, "
                      f"{result.train_images} training images)")
    rows = [
        {"encoder": name, "mode": args.mode, "fraction": r.fraction, "seed": r.seed, "train_images": r.train_images,
         "best_epoch": r.best_epoch, "val_auroc": r.val_auroc, **r.metrics}
        for r in results
    ]
    def summarise(fraction: float) -> dict:
        runs = [r.metrics for r in results if r.fraction == fraction]
        finite = [key for key in runs[0] if all(math.isfinite(run[key]) for run in runs)]  # undefined AUROCs left out
        return {key: vars(value) for key, value in summarise_seeds([{k: run[k] for k in finite} for run in runs]).items()}

    summary = {f"{fraction:g}": summarise(fraction) for fraction in args.fractions}
    report = {"encoder": name, "mode": args.mode, "data": str(data), "classes": list(splits.classes),
              "sizes": {s: len(getattr(splits, s)) for s in ("train", "val", "test")}, "runs": rows, "summary": summary,
              "models": saved_models}
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "eval.json").write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
        with (out / "eval.csv").open("w", newline="", encoding="utf-8") as handle:
            writer = csv.DictWriter(handle, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{args.mode} evaluation of {name} on {data} ({', '.join(splits.classes)}; "
          f"train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}):")
    for fraction, metrics in summary.items():
        shown = {key: value for key, value in metrics.items() if not key.startswith("auroc_")}
        cells = ", ".join(f"{key} {value['mean']:.4f} ± {value['std']:.4f}" for key, value in shown.items())
        print(f"  {fraction}% labels: {cells}")
    return 0
