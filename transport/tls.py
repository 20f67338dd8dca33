"""Mutual TLS for the bus: handshakes with a deadline, ALPN, and errors translated at the edge.

The bus takes ready :class:`ssl.SSLContext` objects (the caller builds them from its own PKI). On the
server the context must require a client certificate; this module checks it, adds the ALPN name of
the wire version, and turns every ssl, OS and anyio failure into a :class:`HandshakeError` or
:class:`ConnectionBrokenError` that says what went wrong.

Kinds of failure. A :class:`HandshakeError` made here carries a :class:`HandshakeFailure` read from
what the ssl module reports in codes, not prose: ``verify_code`` (OpenSSL's ``X509_V_ERR_*``
number) for a certificate that failed verification, and ``reason`` (OpenSSL's reason code name, such
as ``TLSV1_ALERT_UNKNOWN_CA``) for the rest. Both are identifiers OpenSSL keeps from version to
version; the messages around them are not. A connection that breaks after the TLS handshake but
before the session opens (under TLS 1.3 the server checks the client's certificate only then)
becomes a :class:`ConnectionBrokenError` (:func:`connection_broken`) that keeps the same kind, and
:func:`handshake_error` takes it from there: no text is ever read back.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from transport._sslsocket import SSLSocketStream
from transport.errors import (
    CertificateProblem,
    ConnectionBrokenError,
    HandshakeError,
    HandshakeFailure,
    LocalProtocolError,
    PeerTimeoutError,
)

__all__ = [
    "ALPN_PROTOCOL",
    "accept_tls",
    "client_handshake",
    "connection_broken",
    "describe_failure",
    "dial_tls",
    "handshake_error",
    "peer_certificate",
    "prepare_client_context",
    "prepare_server_context",
    "server_handshake",
    "tls_failure_reason",
]

#: The ALPN protocol name; it names the wire version so that a future peer can refuse an old one.
ALPN_PROTOCOL = "flrt/1"


def prepare_server_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """Check the server context demands client certificates, and set ALPN. Returns it."""
    if context.verify_mode is not ssl.CERT_REQUIRED:
        raise LocalProtocolError("the server context must require client certificates")
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise LocalProtocolError("TLS 1.2 is the lowest version the bus accepts")
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


def prepare_client_context(context: ssl.SSLContext) -> ssl.SSLContext:
    """Check the client context verifies the server, and set ALPN. Returns it."""
    if context.verify_mode is not ssl.CERT_REQUIRED:
        raise LocalProtocolError("the client context must verify the server certificate")
    if context.minimum_version < ssl.TLSVersion.TLSv1_2:
        raise LocalProtocolError("TLS 1.2 is the lowest version the bus accepts")
    context.set_alpn_protocols([ALPN_PROTOCOL])
    return context


_TLS_FAILURE = "TLS failure: "
_VERIFY_FAILED = "certificate verification failed: "


def tls_failure_reason(exc: BaseException) -> str:
    """A one-line reason for a TLS failure, without secrets."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"{_VERIFY_FAILED}{exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return f"{_TLS_FAILURE}{reason.replace('_', ' ').lower()}"
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | OSError):
        return "connection closed during the TLS handshake"
    return f"{_TLS_FAILURE}{type(exc).__name__}"


# -- kinds of failure ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Kind:
    kind: HandshakeFailure
    certificate: CertificateProblem | None = None
    alert: str | None = None


_UNKNOWN = _Kind(HandshakeFailure.UNKNOWN)
_TRANSIENT = _Kind(HandshakeFailure.TRANSIENT)

#: OpenSSL's X509_V_ERR_* codes, grouped by what they mean for the operator.
_CERTIFICATE_PROBLEMS: dict[int, CertificateProblem] = {
    2: CertificateProblem.FOREIGN_CA,  # UNABLE_TO_GET_ISSUER_CERT
    18: CertificateProblem.FOREIGN_CA,  # DEPTH_ZERO_SELF_SIGNED_CERT
    19: CertificateProblem.FOREIGN_CA,  # SELF_SIGNED_CERT_IN_CHAIN
    20: CertificateProblem.FOREIGN_CA,  # UNABLE_TO_GET_ISSUER_CERT_LOCALLY
    21: CertificateProblem.FOREIGN_CA,  # UNABLE_TO_VERIFY_LEAF_SIGNATURE
    9: CertificateProblem.EXPIRED,  # CERT_NOT_YET_VALID
    10: CertificateProblem.EXPIRED,  # CERT_HAS_EXPIRED
    23: CertificateProblem.REVOKED,  # CERT_REVOKED
    62: CertificateProblem.NAME_MISMATCH,  # HOSTNAME_MISMATCH
    63: CertificateProblem.NAME_MISMATCH,  # EMAIL_MISMATCH
    64: CertificateProblem.NAME_MISMATCH,  # IP_ADDRESS_MISMATCH
}

