"""The errors of :mod:`security`, one tree under :class:`SecurityError`.

- :class:`SecurityError`: the root; catch it to handle anything this package raises.

  - :class:`CertificateError`: a certificate, key or CRL could not be created, read or accepted.
  - :class:`ProjectFileError` (also a ``ValueError``): ``project.toml`` is wrong; names the file,
    the dotted key and what was expected.
  - :class:`WorkspaceError`: a provisioning workspace is missing, damaged, busy or inconsistent
    with the project file; names the workspace and what is wrong.
  - :class:`KitError`: a startup kit cannot be used.

    - :class:`KitTamperedError`: a file of the signed part was changed, added or removed, or the
      signature does not verify; names the file.
    - :class:`KitValidityError`: the kit's certificate is expired or not yet valid.

  - :class:`SealError`: a sealed kit archive cannot be made or opened.

    - :class:`SealFormatError`: the bytes are not a sealed archive this version can read.
    - :class:`SealPasswordError`: the password is wrong, or the archive was damaged (authenticated
      encryption cannot tell the two apart), or a new password is unacceptable.

  - :class:`AdmissionError`: the server refuses a peer after the TLS handshake; ``reason`` says why
    (an :class:`AdmissionReason`). One subclass per reason, so callers may catch the ones they
    treat differently: :class:`UnknownIssuerError`, :class:`CertificateExpiredError`,
    :class:`CertificateNotYetValidError`, :class:`CertificateRevokedError`,
    :class:`UnknownParticipantError`, :class:`RoleMismatchError`,
    :class:`MalformedPeerCertificateError`.

Local misuse (a bad argument) raises the builtin ``ValueError`` or ``TypeError``. What a peer or a
file on disk got wrong raises one of the above. Every error carries the structured fields that explain
it (the file, the name, the reason), never key material or passwords. Every error survives
``pickle`` with its message and its fields (see :meth:`SecurityError.__reduce__`).
"""

from __future__ import annotations

import datetime as dt
import enum
from pathlib import Path
from typing import Any

__all__ = [
    "AdmissionError",
    "AdmissionReason",
    "CertificateError",
    "CertificateExpiredError",
    "CertificateNotYetValidError",
    "CertificateRevokedError",
    "KitError",
    "KitTamperedError",
    "KitValidityError",
    "MalformedPeerCertificateError",
    "ProjectFileError",
    "RoleMismatchError",
    "SealError",
    "SealFormatError",
    "SealPasswordError",
    "SecurityError",
    "UnknownIssuerError",
    "UnknownParticipantError",
    "WorkspaceError",
]


class SecurityError(Exception):
    """Root of every error raised by :mod:`security`."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduction calls the class with ``args`` (the message), which a
        # constructor with other parameters refuses: make the error without calling it, then
        # restore ``args`` and the fields as state (BaseException.__setstate__ sets each).
        return type(self).__new__, (type(self),), {**self.__dict__, "args": self.args}


class CertificateError(SecurityError):
    """A certificate, key or CRL could not be created, read or accepted."""

    def __init__(self, reason: str, *, subject: str | None = None) -> None:
        self.reason = reason
        self.subject = subject
        where = f" ({subject})" if subject else ""
        super().__init__(f"certificate{where}: {reason}")


class ProjectFileError(SecurityError, ValueError):
    """``project.toml`` is wrong: ``path`` is the file, ``key`` the dotted key, ``reason`` what was expected."""

    def __init__(self, path: Path | str, key: str | None, reason: str) -> None:
        self.path = Path(path)
        self.key = key
        self.reason = reason
        where = f"{self.path}: {key}" if key else f"{self.path}"
        super().__init__(f"{where}: {reason}")


class WorkspaceError(SecurityError):
    """A provisioning workspace cannot be used as asked; nothing in it was changed."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"workspace {self.path}: {reason}")


class KitError(SecurityError):
    """A startup kit cannot be used: ``path`` is the kit folder."""

    def __init__(self, path: Path | str, reason: str) -> None:
        self.path = Path(path)
        self.reason = reason
        super().__init__(f"kit {self.path}: {reason}")


