"""A fault-injection TCP relay for tests and benchmarks.

Theory of operation
-------------------
:class:`FaultProxy` listens on ``listen_host`` (port 0, so the OS picks a free port) and, for every
connection it accepts, dials the target and runs two *pumps* in a task group of that connection:
*up* (client to target) and *down* (target to client). All tasks live in one task group that the
proxy opens in ``__aenter__`` and closes in ``__aexit__``, so nothing outlives the ``async with``.

A pump reads up to 256 KiB, then forwards it as one or more pieces. For each piece it

1. takes the piece's size out of every cut budget that counts this direction. This step never
   awaits, so two pumps sharing a budget (``direction="both"``) can never overshoot it: a budget
   hands out exactly ``nbytes`` and then nothing;
2. waits for its pacer when the proxy is throttled (a token bucket per direction per connection,
   timed with :func:`anyio.current_time`, with a burst of about 10 ms worth of bytes);
3. waits while the proxy is stalled;
4. sends the piece, counts it, and, if it took the last byte of a budget and no other piece from
   that budget is still in flight, fires the cut.

A pump that finds a budget empty parks until the configuration changes (the cut fires, or
:meth:`FaultProxy.cut_after` replaces the rule). Every configuration change and every statistics
change sets an :class:`anyio.Event`; the only timers are the throttle's and the drain's below.

A cut is abrupt on purpose: both sockets of the connection get ``SO_LINGER`` 0 and are closed, so the
kernel sends an RST and each endpoint sees a broken connection (``BrokenResourceError`` in AnyIO,
``ECONNRESET`` underneath) after the bytes already delivered to it, not a clean end of stream.
Before the RST, the proxy waits a moment (at most :data:`DRAIN_LIMIT`) for its kernel to transmit
what it has already written, where the platform can tell (Linux ``SIOCOUTQNSD``); otherwise a
reset would throw away bytes that :attr:`ProxyStats.bytes_up` already counts, and cuts would not be
exact when the receiver is slower than the sender. A clean end of stream from one side is relayed as
a half-close; a reset from one side is relayed as a reset to the other.

The control methods (:meth:`~FaultProxy.cut_after`, :meth:`~FaultProxy.stall`, ...) are plain
functions: call them from the event loop thread, from the tests themselves.
"""

from __future__ import annotations

import math
import socket
import struct
import sys
from collections.abc import Callable
from contextlib import AsyncExitStack
from dataclasses import dataclass
from types import TracebackType
from typing import Final, Literal, Self, get_args

import anyio
import anyio.abc
from anyio.abc import SocketAttribute

if sys.platform != "win32":
    import fcntl

__all__ = ["DRAIN_LIMIT", "READ_SIZE", "Direction", "FaultProxy", "ProxyStats"]

Direction = Literal["both", "up", "down"]
"""Which bytes a cut counts: client to target (``up``), target to client (``down``), or both."""

_Way = Literal["up", "down"]

READ_SIZE: Final = 256 * 1024
"""The largest read a pump makes, and so the most it holds per direction while stalled."""

DRAIN_LIMIT: Final = 1.0
"""How long a cut waits, at most, for the proxy's kernel to transmit bytes already forwarded."""

_TICK: Final = 0.01  # seconds of bytes per throttled piece, and the pacer's burst allowance
_DRAIN_POLL: Final = 0.001
_SIOCOUTQNSD: Final = 0x894B  # Linux: bytes written to a TCP socket and not yet transmitted
_LINGER_RESET: Final = struct.pack("ii", 1, 0)


@dataclass(frozen=True, slots=True)
class ProxyStats:
    """A snapshot of what a :class:`FaultProxy` has done since it started."""

    accepted: int = 0
    """Connections accepted, refused ones included."""
    refused: int = 0
    """Connections closed at once because :meth:`FaultProxy.refuse` was on."""
    active: int = 0
    """Connections being relayed now."""
    cuts: int = 0
    """Connections aborted by a cut (:meth:`FaultProxy.cut_after` or :meth:`FaultProxy.cut_all`)."""
    bytes_up: int = 0
    """Bytes forwarded from clients to the target."""
    bytes_down: int = 0
    """Bytes forwarded from the target to clients."""
    held_up: int = 0
    """Bytes read from clients and not forwarded yet (stalled, throttled or in flight)."""
    held_down: int = 0
    """Bytes read from the target and not forwarded yet."""


