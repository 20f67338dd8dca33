"""The session: reliable, ordered, resumable messaging and object streaming over one peer link.

Theory of operation
-------------------

A *session* outlives connections. The client opens one with HELLO; the server answers WELCOME with
a random session id. When the connection breaks, both sides keep the session (``DISCONNECTED``); the
client dials again and its HELLO names the session, how far it has received in-order messages, and
how many bytes it holds of each partly received object. The WELCOME says the same from the server's
side. Each side then drops what the other already has and sends the rest, so messages are delivered
exactly once and in order, and a partial object continues from the byte where it stopped.

Messages are numbered per direction from 1. The receiver holds each until the application takes it
(:meth:`Session.message_delivered`) and acknowledges delivery cumulatively: piggybacked on its own
outgoing messages (``a``), or in an ACK frame: with any write once a quarter window is due, alone
once half a window is due or ``ack_delay`` has passed, so a stream of small messages does not cost
a frame each way. Objects received in full (``d``) are reported the same way: a request and its
reply carry each other's acknowledgements, and a round trip within ``ack_delay`` costs no ACK frame
and no wake-up of the peer for one. A sender may have at most the peer's ``message_window``
messages undelivered, so a slow actor pushes back on its remote senders while heartbeats keep
flowing. A message may carry an object (:mod:`transport.protocol.objects`): its manifest rides in
the MESSAGE header and its bytes follow in CHUNK frames that interleave with everything else, so a
heartbeat or a small message never waits behind a gigabyte. An object's message is delivered when
it is announced; its bytes are then reported as :class:`ChunkReceived` events, and
:class:`ObjectCompleted` ends it once the SHA-256 digest in the last chunk matches the bytes
received.

Flow control is credit based, as in HTTP/2: each side announces how many unconsumed object bytes it
will hold per object and per connection; the receiver sends CREDIT as the application consumes
bytes (:meth:`Session.consume`). A sender never has more than one window per object unconsumed at
the receiver, so memory on both ends is bounded by configuration, and a broken connection re-sends
at most one window per object. The window announced for each new object may be smaller
(``first_object_window``) until the application starts taking it: a receiver that lets objects
wait their turn (a server folding one update at a time) holds little of each meanwhile.

Liveness is judged by progress: any frame from the peer counts; HEARTBEAT is sent when this side has
been quiet for ``heartbeat_interval``; a peer silent for ``liveness_timeout`` is declared dead. A
transfer that keeps moving never times out, however long it takes.

Time is an input (``now``), and nothing here does IO: the driver feeds bytes and the clock, and
writes what :meth:`Session.data_to_send` returns.
"""

from __future__ import annotations

import enum
import hashlib
import os
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, TypeAlias

from transport.errors import (
    DigestMismatchError,
    HandshakeError,
    HandshakeFailure,
    LocalProtocolError,
    PeerTimeoutError,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
)
from transport.protocol.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    Frame,
    FrameDecoder,
    FrameKind,
    PayloadPiece,
    encode_frame,
)
from transport.protocol.objects import Manifest, OutgoingObject

__all__ = [
    "ChunkReceived",
    "ConnectionFailed",
    "Hello",
    "HelloReader",
    "MessageReceived",
    "ObjectCompleted",
    "ObjectFailed",
    "Role",
    "Session",
    "SessionConfig",
    "SessionEnded",
    "SessionEvent",
    "SessionOpened",
    "SessionState",
    "refuse_frame",
]

MiB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class SessionConfig:
    """Limits and timers of one side of a session. Times are in seconds."""

    max_frame_size: int = DEFAULT_MAX_FRAME_SIZE
    chunk_size: int = 1 * MiB
    object_window: int = 8 * MiB
    connection_window: int = 32 * MiB
    max_object_size: int = 64 * 1024 * MiB
    message_window: int = 256
    ack_delay: float = 0.05
    heartbeat_interval: float = 5.0
    liveness_timeout: float = 20.0
    handshake_timeout: float = 10.0
    #: What the peer may send of an object before the application starts taking it (None: a whole
    #: ``object_window``). A receiver that lets objects wait their turn holds this much of each.
    first_object_window: int | None = None

    @property
    def announced_object_window(self) -> int:
        """The per-object credit announced to the peer: what each new object may send at once."""
        first = self.first_object_window
        return self.object_window if first is None else first

    def __post_init__(self) -> None:
        if self.chunk_size > self.max_frame_size - 1024:
            raise ValueError("chunk_size must leave room for a frame header under max_frame_size")
        if self.object_window < self.chunk_size or self.connection_window < self.chunk_size:
            raise ValueError("flow-control windows must hold at least one chunk")
        first = self.first_object_window
        if first is not None and not 0 < first <= self.object_window:
            raise ValueError("first_object_window must be positive and at most object_window")
        if self.heartbeat_interval >= self.liveness_timeout:
            raise ValueError("heartbeat_interval must be shorter than liveness_timeout")


class Role(enum.Enum):
    CLIENT = "client"
    SERVER = "server"


class SessionState(enum.Enum):
    IDLE = "idle"  # created, never connected
    HANDSHAKING = "handshaking"  # client: HELLO sent, waiting for WELCOME
    OPEN = "open"  # messages flow
    DISCONNECTED = "disconnected"  # connection lost; the session can be resumed
    CLOSED = "closed"  # ended for good


