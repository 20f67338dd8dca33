"""TLS over a non-blocking socket: :class:`ssl.SSLSocket` does the record work, AnyIO waits.

Theory of operation
-------------------

AnyIO's :class:`~anyio.streams.tls.TLSStream` runs TLS through memory BIOs over any byte stream,
which is what tests over memory streams need; but each ``receive`` returns at most one 16 KiB TLS
record, and a gigabyte then costs 65,000 trips through Python. On a real socket this stream lets
OpenSSL read and write the socket itself, and one :meth:`SSLSocketStream.receive_view` drains every
record already available (up to ``max_bytes``) into a scratch buffer. Waiting uses
:func:`anyio.wait_readable` / :func:`anyio.wait_writable`, so it runs unchanged on trio and asyncio.

The scratch buffer (1 MiB) is shared by every stream of a thread rather than owned by each: a
server with hundreds of sites would otherwise keep hundreds of megabytes of them resident. That is
safe because a receive never yields between reading and returning: it yields (or waits) *before*
it reads, so no other task can reuse the buffer until the caller's next await. A receive that did
not have to wait yields at the start of the next one, so a busy link cannot starve other tasks.
A send that did not have to wait only checks for cancellation, which saves a trip through the
scheduler for every small message.
Errors leave as :class:`anyio.EndOfStream` (orderly end) or :class:`anyio.BrokenResourceError` with
the :mod:`ssl` or OS error as its cause; the bus translates them at its edge.
"""

from __future__ import annotations

import contextlib
import os
import socket
import ssl
import threading
from collections.abc import Callable, Mapping
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
from anyio.abc import SocketAttribute
from anyio.streams.tls import TLSAttribute

__all__ = ["SSLSocketStream", "accept_socket", "listen_socket"]

_BUFFER = 1 << 20
_scratch = threading.local()


def _scratch_view() -> memoryview:
    """This thread's receive buffer, shared by its streams (see the module docstring)."""
    view: memoryview | None = getattr(_scratch, "view", None)
    if view is None:
        view = _scratch.view = memoryview(bytearray(_BUFFER))
    return view


