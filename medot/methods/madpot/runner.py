"""The MVFA protocols for MADPOT and its baselines: few-shot, leave-one-dataset-out zero-shot and
cross-dataset runs, and the benchmark table (per object image AUROC / pixel AUROC, average).

Protocol (MVFA, Huang et al., CVPR 2024): train on ``k`` normal + ``k`` abnormal ``valid`` images,
test on the object's whole ``test`` split; image AUROC on every object, pixel AUROC where the test
split has masks. medot reports the **last** epoch (MVFA and MadCLIP pick the best epoch on the test
set, MVFA-AD issue #17; medot never selects on test data).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medot.backbones.base import VisionLanguageBackbone
from medot.data.datasets import MVFA, MVTEC, detect_layout, load_mvfa, load_mvtec
from medot.methods.madpot.baselines import ZeroShotModel, require_joint_space_layers, NO_WRITE_BACK
from medot.methods.madpot.config import MADPOT, MVFA_BASELINE, PATCHCORE, ZEROSHOT, MadpotConfig, MadpotError, object_prompt_name
from medot.methods.madpot.data import (
    NORMAL_ONLY,
    EncodedSupport,
    SupportSet,
    encode_support,
    load_support,
    load_validation,
)
from medot.methods.madpot.detector import layer_geometry
from medot.methods.madpot.task import FitResult, fit
from medot.methods.pradot.data import AnomalySplits
from medot.methods.pradot.evaluation import EvaluationSet
from medot.train import EventHandler, FeatureCache

METRICS = ("image_auroc", "pixel_auroc")


def mvfa_objects(root: str | Path) -> tuple[str, ...]:
    """The objects of an MVFA-layout folder, or the categories of an MVTec AD folder (raises with
    the expected layouts otherwise)."""
    detected = detect_layout(root)
    if detected.kind not in (MVFA, MVTEC):
        raise MadpotError(
            f"{root} is a {detected.kind.replace('_', ' ')} dataset; MADPOT's few-shot protocol needs k normal and "
            "k abnormal support images: the MVFA layout <Obj>_AD/{valid,test}/{good,Ungood}/img, or MVTec AD "
            "<category>/train/good, test/<defect>, ground_truth (normal-only: zeroshot / patchcore, or --abnormal-shots DIR)"
        )
    return detected.names


def normal_only(root: str | Path) -> bool:
    """True for an MVTec AD folder: its training split has no abnormal image."""
    return detect_layout(root).kind == MVTEC


def resolve_object(root: str | Path, name: str | None) -> str:
    names = mvfa_objects(root)
    if name is None:
        if len(names) == 1:
            return names[0]
        raise MadpotError(f"{root} holds several objects {list(names)}: choose one with --object")
    if name not in names:
        raise MadpotError(f"{root} has no object {name!r}; it has {list(names)}")
    return name


def default_layers(backbone: VisionLanguageBackbone, config: MadpotConfig) -> tuple[str, ...]:
    layers = config.layers or tuple(backbone.default_layers)
    unknown = [layer for layer in layers if layer not in backbone.feature_layers]
    if unknown:
        raise MadpotError(f"backbone {backbone.name} has no layer(s) {unknown}; choose from {list(backbone.feature_layers)}")
    return tuple(layers)


def test_splits(root: str | Path, obj: str, support: SupportSet | None = None) -> AnomalySplits:
    """The object's test records (read only after training, for evaluation)."""
    layout = MVTEC if normal_only(root) else MVFA
    test = tuple(load_mvtec(root, obj, "test") if layout == MVTEC else load_mvfa(root, obj, "test"))
    train = tuple(r.path for r in support.normal) if support is not None else ()
    return AnomalySplits(layout, obj, train, test)


@dataclass
class FewShotRun:
    """One trained model with its support set, test metrics and training record."""

    fitted: FitResult
    supports: list[SupportSet]
    metrics: dict[str, Any]
    fit_seconds: float


def encode(backbone: VisionLanguageBackbone, support: SupportSet, layers: Sequence[str], config: MadpotConfig,
           cache: FeatureCache, progress: bool) -> EncodedSupport:
    return encode_support(backbone, support.records, layers, views=config.views, cache=cache, progress=progress)


def evaluate(model: torch.nn.Module, backbone: VisionLanguageBackbone, splits: AnomalySplits, *,
             cache: FeatureCache, device: str, progress: bool) -> dict[str, Any]:
    size = (backbone.preprocess.image_size,) * 2
    test_set = EvaluationSet.load(backbone, splits, tuple(model.layers), cache=cache, progress=progress)
    metrics = test_set.evaluate(lambda tokens: model(tokens, size), torch.device(device))
    return {key: metrics.get(key) for key in (*METRICS, "ms_per_image")}


