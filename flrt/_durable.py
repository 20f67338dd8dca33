"""Making a rename or a new file durable: fsync the folder that holds it; write a file whole."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = ["atomic_file", "atomic_write", "fsync_directory"]


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename or creation in it survives a power
    cut. Does nothing where the platform or file system has no directory fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


@contextlib.contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A new file that replaces ``path`` whole when the block ends, and not at all if it raises.

    Written under a temporary name in the same folder, then renamed over ``path``: readers see the
    old content or the new, never a part. ``durable`` also fsyncs the file and its folder, so the
    new content survives a power cut (not needed for advisory data that a crash may lose)."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            yield out
            out.flush()
            if durable:
                os.fsync(out.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_directory(path.parent)


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` as :func:`atomic_file` does."""
    with atomic_file(path, durable=durable) as out:
        out.write(data)
