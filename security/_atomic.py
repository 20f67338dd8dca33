"""Crash-safe file writes: temporary file in the same folder, flush, fsync, rename, fsync the folder.

A reader sees either the old file or the new one, never a torn one; after a crash the new file is
either complete or absent. Secret files are created with mode 0600 from the start (never written
world-readable and chmod-ed afterwards).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

__all__ = ["atomic_write", "fsync_dir", "replace_dir", "staging_dir"]


def fsync_dir(path: Path) -> None:
    """Make a rename or creation inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: Path, data: bytes, *, mode: int = 0o644, sync_dir: bool = True) -> None:
    """Write ``data`` to ``path`` atomically with permission bits ``mode`` (umask does not apply).

    With ``sync_dir=False`` the caller promises to :func:`fsync_dir` the folder itself once it has
    written all its files (one folder sync instead of one per file).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if sync_dir:
        fsync_dir(path.parent)


@contextlib.contextmanager
def staging_dir(parent: Path, prefix: str) -> Iterator[Path]:
    """A private (0700) temporary folder inside ``parent``, removed on exit unless it was moved away."""
    parent.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def replace_dir(source: Path, target: Path) -> None:
    """Move the finished folder ``source`` to ``target``, which must not exist (or be an empty folder)."""
    os.rename(source, target)  # rename(2) replaces an empty folder and refuses a non-empty one
    fsync_dir(target.parent)
