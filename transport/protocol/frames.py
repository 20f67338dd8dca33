"""The wire format: length-prefixed, versioned frames with a msgpack header and a raw payload.

Theory of operation
-------------------

Every frame starts with a fixed 10-byte prefix::

    version: u8 | kind: u8 | header_len: u32 | payload_len: u32      (network byte order)

followed by ``header_len`` bytes of msgpack (always a map) and ``payload_len`` raw bytes. The payload
is never re-encoded: a message body or a slice of a tensor goes on the wire as it is.

The decoder checks the version, the kind and the total length as soon as the prefix is complete,
*before* it buffers any of the body, so an oversized or foreign frame costs this side ten bytes.

Payloads of *streamed* kinds (object chunks) are handed out in pieces as they arrive instead of
being buffered whole.

Buffering
---------

The decoder reads the caller's ``data`` in place instead of copying it on arrival: whatever is
whole in ``data`` (a prefix, a header, a small frame) is parsed straight from it, and a streamed
payload's bytes are handed out as views of it, so a chunk's bytes go from the caller's receive
buffer to their destination without passing through this decoder. Only the bytes of a frame that
``data`` cuts short (a partial prefix or header, a partial non-streamed frame) are copied into the
decoder's own buffer, when :meth:`FrameDecoder.next_event` finds it cannot finish that frame; so
once ``next_event()`` has returned None, the decoder holds no reference to ``data`` and the caller
may reuse it. The buffer keeps its capacity between reads (up to :data:`KEEP_CAPACITY`): bytes are
appended at its end and consumed from its front, and it is compacted (a short move to the front)
only when an append would not fit.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import Any

import msgpack

from transport.errors import (
    FrameTooLargeError,
    RemoteProtocolError,
    UnknownFrameKindError,
    VersionError,
)

__all__ = [
    "DEFAULT_MAX_FRAME_SIZE",
    "KEEP_CAPACITY",
    "PREFIX",
    "WIRE_VERSION",
    "Frame",
    "FrameDecoder",
    "FrameKind",
    "PayloadPiece",
    "encode_frame",
]

WIRE_VERSION = 1
PREFIX = struct.Struct("!BBII")
DEFAULT_MAX_FRAME_SIZE = 4 * 1024 * 1024
#: Buffer capacity a decoder keeps once emptied. Prefixes, headers and the small frames that
#: straddle two reads fit; a larger partial frame grows the buffer until it is decoded.
KEEP_CAPACITY = 64 * 1024
_MIN_CAPACITY = 4096


class FrameKind(enum.IntEnum):
    HELLO = 1  # client -> server: open or resume a session
    WELCOME = 2  # server -> client: session accepted (new or resumed)
    REFUSE = 3  # either way: session refused or ended with a reason; the connection closes
    MESSAGE = 4  # a sequenced message; payload = its body
    ACK = 5  # cumulative acknowledgement of messages, and object bytes consumed
    HEARTBEAT = 6  # liveness when there is nothing else to send
    CLOSE = 7  # orderly end of the session; no resumption after it
    CHUNK = 8  # a slice of a streamed object; payload = raw bytes
    CREDIT = 9  # flow control: the receiver grants more bytes


#: Kinds whose payloads are handed out in pieces instead of buffered whole.
STREAMED_KINDS = frozenset({FrameKind.CHUNK})


@dataclass(frozen=True, slots=True)
class Frame:
    """A whole frame. The decoder gives it a ``payload`` of its own (bytes), safe to keep."""

    kind: FrameKind
    header: dict[str, Any]
    payload: bytes | memoryview = b""


@dataclass(frozen=True, slots=True)
class PayloadPiece:
    """A piece of a streamed frame's payload, ``offset`` bytes into that payload.

    ``data`` is usually a view of the ``data`` given to :meth:`FrameDecoder.receive_data` (or to
    :meth:`FrameDecoder.payload_received_in_place`): it is valid as long as the caller leaves that
    buffer unchanged, so use or copy it before reusing the buffer. ``last`` is true for the piece
    that completes the payload (a zero-length payload gives one empty, last piece).
    """

    kind: FrameKind
    header: dict[str, Any]
    offset: int
    data: memoryview
    last: bool


def _pack_header(header: dict[str, Any]) -> bytes:
    packed: bytes = msgpack.packb(header, use_bin_type=True)
    return packed


def encode_frame(
    kind: FrameKind, header: dict[str, Any], payload: bytes | memoryview = b""
) -> list[bytes | memoryview]:
    """Encode one frame as a list of buffers to write in order (the payload is not copied)."""
    head = _pack_header(header)
    prefix = PREFIX.pack(WIRE_VERSION, kind, len(head), len(payload))
    if len(payload):
        return [prefix + head, payload]
    return [prefix + head]


class FrameDecoder:
    """Turns a byte stream into :class:`Frame` and :class:`PayloadPiece` events.

    Raises :class:`~transport.errors.RemoteProtocolError` (or a subclass) for anything that is not
    a valid frame; after that the decoder is unusable, as is the connection it decodes.

    The decoder reads the caller's data in place (see "Buffering" in the module docstring): feed
    it with :meth:`receive_data`, then call :meth:`next_event` until it returns None before
    changing or reusing that data.
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        # Bytes of cut-short frames: buffered bytes are _buf[_start:_end]; len(_buf) is the
        # capacity. _buf is never resized in place (a new one replaces it), so views of it are
        # always safe to hold.
        self._buf = bytearray()
        self._view = memoryview(self._buf)
        self._start = 0
        self._end = 0
        # The caller's latest data, read in place from _in_pos on; None once all read or copied.
        self._input: memoryview | None = None
        self._in_pos = 0
        # The frame being read: prefix fields once parsed, header once parsed.
        self._kind: FrameKind | None = None
        self._header_len = 0
        self._payload_len = 0
        self._header: dict[str, Any] | None = None
        self._payload_done = 0
        self._failed: RemoteProtocolError | None = None

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        """Feed bytes from the stream. They are read in place, not copied here: leave ``data``
        unchanged until :meth:`next_event` has returned None (by then every byte the decoder
        still needs is in its own buffer) and the pieces handed out are used.

        Feeding more before that is allowed (what is left of the last ``data`` is copied then,
        and its payload bytes are handed out as copies), but it costs the copy this avoids.
        """
        if self._input is not None:  # the last data was not read to the end: keep the rest
            self._stash()
        view = data if isinstance(data, memoryview) else memoryview(data)
        if view.format != "B" or view.ndim != 1:
            view = view.cast("B")
        if len(view):
            self._input = view
            self._in_pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out."""
        pending = len(self._input) - self._in_pos if self._input is not None else 0
        return self._end - self._start + pending

    @property
    def capacity(self) -> int:
        """The size of the decoder's own buffer (it stays allocated between reads)."""
        return len(self._buf)

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not yet decoded (only between frames)."""
        if self._kind is not None:
            raise RuntimeError("take_buffered() in the middle of a frame")
        rest = bytes(self._view[self._start : self._end])
        if self._input is not None:
            rest += self._input[self._in_pos :]
            self._input = None
        self._buffer_emptied()
        return rest

    @property
    def in_frame(self) -> bool:
        """True when part of a frame has been read (EOF now would cut a frame short)."""
        return self._kind is not None or self.buffered > 0

    # -- output --------------------------------------------------------------------------------

    def next_event(self) -> Frame | PayloadPiece | None:
        """The next whole frame or payload piece, or None until more data arrives.

        None also means the decoder holds nothing of the caller's data any more (it copied the
        bytes of a cut-short frame into its own buffer).
        """
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._failed = exc
            self._input = None  # never read again: do not pin the caller's memory
            raise

    def payload_target(self) -> tuple[dict[str, Any], int, int] | None:
        """Inside a streamed payload with nothing buffered: ``(header, done, remaining)``.

        The caller may then read up to ``remaining`` payload bytes straight to where they belong
        and report them with :meth:`payload_received_in_place`, skipping this decoder's buffer.
        """
        if self._kind not in STREAMED_KINDS or self._header is None or self._failed:
            return None
        if self._start != self._end or self._input is not None:
            return None
        remaining = self._payload_len - self._payload_done
        if remaining <= 0:
            return None
        return self._header, self._payload_done, remaining

    def payload_received_in_place(self, data: memoryview) -> PayloadPiece:
        """``data`` (already in its final place) continues the current streamed payload."""
        target = self.payload_target()
        if target is None or len(data) > target[2]:
            raise RuntimeError("no streamed payload is waiting for these bytes")
        assert self._kind is not None
        assert self._header is not None
        offset = self._payload_done
        self._payload_done += len(data)
        last = self._payload_done == self._payload_len
        piece = PayloadPiece(self._kind, self._header, offset, data, last)
        if last:
            self._kind = None
        return piece

    def _next_event(self) -> Frame | PayloadPiece | None:
        if self._kind is None:
            found = self._peek(PREFIX.size)
            if found is None:
                return None
            version, kind, header_len, payload_len = PREFIX.unpack_from(*found)
            if version != WIRE_VERSION:
                raise VersionError(version, WIRE_VERSION)
            try:
                frame_kind = FrameKind(kind)
            except ValueError:
                raise UnknownFrameKindError(kind) from None
            if header_len + payload_len > self.max_frame_size:
                raise FrameTooLargeError(header_len + payload_len, self.max_frame_size)
            self._consume(PREFIX.size)
            self._kind = frame_kind
            self._header_len = header_len
            self._payload_len = payload_len
            self._header = None
            self._payload_done = 0
        kind = self._kind
        if self._header is None:
            found = self._peek(self._header_len)
            if found is None:
                return None
            source, at = found
            self._header = _unpack_header(source[at : at + self._header_len])
            self._consume(self._header_len)
        header = self._header
        if kind in STREAMED_KINDS:
            return self._next_piece(kind, header)
        found = self._peek(self._payload_len)
        if found is None:
            return None
        source, at = found
        payload = bytes(source[at : at + self._payload_len])
        self._consume(self._payload_len)
        self._kind = None
        return Frame(kind, header, payload)

    def _next_piece(self, kind: FrameKind, header: dict[str, Any]) -> PayloadPiece | None:
        remaining = self._payload_len - self._payload_done
        if self._start != self._end:
            # Only when data came before the last was read to the end (see receive_data): the
            # buffer is reused, so these bytes are handed out as a copy.
            take = min(remaining, self._end - self._start)
            view = memoryview(bytes(self._view[self._start : self._start + take]))
            self._consume(take)
        elif self._input is not None:
            take = min(remaining, len(self._input) - self._in_pos)
            view = self._input[self._in_pos : self._in_pos + take]
            self._consume(take)
        elif remaining:
            return None
        else:
            view = memoryview(b"")  # a zero-length payload
        offset = self._payload_done
        self._payload_done += len(view)
        last = self._payload_done == self._payload_len
        if last:
            self._kind = None
        return PayloadPiece(kind, header, offset, view, last)

    # -- the buffer ------------------------------------------------------------------------------

    def _peek(self, n: int) -> tuple[memoryview, int] | None:
        """``n`` contiguous bytes at the front of the stream, as ``(source, offset)``, without
        consuming them; None if fewer have arrived, in which case all that has is buffered."""
        buffered = self._end - self._start
        if buffered >= n:
            return self._view, self._start
        if not buffered:  # the usual case: read straight from the caller's data
            data = self._input
            if data is not None and len(data) - self._in_pos >= n:
                return data, self._in_pos
            self._stash()
            return None
        self._fill(n - buffered)
        if self._end - self._start < n:
            return None
        return self._view, self._start

    def _consume(self, n: int) -> None:
        """Drop ``n`` bytes from the front of the stream (from where :meth:`_peek` found them)."""
        if self._start != self._end:
            self._start += n
            if self._start == self._end:
                self._buffer_emptied()
        elif n:
            self._consume_input(n)

    def _stash(self) -> None:
        """Copy what is left of the caller's data into the buffer."""
        if self._input is not None:
            self._fill(len(self._input) - self._in_pos)

    def _fill(self, n: int) -> None:
        """Move up to ``n`` bytes from the caller's data to the end of the buffer."""
        data = self._input
        if data is None:
            return
        n = min(n, len(data) - self._in_pos)
        self._reserve(n)
        self._view[self._end : self._end + n] = data[self._in_pos : self._in_pos + n]
        self._end += n
        self._consume_input(n)

    def _consume_input(self, n: int) -> None:
        assert self._input is not None
        self._in_pos += n
        if self._in_pos == len(self._input):
            self._input = None

    def _reserve(self, n: int) -> None:
        """Make room for ``n`` more bytes at the end of the buffer."""
        if self._end + n <= len(self._buf):
            return
        live = self._end - self._start
        if live + n <= len(self._buf):  # compact: move the few buffered bytes to the front
            self._view[:live] = self._view[self._start : self._end]
        else:
            grown = bytearray(max(live + n, 2 * len(self._buf), _MIN_CAPACITY))
            grown[:live] = self._view[self._start : self._end]
            self._buf = grown
            self._view = memoryview(grown)
        self._start, self._end = 0, live

    def _buffer_emptied(self) -> None:
        self._start = self._end = 0
        if len(self._buf) > KEEP_CAPACITY:  # grown for one large frame: let it go
            self._buf = bytearray()
            self._view = memoryview(self._buf)


def _unpack_header(raw: memoryview) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RemoteProtocolError(
            f"frame header is not valid msgpack ({type(exc).__name__})"
        ) from None
    if not isinstance(header, dict):
        raise RemoteProtocolError(f"frame header is a {type(header).__name__}, not a map")
    return header