#: OpenSSL reason codes of a peer that does not speak TLS, or not the TLS this side speaks.
_NOT_OUR_TLS = frozenset(
    {
        "WRONG_VERSION_NUMBER",  # a plain-text service answered
        "HTTP_REQUEST",
        "HTTPS_PROXY_REQUEST",
        "PACKET_LENGTH_TOO_LONG",
        "RECORD_LENGTH_MISMATCH",
        "UNKNOWN_PROTOCOL",
        "UNSUPPORTED_PROTOCOL",
        "VERSION_TOO_LOW",
        "VERSION_TOO_HIGH",
        "NO_PROTOCOLS_AVAILABLE",
        "NO_SHARED_CIPHER",
        "NO_APPLICATION_PROTOCOL",
    }
)

#: OpenSSL reason codes of a connection that ended under the handshake.
_CUT_SHORT = frozenset({"UNEXPECTED_EOF_WHILE_READING", "SHUTDOWN_WHILE_IN_INIT"})

#: The prefixes of OpenSSL's reason codes for an alert received from the peer.
_ALERT_PREFIXES = ("SSLV3_ALERT_", "TLSV1_ALERT_", "TLSV13_ALERT_")


def _kind_of_reason_code(code: str) -> _Kind:
    """The kind of an ssl error from its OpenSSL reason code (``TLSV1_ALERT_UNKNOWN_CA``)."""
    for prefix in _ALERT_PREFIXES:
        if code.startswith(prefix):
            return _Kind(HandshakeFailure.TLS_ALERT, alert=code.removeprefix(prefix).lower())
    if code in _NOT_OUR_TLS:
        return _Kind(HandshakeFailure.NOT_FLRT)
    if code == "PEER_DID_NOT_RETURN_A_CERTIFICATE":
        return _Kind(HandshakeFailure.PEER_CERTIFICATE, CertificateProblem.MISSING)
    if code in _CUT_SHORT:
        return _TRANSIENT
    return _UNKNOWN


def _kind_of(cause: BaseException | None) -> _Kind:
    if isinstance(cause, HandshakeError):
        return _Kind(cause.kind, cause.certificate, cause.alert)
    if isinstance(cause, ConnectionBrokenError):
        return _Kind(cause.kind, cause.certificate, cause.alert)
    if isinstance(cause, PeerTimeoutError | TimeoutError):
        return _TRANSIENT
    if isinstance(cause, ssl.SSLCertVerificationError):
        problem = _CERTIFICATE_PROBLEMS.get(cause.verify_code, CertificateProblem.OTHER)
        return _Kind(HandshakeFailure.PEER_CERTIFICATE, problem)
    if isinstance(cause, ssl.SSLEOFError | ssl.SSLZeroReturnError | ssl.SSLSyscallError):
        return _TRANSIENT
    if isinstance(cause, ssl.SSLError):
        return _kind_of_reason_code(cause.reason) if cause.reason else _UNKNOWN
    if isinstance(cause, anyio.BrokenResourceError) and cause.__cause__ is not None:
        return _kind_of(cause.__cause__)  # anyio wraps the ssl or OS error it met
    if isinstance(cause, anyio.EndOfStream | anyio.BrokenResourceError | OSError):
        return _TRANSIENT
    return _UNKNOWN


def handshake_error(reason: str, cause: BaseException | None) -> HandshakeError:
    """A :class:`HandshakeError` saying ``reason``, of the kind that ``cause`` shows.

    ``cause`` is what went wrong underneath: an ssl, OS or anyio error, or a transport error (a
    :class:`HandshakeError` or :class:`ConnectionBrokenError` lends its kind). Anything not
    understood gives :attr:`HandshakeFailure.UNKNOWN`.
    """
    found = _kind_of(cause)
    return HandshakeError(reason, kind=found.kind, certificate=found.certificate, alert=found.alert)


def connection_broken(exc: BaseException) -> ConnectionBrokenError:
    """The :class:`ConnectionBrokenError` for ``exc`` (an ssl, OS or anyio error met on an open
    connection): :func:`describe_failure`'s text, and the kind of failure ``exc`` shows (kept as
    fields: the error outlives the connection, and ``exc``'s traceback would keep its frames)."""
    found = _kind_of(exc)
    kind = HandshakeFailure.TRANSIENT if found.kind is HandshakeFailure.UNKNOWN else found.kind
    return ConnectionBrokenError(
        describe_failure(exc), kind=kind, certificate=found.certificate, alert=found.alert
    )