class _Budget:
    """Bytes a cut rule still lets through; fires when empty and nothing is in flight."""

    __slots__ = ("direction", "in_flight", "remaining")

    def __init__(self, nbytes: int, direction: Direction) -> None:
        self.remaining = nbytes
        self.direction: Direction = direction
        self.in_flight = 0

    def counts(self, way: _Way) -> bool:
        return self.direction == "both" or self.direction == way

    @property
    def exhausted(self) -> bool:
        return self.remaining == 0 and self.in_flight == 0


class _Pacer:
    """The schedule of one direction of one connection under a throttle (a virtual clock)."""

    __slots__ = ("due", "epoch")

    def __init__(self) -> None:
        self.due = -math.inf
        self.epoch = -1


class _Connection:
    __slots__ = ("broken", "budget", "client", "cut", "scope", "target")

    def __init__(self, client: anyio.abc.SocketStream, target: anyio.abc.SocketStream) -> None:
        self.client = client
        self.target = target
        self.scope = anyio.CancelScope()
        self.budget: _Budget | None = None  # the per-connection budget of cut_after(repeat=True)
        self.cut = False
        self.broken = False


class FaultProxy:
    """A TCP relay ``listen_host:<port>`` -> target that can cut, stall and throttle connections.

    Use it as an async context manager; :attr:`port` is the port to dial instead of the target's::

        async with FaultProxy("127.0.0.1", server_port) as proxy:
            proxy.cut_after(1_000_000, direction="up")
            stream = await anyio.connect_tcp("127.0.0.1", proxy.port)
            ...
            await proxy.wait_stats(lambda stats: stats.cuts == 1)

    Leaving the ``async with`` closes the listener and aborts every relayed connection.
    A target that cannot be reached is reported to the client as an immediate abort.
    """

    def __init__(
        self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1"
    ) -> None:
        self._target_host = target_host
        self._target_port = target_port
        self._listen_host = listen_host
        self._port: int | None = None
        self._stack: AsyncExitStack | None = None
        self._closing = False
        self._connections: set[_Connection] = set()
        # fault configuration
        self._budget: _Budget | None = None  # cut_after(repeat=False): one budget for all
        self._repeat: tuple[int, Direction] | None = None  # cut_after(repeat=True)
        self._stalled = False
        self._rate: float | None = None
        self._rate_epoch = 0
        self._refusing = False
        self._changed: anyio.Event | None = None
        # statistics
        self._accepted = 0
        self._refused = 0
        self._cuts = 0
        self._bytes = {"up": 0, "down": 0}
        self._held = {"up": 0, "down": 0}
        self._stats_changed: anyio.Event | None = None

    # -- lifetime ------------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start listening on port 0 of ``listen_host``.

        Raises :class:`RuntimeError` if the proxy was already started, :class:`OSError` if it
        cannot listen.
        """
        if self._stack is not None or self._closing:
            raise RuntimeError("a FaultProxy can be entered only once")
        async with AsyncExitStack() as stack:
            listener = await anyio.create_tcp_listener(local_host=self._listen_host, local_port=0)
            stack.push_async_callback(listener.aclose)
            task_group = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._shut_down, task_group)  # runs first on exit: LIFO
            self._port = listener.extra(SocketAttribute.local_port)
            task_group.start_soon(listener.serve, self._relay, task_group)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        """Close the listener and abort every relayed connection."""
        assert self._stack is not None, "__aexit__ without __aenter__"
        return await self._stack.__aexit__(exc_type, exc, tb)

    def _shut_down(self, task_group: anyio.abc.TaskGroup) -> None:
        self._closing = True
        task_group.cancel_scope.cancel()

    @property
    def port(self) -> int:
        """The port the proxy listens on. Raises :class:`RuntimeError` before ``__aenter__``."""
        if self._port is None:
            raise RuntimeError("the FaultProxy is not started")
        return self._port

    # -- faults --------------------------------------------------------------------------------

    def cut_after(
        self, nbytes: int | None, *, direction: Direction = "both", repeat: bool = False
    ) -> None:
        """Abort connections once ``nbytes`` have been forwarded in ``direction``.

        With ``repeat=False``, bytes are counted from this call, across all connections; exactly
        ``nbytes`` are forwarded, then every connection relayed at that moment is aborted, and the
        rule is spent (later connections are relayed normally). With ``repeat=True``, every
        connection gets its own budget of ``nbytes``, counted from its start (or from this call,
        for connections already open): a flaky link that keeps breaking. ``direction="both"``
        counts the two directions together. ``nbytes=0`` cuts at once. ``None`` removes the rule.
        Each call replaces the rule before it.

        Raises :class:`ValueError` for a negative ``nbytes`` or an unknown direction.
        """
        if nbytes is not None and nbytes < 0:
            raise ValueError(f"nbytes must be >= 0, not {nbytes}")
        if direction not in get_args(Direction):
            raise ValueError(f"direction must be one of {get_args(Direction)}, not {direction!r}")
        self._budget = None
        self._repeat = None
        for connection in self._connections:
            connection.budget = None
        if nbytes is not None:
            if repeat:
                self._repeat = (nbytes, direction)
                for connection in list(self._connections):
                    connection.budget = _Budget(nbytes, direction)
                    if nbytes == 0:
                        self._cut(connection)
            else:
                self._budget = _Budget(nbytes, direction)
                if nbytes == 0:
                    self._fire(self._budget, None)
        self._notify_changed()

    def cut_all(self) -> None:
        """Abort every connection relayed now (an RST to both ends)."""
        for connection in list(self._connections):
            self._cut(connection)

    def stall(self) -> None:
        """Stop forwarding in both directions; connections stay open and bytes are held.

        The proxy holds at most one read (:data:`READ_SIZE`) per direction; the rest waits in the
        kernel's buffers, so a sender eventually blocks, as on a link that went silent.
        """
        self._stalled = True
        self._notify_changed()

    def unstall(self) -> None:
        """Resume forwarding after :meth:`stall`; held bytes go first, in order."""
        self._stalled = False
        self._notify_changed()

    def throttle(self, bytes_per_second: float | None) -> None:
        """Limit every direction of every connection to ``bytes_per_second``; ``None`` lifts it.

        Each direction of each connection has its own token bucket, with a burst of about 10 ms
        worth of bytes; the rate applies at once, also to connections already open.

        Raises :class:`ValueError` unless the rate is positive and finite.
        """
        if bytes_per_second is not None and not 0 < bytes_per_second < math.inf:
            raise ValueError(f"bytes_per_second must be positive, not {bytes_per_second}")
        self._rate = bytes_per_second
        self._rate_epoch += 1
        self._notify_changed()

    def refuse(self, on: bool) -> None:
        """While on, accept new connections and abort them at once (a server that is unreachable).

        Connections already relayed are not affected.
        """
        self._refusing = on

    # -- statistics ----------------------------------------------------------------------------

    @property
    def stats(self) -> ProxyStats:
        """A snapshot of the counters."""
        return ProxyStats(
            accepted=self._accepted,
            refused=self._refused,
            active=len(self._connections),
            cuts=self._cuts,
            bytes_up=self._bytes["up"],
            bytes_down=self._bytes["down"],
            held_up=self._held["up"],
            held_down=self._held["down"],
        )

    async def wait_stats(self, predicate: Callable[[ProxyStats], bool]) -> ProxyStats:
        """Wait until ``predicate(stats)`` holds, and return those stats.

        The predicate is checked now and after every change of the counters, never on a timer.
        Put a deadline around it (:func:`anyio.fail_after`).
        """
        while not predicate(snapshot := self.stats):
            if self._stats_changed is None:
                self._stats_changed = anyio.Event()
            await self._stats_changed.wait()
        return snapshot

    async def wait_connections(self, n: int) -> None:
        """Wait until ``n`` connections have been accepted in total (refused ones included)."""
        await self.wait_stats(lambda stats: stats.accepted >= n)

    def _touch_stats(self) -> None:
        if self._stats_changed is not None:
            self._stats_changed.set()
            self._stats_changed = None

    # -- configuration changes -----------------------------------------------------------------

    async def _wait_changed(self) -> None:
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    def _notify_changed(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    # -- relaying ------------------------------------------------------------------------------

    async def _relay(self, client: anyio.abc.SocketStream) -> None:
        self._accepted += 1
        self._touch_stats()
        if self._refusing:
            self._refused += 1
            self._touch_stats()
            await _abort(client)
            return
        try:
            target = await anyio.connect_tcp(self._target_host, self._target_port)
        except OSError:
            await _abort(client)
            return
        except BaseException:
            await _abort(client)
            raise
        connection = _Connection(client, target)
        self._connections.add(connection)
        self._touch_stats()
        if self._repeat is not None:
            connection.budget = _Budget(*self._repeat)
            if self._repeat[0] == 0:
                self._cut(connection)
        try:
            with connection.scope:
                async with anyio.create_task_group() as task_group:
                    task_group.start_soon(self._pump, connection, "up", client, target)
                    task_group.start_soon(self._pump, connection, "down", target, client)
        finally:
            self._connections.discard(connection)
            self._touch_stats()
            with anyio.CancelScope(shield=True):
                if connection.cut:
                    with anyio.move_on_after(DRAIN_LIMIT):
                        await _drain(client)
                        await _drain(target)
                if connection.cut or connection.broken or self._closing:
                    await _abort(client)
                    await _abort(target)
                else:
                    await client.aclose()
                    await target.aclose()

    async def _pump(
        self,
        connection: _Connection,
        way: _Way,
        source: anyio.abc.SocketStream,
        sink: anyio.abc.SocketStream,
    ) -> None:
        pacer = _Pacer()
        pending = 0  # read from source, not yet forwarded
        try:
            while True:
                try:
                    data = await source.receive(READ_SIZE)
                except anyio.EndOfStream:
                    while self._stalled:
                        await self._wait_changed()
                    await sink.send_eof()
                    return
                pending = len(data)
                self._held[way] += pending
                self._touch_stats()
                offset = 0
                while offset < len(data):
                    n, budgets = await self._admit(connection, way, len(data) - offset, pacer)
                    try:
                        await sink.send(data if n == len(data) else data[offset : offset + n])
                        offset += n
                        pending -= n
                        self._held[way] -= n
                        self._bytes[way] += n
                        self._touch_stats()
                    finally:
                        for budget in budgets:
                            budget.in_flight -= n
                            if budget.exhausted:
                                self._fire(budget, connection)
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            connection.broken = True
            connection.scope.cancel()
        finally:
            self._held[way] -= pending
            self._touch_stats()

    async def _admit(
        self, connection: _Connection, way: _Way, wanted: int, pacer: _Pacer
    ) -> tuple[int, list[_Budget]]:
        """Reserve the next piece: budgets first (atomically), then the pacer, then the stall."""
        while True:
            n = wanted
            if self._rate is not None:
                n = min(n, max(1, int(self._rate * _TICK)))
            budgets = [
                budget
                for budget in (self._budget, connection.budget)
                if budget is not None and budget.counts(way)
            ]
            for budget in budgets:
                n = min(n, budget.remaining)
            if n > 0:
                break
            await self._wait_changed()  # a cut is on its way, or the rule changes
        for budget in budgets:
            budget.remaining -= n
            budget.in_flight += n
        try:
            await self._pace(pacer, n)
            while self._stalled:
                await self._wait_changed()
        except BaseException:
            for budget in budgets:
                budget.in_flight -= n
                budget.remaining += n
            raise
        return n, budgets

    async def _pace(self, pacer: _Pacer, n: int) -> None:
        """Wait until the token bucket of this direction allows ``n`` more bytes."""
        while (rate := self._rate) is not None:
            now = anyio.current_time()
            if pacer.epoch != self._rate_epoch:
                pacer.epoch = self._rate_epoch
                pacer.due = now
            delay = pacer.due - _TICK - now
            if delay <= 0:
                pacer.due = max(pacer.due, now) + n / rate
                return
            with anyio.move_on_after(delay):
                await self._wait_changed()

    def _fire(self, budget: _Budget, connection: _Connection | None) -> None:
        """Cut what an exhausted budget covers, if it is still the rule in force."""
        if budget is self._budget:
            self._budget = None
            self.cut_all()
            self._notify_changed()
        elif connection is not None and budget is connection.budget:
            self._cut(connection)

    def _cut(self, connection: _Connection) -> None:
        if not connection.cut:
            connection.cut = True
            self._cuts += 1
            self._touch_stats()
            connection.scope.cancel()


async def _drain(stream: anyio.abc.SocketStream) -> None:
    """Wait until the kernel has transmitted what was written to ``stream`` (Linux only).

    AnyIO offers no event for "send queue empty" (and asyncio will not let a second party watch a
    transport's socket), so this polls the kernel, briefly; the caller bounds the wait.
    """
    if sys.platform == "win32":  # pragma: no cover
        return
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        # A poll, not an event: the kernel offers none that AnyIO can wait on here.
        while struct.unpack("i", fcntl.ioctl(sock, _SIOCOUTQNSD, b"\0\0\0\0"))[0] > 0:  # noqa: ASYNC110
            await anyio.sleep(_DRAIN_POLL)
    except (OSError, ValueError):
        return  # not Linux, or the socket is gone (a closed socket's descriptor is -1)


async def _abort(stream: anyio.abc.SocketStream) -> None:
    """Close ``stream`` with an RST instead of a FIN, so the peer sees a broken connection."""
    try:
        sock = stream.extra(SocketAttribute.raw_socket)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    except OSError:
        pass  # already closed or reset by the peer
    with anyio.CancelScope(shield=True):
        await stream.aclose()
