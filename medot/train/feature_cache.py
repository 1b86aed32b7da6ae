"""On-disk cache of frozen image-tower outputs, so a few-shot epoch costs only text-tower passes.

The image tower is frozen, so for a fixed image, preprocessing and view its output never changes.
:class:`FeatureCache` stores each one once, as a safetensors file per (image, view) named by the
SHA-256 of its key::

    {format, backbone name, backbone dtype, preprocessing (size, mean, std, interpolation),
     requested layers, reader, view index, augmentation (seed, crop scale/ratio, flip; views >= 1
     only), SHA-256 of the image file's bytes}

so editing an image, switching backbone or layers, or changing the augmentation seed selects other
entries, while view 0 (the un-augmented image) is shared by every seed. View ``v >= 1`` is a random
resized crop (torchvision's sampling of area fraction in ``scale`` and log-aspect in ``ratio``)
followed by a horizontal flip with probability 1/2, drawn from a generator seeded by
``(seed, v, file hash)``; the crop is then preprocessed like any image (short-side resize and
centre crop to the tower's input size). Augmented views are therefore the same on every run and
machine, and caching ``V`` views per image replaces on-the-fly augmentation (Tip-Adapter's recipe).

Entries are written to a temporary file and renamed into place, so a crash never leaves a partial
entry under a valid name. Each entry stores the SHA-256 of its tensors' bytes (names, dtypes, shapes
and values) beside its key; an entry that is unreadable, mislabelled (e.g. truncated by a full disk),
whose bytes no longer match that checksum (flipped bits on disk) or that holds a non-finite value is
treated as missing: recomputed and overwritten. The cache only grows: delete its folder to reclaim space.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from tqdm import tqdm

from medot.backbones.base import VisionLanguageBackbone
from medot.checkpoint import atomic_write
from medot.config import Settings
from medot.errors import ImageReadError

#: bump when the stored layout changes, so old entries stop matching (2: per-entry checksum)
CACHE_FORMAT = 2

ImageReader = Callable[[Path], np.ndarray]


@dataclass(frozen=True)
class ViewAugmentation:
    """Random resized crop + horizontal flip used for views ``1..V-1``.

    ``scale`` bounds the crop's area as a fraction of the image, ``ratio`` its aspect ratio
    (sampled log-uniformly). The default (0.5, 1) keeps at least half of the image, which for
    medical images keeps the finding in view more often than ImageNet's (0.08, 1).
    """

    scale: tuple[float, float] = (0.5, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = True


@dataclass
class CachedFeatures:
    """Image-tower outputs for ``N`` images x ``V`` views, float32 on the CPU.

    ``embeddings`` is ``[N, V, D]`` (joint space, not normalised); ``patch_tokens[layer]`` is
    ``[N, V, H*W, C]`` in row-major grid order with ``grids[layer] == (H, W)``. ``hits`` and
    ``misses`` count (image, view) entries found in / added to the cache by this call.
    """

    embeddings: torch.Tensor
    patch_tokens: dict[str, torch.Tensor]
    grids: dict[str, tuple[int, int]]
    image_sha256: list[str]
    hits: int
    misses: int


def file_sha256(path: Path) -> str:
    """SHA-256 of a file's bytes; raises :class:`ImageReadError` when it cannot be read."""
    digest = hashlib.sha256()
    try:
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    except OSError as error:
        raise ImageReadError(f"cannot read image file {path}: {error.strerror or error}") from None
    return digest.hexdigest()


