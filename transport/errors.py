"""The errors of :mod:`transport`, one tree under :class:`TransportError`.

- :class:`TransportError`: the root; nothing else ever leaves the package (anyio, ssl and OS errors
  are translated at the edge).

  - :class:`LocalProtocolError` (also :class:`RuntimeError`): *you* misused the API, for example
    sent on a closed session or an object larger than allowed.
  - :class:`RemoteProtocolError`: the *peer* sent something this side cannot accept. It ends that
    one connection. Subclasses say what:

    - :class:`FrameTooLargeError`: a frame's declared length is over the limit (checked on the
      prefix, before any body is buffered).
    - :class:`UnknownFrameKindError`: a frame kind this version does not know.
    - :class:`VersionError`: a frame of another wire version.

  - :class:`HandshakeError`: TLS or session set-up failed (wrong CA, no client certificate, wrong
    name, a peer that never says HELLO, a session that cannot be resumed). ``kind``, a
    :class:`HandshakeFailure`, says what failed where the transport understood it, so that a caller
    can tell "dial again" from "this will never work" without reading the text; for a certificate
    that failed verification ``certificate`` (a :class:`CertificateProblem`) says why, for a TLS
    alert ``alert`` names it.

    - :class:`ResumeRefusedError`: the server would not resume the named session; ``undelivered``
      lists the message ids the caller had sent that never reached the peer.

  - :class:`ConnectionClosedError`: the connection or bus was closed (cleanly, by either side).
  - :class:`ConnectionBrokenError`: the connection broke (reset, EOF in the middle of a frame).
  - :class:`PeerTimeoutError` (also :class:`TimeoutError`): nothing arrived from the peer for the
    liveness interval.
  - :class:`AskTimeoutError` (also :class:`TimeoutError`): no reply to an ``ask`` within its
    deadline.
  - :class:`ActorError`: an actor-level failure reported by the peer.

    - :class:`UnknownActorError`: no actor of that name at that node.
    - :class:`RemoteActorError`: the actor raised; ``error_type`` and ``detail`` say what.

  - :class:`ObjectError`: a streamed object failed.

    - :class:`DigestMismatchError`: the bytes received do not hash to the announced digest.

Errors carry structured fields; none ever holds payload bytes or key material. Every error
survives ``pickle`` with its message and its fields (see :meth:`TransportError.__reduce__`).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any

__all__ = [
    "ActorError",
    "AskTimeoutError",
    "CertificateProblem",
    "ConnectionBrokenError",
    "ConnectionClosedError",
    "DigestMismatchError",
    "FrameTooLargeError",
    "HandshakeError",
    "HandshakeFailure",
    "LocalProtocolError",
    "ObjectError",
    "PeerTimeoutError",
    "RemoteActorError",
    "RemoteProtocolError",
    "ResumeRefusedError",
    "TransportError",
    "UnknownActorError",
    "UnknownFrameKindError",
    "VersionError",
]


class TransportError(Exception):
    """Root of every error raised by :mod:`transport`."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduction calls the class with ``args`` (the message), which a
        # constructor with other parameters refuses: make the error without calling it, then
        # restore ``args`` and the fields as state (BaseException.__setstate__ sets each).
        return type(self).__new__, (type(self),), {**self.__dict__, "args": self.args}


class LocalProtocolError(TransportError, RuntimeError):
    """The caller misused the API."""


class RemoteProtocolError(TransportError):
    """The peer sent something that breaks the protocol; the connection is ended."""


class FrameTooLargeError(RemoteProtocolError):
    """A frame declared a length above the configured limit."""

    def __init__(self, size: int, limit: int) -> None:
        self.size = size
        self.limit = limit
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")


class UnknownFrameKindError(RemoteProtocolError):
    """A frame kind that this protocol version does not define."""

    def __init__(self, kind: int) -> None:
        self.kind = kind
        super().__init__(f"unknown frame kind {kind}")


class VersionError(RemoteProtocolError):
    """A frame of a wire version this side does not speak."""

    def __init__(self, version: int, supported: int) -> None:
        self.version = version
        self.supported = supported
        super().__init__(f"wire version {version} is not supported (this side speaks {supported})")


class HandshakeFailure(enum.Enum):
    """What kind of failure a :class:`HandshakeError` is, as far as the transport can tell.

    The kind is set where the failure is understood (the ssl error's codes, the peer's REFUSE frame,
    the ALPN answer), never read back from the text, which is for people and may change wording.
    """

    #: Not classified (the default): nothing is known beyond the text.
    UNKNOWN = "unknown"
    #: The connection failed underneath the handshake: reset, closed early, or too slow. Dialling
    #: again may succeed.
    TRANSIENT = "transient"
    #: The peer's certificate failed this side's verification (or the peer sent none);
    #: :attr:`HandshakeError.certificate` says why.
    PEER_CERTIFICATE = "peer_certificate"
    #: The peer ended the TLS handshake with an alert: it refused this side's certificate (unknown
    #: CA, revoked, expired) or the connection's parameters; :attr:`HandshakeError.alert` names it.
    TLS_ALERT = "tls_alert"
    #: The peer's flrt layer refused this side's identity or role (a REFUSE frame at HELLO).
    IDENTITY_REFUSED = "identity_refused"
    #: The peer does not speak this side's flrt protocol: not TLS, another TLS version, another
    #: ALPN name, a HELLO it cannot read.
    NOT_FLRT = "not_flrt"
    #: The peer would not resume the session named in HELLO (a new session may be opened).
    RESUME_REFUSED = "resume_refused"
    #: The peer holds a connected session for this side's identity already: another process
    #: with the same identity (kit)? Dialling again succeeds once that connection ends.
    DUPLICATE = "duplicate"


