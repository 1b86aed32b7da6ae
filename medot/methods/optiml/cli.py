"""``medot train optiml`` and ``medot eval linear|finetune`` (docs/methods/optiml.md has examples).

Top-level imports stay light (argparse only); torch and the method modules load inside the commands.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from medot.cli import seed_type
from medot.launch import mark_distributed

METHOD_CHOICES = ("optiml", "vicreg", "vicregl")
ENCODER_CHOICES = ("lite", "resnet18", "resnet50", "tiny")


def register(commands: Any, train_methods: Any, benchmark_methods: Any) -> None:  # noqa: ARG001
    """Add ``medot train optiml`` and the ``medot eval`` command."""
    train = train_methods.add_parser(
        "optiml",
        help="self-supervised pretraining of an image encoder: OPTiML, or the VICReg / VICRegL baselines",
        description="Pretrain an image encoder on unlabelled images with OPTiML (Singh, Gorade & Mishra, "
        "arXiv 2404.11868): dense features of two augmented views aligned by optimal transport, cross-view "
        "attention (CV-SIM) and VICReg variance/covariance terms; or a baseline on the same code path "
        "(--method vicreg | vicregl). Writes <out>/model (training state), <out>/encoder (the encoder, "
        "usable as '--backbone encoder:<out>/encoder') and <out>/metrics.json (every loss term per epoch, "
        "and agree_ot / agree_nn: the share of OT / nearest-neighbour matching mass on truly overlapping patches).",
    )
    train.add_argument(
        "--data", "--dataset", dest="data", required=True,
        help="folder of unlabelled images (PNG/JPEG/TIFF/DICOM/.npy, nested folders fine), or 'synthetic' "
        "(an X-ray-like pool written under $MEDOT_HOME on first use)",
    )
    train.add_argument("--method", default="optiml", choices=METHOD_CHOICES, help="optiml (default), vicreg, vicregl")
    train.add_argument(
        "--encoder", default="lite", choices=ENCODER_CHOICES,
        help="lite: EfficientNet-Lite0 from ImageNet weights (default; continued pretraining); "
        "resnet18/resnet50: random init (the paper's setting); tiny: a 3-layer CNN for smoke tests only",
    )
    train.add_argument("--no-cvsim", action="store_true", help="ablation: no cross-view attention (CV-SIM)")
    train.add_argument("--no-varcov", action="store_true", help="ablation: no dense variance/covariance terms")
    train.add_argument("--no-ot", action="store_true", help="ablation: no dense matching term (OT / nearest neighbour)")
    train.add_argument("--alpha", type=float, default=25.0, help="weight of the dense matching term (default: 25)")
    train.add_argument("--beta", type=float, default=25.0, help="weight of the variance terms (default: 25)")
    train.add_argument("--eta", type=float, default=1.0, help="weight of the covariance terms (default: 1)")
    train.add_argument(
        "--global-weight", type=float, default=None,
        help="weight of the global VICReg term on pooled features (default: 0 for optiml, 1 for vicreg, --vicregl-alpha for vicregl)",
    )
    train.add_argument(
        "--stages", type=int, nargs="+", default=[4], metavar="K",
        help="encoder stages with dense terms, by ResNet stage number: 4 = the final map (always on), 3 = "
        "stride 16 (ResNet layer3, lite block 4), 2 = stride 8; each stage gets its own CV-SIM, projector, "
        "plan and var/cov, and the dense loss is their mean (default: 4)",
    )
    train.add_argument(
        "--vicregl-alpha", type=float, default=0.75,
        help="vicregl: weight of the global VICReg term; the local terms get 1 - alpha (VICRegL's default 0.75)",
    )
    train.add_argument(
        "--num-matches", type=int, nargs=2, default=[20, 4], metavar=("K_S", "K_T"),
        help="vicregl: location-based matches kept per direction, the spatially closest first (VICRegL: 20 4)",
    )
    train.add_argument("--epsilon", type=float, default=0.1, help="Sinkhorn entropic regularisation (default: 0.1)")
    train.add_argument("--sinkhorn-iterations", type=int, default=100, help="Sinkhorn iterations at most (default: 100)")
    train.add_argument("--image-size", type=int, default=224, help="view size in pixels (default: 224)")
    train.add_argument("--epochs", type=int, default=300, help="epochs (default: 300)")
    train.add_argument(
        "--batch-size", type=int, default=64, help="images per step per process (default: 64; global: x torchrun processes)"
    )
    train.add_argument("--lr", type=float, default=None, help="LARS learning rate (default: 0.2 x global batch / 256)")
    train.add_argument("--weight-decay", type=float, default=1e-6, help="weight decay (default: 1e-6)")
    train.add_argument("--warmup-epochs", type=int, default=2, help="linear warm-up epochs (default: 2)")
    train.add_argument("--seed", type=seed_type, default=0, help="seed of initialisation, order and views (default: 0)")
    train.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    train.add_argument("--out", default=None, help="output folder (default: $MEDOT_HOME/models/optiml/<method>-<encoder>)")
    train.add_argument("--resume", action="store_true", help="continue an interrupted run from --out")
    train.add_argument("--json", action="store_true", help="print the summary as JSON")
    train.add_argument("--quiet", action="store_true", help="no progress bars")
    train.set_defaults(run=_run_train)
    mark_distributed(train)

    _register_eval(commands)


def _register_eval(commands: Any) -> None:
    from medot.methods.optiml import eval_cli

    eval_cli.register(commands)


def _config(args: argparse.Namespace):
    from medot.methods.optiml.config import OptimlConfig
    from medot.methods.optiml.runner import PretrainRun

    from medot.errors import MedotError

    if args.epochs < 1 or args.batch_size < 2:
        raise MedotError("--epochs must be at least 1 and --batch-size at least 2")
    if args.lr is not None and not args.lr > 0:
        raise MedotError(f"--lr {args.lr}: give a positive learning rate")
    config = OptimlConfig(
        method=args.method,
        encoder=args.encoder,
        image_size=args.image_size,
        cvsim=not args.no_cvsim,
        varcov=not args.no_varcov,
        ot=not args.no_ot,
        alpha=args.alpha,
        beta=args.beta,
        eta=args.eta,
        epsilon=args.epsilon,
        sinkhorn_iterations=args.sinkhorn_iterations,
        global_weight=args.global_weight,
        stages=tuple(args.stages),
        vicregl_alpha=args.vicregl_alpha,
        vicregl_matches=tuple(args.num_matches),
    )
    if config.method == "vicreg" and (args.no_cvsim or args.no_ot or args.no_varcov):
        raise MedotError("--no-cvsim/--no-ot/--no-varcov switch off dense terms; vicreg has none (use optiml or vicregl)")
    if config.method != "vicreg" and not config.dense and config.global_term_weight == 0:
        raise MedotError("--no-ot with --no-varcov leaves no loss term: keep one, or add --global-weight")
    run = PretrainRun(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        weight_decay=args.weight_decay,
        warmup_epochs=args.warmup_epochs,
        seed=args.seed,
        device=args.device,
        progress=not args.quiet,
    )
    return config, run


def synthetic_pool_dir() -> Path:
    """The synthetic X-ray-like pretraining set under ``$MEDOT_HOME`` (written on first use)."""
    from medot.config import Settings
    from medot.data.synthetic import MANIFEST_NAME, write_pretraining_set

    root = Settings.from_env().home / "synthetic-optiml"
    try:
        complete = json.loads((root / MANIFEST_NAME).read_text(encoding="utf-8")).get("complete") is True
    except (OSError, ValueError, AttributeError):
        complete = False
    if not complete:
        write_pretraining_set(root, seed=0, n_pool=300, n_per_class=30, size=224)
    return root


def _run_train(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from medot.config import Settings
    from medot.jobs.protocol import EXIT_CANCELLED, event_sink_from_env, stop_requested_from_signals
    from medot.methods.optiml.data import ImagePool
    from medot.methods.optiml.runner import pretrain
    from medot.train.distributed import is_main_process, main_process_first

    config, run = _config(args)
    main = is_main_process()
    if not main:
        run = replace(run, progress=False)
    with main_process_first("writing the synthetic pretraining pool"):
        data = synthetic_pool_dir() / "pool" if args.data == "synthetic" else Path(args.data)
    pool = ImagePool.from_folder(data, load_size=round(config.image_size * 8 / 7))
    if len(pool) < run.batch_size:
        from medot.errors import MedotError

        raise MedotError(f"{data} holds {len(pool)} images, fewer than one batch of {run.batch_size}: lower --batch-size")
    name = f"{config.method}-{config.encoder}"
    out = Path(args.out) if args.out else Settings.from_env().models_dir / "optiml" / name
    if main:
        out.mkdir(parents=True, exist_ok=True)
    result = pretrain(
        pool, config, run, out, on_event=event_sink_from_env(), should_stop=stop_requested_from_signals(),
        resume=args.resume,
    )
    if result.result.status == "cancelled":
        if main:
            print(f"medot: stopped; continue with --resume --out {out}")
        return EXIT_CANCELLED
    if not main:
        return 0
    last = result.result.history[-1] if result.result.history else {}
    summary = {
        "method": config.method,
        "encoder": config.encoder,
        "images": len(pool),
        "status": result.result.status,
        "last_epoch": last,
        "encoder_checkpoint": str(result.encoder_path),
        "backbone": f"encoder:{result.encoder_path}",
    }
    if args.json:
        print(json.dumps(summary, indent=2))
        return 0
    terms = ", ".join(f"{key} {value:.4f}" for key, value in last.items() if key not in ("epoch",))
    print(f"{config.method} ({config.encoder}) on {len(pool)} images: {result.result.status}; last epoch: {terms}")
    print(f"  encoder: {result.encoder_path}  (use as --backbone encoder:{result.encoder_path})")
    return 0