def augment_view(
    image: np.ndarray, *, view: int, seed: int, image_sha256: str, augmentation: ViewAugmentation
) -> np.ndarray:
    """View ``view`` of an ``HxWx3`` image: itself for view 0, else a crop (+ flip) drawn from a
    generator seeded by ``(seed, view, image_sha256)``. The global RNG is left untouched."""
    if view == 0:
        return image
    from torchvision.transforms import RandomResizedCrop  # ~2.5 s to import: only when augmenting

    entropy = [seed, view, int(image_sha256[:16], 16)]
    view_seed = int(np.random.SeedSequence(entropy).generate_state(1)[0])
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(view_seed)
        size_only = torch.empty(1, *image.shape[:2])
        top, left, height, width = RandomResizedCrop.get_params(
            size_only, list(augmentation.scale), list(augmentation.ratio)
        )
        flip = augmentation.flip and bool(torch.rand(()) < 0.5)
    crop = image[top : top + height, left : left + width]
    return np.ascontiguousarray(crop[:, ::-1] if flip else crop)


def _owned_cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous CPU copy that does not keep the batch it was sliced from alive."""
    return tensor.detach().to("cpu", memory_format=torch.contiguous_format, copy=True)


def tensors_sha256(tensors: dict[str, torch.Tensor]) -> str:
    """SHA-256 over ``tensors`` in name order: each name, dtype, shape and its raw bytes."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode("utf-8"))
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _default_read(path: Path) -> np.ndarray:
    from medot.data.io import read_image

    return read_image(path).rgb()


@dataclass
class _Entry:
    """One cached (image, view): its file and the key text stored inside it."""

    path: Path
    key: str