def train_few_shot(
    method: str,
    backbone: VisionLanguageBackbone,
    train_on: Sequence[tuple[str | Path, str]],
    config: MadpotConfig,
    *,
    shots: int,
    object_names: dict[str, str] | None = None,
    cache: FeatureCache | None = None,
    device: str = "cpu",
    progress: bool = True,
    out_dir: Path | None = None,
    on_event: EventHandler | None = None,
    should_stop: Callable[[], bool] | None = None,
    resume: bool = False,
    log: Callable[[str], None] = print,
    validation: int = 0,
    abnormal_shots: str | Path | None = None,
) -> tuple[FitResult, list[SupportSet], float]:
    """Train ``method`` on the ``valid`` support sets of ``train_on`` = [(root, object), ...].

    ``validation`` > 0: that many normal and abnormal ``valid`` images of the first object, outside
    its support set, select the kept epoch (image AUROC); 0 keeps the last epoch. MVTec AD folders
    take their abnormal shots from ``abnormal_shots`` (:func:`~medot.methods.madpot.data.load_support`)."""
    cache = cache or FeatureCache()
    layers = default_layers(backbone, config)
    supports, encoded, names = [], [], []
    for root, obj in train_on:
        support = load_support(root, obj, shots, config.seed, abnormal_shots)
        if not support.abnormal:
            raise MadpotError(NORMAL_ONLY.format(root=root, what=method.upper()))
        log(f"{obj}: {len(support.normal)} normal + {len(support.abnormal)} abnormal support images ({support.source})")
        supports.append(support)
        encoded.append(encode(backbone, support, layers, config, cache, progress))
        names.append(object_prompt_name(obj, (object_names or {}).get(obj)))
    if method == MVFA_BASELINE:
        log(NO_WRITE_BACK)
    held_out = None
    if validation > 0:
        records = load_validation(train_on[0][0], supports[0], validation, config.seed)
        log(f"epoch selection on {validation} + {validation} valid/ images outside the support set (never on test)")
        held_out = encode_support(backbone, records, layers, views=1, cache=cache, progress=progress)
    started = time.perf_counter()
    fitted = fit(method, backbone, encoded, names, config, device=device, progress=progress, out_dir=out_dir,
                 on_event=on_event, should_stop=should_stop, resume=resume, validation=held_out)
    return fitted, supports, time.perf_counter() - started


def patchcore_model(backbone: VisionLanguageBackbone, support: SupportSet, layers: Sequence[str], seed: int,
                    cache: FeatureCache, device: str, progress: bool, localised: bool):
    """medot's PatchCore fitted on the k normal shots (un-augmented views)."""
    from medot.methods.pradot.config import PatchCoreConfig
    from medot.methods.pradot.patchcore import PatchCoreModel
    from medot.methods.pradot.training import encode_tokens

    paths = [record.path for record in support.normal]
    tokens, grids = encode_tokens(backbone, paths, tuple(layers), cache=cache, progress=progress)
    model = PatchCoreModel(tuple(layers), grids, PatchCoreConfig(seed=seed)).to(device)
    model.fit({layer: value.to(device) for layer, value in tokens.items()})
    return model


def zeroshot_model(backbone: VisionLanguageBackbone, obj: str, localised: bool, object_name: str | None = None):
    channels, grids = layer_geometry(backbone)
    layers = require_joint_space_layers(backbone, channels)
    return ZeroShotModel(backbone, layers, grids, object_prompt_name(obj, object_name), localised=localised).to(
        backbone.device
    )


