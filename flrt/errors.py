"""The errors of :mod:`flrt`, one tree under :class:`FlrtError`.

- :class:`FlrtError`: the root; catch it to handle anything the runtime raises.

  - :class:`ConfigError`: a configuration file (project, job, node, policy) is wrong; it names the
    file, the key and what was expected.

Errors from :mod:`transport` and :mod:`security` keep their own trees; the runtime lets them through
unchanged so that callers can tell a broken connection from a bad job.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["ConfigError", "FlrtError"]


class FlrtError(Exception):
    """Root of every error raised by :mod:`flrt`."""


class ConfigError(FlrtError, ValueError):
    """A configuration file or value is wrong.

    ``path`` is the file (if any), ``key`` the dotted key inside it, ``expected`` what would have been
    accepted.
    """

    def __init__(
        self, reason: str, *, path: Path | str | None = None, key: str | None = None
    ) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.key = key
        where = ""
        if self.path is not None:
            where += f"{self.path}"
        if key is not None:
            where += f"{': ' if where else ''}{key}"
        super().__init__(f"{where}: {reason}" if where else reason)