class KitTamperedError(KitError):
    """A file of the kit's signed part does not match the CA-signed manifest.

    ``file`` is the kit-relative path; ``change`` is ``"changed"``, ``"added"``, ``"removed"``,
    ``"special"`` (a link or device where a file belongs) or ``"signature"`` (the manifest, or a
    separately signed trust file, does not verify against the project CA).
    """

    def __init__(self, path: Path | str, file: str, change: str) -> None:
        self.file = file
        self.change = change
        what = {
            "changed": "was changed after the kit was signed",
            "added": "was added after the kit was signed",
            "removed": "was removed after the kit was signed",
            "signature": "does not carry a valid signature of the project CA",
            "special": "is not a regular file (links and devices are refused)",
        }.get(change, change)
        # What to do: the kit cannot be mended in place, only issued again.
        super().__init__(
            path,
            f"{file} {what}; do not use this kit: ask the project's Lead IT for a new one"
            " (or restore this one from the sealed archive you received)",
        )


class KitValidityError(KitError):
    """The kit's certificate is not valid at ``now``: ``state`` is ``"expired"`` or ``"not yet valid"``."""

    def __init__(
        self,
        path: Path | str,
        *,
        state: str,
        not_before: dt.datetime,
        not_after: dt.datetime,
        now: dt.datetime,
    ) -> None:
        self.state = state
        self.not_before = not_before
        self.not_after = not_after
        self.now = now
        window = f"valid {not_before:%Y-%m-%d %H:%M} to {not_after:%Y-%m-%d %H:%M} UTC"
        super().__init__(path, f"the certificate is {state} ({window})")


class SealError(SecurityError):
    """A sealed kit archive cannot be made or opened."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(f"sealed kit: {reason}")


class SealFormatError(SealError):
    """The bytes are not a sealed kit archive that this version of flrt can read."""


class SealPasswordError(SealError):
    """Wrong password or damaged archive (AEAD cannot tell them apart), or an unacceptable password."""


class AdmissionReason(enum.Enum):
    """Why the server refused a peer."""

    MALFORMED = "malformed"
    UNKNOWN_ISSUER = "unknown_issuer"
    EXPIRED = "expired"
    NOT_YET_VALID = "not_yet_valid"
    REVOKED = "revoked"
    UNKNOWN_PARTICIPANT = "unknown_participant"
    ROLE_MISMATCH = "role_mismatch"


class AdmissionError(SecurityError):
    """The server refuses a peer; ``reason`` says why and ``subject`` is the certificate's subject."""

    reason_code: AdmissionReason = AdmissionReason.MALFORMED

    def __init__(self, detail: str, *, subject: str | None = None) -> None:
        self.reason = self.reason_code
        self.detail = detail
        self.subject = subject
        who = f" {subject}" if subject else ""
        super().__init__(f"peer{who} refused ({self.reason.value}): {detail}")


class MalformedPeerCertificateError(AdmissionError):
    """The peer's certificate cannot be parsed or names no complete identity."""

    reason_code = AdmissionReason.MALFORMED


class UnknownIssuerError(AdmissionError):
    """The peer's certificate was not issued by the project CA."""

    reason_code = AdmissionReason.UNKNOWN_ISSUER


class CertificateExpiredError(AdmissionError):
    """The peer's certificate has expired."""

    reason_code = AdmissionReason.EXPIRED


class CertificateNotYetValidError(AdmissionError):
    """The peer's certificate is not valid yet."""

    reason_code = AdmissionReason.NOT_YET_VALID


class CertificateRevokedError(AdmissionError):
    """The peer's certificate is on the project CA's revocation list."""

    reason_code = AdmissionReason.REVOKED


class UnknownParticipantError(AdmissionError):
    """The certificate names a participant the project does not know."""

    reason_code = AdmissionReason.UNKNOWN_PARTICIPANT


class RoleMismatchError(AdmissionError):
    """The certificate's role is not the registered one, or not one accepted on this endpoint."""

    reason_code = AdmissionReason.ROLE_MISMATCH
