"""Crash-safe file writes: the one implementation, for :mod:`security` and for :mod:`flrt`.

Theory of operation. A new file is written under a temporary name in its target's own folder
(``.<name>.<random>.tmp``, created 0600 by :func:`tempfile.mkstemp` and given its final mode with
``fchmod`` before any byte is written, so the umask never applies and a secret is never readable by
others, not even for a moment), flushed, fsynced, and renamed over the target with
:func:`os.replace`; then the folder is fsynced, so that the rename itself survives a power cut. A
reader sees the old file or the new one, never a torn one; after a crash the new file is complete
or absent. Whatever fails before the rename (a full disk, an I/O error, an exception or a
cancellation in the caller's block) removes the temporary file and leaves the old file as it was.

A failing folder fsync. Some file systems (certain FUSE and network file systems) have no fsync for
a folder and answer EINVAL or ENOTSUP: they cannot make a rename more durable than they already do,
so :func:`fsync_dir` takes those two answers as "nothing to do". Every other error (EIO, ENOSPC,
EDQUOT, ...) is raised: after a failed fsync the kernel may have dropped the folder's unwritten
entries, so the rename is not known to be durable, and a caller told otherwise may delete the only
other copy (a staging folder, an older checkpoint). Such an error comes after the rename: readers
already see the new file, which a crash may still undo.

This module is in :mod:`security`, the lower layer: :mod:`flrt` imports it (through
:mod:`flrt._durable`), and it imports nothing of :mod:`flrt` or :mod:`transport`.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

__all__ = [
    "atomic_file",
    "atomic_write",
    "fsync_dir",
    "naming",
    "remove_stale_copies",
    "replace_dir",
    "staging_dir",
]

#: What a file system without a folder fsync answers to one (ENOTSUP is EOPNOTSUPP on Linux).
_NO_FOLDER_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP})


@contextlib.contextmanager
def naming(path: Path) -> Iterator[None]:
    """Give an :class:`OSError` raised in the block the file name ``path``, when the call that raised
    it (``write``, ``fsync``, ``fchmod``) named none: "No space left on device: 'x'", not a bare
    "No space left on device"."""
    try:
        yield
    except OSError as exc:
        if exc.errno is None or exc.filename is not None:
            raise
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a rename or a creation inside ``directory`` durable.

    Does nothing on a file system without a folder fsync (EINVAL, ENOTSUP: see the module
    docstring). Raises :class:`OSError` naming ``directory`` otherwise: :class:`FileNotFoundError`,
    :class:`NotADirectoryError` or :class:`PermissionError` if it cannot be opened as a folder, the
    fsync's own error (EIO, ...) if it fails.
    """
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno not in _NO_FOLDER_FSYNC:
            raise OSError(exc.errno, exc.strerror, os.fspath(directory)) from exc
    finally:
        os.close(fd)


#: The temporary copy :func:`atomic_file` writes is ``.<name>.<random>`` plus this, beside the target.
_COPY_SUFFIX = ".tmp"


def remove_stale_copies(folder: Path, name: str = "*") -> None:
    """Remove the temporary copies of ``name`` (of every file, by default) that :func:`atomic_file`
    left in ``folder`` when a crash interrupted it, one more with each such crash. Only for a
    folder nobody else writes in meanwhile (a node's own workspace). Raises nothing."""
    with contextlib.suppress(OSError):
        for stale in folder.glob(f".{name}.*{_COPY_SUFFIX}"):
            with contextlib.suppress(OSError):
                stale.unlink()


@contextlib.contextmanager
def atomic_file(
    path: str | os.PathLike[str],
    *,
    mode: int = 0o644,
    durable: bool = True,
    sync_dir: bool = True,
) -> Iterator[BinaryIO]:
    """A new file, with permission bits ``mode`` (the umask does not apply), that replaces ``path``
    whole when the block ends, and not at all if the block raises.

    ``durable=False`` skips both fsyncs, for advisory data that a crash may lose (readers still
    never see a torn file). ``sync_dir=False`` skips only the folder's: the caller promises to
    :func:`fsync_dir` it once it has written all its files there (one folder sync, not one per
    file). The folder must exist.

    Raises :class:`ValueError` for a ``mode`` outside 0 to 0o7777, :class:`IsADirectoryError` if
    ``path`` is a folder, and :class:`OSError` naming the folder if no file can be created in it
    (missing, not a folder, not writable, full) or naming ``path`` if writing it fails; in all
    these cases, and whatever the block raises, the old file is left as it was and no temporary
    file remains. A failing folder fsync raises after the rename (see the module docstring).
    """
    target = Path(path)
    if not 0 <= mode <= 0o7777:
        raise ValueError(f"{target}: {mode:#o} is not a permission mode (0 to 0o7777)")
    if target.is_dir():
        raise IsADirectoryError(errno.EISDIR, "is a folder, not a file", str(target))
    folder = target.parent
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=_COPY_SUFFIX, dir=folder)
    except OSError as exc:  # it names the temporary file, which the caller never heard of
        raise OSError(exc.errno, exc.strerror, str(folder)) from exc
    out = os.fdopen(fd, "wb")
    try:
        with naming(target):
            os.fchmod(fd, mode)
        yield out
        with naming(target):
            out.flush()
            if durable:
                os.fsync(fd)
            out.close()
        os.replace(tmp, target)
    except BaseException:
        # The error that brought us here is the one to report: close the descriptor without
        # flushing what is still buffered (that flush would fail again, or write for nothing).
        with contextlib.suppress(OSError):
            out.raw.close()
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable and sync_dir:
        fsync_dir(folder)


def atomic_write(
    path: str | os.PathLike[str],
    data: bytes | bytearray | memoryview,
    *,
    mode: int = 0o644,
    durable: bool = True,
    sync_dir: bool = True,
    parents: bool = True,
) -> None:
    """Write ``data`` to ``path`` as :func:`atomic_file` does, creating its folder first (and the
    folder's parents) unless ``parents=False``.

    Raises :class:`TypeError` naming ``path`` if ``data`` is not bytes-like (before anything is
    created), and what :func:`atomic_file` raises.
    """
    target = Path(path)
    try:
        payload = memoryview(data)
    except TypeError:
        raise TypeError(
            f"{target}: the data to write must be bytes, not {type(data).__name__}"
        ) from None
    if parents:
        target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target, mode=mode, durable=durable, sync_dir=sync_dir) as out, naming(target):
        out.write(payload)


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
