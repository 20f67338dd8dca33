"""The bus over real mutual TLS on loopback: tell, ask, streams, objects, errors, backpressure."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest
from structlog.testing import capture_logs

from tests.transport.conftest import FAST, Pki, name_from_certificate, server_and_site
from transport.bus import Message, Node, Reply
from transport.errors import (
    AskTimeoutError,
    ConnectionClosedError,
    LocalProtocolError,
    RemoteActorError,
    TransportError,
    UnknownActorError,
)
from transport.protocol.session import SessionConfig

pytestmark = pytest.mark.anyio


async def echo(message: Message) -> Any:
    return {"body": message.body, "from": message.sender, "kind": message.kind}


async def test_ask_both_ways_names_the_sender(pki: Pki) -> None:
    async with server_and_site(pki) as (server, site, _):
        server.register("echo", echo)
        site.register("echo", echo)
        with anyio.fail_after(10):
            reply = await site.ask("server/echo", {"x": [1, 2]}, timeout=5)
            assert reply.body == {"body": {"x": [1, 2]}, "from": "site-1", "kind": "ask"}
            reply = await server.ask("site-1/echo", "hi", timeout=5)
            assert reply.body == {"body": "hi", "from": "server", "kind": "ask"}
            assert server.peers == {"site-1": True}
            assert server.link("site-1").peer_certificate is not None


async def test_tell_delivers_in_order_exactly_once(pki: Pki) -> None:
    received: list[int] = []
    done = anyio.Event()

    async def sink(message: Message) -> None:
        received.append(message.body)
        if len(received) == 500:
            done.set()

    async with server_and_site(pki) as (server, site, _):
        server.register("sink", sink)
        with anyio.fail_after(20):
            for i in range(500):
                await site.tell("server/sink", i)
            await done.wait()
    assert received == list(range(500))


async def test_local_actor_to_actor(pki: Pki) -> None:
    async with Node("solo") as node:
        node.register("echo", echo)
        with anyio.fail_after(5):
            reply = await node.ask("solo/echo", 7, timeout=5)
    assert reply.body == {"body": 7, "from": "solo", "kind": "ask"}


async def test_streamed_replies(pki: Pki) -> None:
    async def count(message: Message) -> Any:
        async def items() -> Any:
            for i in range(int(message.body)):
                yield Reply({"i": i})

        return items()

    async with server_and_site(pki) as (server, site, _):
        server.register("count", count)
        with anyio.fail_after(10):
            got = [r.body["i"] async for r in site.ask_stream("server/count", 5, timeout=5)]
    assert got == [0, 1, 2, 3, 4]


async def test_arrays_travel_both_ways(pki: Pki) -> None:
    async def double(message: Message) -> Reply:
        assert message.object is not None
        arrays = await message.object.arrays()
        return Reply("doubled", arrays={k: v * 2 for k, v in arrays.items()})

    rng = np.random.default_rng(1)
    model: dict[str, npt.NDArray[Any]] = {
        "w": rng.standard_normal((300, 700)).astype(np.float32),
        "b": np.arange(10, dtype=np.int64),
        "empty": np.zeros((0, 3)),
    }
    async with server_and_site(pki) as (server, site, _):
        server.register("double", double)
        with anyio.fail_after(20):
            reply = await site.ask("server/double", None, arrays=model, timeout=15)
            assert reply.object is not None
            back = await reply.object.arrays()
    assert set(back) == set(model)
    for name, array in model.items():
        assert back[name].dtype == array.dtype
        np.testing.assert_array_equal(back[name], array * 2)


async def test_object_pieces_stream_in_bounded_memory(pki: Pki) -> None:
    config = SessionConfig(
        chunk_size=64 * 1024, object_window=256 * 1024, connection_window=512 * 1024
    )
    total = 0.0
    peak_held = 0
    done = anyio.Event()

    async def fold(message: Message) -> None:
        nonlocal total, peak_held
        assert message.object is not None
        async for _name, _start, values in message.object.pieces():
            total += float(values.sum(dtype=np.float64))
            assert isinstance(message.object, type(message.object))
            peak_held = max(peak_held, getattr(message.object, "held_bytes", 0))
        done.set()

    data = np.arange(4_000_000, dtype=np.float32)
    async with server_and_site(pki, config) as (server, site, _):
        server.register("fold", fold)
        with anyio.fail_after(20):
            await site.tell("server/fold", None, arrays={"x": data})
            await done.wait()
    assert total == float(data.sum(dtype=np.float64))
    assert peak_held <= config.object_window


async def test_actor_error_is_reported_and_bus_keeps_running(pki: Pki) -> None:
    failures: list[tuple[str, str]] = []

    async def flaky(message: Message) -> Any:
        if message.body == "boom":
            raise ValueError("bad input")
        return "fine"

    async with server_and_site(pki) as (server, site, _):
        server.on_actor_error = lambda address, exc: failures.append((address, str(exc)))
        server.register("flaky", flaky)
        with anyio.fail_after(10):
            with pytest.raises(RemoteActorError) as info:
                await site.ask("server/flaky", "boom", timeout=5)
            assert info.value.error_type == "ValueError"
            assert info.value.detail == "bad input"
            reply = await site.ask("server/flaky", "ok", timeout=5)
    assert reply.body == "fine"
    assert failures == [("server/flaky", "bad input")]


async def test_unknown_actor_and_bad_addresses(pki: Pki) -> None:
    async with server_and_site(pki) as (_server, site, _):
        with anyio.fail_after(10):
            with pytest.raises(UnknownActorError):
                await site.ask("server/nobody", None, timeout=5)
            with pytest.raises(ConnectionClosedError):
                await site.tell("elsewhere/actor", None)
            with pytest.raises(LocalProtocolError):
                await site.tell("no-slash", None)


async def test_ask_deadline(pki: Pki) -> None:
    never = anyio.Event()

    async def stuck(message: Message) -> None:
        await never.wait()

    async with server_and_site(pki) as (server, site, _):
        server.register("stuck", stuck)
        with anyio.fail_after(10), pytest.raises(AskTimeoutError) as info:
            await site.ask("server/stuck", None, timeout=0.2)
    assert info.value.deadline == 0.2
    assert info.value.address == "server/stuck"


async def test_full_mailbox_pushes_back_on_remote_sender(pki: Pki) -> None:
    config = SessionConfig(
        heartbeat_interval=0.2, liveness_timeout=5.0, handshake_timeout=2.0, message_window=4
    )
    release = anyio.Event()
    all_handled = anyio.Event()
    handled: list[int] = []
    sent = 0

    async def slow(message: Message) -> None:
        await release.wait()
        handled.append(message.body)
        if len(handled) == 50:
            all_handled.set()

    async with server_and_site(pki, config) as (server, site, _):
        server.register("slow", slow, mailbox_size=2)

        async def sender() -> None:
            nonlocal sent
            for i in range(50):
                await site.tell("server/slow", i)
                sent += 1

        with anyio.fail_after(20):
            async with anyio.create_task_group() as tg:
                tg.start_soon(sender)
                # Let everything that can run, run: the sender must be stuck, not done.
                for _ in range(20):
                    await anyio.wait_all_tasks_blocked()
                    await anyio.sleep(0.01)
                # actor holds 1, mailbox 2, window 4 in the deliverer queue, plus the one waiting
                assert sent <= 1 + 2 + 4 + 1
                release.set()
            await all_handled.wait()
    assert handled == list(range(50))


async def test_pending_ask_fails_when_link_closes(pki: Pki) -> None:
    never = anyio.Event()

    async def stuck(message: Message) -> None:
        await never.wait()

    async with server_and_site(pki) as (server, site, _):
        server.register("stuck", stuck)
        with anyio.fail_after(10):
            async with anyio.create_task_group() as tg:

                async def close_soon() -> None:
                    await anyio.wait_all_tasks_blocked()
                    site.link("server").close("test over")

                tg.start_soon(close_soon)
                with pytest.raises(ConnectionClosedError):
                    await site.ask("server/stuck", None, timeout=8)


async def test_a_stopping_node_tells_its_peers_the_session_is_over(pki: Pki) -> None:
    """Its peers hear a CLOSE with the reason, instead of finding a broken connection and trying
    to resume a session that is gone."""
    lost: list[tuple[str, TransportError | None]] = []
    async with Node("site-1", config=FAST, on_peer_lost=lambda *a: lost.append(a)) as site:
        async with Node("server", config=FAST) as server:
            port = await server.serve(pki.server_context(), name_from_certificate)
            await site.connect(
                "127.0.0.1", port, pki.site_context(pki.site), server_hostname="localhost"
            )
            link = site.link("server")
        with anyio.fail_after(5):
            while not link.closed:
                await link.wait_changed()
        assert (link.closed_by_peer, link.close_error) == ("node stopping", None)
        assert lost == [("server", None)]
        assert site.link_errors == []


async def test_a_failed_connect_is_raised_not_also_logged(pki: Pki) -> None:
    """The caller of connect() reports the failure; the node does not warn about it as well."""
    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), name_from_certificate)
    async with Node("site-1", config=FAST) as site:
        with capture_logs() as logs, pytest.raises(TransportError):
            await site.connect(
                "127.0.0.1", port, pki.site_context(pki.site), server_hostname="localhost"
            )
    assert [entry for entry in logs if entry["event"] == "link.failed"] == []
    assert len(site.link_errors) == 1  # still on record for status views


async def test_a_served_peer_that_stops_is_logged_once_with_its_reason(pki: Pki) -> None:
    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), name_from_certificate)
        with capture_logs() as logs:
            async with Node("site-1", config=FAST) as site:
                await site.connect(
                    "127.0.0.1", port, pki.site_context(pki.site), server_hostname="localhost"
                )
            with anyio.fail_after(5):
                while not any(e["event"] == "peer.disconnected" for e in logs):  # noqa: ASYNC110
                    await anyio.sleep(0.01)
    ended = [e for e in logs if e["event"] in ("peer.disconnected", "link.closed_by_peer")]
    assert [(e["event"], e.get("closed_by_peer"), e["error"]) for e in ended] == [
        ("peer.disconnected", "node stopping", None)
    ]
