"""A link: the bus's connection to one peer node, driving a sans-IO session over AnyIO streams.

Theory of operation
-------------------

A :class:`Link` owns one :class:`~transport.protocol.session.Session` for its whole life, across
any number of connections. While a connection is up, two tasks run it:

- the *reader* feeds received bytes to the session and handles its events: a message goes to the
  link's inbound queue, object bytes go to their :class:`~transport.objects.IncomingObject`;
- the *writer* writes whatever the session has to send, a little object data at a time so control
  frames interleave, and wakes up for the session's timers (heartbeat, liveness).

A task that sends a message writes it itself when no write is under way (one lock guards the
stream), which saves a task switch on each side of a round trip; otherwise the writer picks it up.

The reader hands a message straight to its actor's mailbox when the mailbox has room and nothing is
queued ahead of it. Otherwise the message goes to a third task, the *deliverer*, which lives as long
as the link and waits, in order, while the target mailbox is full. A message is acknowledged only
once delivered, so a slow actor pushes back on its remote sender while the reader keeps reading
(and heartbeats keep the connection alive).

When a connection breaks, the link keeps its session; the client side dials again and resumes.
"""

from __future__ import annotations

import asyncio
import functools
import math
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.abc
import msgpack
import sniffio

from transport._sslsocket import SSLSocketStream
from transport.errors import (
    ConnectionBrokenError,
    ConnectionClosedError,
    LocalProtocolError,
    RemoteProtocolError,
    TransportError,
)
from transport.objects import IncomingObject, RegionPool
from transport.protocol.objects import OutgoingObject
from transport.protocol.session import (
    ChunkReceived,
    ConnectionFailed,
    MessageReceived,
    ObjectCompleted,
    ObjectFailed,
    Role,
    Session,
    SessionConfig,
    SessionEnded,
    SessionOpened,
)
from transport.tls import connection_broken

__all__ = ["Link", "event_loop_clock"]


def event_loop_clock() -> Callable[[], float]:
    """The running event loop's clock, found once: ``anyio.current_time()`` finds the backend on
    every call, which costs more than the rest of a small message's bookkeeping."""
    library = sniffio.current_async_library()
    if library == "trio":
        import trio  # only where trio is running: asyncio users need not import it

        return trio.current_time
    if library == "asyncio":
        return asyncio.get_running_loop().time
    return anyio.current_time  # pragma: no cover - another AnyIO backend


RECEIVE_SIZE = 1 << 20
HEADER_PEEK = 256


