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
    name, a peer that never says HELLO, a session that cannot be resumed).

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

Errors carry structured fields; none ever holds payload bytes or key material.
"""

from __future__ import annotations

from collections.abc import Sequence

__all__ = [
    "ActorError",
    "AskTimeoutError",
    "ConnectionBrokenError",
    "ConnectionClosedError",
    "DigestMismatchError",
    "FrameTooLargeError",
    "HandshakeError",
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


class HandshakeError(TransportError):
    """TLS or session set-up failed; ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class ResumeRefusedError(HandshakeError):
    """The peer refused to resume a session; ``undelivered`` are the ids it never received."""

    def __init__(self, reason: str, undelivered: Sequence[int] = ()) -> None:
        self.undelivered = tuple(undelivered)
        super().__init__(reason)


class ConnectionClosedError(TransportError):
    """The connection or the bus is closed."""


class ConnectionBrokenError(TransportError):
    """The connection broke underneath the session."""


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
