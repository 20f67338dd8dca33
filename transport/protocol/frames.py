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
being buffered whole, so a 1 MiB chunk is copied once, from the receive buffer straight to its
destination. Pieces are memoryviews into the decoder's buffer: they stay valid only until the next
call into the decoder.
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
    """A whole frame. ``payload`` may be a view into the decoder's buffer: copy it to keep it."""

    kind: FrameKind
    header: dict[str, Any]
    payload: bytes | memoryview = b""


@dataclass(frozen=True, slots=True)
class PayloadPiece:
    """A piece of a streamed frame's payload, ``offset`` bytes into that payload.

    ``data`` is a view into the decoder's buffer, valid until the next call into the decoder.
    ``last`` is true for the piece that completes the payload (a zero-length payload gives one
    empty, last piece).
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
    """

    def __init__(self, max_frame_size: int = DEFAULT_MAX_FRAME_SIZE) -> None:
        self.max_frame_size = max_frame_size
        self._buf = bytearray()
        self._pos = 0
        # The frame being read: prefix fields once parsed, header once parsed.
        self._kind: FrameKind | None = None
        self._header_len = 0
        self._payload_len = 0
        self._header: dict[str, Any] | None = None
        self._payload_done = 0
        self._failed: RemoteProtocolError | None = None

    # -- input ---------------------------------------------------------------------------------

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        try:
            if self._pos and self._pos == len(self._buf):
                self._buf.clear()
                self._pos = 0
            elif self._pos > 1 << 20 and self._pos * 2 > len(self._buf):
                del self._buf[: self._pos]
                self._pos = 0
            self._buf += data
        except BufferError:
            # Somebody still holds a piece handed out earlier: leave that memory to them.
            self._buf = self._buf[self._pos :] + data
            self._pos = 0

    @property
    def buffered(self) -> int:
        """Bytes received and not yet handed out."""
        return len(self._buf) - self._pos

    def take_buffered(self) -> bytes:
        """Remove and return the bytes not yet decoded (only between frames)."""
        if self._kind is not None:
            raise RuntimeError("take_buffered() in the middle of a frame")
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest

    @property
    def in_frame(self) -> bool:
        """True when part of a frame has been read (EOF now would cut a frame short)."""
        return self._kind is not None or self._pos < len(self._buf)

    # -- output --------------------------------------------------------------------------------

    def next_event(self) -> Frame | PayloadPiece | None:
        """The next whole frame or payload piece, or None until more data arrives."""
        if self._failed is not None:
            raise self._failed
        try:
            return self._next_event()
        except RemoteProtocolError as exc:
            self._failed = exc
            raise

    def payload_target(self) -> tuple[dict[str, Any], int, int] | None:
        """Inside a streamed payload with nothing buffered: ``(header, done, remaining)``.

        The caller may then read up to ``remaining`` payload bytes straight to where they belong
        and report them with :meth:`payload_received_in_place`, skipping this decoder's buffer.
        """
        if self._kind not in STREAMED_KINDS or self._header is None or self._failed:
            return None
        if self._pos != len(self._buf):
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
        available = len(self._buf) - self._pos
        if self._kind is None:
            if available < PREFIX.size:
                return None
            version, kind, header_len, payload_len = PREFIX.unpack_from(self._buf, self._pos)
            if version != WIRE_VERSION:
                raise VersionError(version, WIRE_VERSION)
            try:
                frame_kind = FrameKind(kind)
            except ValueError:
                raise UnknownFrameKindError(kind) from None
            if header_len + payload_len > self.max_frame_size:
                raise FrameTooLargeError(header_len + payload_len, self.max_frame_size)
            self._pos += PREFIX.size
            available -= PREFIX.size
            self._kind = frame_kind
            self._header_len = header_len
            self._payload_len = payload_len
            self._header = None
            self._payload_done = 0
        kind = self._kind
        if self._header is None:
            if available < self._header_len:
                return None
            raw = self._buf[self._pos : self._pos + self._header_len]
            self._pos += self._header_len
            available -= self._header_len
            self._header = _unpack_header(raw)
        header = self._header
        if kind in STREAMED_KINDS:
            remaining = self._payload_len - self._payload_done
            if remaining and not available:
                return None
            take = min(remaining, available)
            view = memoryview(self._buf)[self._pos : self._pos + take]
            self._pos += take
            offset = self._payload_done
            self._payload_done += take
            last = self._payload_done == self._payload_len
            if last:
                self._kind = None
            return PayloadPiece(kind, header, offset, view, last)
        if available < self._payload_len:
            return None
        payload = bytes(self._buf[self._pos : self._pos + self._payload_len])
        self._pos += self._payload_len
        self._kind = None
        return Frame(kind, header, payload)


def _unpack_header(raw: bytes | bytearray) -> dict[str, Any]:
    try:
        header = msgpack.unpackb(bytes(raw), raw=False, strict_map_key=True, use_list=True)
    except Exception as exc:  # msgpack raises several unrelated types for bad input
        raise RemoteProtocolError(
            f"frame header is not valid msgpack ({type(exc).__name__})"
        ) from None
    if not isinstance(header, dict):
        raise RemoteProtocolError(f"frame header is a {type(header).__name__}, not a map")
    return header