def describe_failure(exc: BaseException) -> str:
    """A one-line reason for a broken connection, looking through anyio's wrapping of ssl errors."""
    cause = exc.__cause__ if isinstance(exc, anyio.BrokenResourceError) else None
    if isinstance(cause, ssl.SSLError):
        return tls_failure_reason(cause)
    if isinstance(exc, ssl.SSLError):
        return tls_failure_reason(exc)
    if isinstance(exc, anyio.EndOfStream):
        return "peer closed the connection"
    if isinstance(exc, anyio.ClosedResourceError):
        return "connection closed locally"
    if isinstance(exc, OSError):
        return f"connection broke: {exc.strerror or type(exc).__name__}"
    if isinstance(exc, anyio.BrokenResourceError):
        return "connection broke"
    return f"connection failed: {type(exc).__name__}"


def _check_alpn(stream: anyio.TypedAttributeProvider) -> None:
    chosen = stream.extra(TLSAttribute.alpn_protocol)
    if chosen != ALPN_PROTOCOL:
        raise HandshakeError(
            f"peer does not speak {ALPN_PROTOCOL} (ALPN: {chosen!r})",
            kind=HandshakeFailure.NOT_FLRT,
        )


_HANDSHAKE_FAILURES = (ssl.SSLError, OSError, anyio.EndOfStream, anyio.BrokenResourceError)
_S = TypeVar("_S", bound=anyio.abc.ByteStream)


async def _handshake(start: Callable[[], Awaitable[_S]], timeout: float) -> _S:
    """Run a TLS handshake within ``timeout``, translate its failures, and check ALPN."""
    try:
        with anyio.fail_after(timeout):
            stream = await start()
    except TimeoutError:
        raise HandshakeError(
            f"TLS handshake not completed within {timeout:g} s", kind=HandshakeFailure.TRANSIENT
        ) from None
    except _HANDSHAKE_FAILURES as exc:
        raise handshake_error(tls_failure_reason(exc), exc) from None
    try:
        _check_alpn(stream)
    except HandshakeError:
        await stream.aclose()
        raise
    return stream


async def server_handshake(
    stream: anyio.abc.AnyByteStream, context: ssl.SSLContext, timeout: float
) -> TLSStream:
    """Server side of TLS over any byte stream (memory streams in tests). Raises
    :class:`HandshakeError`."""
    return await _handshake(
        lambda: TLSStream.wrap(
            stream, server_side=True, ssl_context=context, standard_compatible=False
        ),
        timeout,
    )


async def client_handshake(
    stream: anyio.abc.AnyByteStream, context: ssl.SSLContext, server_hostname: str, timeout: float
) -> TLSStream:
    """Client side of TLS over any byte stream. Raises :class:`HandshakeError`."""
    return await _handshake(
        lambda: TLSStream.wrap(
            stream,
            server_side=False,
            hostname=server_hostname,
            ssl_context=context,
            standard_compatible=False,
        ),
        timeout,
    )


def peer_certificate(stream: anyio.TypedAttributeProvider) -> bytes:
    """The peer's certificate (DER). Raises :class:`HandshakeError` if it sent none."""
    der: bytes | None = stream.extra(TLSAttribute.peer_certificate_binary, None)
    if not der:
        raise HandshakeError(
            "peer presented no certificate",
            kind=HandshakeFailure.PEER_CERTIFICATE,
            certificate=CertificateProblem.MISSING,
        )
    return der


async def accept_tls(
    raw: socket.socket, context: ssl.SSLContext, timeout: float
) -> SSLSocketStream:
    """Server side of TLS on an accepted socket, within ``timeout``. Raises :class:`HandshakeError`.

    The socket is closed on failure.
    """
    return await _handshake(
        lambda: SSLSocketStream.handshake(raw, context, server_side=True), timeout
    )


async def dial_tls(
    host: str, port: int, context: ssl.SSLContext, server_hostname: str, timeout: float
) -> SSLSocketStream:
    """Connect to ``host:port`` and run the client side of TLS, within ``timeout`` each.

    Raises :class:`ConnectionBrokenError` (cannot connect) or :class:`HandshakeError`.
    """
    try:
        with anyio.fail_after(timeout):
            raw = await SSLSocketStream.open_tcp(host, port)
    except TimeoutError:
        raise ConnectionBrokenError(f"connecting to {host}:{port} timed out") from None
    except OSError as exc:
        reason = exc.strerror or str(exc)
        raise ConnectionBrokenError(f"cannot connect to {host}:{port}: {reason}") from None
    return await _handshake(
        lambda: SSLSocketStream.handshake(
            raw, context, server_side=False, server_hostname=server_hostname
        ),
        timeout,
    )
