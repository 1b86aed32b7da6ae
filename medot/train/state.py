"""Reproducibility and resumable state: seeding, and RNG / optimiser state as tensors + JSON.

A training-state checkpoint (see :mod:`medot.checkpoint`) may hold only tensors and JSON, never
pickles, so the random generators' states and ``optimizer.state_dict()["state"]`` are split into
named tensors (``rng.*``, ``optim.<param index>.<name>``) and JSON-able scalars.
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's and torch's global generators (torch's covers every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_generator(seed: int, epoch: int) -> torch.Generator:
    """A CPU generator for the data order of ``epoch``, a function of ``(seed, epoch)`` only, so a
    resumed run draws the same batches without saving any data-loader state."""
    state = np.random.SeedSequence([seed, epoch]).generate_state(2)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The global generators' states as ``(tensors, json)``."""
    version, python_state, gauss_next = random.getstate()
    _, numpy_keys, numpy_pos, has_gauss, cached_gaussian = np.random.get_state()
    tensors = {
        "rng.torch": torch.get_rng_state(),
        "rng.python": torch.tensor(python_state, dtype=torch.int64),
        "rng.numpy": torch.from_numpy(numpy_keys.astype(np.int64)),
    }
    if torch.cuda.is_available():
        for index, cuda_state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng.cuda.{index}"] = cuda_state
    meta = {
        "python": {"version": version, "gauss_next": gauss_next},
        "numpy": {"pos": int(numpy_pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached_gaussian)},
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states for the devices present in both)."""
    torch.set_rng_state(tensors["rng.torch"].cpu())
    python = meta["python"]
    random.setstate((python["version"], tuple(tensors["rng.python"].tolist()), python["gauss_next"]))
    numpy = meta["numpy"]
    keys = tensors["rng.numpy"].numpy().astype(np.uint32)
    np.random.set_state(("MT19937", keys, numpy["pos"], numpy["has_gauss"], numpy["cached_gaussian"]))
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            if f"rng.cuda.{index}" in tensors:
                torch.cuda.set_rng_state(tensors[f"rng.cuda.{index}"].cpu(), index)


def optimizer_state(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, dict[str, Any]]]:
    """Per-parameter optimiser state (momentum buffers, Adam moments, step counts) as
    ``({"optim.<i>.<name>": tensor}, {"<i>": {name: scalar}})``."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for index, entries in optimizer.state_dict()["state"].items():
        for name, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{index}.{name}"] = value
            else:
                scalars.setdefault(str(index), {})[name] = value
    return tensors, scalars


def load_optimizer_state(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], scalars: dict[str, dict[str, Any]]
) -> None:
    """Inverse of :func:`optimizer_state` for an optimiser built over the same parameter groups
    (the groups' hyper-parameters are the optimiser's own, not the saved ones)."""
    state: dict[int, dict[str, Any]] = {int(index): dict(entries) for index, entries in scalars.items()}
    for key, tensor in tensors.items():
        if key.startswith("optim."):
            index, name = key[len("optim.") :].split(".", 1)
            state.setdefault(int(index), {})[name] = tensor
    optimizer.load_state_dict({"state": state, "param_groups": optimizer.state_dict()["param_groups"]})
