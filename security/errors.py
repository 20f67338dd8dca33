"""The errors of :mod:`security`, one tree under :class:`SecurityError`.

- :class:`SecurityError`: the root; catch it to handle anything this package raises.

  - :class:`CertificateError`: a certificate could not be created, read or accepted.

Every error carries the structured fields that explain it (the file, the name, the reason), never key
material or passwords.
"""

from __future__ import annotations

__all__ = ["CertificateError", "SecurityError"]


class SecurityError(Exception):
    """Root of every error raised by :mod:`security`."""


class CertificateError(SecurityError):
    """A certificate could not be created, read or accepted."""

    def __init__(self, reason: str, *, subject: str | None = None) -> None:
        self.reason = reason
        self.subject = subject
        where = f" ({subject})" if subject else ""
        super().__init__(f"certificate{where}: {reason}")