class _Input(enum.Enum):
    CONNECT = "connect"  # client dials (again)
    ACCEPT = "accept"  # server takes a HELLO
    WELCOME = "welcome"  # client receives WELCOME
    LOST = "lost"  # connection broke or the peer went silent
    CLOSE = "close"  # either side ends the session, or a fatal error


S, In = SessionState, _Input
#: Every allowed transition; anything else is a LocalProtocolError (misuse) or ignored input.
TRANSITIONS: dict[tuple[SessionState, _Input], SessionState] = {
    (S.IDLE, In.CONNECT): S.HANDSHAKING,
    (S.IDLE, In.ACCEPT): S.OPEN,
    (S.IDLE, In.CLOSE): S.CLOSED,
    (S.HANDSHAKING, In.WELCOME): S.OPEN,
    (S.HANDSHAKING, In.LOST): S.DISCONNECTED,
    (S.HANDSHAKING, In.CLOSE): S.CLOSED,
    (S.OPEN, In.LOST): S.DISCONNECTED,
    (S.OPEN, In.CLOSE): S.CLOSED,
    (S.DISCONNECTED, In.CONNECT): S.HANDSHAKING,
    (S.DISCONNECTED, In.ACCEPT): S.OPEN,
    (S.DISCONNECTED, In.LOST): S.DISCONNECTED,
    (S.DISCONNECTED, In.CLOSE): S.CLOSED,
    (S.CLOSED, In.LOST): S.CLOSED,
    (S.CLOSED, In.CLOSE): S.CLOSED,
}
del S, In


# -- events ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SessionOpened:
    session_id: bytes
    resumed: bool


@dataclass(frozen=True, slots=True)
class MessageReceived:
    seq: int
    body: bytes
    manifest: Manifest | None = None


@dataclass(frozen=True, slots=True)
class ChunkReceived:
    """Object bytes at ``offset``.

    ``data`` is usually a view of the bytes given to :meth:`Session.receive_data`: valid until
    the next call into the session or until the caller reuses that buffer, whichever comes first.
    Copy it (or write it to its place) before then.

    ``placed`` is true when the bytes were received straight into their final place (see
    :meth:`Session.receive_target`): there is nothing to copy.
    """

    seq: int
    offset: int
    data: memoryview
    placed: bool = False


@dataclass(frozen=True, slots=True)
class ObjectCompleted:
    seq: int


@dataclass(frozen=True, slots=True)
class ObjectFailed:
    seq: int
    error: TransportError


@dataclass(frozen=True, slots=True)
class ConnectionFailed:
    """The current connection must be dropped; the session stays resumable."""

    error: TransportError


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """The session is over: closed by either side, refused, or killed by a protocol error.

    ``error`` is None for an orderly close. ``undelivered`` are the ids of messages this side sent
    that the peer never acknowledged.
    """

    reason: str
    error: TransportError | None
    undelivered: tuple[int, ...] = ()


SessionEvent: TypeAlias = (
    SessionOpened
    | MessageReceived
    | ChunkReceived
    | ObjectCompleted
    | ObjectFailed
    | ConnectionFailed
    | SessionEnded
)


# -- handshake ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Hello:
    """A client's opening: a new session (``session_id`` None) or one to resume."""

    session_id: bytes | None
    received: int
    partial: dict[int, int]
    object_window: int
    connection_window: int
    message_window: int

    def to_wire(self) -> dict[str, Any]:
        return {
            "sid": self.session_id,
            "r": self.received,
            "po": _wire_offsets(self.partial),
            "w": self.object_window,
            "cw": self.connection_window,
            "mw": self.message_window,
        }

    @classmethod
    def from_wire(cls, header: dict[str, Any]) -> Hello:
        sid = header.get("sid")
        if sid is not None and not (isinstance(sid, bytes) and len(sid) == 16):
            raise RemoteProtocolError("HELLO: session id must be 16 bytes or nil")
        return cls(
            sid,
            _nonneg(header, "r", "HELLO"),
            _offsets(header.get("po"), "HELLO"),
            _positive(header, "w", "HELLO"),
            _nonneg(header, "cw", "HELLO"),
            _positive(header, "mw", "HELLO"),
        )


def _nonneg(header: dict[str, Any], key: str, where: str) -> int:
    value = header.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise RemoteProtocolError(f"{where}: field {key!r} must be a non-negative integer")
    return value


def _positive(header: dict[str, Any], key: str, where: str) -> int:
    value = _nonneg(header, key, where)
    if value == 0:
        raise RemoteProtocolError(f"{where}: field {key!r} must be positive")
    return value


def _offsets(raw: object, where: str) -> dict[int, int]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RemoteProtocolError(f"{where}: partial objects must be a map")
    result: dict[int, int] = {}
    for key, value in raw.items():
        # isascii(): str.isdigit() also accepts digits such as '²' that int() refuses.
        ok_key = isinstance(key, str) and key.isascii() and key.isdigit()
        if not ok_key or not isinstance(value, int) or value < 0:
            raise RemoteProtocolError(f"{where}: bad partial-object entry")
        result[int(key)] = value
    return result