class FeatureCache:
    """Content-addressed store of image-tower outputs under ``root``
    (default ``$MEDOT_HOME/cache/features``)."""

    def __init__(self, root: str | os.PathLike | None = None) -> None:
        self.root = Path(root) if root is not None else Settings.from_env().cache_dir / "features"

    def encode(
        self,
        backbone: VisionLanguageBackbone,
        paths: Sequence[str | os.PathLike],
        *,
        layers: Sequence[str] = (),
        views: int = 1,
        seed: int = 0,
        augmentation: ViewAugmentation = ViewAugmentation(),
        batch_size: int = 32,
        progress: bool = True,
        read: ImageReader | None = None,
        read_key: str = "medot.data.io.read_image",
    ) -> CachedFeatures:
        """Features of ``views`` views of each image in ``paths``, from the cache where present.

        Missing entries are computed ``batch_size`` views at a time with ``backbone.encode_image``
        (no gradients) and stored. ``read(path)`` returns the image as ``HxWx3`` float in [0, 1]
        (default: :func:`medot.data.io.read_image` then ``.rgb()``); it is called only for images
        with at least one missing view. ``read_key`` names what ``read`` does and is part of the
        key: give a custom reader (other DICOM windowing, say) its own, so the same file read
        differently is not served stale features.
        """
        if not paths:
            raise ValueError("encode needs at least one image path")
        if views < 1 or batch_size < 1:
            raise ValueError(f"views and batch_size must be >= 1, got views={views}, batch_size={batch_size}")
        read = read or _default_read
        layers = tuple(layers)
        results: list[list[dict[str, torch.Tensor] | None]] = [[None] * views for _ in paths]
        grids: dict[str, tuple[int, int]] = {}
        hashes: list[str] = []
        pending: list[tuple[int, int, _Entry, np.ndarray]] = []
        hits = misses = 0

        def flush() -> None:
            arrays = [array for *_, array in pending]
            with torch.inference_mode():
                features = backbone.encode_image(backbone.transform_batch(arrays), layers=layers)
            grids.update(features.grids)
            for row, (index, view, entry, _) in enumerate(pending):
                tensors = {"embedding": _owned_cpu_copy(features.embedding[row])}
                for layer in layers:
                    tensors[f"tokens.{layer}"] = _owned_cpu_copy(features.patch_tokens[layer][row])
                self._write(entry, tensors, features.grids)
                results[index][view] = tensors
            pending.clear()

        with tqdm(total=len(paths), desc="image features", unit="img", disable=not progress) as bar:
            for index, raw_path in enumerate(paths):
                path = Path(raw_path)
                digest = file_sha256(path)
                hashes.append(digest)
                image = None
                for view in range(views):
                    entry = self._entry(backbone, layers, read_key, view, seed, augmentation, digest)
                    cached = self._read(entry, layers)
                    if cached is not None:
                        tensors, entry_grids = cached
                        results[index][view] = tensors
                        grids.update(entry_grids)
                        hits += 1
                        continue
                    if image is None:
                        image = np.asarray(read(path), dtype=np.float32)
                    view_image = augment_view(
                        image, view=view, seed=seed, image_sha256=digest, augmentation=augmentation
                    )
                    pending.append((index, view, entry, view_image))
                    misses += 1
                    if len(pending) == batch_size:
                        flush()
                bar.update(1)
            if pending:
                flush()

        def stacked(name: str) -> torch.Tensor:
            return torch.stack([torch.stack([views_[v][name] for v in range(views)]) for views_ in results]).float()

        return CachedFeatures(
            embeddings=stacked("embedding"),
            patch_tokens={layer: stacked(f"tokens.{layer}") for layer in layers},
            grids={layer: grids[layer] for layer in layers},
            image_sha256=hashes,
            hits=hits,
            misses=misses,
        )

    # ------------------------------------------------------------------ entries
    def _entry(
        self,
        backbone: VisionLanguageBackbone,
        layers: tuple[str, ...],
        read_key: str,
        view: int,
        seed: int,
        augmentation: ViewAugmentation,
        image_sha256: str,
    ) -> _Entry:
        key = json.dumps(
            {
                "format": CACHE_FORMAT,
                "backbone": backbone.name,
                # weights that can change under one name (encoder:PATH) add their file's hash
                **({"weights": backbone.weights_sha256} if getattr(backbone, "weights_sha256", None) else {}),
                "dtype": str(backbone.dtype),
                "preprocess": asdict(backbone.preprocess),
                "layers": sorted(layers),
                "reader": read_key,
                "view": view,
                "augmentation": None if view == 0 else {"seed": seed, **asdict(augmentation)},
                "image_sha256": image_sha256,
            },
            sort_keys=True,
        )
        name = hashlib.sha256(key.encode("utf-8")).hexdigest()
        return _Entry(self.root / name[:2] / f"{name}.safetensors", key)

    @staticmethod
    def _write(entry: _Entry, tensors: dict[str, torch.Tensor], grids: dict[str, tuple[int, int]]) -> None:
        entry.path.parent.mkdir(parents=True, exist_ok=True)
        metadata = {"key": entry.key, "grids": json.dumps(grids), "sha256": tensors_sha256(tensors)}
        atomic_write(entry.path, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))

    @staticmethod
    def _read(
        entry: _Entry, layers: tuple[str, ...]
    ) -> tuple[dict[str, torch.Tensor], dict[str, tuple[int, int]]] | None:
        """The entry's tensors and grids, or None when absent, unreadable, not this key's, altered
        since it was written (checksum differs) or non-finite."""
        if not entry.path.is_file():
            return None
        try:
            with safe_open(str(entry.path), framework="pt") as handle:
                metadata = handle.metadata() or {}
                if metadata.get("key") != entry.key:
                    return None
                names = ["embedding", *(f"tokens.{layer}" for layer in layers)]
                if set(handle.keys()) != set(names):
                    return None
                tensors = {name: handle.get_tensor(name) for name in names}
                grids = {layer: tuple(hw) for layer, hw in json.loads(metadata["grids"]).items()}
                stored_sha256 = metadata["sha256"]
        except (SafetensorError, OSError, ValueError, KeyError, TypeError):
            return None
        if tensors_sha256(tensors) != stored_sha256:
            return None
        if not all(bool(torch.isfinite(tensor).all()) for tensor in tensors.values()):
            return None
        for layer in layers:
            h, w = grids.get(layer, (0, 0))
            if tensors[f"tokens.{layer}"].shape[0] != h * w:
                return None
        return tensors, grids
