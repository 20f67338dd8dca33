"""A sans-IO harness: a client and a server :class:`Session` joined by an in-memory network.

Theory of operation
-------------------

Nothing here sleeps or opens a socket. :class:`Pair` owns the clock (``now``, moved by
:meth:`Pair.advance`), one :class:`Wire` per direction and one :class:`Endpoint` per side.

- A :class:`Wire` is one direction of the *current* connection: the frames a session wrote and the
  peer has not read yet, with how much of the first one was already read. Keeping whole frames lets
  a test deliver any number of bytes (splitting a frame anywhere), corrupt a payload byte, or insert
  a frame at a boundary. A cut clears both wires: bytes in flight are lost, as with TCP.
- An :class:`Endpoint` plays the application and the driver of one side. It collects the session's
  events after every call into the session (``ChunkReceived.data`` is only valid until the next
  call), checks as it goes that messages arrive exactly once and in order and that object bytes
  arrive contiguously (none re-delivered, none skipped), copies object bytes into preallocated
  arrays as the real link does, and, when told to, consumes them and marks messages delivered.
- The server side reads the HELLO of each new connection with a :class:`HelloReader` and accepts
  it (resuming) or refuses it with ``refuse_frame(..., "resume")`` when it names a session the
  server does not hold, as the bus does.

The checks raise ``AssertionError``, so every test that uses the harness checks them for free.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import msgpack
import numpy as np
import numpy.typing as npt

from transport.errors import HandshakeError, TransportError
from transport.protocol.frames import PREFIX, FrameKind
from transport.protocol.objects import IncomingArrays, Manifest, OutgoingObject
from transport.protocol.session import (
    ChunkReceived,
    ConnectionFailed,
    HelloReader,
    MessageReceived,
    ObjectCompleted,
    ObjectFailed,
    Role,
    Session,
    SessionConfig,
    SessionEnded,
    SessionEvent,
    SessionOpened,
    SessionState,
    refuse_frame,
)

__all__ = [
    "SMALL",
    "Clock",
    "Endpoint",
    "Pair",
    "Side",
    "Wire",
    "WireFrame",
    "expected_bytes",
    "split_frames",
]

Side = Literal["client", "server"]

#: Small limits so that objects of a few KiB span many chunks and windows.
SMALL = SessionConfig(
    max_frame_size=8192,
    chunk_size=64,
    object_window=256,
    connection_window=1024,
    message_window=4,
    heartbeat_interval=1.0,
    liveness_timeout=5.0,
    handshake_timeout=3.0,
)


def split_frames(data: bytes) -> list[bytes]:
    """Cut a byte string made of whole frames into its frames (by their length prefixes)."""
    frames: list[bytes] = []
    pos = 0
    while pos < len(data):
        _, _, header_len, payload_len = PREFIX.unpack_from(data, pos)
        end = pos + PREFIX.size + header_len + payload_len
        frames.append(data[pos:end])
        pos = end
    assert pos == len(data), "data_to_send() returned a partial frame"
    return frames


@dataclass(frozen=True)
class WireFrame:
    """One frame as written, with its kind and header decoded for the test's bookkeeping."""

    raw: bytes
    kind: FrameKind
    header: dict[str, Any]

    @classmethod
    def parse(cls, raw: bytes) -> WireFrame:
        _, kind, header_len, _ = PREFIX.unpack_from(raw)
        header = msgpack.unpackb(raw[PREFIX.size : PREFIX.size + header_len], raw=False)
        assert isinstance(header, dict)
        return cls(raw, FrameKind(kind), header)

    @property
    def payload(self) -> bytes:
        _, _, header_len, _ = PREFIX.unpack_from(self.raw)
        return self.raw[PREFIX.size + header_len :]


class Wire:
    """One direction of the current connection: frames written, not yet read by the peer."""

    def __init__(self) -> None:
        self.frames: deque[WireFrame] = deque()
        self.head = 0  # bytes of frames[0] already read
        #: Every frame ever written in this direction, over all connections.
        self.history: list[WireFrame] = []
        #: Frames read whole by the peer on this connection, and on the connections before it.
        self.delivered: list[WireFrame] = []
        self.delivered_before: list[WireFrame] = []

    def write(self, buffers: Sequence[bytes | memoryview]) -> None:
        for raw in split_frames(b"".join(buffers)):
            frame = WireFrame.parse(raw)
            self.frames.append(frame)
            self.history.append(frame)

    @property
    def pending(self) -> int:
        return sum(len(f.raw) for f in self.frames) - self.head

    @property
    def at_boundary(self) -> bool:
        return self.head == 0

    def read(self, n: int | None = None) -> bytes:
        """Up to ``n`` bytes (all when None), splitting a frame wherever ``n`` falls."""
        out = bytearray()
        while self.frames and (n is None or len(out) < n):
            raw = self.frames[0].raw
            take = len(raw) - self.head if n is None else min(len(raw) - self.head, n - len(out))
            out += raw[self.head : self.head + take]
            self.head += take
            if self.head == len(raw):
                self.delivered.append(self.frames.popleft())
                self.head = 0
        return bytes(out)

    def clear(self) -> None:
        """The connection is gone: frames in flight are lost."""
        self.frames.clear()
        self.head = 0
        self.delivered_before += self.delivered
        self.delivered.clear()

    def chunk_bytes(self, seq: int | None = None) -> int:
        """Object payload bytes ever written in this direction (for object ``seq``, or all)."""
        return sum(
            len(f.payload)
            for f in self.history
            if f.kind is FrameKind.CHUNK and (seq is None or f.header["s"] == seq)
        )

    def kinds(self) -> list[FrameKind]:
        """Kinds of the frames in flight."""
        return [f.kind for f in self.frames]