#: What a REFUSE frame's code says of a refusal at HELLO (see :class:`HandshakeFailure`).
_REFUSAL_KINDS: dict[str, HandshakeFailure] = {
    "identity": HandshakeFailure.IDENTITY_REFUSED,  # the peer's policy turned this node away
    "protocol": HandshakeFailure.NOT_FLRT,  # the peer could not read this side's HELLO
    "duplicate": HandshakeFailure.DUPLICATE,  # this identity's session is connected already
}


def refuse_frame(reason: str, code: str = "refused") -> list[bytes | memoryview]:
    """A REFUSE frame, for a listener that turns a connection away before any session exists."""
    return encode_frame(FrameKind.REFUSE, {"why": reason, "code": code})


class HelloReader:
    """The server's first step on a new connection: read exactly one HELLO, within a deadline.

    Anything else first (garbage, another frame kind, silence past the deadline) is an error that
    ends the connection. Leftover bytes after the HELLO are kept for the session.
    """

    def __init__(self, config: SessionConfig, now: float) -> None:
        self._decoder = FrameDecoder(config.max_frame_size)
        self.deadline = now + config.handshake_timeout
        self._timeout = config.handshake_timeout

    def receive_data(self, data: bytes | bytearray | memoryview) -> Hello | None:
        """Feed bytes; returns the HELLO once whole. Raises RemoteProtocolError."""
        self._decoder.receive_data(data)
        event = self._decoder.next_event()
        if event is None:
            return None
        if not isinstance(event, Frame) or event.kind is not FrameKind.HELLO:
            raise RemoteProtocolError(f"expected HELLO, got {event.kind.name}")
        return Hello.from_wire(event.header)

    def check_timer(self, now: float) -> None:
        """Raises :class:`HandshakeError` once the deadline has passed without a HELLO."""
        if now >= self.deadline:
            raise HandshakeError(
                f"no HELLO within {self._timeout:g} s", kind=HandshakeFailure.TRANSIENT
            )

    def take_buffered(self) -> bytes:
        return self._decoder.take_buffered()


# -- bookkeeping for objects -------------------------------------------------------------------


@dataclass(slots=True)
class _Outgoing:
    seq: int
    body: bytes
    obj: OutgoingObject | None
    sent: int = 0  # next object byte to send
    high: int = 0  # the furthest byte ever sent (bytes below it, sent again, are re-sent)
    limit: int = 0  # may send object bytes below this offset
    announced: bool = False  # MESSAGE frame written on the current connection
    delivered: bool = False  # acknowledged as a message (the object may still be partial)


@dataclass(slots=True)
class _Incoming:
    manifest: Manifest
    received: int = 0
    consumed: int = 0
    granted: int = 0  # the sender may send object bytes below this offset
    verified: bool = False  # every byte received and the digest matched
    hasher: Any = field(default_factory=hashlib.sha256)


