"""Resumable sessions over real mTLS through a fault-injecting relay.

Connections are cut, stalled and throttled by :class:`transport.testing.FaultProxy`; the bus must
deliver every message exactly once and in order, continue partial objects from where they stopped,
judge liveness by progress, and say clearly when a session cannot be resumed.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from tests.transport.conftest import Pki, name_from_certificate
from transport.bus import Message, Node
from transport.errors import ResumeRefusedError, TransportError
from transport.protocol.session import SessionConfig
from transport.testing import FaultProxy

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
CONFIG = SessionConfig(
    heartbeat_interval=0.2,
    liveness_timeout=1.0,
    handshake_timeout=2.0,
    chunk_size=256 * 1024,
    object_window=2 * MiB,
    connection_window=8 * MiB,
)


@asynccontextmanager
async def through_proxy(
    pki: Pki, config: SessionConfig = CONFIG, *, session_ttl: float = 60.0
) -> AsyncIterator[tuple[Node, Node, FaultProxy]]:
    async with (
        Node("server", config=config, session_ttl=session_ttl) as server,
        Node("site-1", config=config) as site,
    ):
        port = await server.serve(pki.server_context(), name_from_certificate)
        async with FaultProxy("127.0.0.1", port) as proxy:
            await site.connect(
                "127.0.0.1",
                proxy.port,
                pki.site_context(),
                server_hostname="localhost",
                backoff=(0.02, 0.2),
            )
            yield server, site, proxy
            site.task_group.cancel_scope.cancel()
            server.task_group.cancel_scope.cancel()


async def test_messages_survive_repeated_cuts_exactly_once_in_order(pki: Pki) -> None:
    received: list[int] = []
    done = anyio.Event()

    async def sink(message: Message) -> None:
        received.append(message.body["i"])
        if len(received) == 400:
            done.set()

    async with through_proxy(pki) as (server, site, proxy):
        server.register("sink", sink)
        proxy.cut_after(24 * 1024, direction="up", repeat=True)
        with anyio.fail_after(60):
            for i in range(400):
                await site.tell("server/sink", {"i": i, "pad": b"x" * 200})
            await done.wait()
        cuts = proxy.stats.cuts
        connections = server.link("site-1").connections
    assert received == list(range(400))
    assert cuts >= 3
    assert connections == cuts + 1


async def test_large_object_survives_ten_cuts_and_resends_at_most_a_window_per_cut(
    pki: Pki,
) -> None:
    rng = np.random.default_rng(7)
    model: dict[str, npt.NDArray[Any]] = {
        "a": rng.standard_normal(6 * MiB // 4).astype(np.float32),  # 6 MiB
        "b": rng.integers(0, 1 << 30, size=58 * MiB // 8, dtype=np.int64),  # 58 MiB
    }
    got: dict[str, Any] = {}
    done = anyio.Event()

    async def store(message: Message) -> None:
        assert message.object is not None
        got.update(await message.object.arrays())
        done.set()

    async with through_proxy(pki) as (server, site, proxy):
        server.register("store", store)
        proxy.cut_after(6 * MiB, direction="up", repeat=True)
        with anyio.fail_after(90):
            await site.tell("server/store", None, arrays=model)
            await done.wait()
        session = site.link("server").session
        cuts = proxy.stats.cuts
        resent = session.resent_object_bytes
    assert cuts >= 10
    assert resent <= cuts * CONFIG.object_window
    for name, array in model.items():
        np.testing.assert_array_equal(got[name], array)


async def test_stalled_link_is_declared_dead_then_resumes(pki: Pki) -> None:
    async def echo(message: Message) -> Any:
        return message.body

    async with through_proxy(pki) as (server, site, proxy):
        server.register("echo", echo)
        with anyio.fail_after(20):
            assert (await site.ask("server/echo", 1, timeout=5)).body == 1
            proxy.stall()
            await server.wait_peer("site-1", connected=False)  # silent past liveness_timeout
            proxy.unstall()
            await site.wait_peer("server")
            await server.wait_peer("site-1")
            assert (await site.ask("server/echo", 2, timeout=5)).body == 2
        assert server.link("site-1").connections >= 2


async def test_slow_transfer_that_keeps_moving_never_times_out(pki: Pki) -> None:
    data = np.arange(3 * MiB // 8, dtype=np.float64)  # 3 MiB at 1 MB/s: ~3x the liveness timeout
    done = anyio.Event()
    total = 0.0

    async def fold(message: Message) -> None:
        nonlocal total
        assert message.object is not None
        async for _name, _start, values in message.object.pieces():
            total += float(values.sum())
        done.set()

    async with through_proxy(pki) as (server, site, proxy):
        server.register("fold", fold)
        proxy.throttle(1_000_000)
        start = anyio.current_time()
        with anyio.fail_after(30):
            await site.tell("server/fold", None, arrays={"x": data})
            await done.wait()
        elapsed = anyio.current_time() - start
        connections = site.link("server").connections
    assert elapsed > CONFIG.liveness_timeout * 2  # it really was slow...
    assert connections == 1  # ...and never declared dead
    assert total == float(data.sum())


async def test_receiver_buffers_at_most_one_window_however_large_the_object(pki: Pki) -> None:
    config = SessionConfig(
        heartbeat_interval=0.2,
        liveness_timeout=2.0,
        chunk_size=64 * 1024,
        object_window=256 * 1024,
        connection_window=1 * MiB,
    )
    data = np.ones(8 * MiB // 4, dtype=np.float32)  # 8 MiB, 32 windows
    done = anyio.Event()
    count = 0

    async def slow_fold(message: Message) -> None:
        nonlocal count
        assert message.object is not None
        async for _name, _start, values in message.object.pieces():
            count += values.size
            await anyio.sleep(0.001)  # a consumer slower than the link
        done.set()

    async with through_proxy(pki, config) as (server, site, proxy):
        server.register("fold", slow_fold)
        proxy.throttle(20_000_000)
        with anyio.fail_after(60):
            await site.tell("server/fold", None, arrays={"x": data})
            await done.wait()
        peak = server.link("site-1").peak_buffered_bytes
    assert count == data.size
    assert 0 < peak <= config.object_window


async def test_expired_session_is_refused_and_names_the_undelivered_messages(pki: Pki) -> None:
    lost: list[tuple[str, TransportError | None]] = []
    told = anyio.Event()

    async def echo(message: Message) -> Any:
        return message.body

    async with through_proxy(pki, session_ttl=0.3) as (server, site, proxy):
        server.register("echo", echo)

        def on_lost(peer: str, error: TransportError | None) -> None:
            lost.append((peer, error))
            told.set()

        site.on_peer_lost = on_lost
        with anyio.fail_after(20):
            assert (await site.ask("server/echo", "acked", timeout=5)).body == "acked"  # message 1
            proxy.refuse(True)
            proxy.cut_all()
            for i in range(3):  # messages 2, 3, 4: queued while disconnected
                await site.tell("server/echo", i)
            while not any("expired" in e for e in server.link_errors):
                await server.wait_incident()
            proxy.refuse(False)
            await told.wait()
    assert lost[0][0] == "server"
    error = lost[0][1]
    assert isinstance(error, ResumeRefusedError)
    assert "unknown or expired session" in str(error)
    assert error.undelivered == (2, 3, 4)
    assert "server" not in site.peers