class Link:
    """The connection to one peer node; see the module docstring."""

    def __init__(
        self,
        peer: str,
        role: Role,
        config: SessionConfig,
        deliver: Callable[[Link, dict[str, Any], IncomingObject | None], Awaitable[None]],
        try_deliver: Callable[[Link, dict[str, Any], IncomingObject | None], bool],
        on_closed: Callable[[Link, TransportError | None], None],
        regions: RegionPool | None = None,
    ) -> None:
        self.peer = peer
        #: Who the peer is (its authenticated name): ``peer`` itself, unless the peer may hold
        #: several sessions at once and ``peer`` is this session's address (``name#n``).
        self.identity = peer
        self._regions = regions
        self.session = Session(role, config)
        self._now: Callable[[], float] = anyio.current_time
        self.peer_certificate: bytes | None = None
        self._deliver = deliver
        self._try_deliver = try_deliver
        self._queued = 0  # messages waiting in the deliverer's queue
        self._watched = False  # somebody holds state_event(): the next change must set it
        self._window_wanted = False  # a sender waits for the peer's message window to open
        self._on_closed = on_closed
        self._inbound_send, self._inbound_receive = anyio.create_memory_object_stream[
            tuple[int, dict[str, Any], IncomingObject | None]
        ](math.inf)
        self._objects: dict[int, IncomingObject] = {}
        self._wakeup = anyio.Event()
        self._state_changed = anyio.Event()
        self._connection_scope: anyio.CancelScope | None = None
        self._stream: anyio.abc.ByteStream | None = None
        self._write_lock = anyio.Lock(fast_acquire=True)  # no yield when uncontended
        self._writer_sleep: anyio.CancelScope | None = None
        self.closed = False
        self.close_error: TransportError | None = None
        #: The reason the peer gave when it closed the session in order (a CLOSE frame).
        self.closed_by_peer: str | None = None
        #: The error that ended the link reaches the application as an exception (see kill).
        self.error_raised = False
        self.last_error: TransportError | None = None
        self.connections = 0
        #: The most object bytes ever held here that the application had not consumed yet.
        self.peak_buffered_bytes = 0

    # -- state ---------------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self._connection_scope is not None and self.session.session_id is not None

    def _wake(self) -> None:
        self._wakeup.set()

    def _changed(self) -> None:
        if self._watched:
            self._watched = False
            self._state_changed.set()
            self._state_changed = anyio.Event()

    def state_event(self) -> anyio.Event:
        """The event the next change of state sets. Take it *before* checking the state, so that
        a change in between is not missed."""
        self._watched = True
        return self._state_changed

    async def wait_changed(self) -> None:
        """Wait for the next change of state (connected, opened, closed, window opened)."""
        await self.state_event().wait()

    # -- sending -------------------------------------------------------------------------------

    async def send(self, envelope: dict[str, Any], arrays: OutgoingObject | None = None) -> int:
        """Queue a message, waiting while the peer holds a full window of undelivered messages."""
        try:
            body: bytes = msgpack.packb(envelope, use_bin_type=True)
        except (TypeError, ValueError, OverflowError) as exc:  # a set, an object, a huge int
            raise LocalProtocolError(f"message body cannot be sent: {exc}") from exc
        while not self.session.send_window_open:
            self._window_wanted = True
            if self.closed:
                raise ConnectionClosedError(f"link to {self.peer} is closed")
            await self.wait_changed()
        if self.closed:
            raise ConnectionClosedError(f"link to {self.peer} is closed")
        seq = self.session.send_message(body, arrays)
        await self._flush()
        return seq

    async def _flush(self) -> None:
        """Write what the session has to send now, unless a write is already under way."""
        stream, scope = self._stream, self._connection_scope
        if stream is None or scope is None or self._write_lock.locked():
            self._wake()
            return
        await self._write_pending(stream, scope)
        if self.session.has_pending_chunks:
            self._wake()

    async def _write_pending(self, stream: anyio.abc.ByteStream, scope: anyio.CancelScope) -> bool:
        """Write one batch from the session; False when the connection is over.

        A session closed while a batch was being written has its last frame (CLOSE, REFUSE)
        queued behind that batch: it is written too before the connection ends.
        """
        async with self._write_lock:
            while True:
                buffers = self.session.data_to_send(self._now())
                if buffers:
                    try:
                        await _write_all(stream, buffers)
                    except Exception as exc:  # anyio, OS and ssl errors: translate at the edge
                        self._connection_failed(connection_broken(exc), scope)
                        return False
                closed = self.session.state.value == "closed"
                if not (closed and self.session.wants_write):
                    break
        if closed:
            scope.cancel()
            return False
        return True

    # -- the deliverer ---------------------------------------------------------------------------

    async def run_deliverer(self) -> None:
        async with self._inbound_receive:
            async for seq, envelope, obj in self._inbound_receive:
                await self._deliver(self, envelope, obj)
                self._queued -= 1
                if not self.closed:
                    self.session.message_delivered(seq, self._now())
                    self._timers_changed()

    # -- one connection ------------------------------------------------------------------------

    async def run_connection(self, stream: anyio.abc.ByteStream, leftover: bytes = b"") -> None:
        """Drive the session over ``stream`` until it breaks or the session ends.

        Returns normally when the connection is over; the reason is in the session's events
        (handled here). Raises only cancellation.
        """
        self.connections += 1
        self._now = event_loop_clock()
        try:
            async with anyio.create_task_group() as tg:
                self._connection_scope = tg.cancel_scope
                self._stream = stream
                self._changed()
                tg.start_soon(self._writer, stream, tg.cancel_scope)
                if leftover:
                    self.session.receive_data(leftover, self._now())
                # Events may be waiting already (the session refused the HELLO, say).
                self._handle_events(tg.cancel_scope)
                await self._reader(stream, tg.cancel_scope)
        finally:
            self._connection_scope = None
            self._stream = None
            if not self.closed:
                self.session.connection_lost(self._now())
            with anyio.CancelScope(shield=True):
                await _close_quietly(stream)
            self._changed()

    async def _reader(self, stream: anyio.abc.ByteStream, scope: anyio.CancelScope) -> None:
        session = self.session
        # A stream over a real socket drains every available TLS record in one call, and can
        # decrypt object bytes straight into the arrays they belong to.
        receive = getattr(stream, "receive_view", None) or stream.receive
        receive_into = getattr(stream, "receive_into", None)
        size = RECEIVE_SIZE
        while True:
            try:
                if receive_into is not None and (place := self._placement()) is not None:
                    n = await receive_into(place)
                    session.receive_in_place(place[:n], self._now())
                    self._handle_events(scope)
                    # Mid-transfer, the next frame is most likely another chunk: read little
                    # more than its header, so that its payload too lands in place.
                    size = HEADER_PEEK
                    continue
                data = await receive(size)
                size = RECEIVE_SIZE
            except anyio.EndOfStream:
                self._connection_failed(ConnectionBrokenError("peer closed the connection"), scope)
                return
            except Exception as exc:  # anyio, OS and ssl errors: translate at the edge
                self._connection_failed(connection_broken(exc), scope)
                return
            session.receive_data(data, self._now())
            self._handle_events(scope)

    async def _writer(self, stream: anyio.abc.ByteStream, scope: anyio.CancelScope) -> None:
        session = self.session
        while True:
            now = self._now()
            timer = session.get_timer()
            if timer is not None and now >= timer:
                session.handle_timer(now)
                self._handle_events(scope)
            if not await self._write_pending(stream, scope):
                return
            if session.has_pending_chunks:
                continue
            if self._watched and session.all_sent:
                self._changed()  # wait_sent() may go on
            timer = session.get_timer()
            with anyio.CancelScope(deadline=math.inf if timer is None else timer) as sleep:
                self._writer_sleep = sleep
                await self._wakeup.wait()
            self._writer_sleep = None
            self._wakeup = anyio.Event()

    def _timers_changed(self) -> None:
        """Bring the sleeping writer's wake-up forward if the session's next timer moved earlier.

        Cheaper than waking it: an ACK armed now is usually carried by the reply before it is due.
        """
        sleep = self._writer_sleep
        timer = self.session.get_timer()
        if sleep is not None and timer is not None and timer < sleep.deadline:
            sleep.deadline = timer

    def _placement(self) -> memoryview | None:
        """The memory the next object bytes can be received into directly, if any."""
        target = self.session.receive_target()
        if target is None:
            return None
        seq, offset, nbytes = target
        obj = self._objects.get(seq)
        return obj.destination(offset, nbytes) if obj is not None else None

    def _connection_failed(self, error: TransportError, scope: anyio.CancelScope) -> None:
        if self.closed_by_peer is None:  # after the peer's CLOSE, its hanging up is no failure
            self.last_error = error
        scope.cancel()

    def _handle_events(self, scope: anyio.CancelScope) -> None:
        session = self.session
        while events := session.events_received():
            for event in events:
                match event:
                    case SessionOpened():
                        self._changed()
                    case MessageReceived(seq=seq, body=body, manifest=manifest):
                        try:
                            envelope = _decode_envelope(body)
                        except RemoteProtocolError as exc:
                            session.protocol_error(exc, self._now())
                            continue
                        obj = None
                        if manifest is not None:
                            obj = IncomingObject(
                                manifest, functools.partial(self._consume, seq), self._regions
                            )
                            if manifest.total:
                                self._objects[seq] = obj
                        if not self._queued and self._try_deliver(self, envelope, obj):
                            session.message_delivered(seq, self._now())
                        else:
                            self._queued += 1
                            self._inbound_send.send_nowait((seq, envelope, obj))
                    case ChunkReceived(seq=seq, offset=offset, data=data, placed=placed):
                        if placed:
                            self._objects[seq].placed(offset, len(data))
                        else:
                            self._objects[seq].feed(offset, data)
                        buffered = session.buffered_object_bytes
                        if buffered > self.peak_buffered_bytes:
                            self.peak_buffered_bytes = buffered
                    case ObjectCompleted(seq=seq):
                        completed = self._objects.pop(seq, None)
                        if completed is not None:
                            completed.complete()
                    case ObjectFailed(seq=seq, error=error):
                        failed = self._objects.pop(seq, None)
                        if failed is not None:
                            failed.fail(error)
                    case ConnectionFailed(error=error):
                        self._connection_failed(error, scope)
                    case SessionEnded(reason=reason, error=error):
                        # The writer flushes what the session still has to say (a REFUSE or
                        # CLOSE frame), then ends the connection.
                        if error is None:
                            self.closed_by_peer = reason  # our own close() ends the link itself
                        self._end(error)
                        self._wake()
        if session.wants_write:
            self._wake()
        else:
            self._timers_changed()
        if self._window_wanted and session.send_window_open:
            self._window_wanted = False
            self._changed()  # a sender waiting for the peer to take messages may go on

    def _consume(self, seq: int, nbytes: int) -> None:
        if not self.closed:
            self.session.consume(seq, nbytes)
            # consume() may complete the object: its event is handled on the next pass.
            if self._connection_scope is not None:
                self._handle_events(self._connection_scope)
            self._wake()

    # -- ending --------------------------------------------------------------------------------

    def _end(self, error: TransportError | None) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_error = error
        self._inbound_send.close()
        for obj in self._objects.values():
            obj.fail(error or ConnectionClosedError(f"link to {self.peer} closed"))
        self._objects.clear()
        self._on_closed(self, error)
        self._changed()

    def close(self, reason: str = "closed") -> None:
        """End the session for good (the peer is told if connected)."""
        if self.closed:
            return
        self.session.close(reason, self._now())
        self.session.events_received()
        self._end(None)
        self._wake()  # the writer flushes the CLOSE frame, then ends the connection

    async def wait_sent(self) -> None:
        """Wait until everything queued on this link is written (or it has no connection)."""
        while True:
            changed = self.state_event()
            if self._connection_scope is None or self.session.all_sent:
                return
            self._wake()
            await changed.wait()

    async def wait_disconnected(self) -> None:
        """Wait until this link has no connection (after :meth:`close`: its CLOSE frame is out)."""
        while True:
            changed = self.state_event()
            if self._connection_scope is None:
                return
            await changed.wait()

    async def drop_connection(self) -> None:
        """End the current connection (if any) and wait until it is gone; the session stays."""
        while self._connection_scope is not None:
            self._connection_scope.cancel()
            await self.wait_changed()

    def kill(self, error: TransportError, *, raised: bool = False) -> None:
        """End the link at once (used when the peer is replaced or the node stops). ``raised``:
        the caller raises ``error`` itself, so the node need not log it."""
        self.error_raised = raised
        self._end(error)
        if self._connection_scope is not None:
            self._connection_scope.cancel()