def benchmark(
    backbone: VisionLanguageBackbone,
    root: str | Path,
    objects: Sequence[str],
    methods: Sequence[str],
    shots: Sequence[int],
    seeds: Sequence[int],
    config: MadpotConfig,
    *,
    cache: FeatureCache | None = None,
    device: str = "cpu",
    progress: bool = True,
    log: Callable[[str], None] = print,
    zero_shot: bool = False,
    sources: Sequence[str] | None = None,
    abnormal_shots: str | Path | None = None,
) -> list[dict[str, Any]]:
    """One row per (object, method, k, seed) with image / pixel AUROC on the object's test split.

    ``zero_shot``: leave-one-dataset-out -- MADPOT trains on the k-shot supports of every other
    object of ``sources`` (default ``objects``) and scores the held-out one with its object name;
    ``zeroshot`` needs no training; ``mvfa`` and ``patchcore`` need shots of the object and are skipped."""
    cache = cache or FeatureCache()
    unknown = [m for m in methods if m not in (MADPOT, MVFA_BASELINE, ZEROSHOT, PATCHCORE)]
    if unknown:
        raise MadpotError(f"unknown method(s) {unknown}; choose from madpot, mvfa, zeroshot, patchcore")
    trained = [m for m in methods if m in (MADPOT, MVFA_BASELINE) and not (zero_shot and m == MVFA_BASELINE)]
    if trained and abnormal_shots is None and normal_only(root):
        raise MadpotError(NORMAL_ONLY.format(root=root, what=" and ".join(m.upper() for m in trained)))
    rows = []
    for obj in objects:
        for k in shots:
            for seed in seeds:
                run_config = MadpotConfig.from_dict({**config.to_dict(), "seed": seed})
                for method in methods:
                    if method == ZEROSHOT and (k != shots[0] or seed != seeds[0]):
                        continue  # no training: one row per object
                    if zero_shot and method in (MVFA_BASELINE, PATCHCORE):
                        continue  # they need shots of the held-out object
                    started = time.perf_counter()
                    shots_dir = abnormal_shots if method in (MADPOT, MVFA_BASELINE) else None
                    support = load_support(root, obj, k, seed, shots_dir)
                    if zero_shot and method == MADPOT:
                        others = [o for o in (sources or objects) if o != obj]
                        if not others:
                            raise MadpotError(f"zero-shot on {obj} needs other objects to train on")
                        fitted, _, _ = train_few_shot(method, backbone, [(root, o) for o in others], run_config,
                                                      shots=k, cache=cache, device=device, progress=progress, log=log,
                                                      abnormal_shots=abnormal_shots)
                        model = fitted.model
                        model.set_object(object_prompt_name(obj))
                    elif method in (MADPOT, MVFA_BASELINE):
                        fitted, _, _ = train_few_shot(method, backbone, [(root, obj)], run_config, shots=k,
                                                      cache=cache, device=device, progress=progress, log=log,
                                                      abnormal_shots=abnormal_shots)
                        model = fitted.model
                    elif method == PATCHCORE:
                        model = patchcore_model(backbone, support, default_layers(backbone, run_config), seed,
                                                cache, device, progress, support.has_masks)
                    else:
                        model = zeroshot_model(backbone, obj, support.has_masks)
                    fit_seconds = time.perf_counter() - started
                    splits = test_splits(root, obj, support)  # read only now, after training
                    if (zero_shot and method == MADPOT) or method == ZEROSHOT:
                        model.localised = splits.has_masks  # no training: the map's maximum where masks exist
                    metrics = evaluate(model, backbone, splits, cache=cache, device=device, progress=progress)
                    row = {"object": obj, "method": method, "shots": 0 if method == ZEROSHOT else k,
                           "protocol": "zero-shot" if zero_shot else "few-shot",
                           "seed": seed, **metrics, "fit_seconds": fit_seconds}
                    log(f"{obj} {method} k={row['shots']} seed={seed}: image AUROC {_fmt(row['image_auroc'])}, "
                        f"pixel AUROC {_fmt(row['pixel_auroc'])}")
                    rows.append(row)
    return rows


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def summarise(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean (and sample std) over seeds per (object, method, k), then the average over objects."""
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["object"], row["method"], row["shots"]), []).append(row)
    table = []
    for (obj, method, k), members in groups.items():
        entry: dict[str, Any] = {"object": obj, "method": method, "shots": k, "seeds": len(members)}
        for metric in METRICS:
            values = [m[metric] for m in members if m[metric] is not None]
            entry[metric] = float(np.mean(values)) if values else None
            entry[f"{metric}_std"] = float(np.std(values, ddof=1)) if len(values) > 1 else None
        table.append(entry)
    for method, k in dict.fromkeys((e["method"], e["shots"]) for e in table):
        mine = [e for e in table if e["method"] == method and e["shots"] == k]
        average: dict[str, Any] = {"object": "average", "method": method, "shots": k, "seeds": mine[0]["seeds"]}
        for metric in METRICS:
            values = [e[metric] for e in mine if e[metric] is not None]
            average[metric] = float(np.mean(values)) if values else None
            average[f"{metric}_std"] = None
        table.append(average)
    return table


def format_table(table: Sequence[dict[str, Any]]) -> str:
    """The MVFA table as text: one line per (object, method, k)."""
    header = f"{'object':<16} {'method':<10} {'k':>3} {'img AUROC':>10} {'px AUROC':>10}"
    lines = [header, "-" * len(header)]
    for e in table:
        lines.append(f"{e['object']:<16} {e['method']:<10} {e['shots']:>3} {_fmt(e['image_auroc']):>10} "
                     f"{_fmt(e['pixel_auroc']):>10}")
    return "\n".join(lines)