class SSLSocketStream(anyio.abc.ByteStream):
    """A TLS byte stream over a non-blocking :class:`ssl.SSLSocket`."""

    def __init__(self, sock: ssl.SSLSocket) -> None:
        self._sock = sock
        self._eof = False
        self._closed = False
        self._yield_first = False  # the last receive returned without waiting

    # -- set-up --------------------------------------------------------------------------------

    @classmethod
    async def handshake(
        cls,
        raw: socket.socket,
        context: ssl.SSLContext,
        *,
        server_side: bool,
        server_hostname: str | None = None,
    ) -> SSLSocketStream:
        """Wrap a connected non-blocking socket and run the TLS handshake (no deadline here)."""
        sock = context.wrap_socket(
            raw,
            server_side=server_side,
            server_hostname=server_hostname,
            do_handshake_on_connect=False,
        )
        try:
            while True:
                try:
                    sock.do_handshake()
                    break
                except ssl.SSLWantReadError:
                    await anyio.wait_readable(sock)
                except ssl.SSLWantWriteError:
                    await anyio.wait_writable(sock)
        except BaseException:
            _close(sock)
            raise
        return cls(sock)

    @staticmethod
    async def open_tcp(host: str, port: int) -> socket.socket:
        """Dial ``host:port`` without blocking the event loop; returns a connected socket."""
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        error: OSError | None = None
        for family, _type, proto, _name, address in infos:
            raw = socket.socket(family, socket.SOCK_STREAM, proto)
            raw.setblocking(False)
            raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            try:
                try:
                    raw.connect(address)
                except BlockingIOError:
                    await anyio.wait_writable(raw)
                    code = raw.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                    if code:
                        raise OSError(
                            code, f"connect to {host}:{port}: {os.strerror(code)}"
                        ) from None
                return raw
            except BaseException as exc:
                _close(raw)
                if not isinstance(exc, OSError):
                    raise
                error = exc
        raise error or OSError(f"no address for {host}")

    # -- the ByteStream interface --------------------------------------------------------------

    async def receive(self, max_bytes: int = 65536) -> bytes:
        return bytes(await self.receive_view(max_bytes))

    async def receive_view(self, max_bytes: int = _BUFFER) -> memoryview:
        """Every decrypted byte already available, up to ``max_bytes``, waiting for the first.

        The view points into a buffer that any stream's next receive reuses: use or copy it
        before the caller's next await.
        """
        scratch = _scratch_view()
        got = await self.receive_into(scratch[: min(max_bytes, _BUFFER)])
        return scratch[:got]

    async def receive_into(self, view: memoryview) -> int:
        """Decrypt every byte already available straight into ``view``, waiting for the first;
        returns how many. Raises :class:`anyio.EndOfStream` at the end.

        Any yield to other tasks happens before the first byte is read, never after.
        """
        if self._eof:
            raise anyio.EndOfStream
        if self._yield_first:
            await anyio.lowlevel.checkpoint()
        else:
            await anyio.lowlevel.checkpoint_if_cancelled()
        sock = self._sock
        got = 0
        waited = False
        while got < len(view):
            try:
                n = sock.recv_into(view[got:])
            except ssl.SSLWantReadError:
                if got:
                    break
                waited = True
                await anyio.wait_readable(sock)
                continue
            except ssl.SSLWantWriteError:
                if got:
                    break
                waited = True
                await anyio.wait_writable(sock)
                continue
            except (OSError, ssl.SSLError) as exc:
                if got:
                    break  # hand over what arrived; the error repeats on the next call
                raise anyio.BrokenResourceError from exc
            if n == 0:
                self._eof = True
                if got:
                    break
                raise anyio.EndOfStream
            got += n
        self._yield_first = not waited
        return got

    async def send(self, item: bytes | bytearray | memoryview) -> None:
        view = memoryview(item).cast("B") if not isinstance(item, bytes) else memoryview(item)
        sock = self._sock
        waited = False
        while len(view):
            try:
                n = sock.send(view)
            except ssl.SSLWantWriteError:
                waited = True
                await anyio.wait_writable(sock)
                continue
            except ssl.SSLWantReadError:
                waited = True
                await anyio.wait_readable(sock)
                continue
            except (OSError, ssl.SSLError) as exc:
                raise anyio.BrokenResourceError from exc
            view = view[n:]
        if not waited:  # a write that did not block need not yield, only honour cancellation
            await anyio.lowlevel.checkpoint_if_cancelled()

    async def send_eof(self) -> None:
        raise NotImplementedError("TLS has no half-close")

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            anyio.notify_closing(self._sock)
            _close(self._sock)
        await anyio.lowlevel.checkpoint()

    @property
    def extra_attributes(self) -> Mapping[Any, Callable[[], Any]]:
        sock = self._sock
        return {
            TLSAttribute.peer_certificate_binary: lambda: sock.getpeercert(True),
            TLSAttribute.alpn_protocol: sock.selected_alpn_protocol,
            TLSAttribute.ssl_object: lambda: sock,
            SocketAttribute.remote_address: sock.getpeername,
            SocketAttribute.raw_socket: lambda: sock,
        }


def _close(sock: socket.socket) -> None:
    with contextlib.suppress(OSError):
        sock.close()


def listen_socket(host: str, port: int) -> socket.socket:
    """A non-blocking listening socket on ``host:port`` (port 0 picks one)."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family, _type, proto, _name, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.listen(512)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


async def accept_socket(listener: socket.socket) -> socket.socket:
    """The next connection on a non-blocking listening socket."""
    while True:
        try:
            raw, _address = listener.accept()
        except BlockingIOError:
            await anyio.wait_readable(listener)
            continue
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return raw
