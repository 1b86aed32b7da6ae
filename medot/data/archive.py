"""Import a zipped dataset into the data root, checked before anything lands there.

:func:`import_dataset_zip` refuses, with a message that says why: a file that is not a zip; more
than ``max_files`` members or more than ``max_bytes`` once uncompressed (counted from the central
directory *and* while writing, so a lying header cannot inflate past the limit); a member whose
name is absolute, holds ``..``, a drive letter or a NUL, or that is a symbolic link; a folder name
that is taken or not a plain name; and a content that follows none of the layouts of
:func:`medot.data.datasets.detect_layout`. It extracts into a hidden temporary folder inside the
data root and renames it into place only once every check passed, so a refused archive leaves
nothing behind. A zip holding one top-level folder is unwrapped (``busi.zip`` -> ``busi/<class>/``).
"""

from __future__ import annotations

import re
import shutil
import stat
import tempfile
import zipfile
from pathlib import Path, PurePosixPath

from medot.data.datasets import _LAYOUT_HELP, DetectedLayout, detect_layout
from medot.errors import DatasetLayoutError, PathNotAllowedError

DEFAULT_MAX_BYTES = 2 * 1024**3
DEFAULT_MAX_FILES = 200_000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
_CHUNK = 1024 * 1024


def _member_path(info: zipfile.ZipInfo, label: str) -> PurePosixPath | None:
    """The member's relative path, ``None`` for a folder entry; refuses escapes and links."""
    name = info.filename.replace("\\", "/")
    path = PurePosixPath(name)
    if "\x00" in name or path.is_absolute() or ".." in path.parts or re.match(r"^[A-Za-z]:", name):
        raise PathNotAllowedError(f"{label}: the member {info.filename!r} points outside the archive; refused")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise PathNotAllowedError(f"{label}: the member {info.filename!r} is a symbolic link; links are refused")
    if info.is_dir():
        return None
    return path


def _dataset_folder(folder: Path, label: str) -> tuple[Path, DetectedLayout]:
    """The extracted folder if it follows a layout, else its single sub-folder (a zipped folder;
    macOS ``__MACOSX`` ignored) if that does."""
    try:
        return folder, detect_layout(folder)
    except DatasetLayoutError:
        entries = [p for p in folder.iterdir() if p.name != "__MACOSX"]
        if len(entries) == 1 and entries[0].is_dir():
            try:
                return entries[0], detect_layout(entries[0])
            except DatasetLayoutError:
                pass
    raise DatasetLayoutError(f"{label}: the content does not follow a known dataset layout; {_LAYOUT_HELP}")


def import_dataset_zip(
    archive: str | Path,
    data_root: str | Path,
    name: str | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_files: int = DEFAULT_MAX_FILES,
) -> tuple[Path, DetectedLayout]:
    """Extract ``archive`` into ``data_root/<name>`` (default: the archive's stem) after the checks
    of the module docstring; returns the new folder and its detected layout."""
    archive, root = Path(archive), Path(data_root).expanduser().resolve()
    label = archive.name
    name = name or archive.stem
    if not _NAME.match(name):
        raise PathNotAllowedError(
            f"{name!r} is not a plain folder name; use letters, digits, '.', '_' or '-' (up to 100)"
        )
    target = root / name
    if target.exists():
        raise DatasetLayoutError(f"{target} already exists; choose another name or remove it first")
    if not zipfile.is_zipfile(archive):
        raise DatasetLayoutError(f"{label}: not a zip archive; zip the dataset folder and upload that")
    root.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(archive) as bundle:
        members = [(info, _member_path(info, label)) for info in bundle.infolist()]
        files = [(info, path) for info, path in members if path is not None]
        if len(files) > max_files:
            raise DatasetLayoutError(f"{label}: {len(files):,} files is more than the limit of {max_files:,}")
        declared = sum(info.file_size for info, _ in files)
        if declared > max_bytes:
            raise DatasetLayoutError(
                f"{label}: {declared:,} bytes uncompressed is more than the limit of {max_bytes:,} bytes"
            )
        staging = Path(tempfile.mkdtemp(prefix=".import-", dir=root))
        try:
            written = 0
            for info, path in files:
                destination = staging.joinpath(*path.parts)
                destination.parent.mkdir(parents=True, exist_ok=True)
                try:
                    with bundle.open(info) as source, destination.open("wb") as sink:
                        while chunk := source.read(_CHUNK):
                            written += len(chunk)
                            if written > max_bytes:
                                raise DatasetLayoutError(
                                    f"{label}: more than {max_bytes:,} bytes once uncompressed; refused"
                                )
                            sink.write(chunk)
                except (zipfile.BadZipFile, RuntimeError, NotImplementedError, EOFError) as exc:
                    raise DatasetLayoutError(
                        f"{label}: {info.filename!r} cannot be extracted ({exc}); re-create the zip without "
                        "encryption"
                    ) from exc
            content, _ = _dataset_folder(staging, label)
            content.rename(target)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    return target, detect_layout(target)
