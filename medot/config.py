"""Settings read from the environment, and confinement of user-typed paths.

=====================  ==========================================================  ====================
variable               meaning                                                     default
=====================  ==========================================================  ====================
``MEDOT_HOME``         caches (image features), the job registry, trained models   ``~/.medot``
``MEDOT_DATA_ROOT``    the only folder tree a user may point the app/CLI jobs at    ``$MEDOT_HOME/data``
``MEDOT_BACKBONE``     backbone used when none is chosen (see medot.backbones)      ``auto``
=====================  ==========================================================  ====================
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from medot.errors import PathNotAllowedError


@dataclass(frozen=True)
class Settings:
    home: Path
    data_root: Path
    backbone: str

    @classmethod
    def from_env(cls) -> Settings:
        home = Path(os.environ.get("MEDOT_HOME", Path.home() / ".medot")).expanduser()
        data_root = Path(os.environ.get("MEDOT_DATA_ROOT", home / "data")).expanduser()
        return cls(home=home.resolve(), data_root=data_root.resolve(), backbone=os.environ.get("MEDOT_BACKBONE", "auto"))

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def models_dir(self) -> Path:
        return self.home / "models"


def confine_path(user_path: str | os.PathLike, root: str | os.PathLike, *, outside: str | None = None) -> Path:
    """Resolve ``user_path`` (absolute, or relative to ``root``) and refuse it unless it lies inside
    ``root`` once symlinks and ``..`` are resolved. ``outside``: the refusal's text after the
    quoted path (default: that it is outside the data root, which is named)."""
    root = Path(root).expanduser().resolve()
    text = str(user_path).strip()
    if not text or "\x00" in text:
        raise PathNotAllowedError("empty or invalid path")
    candidate = Path(text).expanduser()
    if not candidate.is_absolute():
        candidate = root / candidate
    try:
        resolved = candidate.resolve()
    except (OSError, RuntimeError) as error:  # a name too long, a symlink loop
        reason = error.strerror if isinstance(error, OSError) and error.strerror else "symlink loop"
        raise PathNotAllowedError(f"{text[:80]!r}{'...' if len(text) > 80 else ''} cannot be used as a path: {reason.lower()}") from None
    if resolved != root and root not in resolved.parents:
        raise PathNotAllowedError(f"{text!r} " + (outside or f"is outside the data root {root}; put the data under it (MEDOT_DATA_ROOT)"))
    return resolved