def _decode_envelope(body: bytes) -> dict[str, Any]:
    try:
        envelope = msgpack.unpackb(body, raw=False, strict_map_key=True)
    except Exception:
        raise RemoteProtocolError("message body is not valid msgpack") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("t"), str):
        raise RemoteProtocolError("message envelope is not a map with a type")
    return envelope


#: Buffers up to this size are copied into one write with their neighbours: each write costs a
#: system call, a TLS record and often a wake-up of the peer, more than copying this much.
COPY_LIMIT = 128 * 1024
#: A write made of copied buffers grows to at most this many bytes.
JOIN_LIMIT = 1024 * 1024
#: The most a thread keeps for copying joined writes into (see _JoinMemory).
JOIN_MEMORY_LIMIT = 2 * JOIN_LIMIT
#: About one TLS record: a larger buffer lends its first bytes to the small ones before it, so a
#: frame header never goes out as a record (and a segment) of its own.
LEND = 16 * 1024

Buffer = bytes | memoryview


def _nbytes(buffer: Buffer) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def plan_writes(buffers: list[Buffer]) -> list[list[Buffer]]:
    """The writes that send ``buffers`` in order, each as the buffers it is made of: small ones
    joined, large ones as they are, less the first :data:`LEND` bytes they lend to the small ones
    before them. A write of one buffer is that buffer; several are to be copied into one."""
    writes: list[list[Buffer]] = []
    joined: list[Buffer] = []
    size = 0
    for buffer in buffers:
        n = _nbytes(buffer)
        if n <= COPY_LIMIT:
            if size + n > JOIN_LIMIT:
                writes.append(joined)
                joined, size = [], 0
            joined.append(buffer)
            size += n
            continue
        if joined:
            view = memoryview(buffer).cast("B")
            joined.append(view[:LEND])
            writes.append(joined)
            joined, size = [], 0
            buffer = view[LEND:]
        writes.append([buffer])
    if joined:
        writes.append(joined)
    return writes


