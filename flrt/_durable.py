"""Making a rename or a new file durable: fsync the folder that holds it; write a file whole.

The implementation is :mod:`security._atomic`, shared with :mod:`security` (the lower layer: flrt
imports it, it imports nothing of flrt); its docstring says how a write stays atomic and what a
failing folder fsync does. Here are flrt's defaults: files are created 0600 (owner only), as flrt's
always were, and the folder must already exist (a missing one is an error, never made up).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from security import _atomic
from security._atomic import fsync_dir as fsync_directory
from security._atomic import naming as naming_os_errors
from security._atomic import remove_stale_copies

__all__ = [
    "atomic_file",
    "atomic_write",
    "fsync_directory",
    "naming_os_errors",
    "remove_stale_copies",
]

#: Permission bits of the files flrt writes: job records, models, checkpoints' neighbours, downloads.
_FILE_MODE = 0o600


@contextlib.contextmanager
def atomic_file(path: Path, *, durable: bool = True) -> Iterator[BinaryIO]:
    """A new file that replaces ``path`` whole when the block ends, and not at all if it raises.

    Written under a temporary name in the same folder, then renamed over ``path``: readers see the
    old content or the new, never a part. ``durable`` also fsyncs the file and its folder, so the
    new content survives a power cut (not needed for advisory data that a crash may lose).
    Raises what :func:`security._atomic.atomic_file` raises (:class:`OSError` naming the file or
    folder); the old file is then left as it was.
    """
    with _atomic.atomic_file(path, mode=_FILE_MODE, durable=durable) as out:
        yield out


def atomic_write(path: Path, data: bytes, *, durable: bool = True) -> None:
    """Write ``data`` to ``path`` as :func:`atomic_file` does.

    Raises :class:`TypeError` if ``data`` is not bytes-like, and what :func:`atomic_file` raises.
    """
    _atomic.atomic_write(path, data, mode=_FILE_MODE, durable=durable, parents=False)
