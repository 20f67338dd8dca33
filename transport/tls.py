"""Mutual TLS for the bus: handshakes with a deadline, ALPN, and errors translated at the edge.

The bus takes ready :class:`ssl.SSLContext` objects (the caller builds them from its own PKI). On the
server the context must require a client certificate; this module checks it, adds the ALPN name of
the wire version, and turns every ssl, OS and anyio failure into a :class:`HandshakeError` or
:class:`ConnectionBrokenError` that says what went wrong.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
import anyio.abc
from anyio.streams.tls import TLSAttribute, TLSStream

from transport._sslsocket import SSLSocketStream
from transport.errors import ConnectionBrokenError, HandshakeError, LocalProtocolError

__all__ = [
    "ALPN_PROTOCOL",
    "accept_tls",
    "client_handshake",
    "describe_failure",
    "dial_tls",
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


def tls_failure_reason(exc: BaseException) -> str:
    """A one-line reason for a TLS failure, without secrets."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"certificate verification failed: {exc.verify_message or exc.reason}"
    if isinstance(exc, ssl.SSLError):
        reason = exc.reason or type(exc).__name__
        return f"TLS failure: {reason.replace('_', ' ').lower()}"
    if isinstance(exc, anyio.EndOfStream | anyio.BrokenResourceError | OSError):
        return "connection closed during the TLS handshake"
    return f"TLS failure: {type(exc).__name__}"


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
        raise HandshakeError(f"peer does not speak {ALPN_PROTOCOL} (ALPN: {chosen!r})")


_HANDSHAKE_FAILURES = (ssl.SSLError, OSError, anyio.EndOfStream, anyio.BrokenResourceError)
_S = TypeVar("_S", bound=anyio.abc.ByteStream)


async def _handshake(start: Callable[[], Awaitable[_S]], timeout: float) -> _S:
    """Run a TLS handshake within ``timeout``, translate its failures, and check ALPN."""
    try:
        with anyio.fail_after(timeout):
            stream = await start()
    except TimeoutError:
        raise HandshakeError(f"TLS handshake not completed within {timeout:g} s") from None
    except _HANDSHAKE_FAILURES as exc:
        raise HandshakeError(tls_failure_reason(exc)) from None
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
        raise HandshakeError("peer presented no certificate")
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