class Session:
    """One side of a session. See the module docstring for how it works."""

    def __init__(self, role: Role, config: SessionConfig | None = None) -> None:
        self.role = role
        self.config = config or SessionConfig()
        self.state = SessionState.IDLE
        self.session_id: bytes | None = None
        self._decoder = FrameDecoder(self.config.max_frame_size)
        self._out: list[bytes | memoryview] = []
        self._events: list[SessionEvent] = []
        #: Object bytes written, and how many of them were written again after a resumption.
        self.object_bytes_sent = 0
        self.resent_object_bytes = 0
        # Sending.
        self._next_seq = 1
        self._unacked: OrderedDict[int, _Outgoing] = OrderedDict()
        self._streaming: deque[int] = deque()  # outgoing objects with bytes left, round robin
        self._peer_object_window = 0
        self._peer_message_window = 1
        self._acked = 0  # the peer has taken every message up to this one
        self._conn_sent = 0  # object bytes sent on this connection
        self._conn_limit = 0
        # Receiving.
        self._received = 0  # highest in-order message held (received)
        self._delivered = 0  # highest message the application has taken
        self._incoming: dict[int, _Incoming] = {}
        self._conn_received = 0
        self._conn_consumed = 0
        self._conn_granted = 0
        self._ack_sent = 0  # the delivery ack the peer last heard from us
        self._ack_due_since: float | None = None
        self._completed: list[int] = []
        # Time.
        self._last_received = 0.0
        self._last_sent = 0.0
        self._handshake_deadline: float | None = None

    # -- state ---------------------------------------------------------------------------------

    def _transition(self, event: _Input) -> None:
        try:
            self.state = TRANSITIONS[(self.state, event)]
        except KeyError:
            raise LocalProtocolError(
                f"{event.value} is not allowed in state {self.state.value}"
            ) from None

    def silent_for(self, now: float) -> float:
        """Seconds since the peer's last frame on this connection (any frame: a live peer sends a
        heartbeat at least every ``heartbeat_interval``)."""
        return now - self._last_received

    @property
    def presumed_dead_after(self) -> float:
        """Silence after which the connection is presumed half-open when the same peer dials in
        again: twice the heartbeat interval, or the liveness timeout if that is shorter."""
        return min(2 * self.config.heartbeat_interval, self.config.liveness_timeout)

    @property
    def undelivered(self) -> tuple[int, ...]:
        """Ids of sent messages the peer has not acknowledged yet."""
        return tuple(seq for seq, out in self._unacked.items() if not out.delivered)

    @property
    def send_window_open(self) -> bool:
        """False while the peer holds a full window of messages its application has not taken."""
        return self._next_seq - 1 - self._acked < self._peer_message_window

    @property
    def unacked_bytes(self) -> int:
        """Message-body bytes held for re-sending (objects are referenced, not copied)."""
        return sum(len(out.body) for out in self._unacked.values())

    @property
    def buffered_object_bytes(self) -> int:
        """Object bytes received and not yet consumed by the application."""
        return sum(inc.received - inc.consumed for inc in self._incoming.values())

    # -- connection lifecycle ------------------------------------------------------------------

    def connect(self, now: float) -> None:
        """Client: a new connection is up; send HELLO (naming the session to resume, if any)."""
        if self.role is not Role.CLIENT:
            raise LocalProtocolError("only the client side connects")
        self._transition(_Input.CONNECT)
        self._new_connection(now)
        hello = Hello(
            self.session_id,
            self._received,
            {seq: inc.received for seq, inc in self._incoming.items()},
            self.config.announced_object_window,
            self._conn_granted,
            self.config.message_window,
        )
        self._handshake_deadline = now + self.config.handshake_timeout
        self._emit(FrameKind.HELLO, hello.to_wire(), now)

    def accept(self, hello: Hello, now: float, *, leftover: bytes = b"") -> None:
        """Server: take a client's HELLO on a new connection and answer WELCOME.

        A new session gets a fresh random id; resuming is the caller's decision (it looked the
        session up by ``hello.session_id`` and checked the peer is the same identity).
        """
        if self.role is not Role.SERVER:
            raise LocalProtocolError("only the server side accepts")
        resumed = self.session_id is not None
        if resumed and hello.session_id != self.session_id:
            raise LocalProtocolError("HELLO names another session")
        self._transition(_Input.ACCEPT)
        if self.session_id is None:
            self.session_id = os.urandom(16)
        self._new_connection(now)
        self._emit(
            FrameKind.WELCOME,
            {
                "sid": self.session_id,
                "res": resumed,
                "r": self._received,
                "po": _wire_offsets({s: i.received for s, i in self._incoming.items()}),
                "w": self.config.announced_object_window,
                "cw": self._conn_granted,
                "mw": self.config.message_window,
            },
            now,
        )
        try:
            self._start_resume(
                hello.received,
                hello.partial,
                hello.object_window,
                hello.connection_window,
                hello.message_window,
            )
        except RemoteProtocolError as exc:  # the HELLO claims what was never sent
            self._fail(exc, now)
            return
        self._events.append(SessionOpened(self.session_id, resumed))
        self._flush_ack()
        if leftover:
            self.receive_data(leftover, now)

    def connection_lost(self, now: float, error: TransportError | None = None) -> None:
        """The connection is gone (broken, EOF, or the driver gave up); keep the session."""
        if self.state is SessionState.CLOSED:
            return
        self._transition(_Input.LOST)
        self._out.clear()
        self._handshake_deadline = None

    def close(self, reason: str = "closed", now: float = 0.0) -> None:
        """End the session for good; the peer is told (if connected) and cannot resume it."""
        if self.state is SessionState.CLOSED:
            return
        if self.state in (SessionState.OPEN, SessionState.HANDSHAKING):
            self._emit(FrameKind.CLOSE, {"why": reason}, now)
        self._transition(_Input.CLOSE)
        self._events.append(SessionEnded(reason, None, self.undelivered))

    def _new_connection(self, now: float) -> None:
        self._decoder = FrameDecoder(self.config.max_frame_size)
        self._out.clear()
        self._last_received = now
        self._last_sent = now
        self._conn_sent = 0
        self._conn_limit = 0
        # Object bytes held from earlier connections count against this one's credit (else each
        # reconnection would let a slow application buffer one more connection window): the
        # credit offered in HELLO / WELCOME is the window less what the application still holds.
        held = self.buffered_object_bytes
        self._conn_received = 0
        self._conn_consumed = -held
        self._conn_granted = self.config.connection_window - held
        # A delivery ack written on the old connection may have been lost with it: repeat it.
        self._ack_sent = 0
        for out in self._unacked.values():
            out.announced = False

    def _start_resume(
        self,
        peer_received: int,
        peer_partial: dict[int, int],
        object_window: int,
        conn_window: int,
        message_window: int,
    ) -> None:
        """Drop what the peer holds, queue the rest: messages again, objects from their offset."""
        self._peer_object_window = object_window
        self._peer_message_window = message_window
        self._conn_limit = conn_window
        if peer_received >= self._next_seq:
            raise RemoteProtocolError(f"peer claims message {peer_received}, never sent")
        # Not self._acked: the peer holds these, but its application may not have taken them.
        self._streaming.clear()
        for seq in list(self._unacked):
            out = self._unacked[seq]
            if seq <= peer_received:
                out.delivered = True
                if out.obj is None or seq not in peer_partial:
                    del self._unacked[seq]  # delivered, and its object (if any) complete
                    continue
                offset = peer_partial[seq]
                if offset > out.high:  # resuming there would skip bytes the peer never got
                    raise RemoteProtocolError(
                        f"peer claims {offset} bytes of object {seq}; {out.high} were ever sent"
                    )
                out.announced = True
                limit = offset  # until the peer's CREDIT says how much more it will hold
            else:
                out.delivered = False
                offset = 0
                limit = object_window  # announced again: a fresh object for the peer
                self._emit_message(out)
            if out.obj is not None and out.obj.total:
                out.sent = offset
                out.limit = limit
                self._streaming.append(seq)
        # The peer resumes each object at the offset we hold and may send up to one window past
        # what the application has taken, not past what we hold: else each reconnection would
        # let a slow application buffer one more window. Computed now, not when the connection
        # came up: consume() grants nothing during the handshake.
        for seq, inc in self._incoming.items():
            window = (
                self.config.object_window if inc.consumed else self.config.announced_object_window
            )
            inc.granted = max(inc.received, inc.consumed + window)
            if inc.received < inc.manifest.total:
                self._out.extend(encode_frame(FrameKind.CREDIT, {"s": seq, "l": inc.granted}))
        # Likewise for the connection: what the application took during the handshake.
        held = self.buffered_object_bytes
        self._conn_consumed = -held
        if self.config.connection_window - held > self._conn_granted:
            self._conn_granted = self.config.connection_window - held
            self._out.extend(encode_frame(FrameKind.CREDIT, {"l": self._conn_granted}))

    # -- sending -------------------------------------------------------------------------------

    def send_message(self, body: bytes, obj: OutgoingObject | None = None) -> int:
        """Queue a message (and its object); returns its id. Allowed until the session closes."""
        if self.state is SessionState.CLOSED:
            raise LocalProtocolError("send on a closed session")
        if len(body) > self.config.max_frame_size - 4096:
            raise LocalProtocolError(
                f"message body of {len(body)} bytes exceeds the frame limit; send an object"
            )
        if obj is not None and obj.total > self.config.max_object_size:
            raise LocalProtocolError(f"object of {obj.total} bytes exceeds max_object_size")
        seq = self._next_seq
        self._next_seq += 1
        out = _Outgoing(seq, bytes(body), obj)
        self._unacked[seq] = out
        if self.state is SessionState.OPEN:
            self._emit_message(out)
            if obj is not None and obj.total:
                out.limit = self._peer_object_window
                self._streaming.append(seq)
        return seq

    def _emit_message(self, out: _Outgoing) -> None:
        header: dict[str, Any] = {"s": out.seq}
        if self.state is SessionState.OPEN:
            if self._delivered > self._ack_sent:
                header["a"] = self._ack_sent = self._delivered
            if self._completed:
                header["d"] = self._completed
                self._completed = []
        if out.obj is not None:
            header["o"] = out.obj.manifest.to_wire()
        self._out.extend(encode_frame(FrameKind.MESSAGE, header, out.body))
        out.announced = True

    @property
    def wants_write(self) -> bool:
        """True when :meth:`data_to_send` has (or may soon have) something to write."""
        return bool(self._out) or self.has_pending_chunks

    @property
    def all_sent(self) -> bool:
        """True when every frame and object byte queued so far has been handed to
        :meth:`data_to_send` (whatever flow control still holds back counts as not sent)."""
        return not self._out and not self._streaming

    @property
    def has_pending_chunks(self) -> bool:
        """True when object bytes are waiting and flow control allows sending some."""
        if self.state is not SessionState.OPEN or self._conn_sent >= self._conn_limit:
            return False
        return any(self._sendable(self._unacked[seq]) > 0 for seq in self._streaming)

    def _sendable(self, out: _Outgoing) -> int:
        assert out.obj is not None
        return min(out.limit, out.obj.total) - out.sent

    def data_to_send(
        self, now: float, max_chunk_bytes: int | None = None
    ) -> list[bytes | memoryview]:
        """Buffers to write, in order: control frames first, then object chunks.

        At most about ``max_chunk_bytes`` of chunk payload is included (default: one chunk), so a
        driver that writes and calls again interleaves control frames with bulk data.
        """
        self._flush_ack(now)
        budget = self.config.chunk_size if max_chunk_bytes is None else max_chunk_bytes
        while budget > 0 and self.state is SessionState.OPEN and self._streaming:
            sent = self._send_one_chunk(budget)
            if sent < 0:
                break
            budget -= max(sent, 1)
        out, self._out = self._out, []
        if out:
            self._last_sent = now
        return out

    def _send_one_chunk(self, budget: int) -> int:
        """Send one chunk from the next object in turn; -1 when nothing can be sent now."""
        for _ in range(len(self._streaming)):
            seq = self._streaming[0]
            self._streaming.rotate(-1)
            out = self._unacked.get(seq)
            if out is None or out.obj is None:
                continue
            room = min(self._sendable(out), self._conn_limit - self._conn_sent)
            if room <= 0:
                continue
            data = out.obj.view(out.sent, min(room, self.config.chunk_size, budget))
            header: dict[str, Any] = {"s": seq, "o": out.sent}
            end = out.sent + len(data)
            out.obj.hash_through(end)  # shared by every session sending this object
            if end == out.obj.total:
                header["h"] = out.obj.digest()
                self._streaming.remove(seq)
            self._out.extend(encode_frame(FrameKind.CHUNK, header, data))
            if out.sent < out.high:
                self.resent_object_bytes += min(end, out.high) - out.sent
            out.high = max(out.high, end)
            out.sent = end
            self.object_bytes_sent += len(data)
            self._conn_sent += len(data)
            return len(data)
        return -1

    def _flush_ack(self, now: float | None = None) -> None:
        """Send an ACK frame if one is due by ``now``; ``now`` None forces it."""
        if self.state is not SessionState.OPEN:
            return
        if self._delivered <= self._ack_sent and not self._completed:
            self._ack_due_since = None
            return
        if now is not None and self._ack_due_since is None:
            self._ack_due_since = now
        if now is not None:
            due = self._ack_due_at(writing=True)
            if due is None or now < due:
                return
        header: dict[str, Any] = {"s": self._delivered}
        if self._completed:
            header["d"] = self._completed
            self._completed = []
        self._out.extend(encode_frame(FrameKind.ACK, header))
        self._ack_sent = self._delivered
        self._ack_due_since = None

    def _ack_due_at(self, *, writing: bool) -> float | None:
        """When the pending acknowledgement must go: ``ack_delay`` after it was armed, or at once
        when a quarter of the window awaits it and a write is under way anyway (``writing``), or
        half the window with nothing else to write (the peer may be about to stop sending). An ACK
        alone costs both sides a wake-up: waking the writer for one per quarter window cut a
        stream of small messages by a third (bench/bus.py).

        get_timer() names this time and _flush_ack() compares with it: the same sum, since
        ``now - since >= delay`` can be false at ``since + delay`` in floating point."""
        since = self._ack_due_since
        if since is None:
            return None
        share = 4 if writing else 2
        if self._delivered - self._ack_sent >= max(1, self.config.message_window // share):
            return since
        return since + self.config.ack_delay

    def _emit(self, kind: FrameKind, header: dict[str, Any], now: float) -> None:
        self._out.extend(encode_frame(kind, header))
        self._last_sent = now

    # -- receiving -----------------------------------------------------------------------------

    def message_delivered(self, seq: int, now: float) -> None:
        """The application has taken message ``seq`` (and every one before it).

        Its acknowledgement is due within ``ack_delay`` (see :meth:`get_timer`), unless a message
        going the other way carries it first.
        """
        if seq > self._received:
            raise LocalProtocolError(f"message {seq} was never received")
        if seq > self._delivered:
            self._delivered = seq
            if self._ack_due_since is None:
                self._ack_due_since = now

    def consume(self, seq: int, nbytes: int) -> None:
        """The application has taken ``nbytes`` more of object ``seq``; grant the sender credit."""
        inc = self._incoming.get(seq)
        if inc is None:
            return
        if nbytes < 0 or inc.consumed + nbytes > inc.received:
            raise LocalProtocolError("consumed more object bytes than were received")
        inc.consumed += nbytes
        self._conn_consumed += nbytes
        if inc.verified and inc.consumed == inc.manifest.total:
            self._finish_incoming(seq)  # in any state: no later call would finish it
        if self.state is not SessionState.OPEN:
            return
        window = self.config.object_window
        if inc.granted < inc.manifest.total and inc.consumed + window - inc.granted >= window // 2:
            inc.granted = inc.consumed + window
            self._out.extend(encode_frame(FrameKind.CREDIT, {"s": seq, "l": inc.granted}))
        cwindow = self.config.connection_window
        if self._conn_consumed + cwindow - self._conn_granted >= cwindow // 2:
            self._conn_granted = self._conn_consumed + cwindow
            self._out.extend(encode_frame(FrameKind.CREDIT, {"l": self._conn_granted}))

    def receive_data(self, data: bytes | bytearray | memoryview, now: float) -> None:
        """Feed bytes from the current connection.

        ``data`` is read in place, not copied: every frame in it is decoded before this returns
        (object bytes become :class:`ChunkReceived` events whose data are views of ``data``),
        and the bytes of a frame it cuts short are copied. So the caller may reuse ``data`` once
        it has handled the events. (The session stops reading only when it ends, and then reads
        nothing more from this connection.)
        """
        if self.state not in (SessionState.OPEN, SessionState.HANDSHAKING):
            return
        self._last_received = now
        self._decoder.receive_data(data)
        try:
            while self.state in (SessionState.OPEN, SessionState.HANDSHAKING):
                event = self._decoder.next_event()
                if event is None:
                    break
                if isinstance(event, PayloadPiece):
                    self._on_piece(event)
                else:
                    self._on_frame(event, now)
        except RemoteProtocolError as exc:
            self._fail(exc, now)
        except ResumeRefusedError as exc:
            self._transition(_Input.CLOSE)
            self._events.append(SessionEnded(exc.reason, exc, exc.undelivered))

    def protocol_error(self, exc: RemoteProtocolError, now: float) -> None:
        """The application found the peer's input unacceptable (a bad message body): end the
        session as for any protocol error, telling the peer why."""
        if self.state is not SessionState.CLOSED:
            self._fail(exc, now)

    def _fail(self, exc: RemoteProtocolError, now: float) -> None:
        """A protocol error kills the session: tell the peer why, then close."""
        self._out.clear()
        self._emit(FrameKind.REFUSE, {"why": str(exc), "code": "protocol"}, now)
        self._transition(_Input.CLOSE)
        self._events.append(SessionEnded(str(exc), exc, self.undelivered))

    def _on_frame(self, frame: Frame, now: float) -> None:
        kind, header = frame.kind, frame.header
        if self.state is SessionState.HANDSHAKING:
            if kind is FrameKind.WELCOME:
                self._on_welcome(header)
                return
            if kind is FrameKind.REFUSE:
                self._on_refuse(header)
                return
            raise RemoteProtocolError(f"expected WELCOME, got {kind.name}")
        match kind:
            case FrameKind.MESSAGE:
                self._on_message(header, frame.payload)
            case FrameKind.ACK:
                self._on_ack(header)
            case FrameKind.CREDIT:
                self._on_credit(header)
            case FrameKind.HEARTBEAT:
                pass
            case FrameKind.CLOSE:
                why = header.get("why")
                reason = why if isinstance(why, str) else "closed by peer"
                self._transition(_Input.CLOSE)
                self._events.append(SessionEnded(reason, None, self.undelivered))
            case FrameKind.REFUSE:
                self._on_refuse(header)
            case FrameKind.HELLO | FrameKind.WELCOME:
                raise RemoteProtocolError(f"unexpected {kind.name} in an open session")
            case FrameKind.CHUNK:  # pragma: no cover - streamed kinds arrive as PayloadPiece
                raise AssertionError("CHUNK frames are streamed")

    def _on_welcome(self, header: dict[str, Any]) -> None:
        sid = header.get("sid")
        if not (isinstance(sid, bytes) and len(sid) == 16):
            raise RemoteProtocolError("WELCOME: session id must be 16 bytes")
        resumed = header.get("res") is True
        if self.session_id is not None and (not resumed or sid != self.session_id):
            raise RemoteProtocolError("WELCOME did not resume the session named in HELLO")
        self.session_id = sid
        self._transition(_Input.WELCOME)
        self._handshake_deadline = None
        self._start_resume(
            _nonneg(header, "r", "WELCOME"),
            _offsets(header.get("po"), "WELCOME"),
            _positive(header, "w", "WELCOME"),
            _nonneg(header, "cw", "WELCOME"),
            _positive(header, "mw", "WELCOME"),
        )
        self._events.append(SessionOpened(sid, resumed))

    def _on_refuse(self, header: dict[str, Any]) -> None:
        why = header.get("why")
        reason = why if isinstance(why, str) else "refused by peer"
        code = header.get("code")
        if code == "resume":
            raise ResumeRefusedError(reason, self.undelivered)
        # Refused while opening: a handshake failure; refused later: the peer saw a violation.
        kind = HandshakeFailure.UNKNOWN  # a code from a peer is anything msgpack can carry
        if isinstance(code, str):
            kind = _REFUSAL_KINDS.get(code, kind)
        error = (
            HandshakeError(reason, kind=kind)
            if self.state is SessionState.HANDSHAKING
            else RemoteProtocolError(f"peer ended the session: {reason}")
        )
        self._transition(_Input.CLOSE)
        self._events.append(SessionEnded(reason, error, self.undelivered))

    def _on_message(self, header: dict[str, Any], payload: bytes | memoryview) -> None:
        seq = _positive(header, "s", "MESSAGE")
        if "a" in header or "d" in header:
            self._on_ack({"s": header.get("a", self._acked), "d": header.get("d", [])})
        if seq <= self._received:
            return  # a duplicate of something already delivered
        if seq != self._received + 1:
            raise RemoteProtocolError(f"message {seq} arrived before {self._received + 1}")
        manifest = None
        if "o" in header:
            manifest = Manifest.from_wire(header["o"], max_total=self.config.max_object_size)
        if seq - self._delivered > self.config.message_window:
            raise RemoteProtocolError("sender exceeded the message window")
        self._received = seq
        self._events.append(MessageReceived(seq, bytes(payload), manifest))
        if manifest is None:
            return
        if manifest.total == 0:  # nothing to stream: complete on arrival
            self._report_done(seq)
            self._events.append(ObjectCompleted(seq))
            return
        self._incoming[seq] = _Incoming(manifest, granted=self.config.announced_object_window)

    def receive_target(self) -> tuple[int, int, int] | None:
        """Where the next bytes from the peer go, if they can be received in place.

        While the current frame is an object chunk and nothing is buffered, returns
        ``(object id, offset in the object, at most this many bytes)``: the driver may read those
        bytes straight into the object's memory and report them with :meth:`receive_in_place`.
        Otherwise None, and bytes go through :meth:`receive_data` as usual.
        """
        if self.state is not SessionState.OPEN:
            return None
        target = self._decoder.payload_target()
        if target is None:
            return None
        header, done, remaining = target
        seq, base = header.get("s"), header.get("o")
        if not isinstance(seq, int) or not isinstance(base, int):
            return None  # let receive_data() report the bad header
        inc = self._incoming.get(seq)
        if inc is None or base + done != inc.received:
            return None  # unknown object or a duplicate: the ordinary path sorts it out
        return seq, base + done, remaining

    def receive_in_place(self, data: memoryview, now: float) -> None:
        """``data`` holds the next bytes of the chunk :meth:`receive_target` named, already in
        their final place."""
        if self.state is not SessionState.OPEN:
            return
        self._last_received = now
        try:
            self._on_piece(self._decoder.payload_received_in_place(data), placed=True)
        except RemoteProtocolError as exc:
            self._fail(exc, now)

    def _on_piece(self, piece: PayloadPiece, *, placed: bool = False) -> None:
        if self.state is SessionState.HANDSHAKING:  # _on_frame's check; chunks bypass it
            raise RemoteProtocolError(f"expected WELCOME, got {piece.kind.name}")
        header = piece.header
        seq = _positive(header, "s", "CHUNK")
        inc = self._incoming.get(seq)
        if inc is None:
            raise RemoteProtocolError(f"chunk for unknown object {seq}")
        offset = _nonneg(header, "o", "CHUNK") + piece.offset
        data = piece.data
        if offset + len(data) > inc.manifest.total:
            raise RemoteProtocolError(f"chunk of object {seq} runs past its end")
        if offset > inc.received:
            raise RemoteProtocolError(f"chunk of object {seq} skips bytes {inc.received}..{offset}")
        if offset < inc.received:  # bytes already held (a duplicate after resumption)
            data = data[inc.received - offset :]
            offset = inc.received
        if inc.received + len(data) > inc.granted:
            raise RemoteProtocolError(f"object {seq}: sender exceeded its flow-control credit")
        self._conn_received += len(data)
        if self._conn_received > self._conn_granted:
            raise RemoteProtocolError("sender exceeded its connection flow-control credit")
        if len(data):
            inc.hasher.update(data)
            inc.received += len(data)
            self._events.append(ChunkReceived(seq, offset, data, placed))
        if piece.last and inc.received == inc.manifest.total and not inc.verified:
            digest = header.get("h")
            if digest is None:
                raise RemoteProtocolError(f"object {seq}: last chunk carries no digest")
            if digest != inc.hasher.digest():
                del self._incoming[seq]
                self._report_done(seq)
                self._events.append(ObjectFailed(seq, DigestMismatchError(seq)))
                return
            inc.verified = True
            if inc.consumed == inc.manifest.total:
                self._finish_incoming(seq)

    def _finish_incoming(self, seq: int) -> None:
        del self._incoming[seq]
        self._report_done(seq)
        self._events.append(ObjectCompleted(seq))

    def _report_done(self, seq: int) -> None:
        """Tell the sender it may forget object ``seq``: on the next message or ACK frame, due
        within ``ack_delay`` of the last bytes received."""
        self._completed.append(seq)
        if self._ack_due_since is None:
            self._ack_due_since = self._last_received

    def _on_ack(self, header: dict[str, Any]) -> None:
        upto = _nonneg(header, "s", "ACK")
        if upto >= self._next_seq:
            raise RemoteProtocolError(f"ACK for message {upto}, never sent")
        self._acked = max(self._acked, upto)
        done = header.get("d", [])
        if not isinstance(done, list):
            raise RemoteProtocolError("ACK: completed objects must be a list")
        self._acknowledge(upto)
        for seq in done:
            if not isinstance(seq, int) or seq >= self._next_seq:
                raise RemoteProtocolError("ACK: completed object id was never sent")
            self._unacked.pop(seq, None)
            if seq in self._streaming:
                self._streaming.remove(seq)

    def _acknowledge(self, upto: int) -> None:
        """The peer has taken every message up to ``upto``: forget them (objects stay until done)."""
        # Entries up to upto are the newly acked messages and the objects still in flight, so
        # this walk is as short as popping from the front, which would stop at such an object.
        forget = []
        for seq, out in self._unacked.items():
            if seq > upto:
                break
            out.delivered = True
            if out.obj is None:
                forget.append(seq)
        for seq in forget:
            del self._unacked[seq]

    def _on_credit(self, header: dict[str, Any]) -> None:
        limit = _nonneg(header, "l", "CREDIT")
        if "s" not in header:
            self._conn_limit = max(self._conn_limit, limit)
            return
        out = self._unacked.get(_positive(header, "s", "CREDIT"))
        if out is not None and out.obj is not None:
            out.limit = max(out.limit, limit)

    # -- time ----------------------------------------------------------------------------------

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or None."""
        if self.state is SessionState.HANDSHAKING:
            return self._handshake_deadline
        if self.state is not SessionState.OPEN:
            return None
        timer = min(
            self._last_sent + self.config.heartbeat_interval,
            self._last_received + self.config.liveness_timeout,
        )
        due = self._ack_due_at(writing=False)
        return timer if due is None else min(timer, due)

    def handle_timer(self, now: float) -> None:
        """Send a heartbeat when quiet; declare the connection dead when the peer is silent."""
        if self.state is SessionState.HANDSHAKING:
            if self._handshake_deadline is not None and now >= self._handshake_deadline:
                timeout = self.config.handshake_timeout
                self._events.append(
                    ConnectionFailed(
                        HandshakeError(
                            f"no WELCOME within {timeout:g} s", kind=HandshakeFailure.TRANSIENT
                        )
                    )
                )
                self.connection_lost(now)
            return
        if self.state is not SessionState.OPEN:
            return
        if now - self._last_received >= self.config.liveness_timeout:
            self._events.append(ConnectionFailed(PeerTimeoutError(self.config.liveness_timeout)))
            self.connection_lost(now)
            return
        if now - self._last_sent >= self.config.heartbeat_interval:
            self._emit(FrameKind.HEARTBEAT, {}, now)

    # -- events --------------------------------------------------------------------------------

    def events_received(self) -> list[SessionEvent]:
        events, self._events = self._events, []
        return events


def _wire_offsets(offsets: dict[int, int]) -> dict[str, int]:
    return {str(seq): offset for seq, offset in offsets.items()}