class CertificateProblem(enum.Enum):
    """Why a peer's certificate failed verification (with :attr:`HandshakeFailure.PEER_CERTIFICATE`)."""

    #: The chain does not lead to a CA this side trusts: a certificate from another CA.
    FOREIGN_CA = "foreign_ca"
    #: Expired, or not valid yet.
    EXPIRED = "expired"
    #: Not issued for the name or address dialled.
    NAME_MISMATCH = "name_mismatch"
    #: Revoked by its CA.
    REVOKED = "revoked"
    #: The peer presented no certificate.
    MISSING = "missing"
    #: Any other verification failure.
    OTHER = "other"


class _ClassifiedFailure(TransportError):
    """A failure with a :class:`HandshakeFailure` kind (see :class:`HandshakeError`)."""

    _DEFAULT_KIND: HandshakeFailure

    def __init__(
        self,
        reason: str,
        *,
        kind: HandshakeFailure | None = None,
        certificate: CertificateProblem | None = None,
        alert: str | None = None,
    ) -> None:
        self.reason = reason
        self.kind = kind if kind is not None else self._DEFAULT_KIND
        self.certificate = certificate
        self.alert = alert
        super().__init__(reason)


class HandshakeError(_ClassifiedFailure):
    """TLS or session set-up failed; ``reason`` says why, ``kind`` what kind of failure it is.

    ``certificate`` is set with :attr:`HandshakeFailure.PEER_CERTIFICATE`, ``alert`` (the alert's
    name in RFC 8446, such as ``"unknown_ca"``) with :attr:`HandshakeFailure.TLS_ALERT`, when known.
    ``str()`` is ``reason``; the structured fields survive pickling.
    """

    _DEFAULT_KIND = HandshakeFailure.UNKNOWN


class ResumeRefusedError(HandshakeError):
    """The peer refused to resume a session; ``undelivered`` are the ids it never received.

    Its ``kind`` is always :attr:`HandshakeFailure.RESUME_REFUSED`.
    """

    def __init__(self, reason: str, undelivered: Sequence[int] = ()) -> None:
        self.undelivered = tuple(undelivered)
        super().__init__(reason, kind=HandshakeFailure.RESUME_REFUSED)


class ConnectionClosedError(TransportError):
    """The connection or the bus is closed."""


class ConnectionBrokenError(_ClassifiedFailure):
    """The connection broke underneath the session; ``reason`` says how.

    ``kind`` (with ``certificate`` and ``alert``) is what the failure means if it ends a handshake,
    as :class:`HandshakeError` has them: a connection that merely broke is
    :attr:`HandshakeFailure.TRANSIENT`, one the peer ended with a TLS alert (a TLS 1.3 server
    refusing the client's certificate does so after the client's handshake completed) is
    :attr:`HandshakeFailure.TLS_ALERT`.
    """

    _DEFAULT_KIND = HandshakeFailure.TRANSIENT


class PeerTimeoutError(TransportError, TimeoutError):
    """Nothing arrived from the peer within the liveness interval."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        super().__init__(f"peer silent for more than {interval:g} s")


class AskTimeoutError(TransportError, TimeoutError):
    """An ``ask`` got no reply within its deadline."""

    def __init__(self, address: str, deadline: float) -> None:
        self.address = address
        self.deadline = deadline
        super().__init__(f"no reply from {address} within {deadline:g} s")


class ActorError(TransportError):
    """An actor-level failure reported by the peer."""


class UnknownActorError(ActorError):
    """No actor of that name is registered at that node."""

    def __init__(self, address: str) -> None:
        self.address = address
        super().__init__(f"no actor at {address}")


class RemoteActorError(ActorError):
    """The remote actor raised while handling the message."""

    def __init__(self, address: str, error_type: str, detail: str) -> None:
        self.address = address
        self.error_type = error_type
        self.detail = detail
        super().__init__(f"actor {address} failed: {error_type}: {detail}")


class ObjectError(TransportError):
    """A streamed object failed."""


class DigestMismatchError(ObjectError):
    """The received bytes do not hash to the announced SHA-256 digest."""

    def __init__(self, object_id: int) -> None:
        self.object_id = object_id
        super().__init__(f"object {object_id}: SHA-256 digest mismatch")
