"""Making a rename or a new file durable: fsync the folder that holds it."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

__all__ = ["fsync_directory"]


def fsync_directory(directory: Path) -> None:
    """Flush ``directory``'s entries to disk, so that a rename or creation in it survives a power
    cut. Does nothing where the platform or file system has no directory fsync."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