class _JoinMemory:
    """Where a thread's links copy the buffers of joined writes, reused from batch to batch:
    ``bytes.join`` would allocate (and fault in) fresh memory for every one. A link that finds it
    busy (another link's write is waiting for the socket) joins into new bytes instead."""

    def __init__(self) -> None:
        self.memory = bytearray()
        self.busy = False

    def join(self, writes: list[list[Buffer]]) -> list[Buffer]:
        """``writes`` as buffers to send, joined ones copied into this memory (or into new bytes,
        past :data:`JOIN_MEMORY_LIMIT`): valid until the next call."""
        need = sum(sum(map(_nbytes, parts)) for parts in writes if len(parts) > 1)
        if need > JOIN_MEMORY_LIMIT:
            return _join_each(writes)
        if len(self.memory) < need:
            self.memory = bytearray(need)
        out: list[Buffer] = []
        view = memoryview(self.memory)
        position = 0
        for parts in writes:
            if len(parts) == 1:
                out.append(parts[0])
                continue
            start = position
            for part in parts:
                n = _nbytes(part)
                view[position : position + n] = part if isinstance(part, bytes) else part.cast("B")
                position += n
            out.append(view[start:position])
        return out


def _join_each(writes: list[list[Buffer]]) -> list[Buffer]:
    return [parts[0] if len(parts) == 1 else b"".join(parts) for parts in writes]


_join_memory = threading.local()


async def _write_all(stream: anyio.abc.ByteStream, buffers: list[Buffer]) -> None:
    writes = plan_writes(buffers)
    memory: _JoinMemory | None = getattr(_join_memory, "value", None)
    if memory is None:
        memory = _join_memory.value = _JoinMemory()
    # Only a socket stream is known to be done with the bytes when send() returns; another
    # stream (a memory pipe) may keep them, so it gets bytes of its own. Nor may two links share
    # the memory: one whose write is waiting for the socket leaves it busy.
    if memory.busy or not isinstance(stream, SSLSocketStream):
        for write in _join_each(writes):
            await stream.send(write)  # type: ignore[arg-type]  # byte streams here take any buffer
        return
    memory.busy = True
    try:
        for write in memory.join(writes):
            await stream.send(write)
    finally:
        memory.busy = False


async def _close_quietly(stream: anyio.abc.ByteStream) -> None:
    try:
        with anyio.move_on_after(1):
            await stream.aclose()
    except Exception:  # closing a broken stream may raise anything; it is gone either way
        pass
