"""FaultProxy on real loopback sockets: relaying, cutting, stalling, throttling, refusing, counting.

Every test waits on events (the targets' own events, :meth:`FaultProxy.wait_stats`), never on a
timer, under an :func:`anyio.fail_after` deadline. The only timed parts are the throttle, which is
about time, and one short window that checks a stalled proxy forwards nothing.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from typing import Literal

import anyio
import anyio.abc
import pytest
from anyio.abc import SocketAttribute

from transport.testing import Direction, FaultProxy, ProxyStats

pytestmark = pytest.mark.anyio

DEADLINE = 5.0
HOST = "127.0.0.1"

Ending = Literal["eof", "broken"]
Handler = Callable[[anyio.abc.SocketStream], Awaitable[None]]


# -- targets and clients ---------------------------------------------------------------------------


class Target:
    """A server that records, per connection, the bytes it received and how the connection ended.

    With ``reply`` it sends those bytes first (a source); with ``echo`` it sends back what it reads;
    with ``read_delay`` it reads slowly, in small pieces.
    """

    def __init__(
        self, *, reply: bytes = b"", echo: bool = False, read_delay: float | None = None
    ) -> None:
        self.reply = reply
        self.echo = echo
        self.read_delay = read_delay
        self.received: list[bytearray] = []
        self.endings: list[Ending] = []
        self._changed = anyio.Event()

    async def handle(self, stream: anyio.abc.SocketStream) -> None:
        data = bytearray()
        self.received.append(data)
        ending: Ending = "broken"
        try:
            if self.reply:
                await stream.send(self.reply)
            while True:
                chunk = await stream.receive(16_384 if self.read_delay else 1 << 20)
                data += chunk
                if self.echo:
                    await stream.send(chunk)
                if self.read_delay:
                    await anyio.sleep(self.read_delay)  # a slow consumer, not synchronisation
        except anyio.EndOfStream:
            ending = "eof"
        except anyio.BrokenResourceError:
            ending = "broken"
        finally:
            self.endings.append(ending)
            self._changed.set()
            self._changed = anyio.Event()
            await stream.aclose()

    async def wait_endings(self, n: int) -> None:
        while len(self.endings) < n:
            await self._changed.wait()


@asynccontextmanager
async def serving(handler: Handler) -> AsyncIterator[int]:
    """Serve ``handler`` on a loopback port; yield the port."""
    listener = await anyio.create_tcp_listener(local_host=HOST, local_port=0)
    async with listener, anyio.create_task_group() as task_group:
        task_group.start_soon(listener.serve, handler)
        yield listener.extra(SocketAttribute.local_port)
        task_group.cancel_scope.cancel()


async def read_to_end(stream: anyio.abc.SocketStream) -> tuple[bytes, Ending]:
    data = bytearray()
    try:
        while True:
            data += await stream.receive(1 << 20)
    except anyio.EndOfStream:
        return bytes(data), "eof"
    except anyio.BrokenResourceError:
        return bytes(data), "broken"


async def send_until_broken(stream: anyio.abc.SocketStream, data: bytes) -> None:
    with suppress(anyio.BrokenResourceError):
        await stream.send(data)


async def ping(stream: anyio.abc.SocketStream) -> None:
    await stream.send(b"ping")
    assert await stream.receive() == b"ping"


def abort(stream: anyio.abc.SocketStream) -> None:
    stream.extra(SocketAttribute.raw_socket).setsockopt(
        socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
    )


# -- relaying ------------------------------------------------------------------------------------


async def test_relays_bytes_both_ways_exactly() -> None:
    payload = os.urandom(3_000_001)
    target = Target(echo=True)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            async with (
                await anyio.connect_tcp(HOST, proxy.port) as client,
                anyio.create_task_group() as task_group,
            ):
                task_group.start_soon(client.send, payload)
                received = bytearray()
                while len(received) < len(payload):
                    received += await client.receive(1 << 20)
                await client.send_eof()
                rest, ending = await read_to_end(client)
            assert bytes(received) + rest == payload
            assert ending == "eof"
            await target.wait_endings(1)
            assert target.endings == ["eof"]
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert stats == ProxyStats(accepted=1, bytes_up=len(payload), bytes_down=len(payload))


async def test_a_reset_from_one_end_is_relayed_as_a_reset() -> None:
    target = Target(echo=True)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            client = await anyio.connect_tcp(HOST, proxy.port)
            await ping(client)
            abort(client)
            await client.aclose()
            await target.wait_endings(1)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert target.endings == ["broken"]
    assert stats.cuts == 0


async def test_unreachable_target_aborts_the_client() -> None:
    with socket.socket() as probe:
        probe.bind((HOST, 0))
        closed_port = probe.getsockname()[1]
    with anyio.fail_after(DEADLINE):
        async with FaultProxy(HOST, closed_port) as proxy:
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                assert await read_to_end(client) == (b"", "broken")
            stats = await proxy.wait_stats(lambda stats: stats.accepted == 1)
    assert stats == ProxyStats(accepted=1)


async def test_leaving_the_context_aborts_open_connections() -> None:
    target = Target(echo=True)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port:
            async with FaultProxy(HOST, port) as proxy:
                client = await anyio.connect_tcp(HOST, proxy.port)
                await ping(client)
            async with client:
                assert await read_to_end(client) == (b"", "broken")
            await target.wait_endings(1)
    assert target.endings == ["broken"]


# -- cutting -------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_cut_after_delivers_exactly_n_bytes_then_breaks_both_ends(
    direction: Direction,
) -> None:
    payload = os.urandom(1_000_000)
    limit = 100_003
    target = Target(reply=payload if direction == "down" else b"")
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(limit, direction=direction)
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                if direction == "up":
                    await send_until_broken(client, payload)
                received, ending = await read_to_end(client)
            await target.wait_endings(1)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert ending == "broken"
    assert target.endings == ["broken"]
    if direction == "up":
        assert received == b""
        assert target.received == [payload[:limit]]
        assert (stats.bytes_up, stats.bytes_down) == (limit, 0)
    else:
        assert received == payload[:limit]
        assert (stats.bytes_up, stats.bytes_down) == (0, limit)
    assert stats.cuts == 1


async def test_cut_after_both_directions_counts_them_together() -> None:
    # Lockstep: 10 kB up, 10 kB echoed down, and so on; the budget runs out in the third upload.
    chunks = [os.urandom(10_000) for _ in range(4)]
    target = Target(echo=True)
    echoed = bytearray()
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(45_007)
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                for sent, chunk in enumerate(chunks, start=1):
                    await client.send(chunk)
                    try:
                        while len(echoed) < sent * len(chunk):
                            echoed += await client.receive()
                    except anyio.BrokenResourceError:
                        break
            await target.wait_endings(1)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert echoed == chunks[0] + chunks[1]
    assert target.received == [chunks[0] + chunks[1] + chunks[2][:5007]]
    assert target.endings == ["broken"]
    assert stats == ProxyStats(accepted=1, cuts=1, bytes_up=25_007, bytes_down=20_000)


async def test_cut_is_exact_even_when_the_receiver_is_slower_than_the_sender() -> None:
    # Without the drain before the RST, the bytes still in the proxy's kernel buffer are lost.
    payload = os.urandom(6_000_000)
    limit = 2_000_001
    target = Target(read_delay=0.0002)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(limit, direction="up")
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                await send_until_broken(client, payload)
                await target.wait_endings(1)
    assert target.endings == ["broken"]
    assert target.received == [payload[:limit]]


async def test_a_one_shot_cut_is_spent_after_it_fires() -> None:
    target = Target()
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(1000, direction="up")
            for _ in range(2):
                async with await anyio.connect_tcp(HOST, proxy.port) as client:
                    await send_until_broken(client, bytes(5000))
                    await client.send_eof()
                    await read_to_end(client)
            await target.wait_endings(2)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert [len(data) for data in target.received] == [1000, 5000]
    assert target.endings == ["broken", "eof"]
    assert stats == ProxyStats(accepted=2, cuts=1, bytes_up=6000)


async def test_repeat_cuts_every_new_connection() -> None:
    target = Target()
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(1000, direction="up", repeat=True)
            for _ in range(3):
                async with await anyio.connect_tcp(HOST, proxy.port) as client:
                    await send_until_broken(client, bytes(5000))
                    assert await read_to_end(client) == (b"", "broken")
            await target.wait_endings(3)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert [len(data) for data in target.received] == [1000, 1000, 1000]
    assert target.endings == ["broken"] * 3
    assert stats == ProxyStats(accepted=3, cuts=3, bytes_up=3000)


async def test_cut_after_none_disarms_the_rule() -> None:
    target = Target()
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.cut_after(10, repeat=True)
            proxy.cut_after(None)
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                await client.send(bytes(5000))
                await client.send_eof()
                await target.wait_endings(1)
    assert [len(data) for data in target.received] == [5000]
    assert target.endings == ["eof"]


async def test_cut_all_aborts_every_open_connection() -> None:
    target = Target(echo=True)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            clients = [await anyio.connect_tcp(HOST, proxy.port) for _ in range(2)]
            for client in clients:
                await ping(client)
            proxy.cut_all()
            for client in clients:
                async with client:
                    assert await read_to_end(client) == (b"", "broken")
            await target.wait_endings(2)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert target.endings == ["broken", "broken"]
    assert stats == ProxyStats(accepted=2, cuts=2, bytes_up=8, bytes_down=8)


# -- stalling ------------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_stall_holds_bytes_and_unstall_releases_them_in_order(direction: str) -> None:
    first, second = os.urandom(300_000), os.urandom(300_000)
    target = Target(reply=first if direction == "down" else b"")
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.stall()
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                if direction == "up":
                    await client.send(first)
                    await client.send_eof()
                    stats = await proxy.wait_stats(lambda stats: stats.held_up > 0)
                else:
                    stats = await proxy.wait_stats(lambda stats: stats.held_down > 0)
                assert (stats.bytes_up, stats.bytes_down) == (0, 0)
                with anyio.move_on_after(0.05):  # nothing may arrive while stalled
                    assert await client.receive() == b"", "stalled proxy forwarded bytes"
                assert b"".join(target.received) == b""
                assert target.endings == []

                proxy.unstall()
                if direction == "up":
                    await target.wait_endings(1)
                    assert target.received == [first]
                    assert target.endings == ["eof"]
                else:
                    received = bytearray()
                    while len(received) < len(first):
                        received += await client.receive()
                    assert received == first
                    proxy.stall()
                    await client.send(second)
                    await client.send_eof()
                    await proxy.wait_stats(lambda stats: stats.held_up > 0)
                    proxy.unstall()
                    await target.wait_endings(1)
                    assert target.received == [second]


# -- throttling ----------------------------------------------------------------------------------


@pytest.mark.parametrize("direction", ["up", "down"])
async def test_throttle_limits_the_rate(direction: str) -> None:
    payload = os.urandom(1_000_000)
    target = Target(reply=payload if direction == "down" else b"")
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.throttle(2_000_000)
            started = anyio.current_time()
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                if direction == "up":
                    await client.send(payload)
                    await client.send_eof()
                    await target.wait_endings(1)
                    assert target.received == [payload]
                else:
                    received = bytearray()
                    while len(received) < len(payload):
                        received += await client.receive(1 << 20)
                    assert received == payload
            elapsed = anyio.current_time() - started
    # 1 MB at 2 MB/s is 0.5 s; the lower bound proves the throttle is real.
    assert 0.3 <= elapsed <= 1.5


async def test_lifting_the_throttle_applies_to_open_connections_at_once() -> None:
    payload = bytes(1_000_000)
    target = Target()
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            proxy.throttle(1000)  # 1 MB would take 1000 s
            async with await anyio.connect_tcp(HOST, proxy.port) as client:
                await client.send(payload)
                await client.send_eof()
                await proxy.wait_stats(lambda stats: stats.bytes_up > 0)
                proxy.throttle(None)
                await target.wait_endings(1)
    assert target.received == [payload]


# -- refusing and counting -----------------------------------------------------------------------


async def test_refuse_closes_new_connections_without_reaching_the_target() -> None:
    target = Target(echo=True)
    with anyio.fail_after(DEADLINE):
        async with serving(target.handle) as port, FaultProxy(HOST, port) as proxy:
            kept = await anyio.connect_tcp(HOST, proxy.port)
            await ping(kept)
            proxy.refuse(True)
            async with await anyio.connect_tcp(HOST, proxy.port) as refused:
                assert await read_to_end(refused) == (b"", "broken")
            await ping(kept)  # connections already relayed are not affected
            assert len(target.received) == 1
            proxy.refuse(False)
            async with await anyio.connect_tcp(HOST, proxy.port) as accepted:
                await ping(accepted)
            await kept.aclose()
            await target.wait_endings(2)
            stats = await proxy.wait_stats(lambda stats: stats.active == 0)
    assert len(target.received) == 2
    assert stats == ProxyStats(accepted=3, refused=1, bytes_up=12, bytes_down=12)


async def test_wait_connections_waits_for_the_total() -> None:
    target = Target(echo=True)
    reached = False

    async def wait_for_three(proxy: FaultProxy) -> None:
        nonlocal reached
        await proxy.wait_connections(3)
        reached = True

    with anyio.fail_after(DEADLINE):
        async with (
            serving(target.handle) as port,
            FaultProxy(HOST, port) as proxy,
            anyio.create_task_group() as task_group,
        ):
            task_group.start_soon(wait_for_three, proxy)
            clients = [await anyio.connect_tcp(HOST, proxy.port) for _ in range(2)]
            await proxy.wait_stats(lambda stats: stats.accepted == 2)
            await anyio.wait_all_tasks_blocked()
            assert not reached
            clients.append(await anyio.connect_tcp(HOST, proxy.port))
            await proxy.wait_connections(3)
            for client in clients:
                await ping(client)
            assert proxy.stats.active == 3
            for client in clients:
                await client.aclose()
    assert reached


# -- misuse --------------------------------------------------------------------------------------


async def test_misuse_is_refused() -> None:
    proxy = FaultProxy(HOST, 9)
    with pytest.raises(RuntimeError):
        _ = proxy.port
    with pytest.raises(ValueError, match="nbytes"):
        proxy.cut_after(-1)
    with pytest.raises(ValueError, match="direction"):
        proxy.cut_after(1, direction="sideways")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="bytes_per_second"):
        proxy.throttle(0)
    with anyio.fail_after(DEADLINE):
        async with proxy:
            with pytest.raises(RuntimeError, match="once"):
                await proxy.__aenter__()
