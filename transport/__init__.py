"""transport: a small, reliable async message bus over mutual-TLS streams.

It knows nothing of federated learning and nothing of any PKI policy: it takes an
:class:`ssl.SSLContext`, hands back the peer certificate, and moves messages and byte objects
reliably between named actors.
"""

from __future__ import annotations

from transport.errors import (
    ActorError,
    AskTimeoutError,
    CertificateProblem,
    ConnectionBrokenError,
    ConnectionClosedError,
    DigestMismatchError,
    FrameTooLargeError,
    HandshakeError,
    HandshakeFailure,
    LocalProtocolError,
    ObjectError,
    PeerTimeoutError,
    RemoteActorError,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
    UnknownActorError,
    UnknownFrameKindError,
    VersionError,
)

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
