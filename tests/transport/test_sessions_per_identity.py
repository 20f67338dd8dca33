"""How many sessions one identity may hold on a server, over real TLS on loopback.

A site is one process: a second process with the same kit is refused while the first is
connected (before, each took the session from the other, for ever), and admitted once it is not,
or once the first's connection has fallen silent (a half-open connection left by a host that went
away: the restarted site need not wait out the liveness timeout).
An operator may run the console in two terminals: a peer the server's policy allows several
sessions gets an address per session (``name#n``), and its messages say who it is.
"""

from __future__ import annotations

import anyio
import pytest

from tests.transport.conftest import FAST, Pki, name_from_certificate
from transport.bus import Message, Node
from transport.errors import HandshakeError, HandshakeFailure
from transport.protocol.session import SessionConfig
from transport.testing import FaultProxy

pytestmark = pytest.mark.anyio


async def _who(message: Message) -> list[str]:
    return [message.sender, message.identity]


async def _connect(node: Node, port: int, pki: Pki) -> None:
    await node.connect("127.0.0.1", port, pki.site_context(), server_hostname="localhost")


#: A twin heard from every second is live: the server presumes a connection half-open only after
#: two heartbeat intervals of silence, so a loaded test machine does not make the twin look dead.
TWINS = SessionConfig(heartbeat_interval=1.0, liveness_timeout=10.0, handshake_timeout=2.0)


async def test_a_second_process_with_a_sites_identity_is_refused_while_the_first_is_connected(
    pki: Pki,
) -> None:
    async with Node("server", config=TWINS) as server:
        server.register("who", _who)
        port = await server.serve(pki.server_context(), name_from_certificate)
        async with Node("site-1", config=TWINS) as first:
            await _connect(first, port, pki)
            async with Node("site-1", config=TWINS) as second:
                with pytest.raises(HandshakeError) as refused:
                    await _connect(second, port, pki)
                second.task_group.cancel_scope.cancel()
            assert refused.value.kind is HandshakeFailure.DUPLICATE
            assert "connected already" in str(refused.value)
            assert "another process with the same identity" in str(refused.value)
            # The first process never noticed.
            reply = await first.ask("server/who", None, timeout=5)
            assert reply.body == ["site-1", "site-1"]
            assert first.link("server").connections == 1
            assert any("connected already" in entry for entry in server.refusals)
            first.task_group.cancel_scope.cancel()

        # Once the first is gone, the next process with the identity is admitted.
        with anyio.fail_after(10):
            await server.wait_peer("site-1", connected=False)
        async with Node("site-1", config=TWINS) as third:
            await _connect(third, port, pki)
            reply = await third.ask("server/who", None, timeout=5)
            assert reply.body == ["site-1", "site-1"]
            third.task_group.cancel_scope.cancel()
        server.task_group.cancel_scope.cancel()


async def test_a_restarted_site_replaces_its_half_open_session_before_the_liveness_timeout(
    pki: Pki,
) -> None:
    # The liveness timeout is a minute: the old rule (refuse while the old connection counts as
    # connected) keeps the restarted site out for all of it.
    config = SessionConfig(heartbeat_interval=0.2, liveness_timeout=60.0, handshake_timeout=2.0)
    async with Node("server", config=config) as server:
        server.register("who", _who)
        port = await server.serve(pki.server_context(), name_from_certificate)
        async with FaultProxy("127.0.0.1", port) as proxy, Node("site-1", config=config) as old:
            await _connect(old, proxy.port, pki)
            assert (await old.ask("server/who", None, timeout=5)).body == ["site-1", "site-1"]
            old_link = server.link("site-1")
            proxy.stall()  # the old host is gone: its connection stays open, silent

            async with Node("site-1", config=config) as restarted:
                refusals: list[HandshakeError] = []
                with anyio.fail_after(15):
                    while True:
                        try:
                            await _connect(restarted, port, pki)
                            break
                        except HandshakeError as exc:  # refused until the old one falls silent
                            refusals.append(exc)
                            await anyio.sleep(0.1)
                assert all(exc.kind is HandshakeFailure.DUPLICATE for exc in refusals), refusals
                assert all("last heard from" in str(exc) for exc in refusals), refusals
                reply = await restarted.ask("server/who", None, timeout=5)
                assert reply.body == ["site-1", "site-1"]
                assert server.link("site-1") is not old_link
                assert old_link.closed
                restarted.task_group.cancel_scope.cancel()
            old.task_group.cancel_scope.cancel()
        server.task_group.cancel_scope.cancel()


async def test_a_peer_allowed_several_sessions_gets_an_address_for_each(pki: Pki) -> None:
    async def inbox_a(message: Message) -> str:
        return f"a got {message.body}"

    async def inbox_b(message: Message) -> str:
        return f"b got {message.body}"

    async with (
        Node("server", config=FAST) as server,
        Node("site-1", config=FAST) as a,
        Node("site-1", config=FAST) as b,
    ):
        server.register("who", _who)
        port = await server.serve(
            pki.server_context(), name_from_certificate, many_sessions=lambda peer: True
        )
        a.register("inbox", inbox_a)
        b.register("inbox", inbox_b)
        await _connect(a, port, pki)
        await _connect(b, port, pki)
        a_address, a_identity = (await a.ask("server/who", None, timeout=5)).body
        b_address, b_identity = (await b.ask("server/who", None, timeout=5)).body
        assert a_identity == b_identity == "site-1"
        assert a_address != b_address
        assert {a_address, b_address} <= set(server.peers)
        assert a_address.startswith("site-1#")

        # The server reaches each session at its own address.
        assert (await server.ask(f"{a_address}/inbox", 1, timeout=5)).body == "a got 1"
        assert (await server.ask(f"{b_address}/inbox", 2, timeout=5)).body == "b got 2"

        # A broken connection resumes the same session, at the same address.
        await a.link("server").drop_connection()
        assert (await a.ask("server/who", None, timeout=10)).body == [a_address, "site-1"]
        assert a.link("server").connections == 2
        assert server.link(a_address).connections == 2
        for node in (a, b, server):
            node.task_group.cancel_scope.cancel()


async def test_a_session_resumes_only_for_the_identity_that_opened_it(pki: Pki) -> None:
    async with Node("server", config=FAST) as server, Node("site-1", config=FAST) as site:
        port = await server.serve(
            pki.server_context(), name_from_certificate, many_sessions=lambda peer: True
        )
        await _connect(site, port, pki)
        session_id = site.link("server").session.session_id
        assert session_id is not None
        [address] = server.peers
        assert server._resumable("site-1", session_id) is server.link(address)
        assert server._resumable("site-2", session_id) is None
        assert server._resumable("site-1", bytes(16)) is None
        site.task_group.cancel_scope.cancel()
        server.task_group.cancel_scope.cancel()
