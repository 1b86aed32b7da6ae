"""A trivial reference for the synthetic linear-probe table: is the labelled probe set separable at all?

On the splits ``medot eval linear`` uses (:func:`medot.eval.probe.load_labelled_splits`, seed 0:
validation carved from train), fit scikit-learn's ``LogisticRegression`` (L2, lbfgs) on train + val
and score the test split once, for C = 0.01, 0.1, 1 (all reported; none chosen), on

* the grey images average-pooled to 16 x 16 and 32 x 32 pixels (standardised), and
* each ``--encoders`` value's pooled features (the same ``PooledGrey`` features the probe sees;
  ``lite`` = ImageNet init, ``resnet18`` = random init, or an encoder checkpoint), standardised.

Independent of medot's probe training (AdamW, early stopping, its standardisation), so it tells a
probe-set problem apart from a probe problem. Run from the repository root, e.g.::

    python -m benchmarks.optiml_probe_reference --data DIR/optiml/labelled --image-size 64 --encoders lite resnet18
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.preprocessing import StandardScaler

from medot.eval.probe import load_labelled_splits
from medot.methods.optiml.classifier import PooledGrey
from medot.methods.optiml.eval_cli import _images, load_any_encoder


def _fit(name: str, features: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> None:
    train = np.concatenate([features["train"], features["val"]])
    train_y = np.concatenate([labels["train"], labels["val"]])
    scaler = StandardScaler().fit(train)
    for c in (0.01, 0.1, 1.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(scaler.transform(train), train_y)
        p = model.predict_proba(scaler.transform(features["test"]))
        accuracy = float(np.mean(p.argmax(1) == labels["test"]))
        auroc = roc_auc_score(labels["test"], p, multi_class="ovr") if p.shape[1] > 2 else roc_auc_score(labels["test"], p[:, 1])
        print(f"{name:<34} C={c:<5} test accuracy {accuracy:.3f}  AUROC {auroc:.3f}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="labelled folder (train/<class>/, test/<class>/)")
    parser.add_argument("--image-size", type=int, default=64)
    parser.add_argument("--encoders", nargs="*", default=["lite", "resnet18"])
    args = parser.parse_args()
    print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.gmtime())} UTC, load average {open('/proc/loadavg').read().split()[:3]}")
    splits = load_labelled_splits(args.data, seed=0)
    print(f"classes {list(splits.classes)}; train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    grey = {split: _images(getattr(splits, split), args.image_size) for split in ("train", "val", "test")}
    labels = {split: splits.label_tensor(split).numpy() for split in grey}
    for pixels in (16, 32):
        pooled = {s: torch.nn.functional.adaptive_avg_pool2d(g, pixels).flatten(1).numpy() for s, g in grey.items()}
        _fit(f"pixels {pixels}x{pixels}", pooled, labels)
    for spec in args.encoders:
        encoder, name, _ = load_any_encoder(spec)
        body = PooledGrey(encoder).eval()
        with torch.no_grad():
            features = {s: torch.cat([body(chunk) for chunk in g.split(16)]).numpy() for s, g in grey.items()}
        _fit(f"{name} pooled", features, labels)


if __name__ == "__main__":
    main()
