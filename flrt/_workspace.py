"""A node's workspace belongs to one node at a time: an exclusive lock, held for the node's life.

Theory of operation
-------------------
Two servers started on one workspace (the same kit twice, the second with ``--port 0``, or a kit
whose project has no admin port) would both resume its jobs, write the same checkpoints, records
and registry, and append to the same log. So a node first takes :func:`lock_workspace`: an
exclusive, non-blocking ``flock`` on ``<workspace>/.flrt.lock``, before anything else in the
workspace is read or written, and holds it until it stops. A second node, in another process or in
the same one, is refused at once with a :class:`WorkspaceInUseError` naming the workspace and the
PID of the node that holds it.

The lock is the kernel's, on the open file: it ends when the holder closes it or dies, so a crash,
a ``kill -9`` or a power cut never leaves a stale lock for someone to remove by hand; the file
itself stays (removing it would race with the next node opening it). The file holds the holder's
PID, written once it has the lock, only to name it: a PID that cannot be written (a full disk) costs
the name, never the lock. (``flock`` is advisory and, on some network file systems, local to one
machine: a workspace should be on a local disk.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from pathlib import Path
from types import TracebackType
from typing import Self

from flrt.errors import WorkspaceInUseError

__all__ = ["LOCK_FILE", "WorkspaceInUseError", "WorkspaceLock", "lock_workspace"]

#: The lock file, in the workspace's top folder.
LOCK_FILE = ".flrt.lock"


class WorkspaceLock:
    """The lock on a workspace, held until :meth:`release` (or the end of a ``with`` block)."""

    def __init__(self, workspace: Path, fd: int) -> None:
        self.workspace = workspace
        self._fd: int | None = fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        """Let another node have the workspace (closing the file ends the lock). Idempotent."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def lock_workspace(workspace: Path) -> WorkspaceLock:
    """Create ``workspace`` if needed and lock it for this node (see the module docstring).

    Raises :class:`WorkspaceInUseError` if another node holds it, and :class:`OSError` if the
    folder or its lock file cannot be created or opened.
    """
    workspace.mkdir(parents=True, exist_ok=True)
    fd = os.open(workspace / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        pid = _holder(fd)
        os.close(fd)
        raise WorkspaceInUseError(workspace, pid) from None
    except BaseException:
        os.close(fd)
        raise
    with contextlib.suppress(OSError):  # the PID only names the holder: see the module docstring
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return WorkspaceLock(workspace, fd)


def _holder(fd: int) -> int | None:
    """The PID the holder wrote into the lock file, if it did (it may be writing it right now)."""
    try:
        text = os.pread(fd, 32, 0).decode("ascii").strip()
    except (OSError, UnicodeDecodeError):
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None