def expected_bytes(arrays: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """An object's wire bytes, computed independently of :class:`OutgoingObject`."""
    parts = []
    for array in arrays.values():
        little = array.astype(array.dtype.newbyteorder("<"), copy=False)
        parts.append(np.ascontiguousarray(little).tobytes())
    return b"".join(parts)


@dataclass
class IncomingState:
    """What the application holds of one received object."""

    manifest: Manifest
    arrays: IncomingArrays
    data: bytearray = field(default_factory=bytearray)
    consumed: int = 0
    completed: bool = False
    failed: TransportError | None = None

    @property
    def buffered(self) -> int:
        return len(self.data) - self.consumed

    @property
    def open(self) -> bool:
        return not self.completed and self.failed is None


class Clock:
    """The fake clock both sides read; only :meth:`Pair.advance` moves it."""

    def __init__(self, now: float = 0.0) -> None:
        self.now = now


class Endpoint:
    """One side's application and driver: collects events and checks what arrives."""

    def __init__(
        self,
        session: Session,
        clock: Clock,
        *,
        auto_consume: bool = True,
        auto_deliver: bool = True,
    ) -> None:
        self.session = session
        self.clock = clock
        self.auto_consume = auto_consume
        self.auto_deliver = auto_deliver
        self.messages: list[MessageReceived] = []
        self.objects: dict[int, IncomingState] = {}
        self.log: list[SessionEvent] = []  # every event but ChunkReceived, in order
        self.order: list[tuple[str, int]] = []  # ("message" | "chunk" | "completed", seq)
        self.opened: list[SessionOpened] = []
        self.failures: list[ConnectionFailed] = []
        self.ended: list[SessionEnded] = []
        self.delivered = 0
        #: What this side sent: seq -> (body, object bytes or None).
        self.sent: dict[int, tuple[bytes, bytes | None]] = {}

    @property
    def state(self) -> SessionState:
        return self.session.state

    def collect(self) -> None:
        """Take the session's events, check them, and act as the application is told to."""
        while True:
            events = self.session.events_received()
            if not events:
                return
            for event in events:
                self._on_event(event)
            if self.auto_consume:
                for seq, inc in list(self.objects.items()):
                    if inc.buffered and inc.open:
                        self._consume(seq, inc.buffered)
            if self.auto_deliver and self.messages and self.delivered < self.messages[-1].seq:
                self.deliver_messages()

    def _on_event(self, event: SessionEvent) -> None:
        if not isinstance(event, ChunkReceived):
            self.log.append(event)
        match event:
            case SessionOpened():
                self.opened.append(event)
            case MessageReceived(seq=seq, manifest=manifest):
                expected = self.messages[-1].seq + 1 if self.messages else 1
                assert seq == expected, f"message {seq} delivered, expected {expected}"
                self.messages.append(event)
                self.order.append(("message", seq))
                if manifest is not None:
                    self.objects[seq] = IncomingState(manifest, IncomingArrays(manifest))
            case ChunkReceived(seq=seq, offset=offset, data=data):
                inc = self.objects[seq]
                assert inc.open, f"bytes of object {seq} after it ended"
                assert offset == len(inc.data), (
                    f"object {seq}: bytes at {offset}, the application holds {len(inc.data)}"
                )
                assert len(data) > 0
                inc.arrays.write(offset, data)
                inc.data += data
                self.order.append(("chunk", seq))
            case ObjectCompleted(seq=seq):
                inc = self.objects[seq]
                assert inc.open, f"object {seq} completed twice"
                assert len(inc.data) == inc.manifest.total, f"object {seq} completed short"
                inc.completed = True
                self.order.append(("completed", seq))
            case ObjectFailed(seq=seq, error=error):
                inc = self.objects[seq]
                assert inc.open, f"object {seq} failed after it ended"
                inc.failed = error
            case ConnectionFailed():
                self.failures.append(event)
            case SessionEnded():
                assert not self.ended, "session ended twice"
                self.ended.append(event)

    def _consume(self, seq: int, nbytes: int) -> None:
        inc = self.objects[seq]
        assert 0 <= nbytes <= inc.buffered
        inc.consumed += nbytes
        self.session.consume(seq, nbytes)

    def catch_up(self) -> None:
        """The application takes everything it holds, and from now on takes what arrives."""
        self.auto_consume = self.auto_deliver = True
        for seq, inc in list(self.objects.items()):
            if inc.buffered and inc.open:
                self._consume(seq, inc.buffered)
        if self.messages and self.delivered < self.messages[-1].seq:
            self.deliver_messages()
        self.collect()

    def consume(self, seq: int, nbytes: int) -> None:
        """The application takes ``nbytes`` more of object ``seq``."""
        self._consume(seq, nbytes)
        self.collect()

    def deliver_messages(self, upto: int | None = None) -> None:
        """The application has taken every message up to ``upto`` (default: all received)."""
        upto = self.messages[-1].seq if upto is None else upto
        self.session.message_delivered(upto, self.clock.now)
        self.delivered = max(self.delivered, upto)

    def bodies(self) -> list[bytes]:
        return [m.body for m in self.messages]

    def arrays(self, seq: int) -> dict[str, npt.NDArray[Any]]:
        return self.objects[seq].arrays.arrays


class Pair:
    """A client and a server session over an in-memory connection, with a fake clock."""

    def __init__(
        self,
        config: SessionConfig = SMALL,
        server_config: SessionConfig | None = None,
        *,
        now: float = 0.0,
        auto_consume: bool = True,
        auto_deliver: bool = True,
    ) -> None:
        self.clock = Clock(now)
        self.config = config
        self.server_config = server_config or config
        self.client = Endpoint(
            Session(Role.CLIENT, config),
            self.clock,
            auto_consume=auto_consume,
            auto_deliver=auto_deliver,
        )
        self.server = Endpoint(
            Session(Role.SERVER, self.server_config),
            self.clock,
            auto_consume=auto_consume,
            auto_deliver=auto_deliver,
        )
        self.to_server = Wire()
        self.to_client = Wire()
        self.reader: HelloReader | None = None
        self.connected = False
        self.connections = 0
        self.resend_allowance: dict[Side, int] = {"client": 0, "server": 0}

    @property
    def now(self) -> float:
        return self.clock.now

    # -- topology -------------------------------------------------------------------------------

    def endpoint(self, side: Side) -> Endpoint:
        return self.client if side == "client" else self.server

    def peer(self, side: Side) -> Endpoint:
        return self.server if side == "client" else self.client

    def wire_to(self, side: Side) -> Wire:
        return self.to_client if side == "client" else self.to_server

    def wire_from(self, side: Side) -> Wire:
        return self.to_server if side == "client" else self.to_client

    # -- connections ----------------------------------------------------------------------------

    def connect(self) -> None:
        """A new connection: the client says HELLO, the server starts reading it."""
        assert not self.connected
        self.connected = True
        self.connections += 1
        self.reader = HelloReader(self.server_config, self.now)
        self.client.session.connect(self.now)
        self.client.collect()

    def open(self) -> None:
        """Connect and run the handshake (and whatever follows) to quiet."""
        self.connect()
        self.pump()

    def cut(self) -> None:
        """The connection breaks: bytes in flight are lost, both sides are told.

        Each object not yet wholly at its receiver may cost its sender one object window of bytes
        sent again; :meth:`assert_resend_bounded` holds the sessions to that.
        """
        for side in ("client", "server"):
            sender, receiver = self.endpoint(side), self.peer(side)
            window = receiver.session.config.object_window
            for seq, (_, data) in sender.sent.items():
                inc = receiver.objects.get(seq)
                if data and (inc is None or len(inc.data) < len(data)):
                    self.resend_allowance[side] += window
        self.to_server.clear()
        self.to_client.clear()
        self.reader = None
        self.connected = False
        for ep in (self.client, self.server):
            if ep.state in (SessionState.OPEN, SessionState.HANDSHAKING):
                ep.session.connection_lost(self.now)
            ep.collect()

    def restart_server(self) -> None:
        """The server forgets every session (a restart, or an expired session)."""
        self.server = Endpoint(
            Session(Role.SERVER, self.server_config),
            self.clock,
            auto_consume=self.server.auto_consume,
            auto_deliver=self.server.auto_deliver,
        )

    # -- moving bytes ---------------------------------------------------------------------------

    def send(
        self, side: Side, body: bytes, arrays: Mapping[str, npt.NDArray[Any]] | None = None
    ) -> int:
        ep = self.endpoint(side)
        obj = None if arrays is None else OutgoingObject(arrays)
        seq = ep.session.send_message(body, obj)
        assert seq not in ep.sent
        ep.sent[seq] = (body, None if arrays is None else expected_bytes(arrays))
        ep.collect()
        return seq

    def flush(self, side: Side | None = None, max_chunk_bytes: int | None = None) -> None:
        """Move what the session(s) have to say onto the wire."""
        for name in ("client", "server") if side is None else (side,):
            ep = self.endpoint(name)
            for _ in range(5000):  # flow control stops a sender long before this
                buffers = ep.session.data_to_send(self.now, max_chunk_bytes)
                if not buffers:
                    break
                if self.connected:
                    self.wire_from(name).write(buffers)
            else:
                raise AssertionError(f"the {name}'s data_to_send() never runs dry")
            ep.collect()

    def deliver(self, to: Side, n: int | None = None) -> int:
        """Deliver up to ``n`` bytes (all when None) in flight to ``to``; returns how many."""
        data = self.wire_to(to).read(n)
        if data:
            self.feed(to, data)
        return len(data)

    def feed(self, to: Side, data: bytes) -> None:
        """Hand ``data`` to ``to`` as its driver would: to the HelloReader first on the server."""
        if to == "client":
            self.client.session.receive_data(data, self.now)
            self.client.collect()
            return
        if self.reader is None:
            self.server.session.receive_data(data, self.now)
            self.server.collect()
            return
        hello = self.reader.receive_data(data)
        if hello is None:
            return
        leftover = self.reader.take_buffered()
        self.reader = None
        known = self.server.session.session_id
        if hello.session_id is not None and (
            hello.session_id != known or self.server.state is SessionState.CLOSED
        ):
            self.to_client.write(refuse_frame("unknown or expired session", "resume"))
            return
        if hello.session_id is None and self.server.state is not SessionState.IDLE:
            self.restart_server()  # a new session replaces the old one
        self.server.session.accept(hello, self.now, leftover=leftover)
        self.server.collect()

    def pump(self, max_rounds: int = 1000) -> None:
        """Flush and deliver in both directions until nothing moves."""
        for _ in range(max_rounds):
            self.flush()
            if not (self.to_server.pending or self.to_client.pending):
                return
            self.deliver("server")
            self.deliver("client")
        raise AssertionError("the sessions never went quiet")

    def settle(self) -> None:
        """Pump, then let the delayed acknowledgements fall due and pump again: afterwards each
        side knows everything the other has taken."""
        self.pump()
        self.advance(
            max(self.client.session.config.ack_delay, self.server.session.config.ack_delay)
        )
        self.pump()

    # -- checks -------------------------------------------------------------------------------

    def assert_consistent(self) -> None:
        """What each side received is a prefix of what the other sent, byte for byte."""
        for side in ("client", "server"):
            sender, receiver = self.endpoint(side), self.peer(side)
            for message in receiver.messages:
                body, data = sender.sent[message.seq]
                assert message.body == body, f"message {message.seq} arrived altered"
                if data is None:
                    assert message.manifest is None
                    continue
                inc = receiver.objects[message.seq]
                assert inc.manifest.total == len(data)
                assert inc.failed is None, f"object {message.seq} failed: {inc.failed!r}"
                assert inc.data == data[: len(inc.data)], f"object {message.seq} bytes differ"

    def assert_resend_bounded(self) -> None:
        """No side has sent more object bytes again than one window per object per cut."""
        for side in ("client", "server"):
            resent = self.endpoint(side).session.resent_object_bytes
            assert resent <= self.resend_allowance[side], (side, resent)

    def assert_all_delivered(self) -> None:
        """Every message sent either way arrived once, in order, with its object complete."""
        self.assert_consistent()
        for side in ("client", "server"):
            sender, receiver = self.endpoint(side), self.peer(side)
            assert [m.seq for m in receiver.messages] == sorted(sender.sent)
            for seq, (_, data) in sender.sent.items():
                if data is not None:
                    inc = receiver.objects[seq]
                    assert inc.completed, f"object {seq} incomplete"
                    assert inc.data == data

    # -- time -----------------------------------------------------------------------------------

    def advance(self, dt: float) -> None:
        """Move the clock; run due timers; a failed connection is dropped by its driver."""
        self.clock.now += dt
        dropped = False
        for ep in (self.client, self.server):
            timer = ep.session.get_timer()
            if timer is not None and self.now >= timer:
                before = len(ep.failures)
                ep.session.handle_timer(self.now)
                ep.collect()
                dropped |= len(ep.failures) > before
        if self.reader is not None:
            try:
                self.reader.check_timer(self.now)
            except HandshakeError:
                dropped = True
        if dropped and self.connected:
            self.cut()
