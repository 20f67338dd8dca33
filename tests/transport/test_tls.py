"""Mutual TLS: memory-stream handshakes, interoperability with trustme, and every bad input.

Each bad input ends that one connection with a typed error and a logged refusal; the listener
keeps serving, which every test checks by completing a good ask afterwards.
"""

from __future__ import annotations

import os
import socket
import ssl
import struct
from dataclasses import dataclass
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import msgpack
import pytest
import trustme
from anyio.streams.stapled import StapledObjectStream
from anyio.streams.tls import TLSAttribute, TLSStream

from security.pki import Identity, Role, create_ca
from security.tls import client_ssl_context
from tests.transport.conftest import FAST, Pki, name_from_certificate
from transport._sslsocket import SSLSocketStream, accept_socket, listen_socket
from transport.bus import Message, Node
from transport.errors import HandshakeError
from transport.protocol.frames import FrameDecoder, FrameKind, encode_frame
from transport.tls import (
    ALPN_PROTOCOL,
    accept_tls,
    client_handshake,
    dial_tls,
    peer_certificate,
    prepare_client_context,
    prepare_server_context,
    server_handshake,
)

pytestmark = pytest.mark.anyio


async def echo(message: Message) -> Any:
    return message.body


# -- memory streams ----------------------------------------------------------------------------


def _memory_pair() -> tuple[StapledObjectStream[bytes], StapledObjectStream[bytes]]:
    a_send, a_receive = anyio.create_memory_object_stream[bytes](100)
    b_send, b_receive = anyio.create_memory_object_stream[bytes](100)
    return StapledObjectStream(a_send, b_receive), StapledObjectStream(b_send, a_receive)


async def _handshake_over_memory(
    server_context: ssl.SSLContext, client_context: ssl.SSLContext
) -> dict[str, TLSStream]:
    """Both sides of a TLS handshake over a memory pipe: ``{"server": ..., "client": ...}``."""
    prepare_server_context(server_context)
    prepare_client_context(client_context)
    left, right = _memory_pair()
    results: dict[str, TLSStream] = {}

    async def serve() -> None:
        results["server"] = await server_handshake(left, server_context, 5)

    async with anyio.create_task_group() as tg:
        tg.start_soon(serve)
        results["client"] = await client_handshake(right, client_context, "localhost", 5)
    return results


@dataclass(frozen=True)
class TrustmeParty:
    """Certificates from an independent CA library, and the contexts built from them."""

    server_cert: trustme.LeafCert
    site_cert: trustme.LeafCert
    server_context: ssl.SSLContext
    client_context: ssl.SSLContext


def _trustme_party() -> TrustmeParty:
    ca = trustme.CA()
    server_cert = ca.issue_cert("localhost", common_name="hub")
    site_cert = ca.issue_cert("site-9.example", common_name="site-9")
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert.configure_cert(server_context)
    ca.configure_trust(server_context)
    server_context.verify_mode = ssl.CERT_REQUIRED
    client_context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    site_cert.configure_cert(client_context)
    ca.configure_trust(client_context)
    return TrustmeParty(server_cert, site_cert, server_context, client_context)


async def test_tls_over_memory_streams_exposes_peer_certificates(pki: Pki) -> None:
    with anyio.fail_after(10):
        results = await _handshake_over_memory(pki.server_context(), pki.site_context())
        await results["client"].send(b"".join(encode_frame(FrameKind.HEARTBEAT, {})))
        decoder = FrameDecoder()
        decoder.receive_data(await results["server"].receive())
    assert name_from_certificate(peer_certificate(results["server"])) == "site-1"
    assert name_from_certificate(peer_certificate(results["client"])) == "server"
    assert results["server"].extra(TLSAttribute.alpn_protocol) == ALPN_PROTOCOL
    frame = decoder.next_event()
    assert frame is not None
    assert frame.kind is FrameKind.HEARTBEAT


async def test_tls_over_memory_streams_with_trustme_certificates() -> None:
    party = _trustme_party()
    server_cert, site_cert = party.server_cert, party.site_cert
    with anyio.fail_after(10):
        results = await _handshake_over_memory(party.server_context, party.client_context)
        await results["server"].send(b"".join(encode_frame(FrameKind.HEARTBEAT, {})))
        decoder = FrameDecoder()
        decoder.receive_data(await results["client"].receive())
    from cryptography import x509

    seen_by_server = x509.load_der_x509_certificate(peer_certificate(results["server"]))
    seen_by_site = x509.load_der_x509_certificate(peer_certificate(results["client"]))
    assert seen_by_server == x509.load_pem_x509_certificate(site_cert.cert_chain_pems[0].bytes())
    assert seen_by_site == x509.load_pem_x509_certificate(server_cert.cert_chain_pems[0].bytes())
    frame = decoder.next_event()
    assert frame is not None
    assert frame.kind is FrameKind.HEARTBEAT


def test_contexts_that_do_not_verify_are_refused() -> None:
    lax = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    with pytest.raises(RuntimeError, match="require client certificates"):
        prepare_server_context(lax)
    lax_client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    lax_client.check_hostname = False
    lax_client.verify_mode = ssl.CERT_NONE
    with pytest.raises(RuntimeError, match="verify the server"):
        prepare_client_context(lax_client)


# -- interoperability with an independent CA library -------------------------------------------


async def test_bus_runs_on_certificates_from_trustme() -> None:
    party = _trustme_party()
    server_context, client_context = party.server_context, party.client_context

    def common_name(der: bytes) -> str:
        from cryptography import x509

        cert = x509.load_der_x509_certificate(der)
        value = cert.subject.get_attributes_for_oid(x509.NameOID.COMMON_NAME)[0].value
        return str(value)

    async with Node("hub", config=FAST) as hub, Node("site-9", config=FAST) as site:
        hub.register("echo", echo)
        port = await hub.serve(server_context, common_name)
        with anyio.fail_after(10):
            await site.connect(
                "127.0.0.1", port, client_context, server_hostname="localhost", peer="hub"
            )
            reply = await site.ask("hub/echo", "interop", timeout=5)
            assert hub.peers == {"site-9": True}
    assert reply.body == "interop"


# -- bad input on loopback ---------------------------------------------------------------------


async def _raw_tls(port: int, context: ssl.SSLContext) -> TLSStream:
    raw = await anyio.connect_tcp("127.0.0.1", port)
    return await TLSStream.wrap(
        raw, hostname="localhost", ssl_context=context, standard_compatible=False
    )


async def _read_until_closed(stream: anyio.abc.ByteStream) -> list[Any]:
    """Every whole frame the server sent before closing; a broken connection ends the list."""
    decoder = FrameDecoder()
    frames: list[Any] = []
    while True:
        try:
            data = await stream.receive()
        except (anyio.EndOfStream, anyio.BrokenResourceError, ssl.SSLError, OSError):
            return frames
        decoder.receive_data(data)
        while (event := decoder.next_event()) is not None:
            frames.append(event)


async def _assert_still_serving(server: Node, pki: Pki, port: int) -> None:
    async with Node("site-2", config=FAST) as good:
        await good.connect(
            "127.0.0.1", port, pki.site_context(pki.other_site), server_hostname="localhost"
        )
        assert (await good.ask("server/echo", "still here", timeout=5)).body == "still here"


def _prefix(kind: int, header_len: int, payload_len: int, version: int = 1) -> bytes:
    return struct.pack("!BBII", version, kind, header_len, payload_len)


HELLO_FRAME = b"".join(
    encode_frame(
        FrameKind.HELLO, {"sid": None, "r": 0, "po": {}, "w": 1 << 20, "cw": 1 << 22, "mw": 8}
    )
)


@pytest.mark.parametrize(
    ("payload", "reason"),
    [
        pytest.param(b"\xff" * 64, "wire version 255", id="garbage"),
        pytest.param(_prefix(1, 1 << 30, 0), "exceeds the limit", id="oversized-frame"),
        pytest.param(_prefix(99, 1, 0) + b"\x80", "unknown frame kind 99", id="unknown-kind"),
        pytest.param(
            b"".join(encode_frame(FrameKind.MESSAGE, {"s": 1}, b"x")),
            "expected HELLO, got MESSAGE",
            id="frame-before-hello",
        ),
        pytest.param(_prefix(1, 3, 0) + b"\xc1\xc1\xc1", "not valid msgpack", id="bad-header"),
        pytest.param(
            HELLO_FRAME + b"".join(encode_frame(FrameKind.MESSAGE, {"s": 1}, b"\xc1")),
            "not valid msgpack",
            id="bad-envelope",
        ),
    ],
)
async def test_bad_frames_end_only_that_connection(pki: Pki, payload: bytes, reason: str) -> None:
    async with Node("server", config=FAST) as server:
        server.register("echo", echo)
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            stream = await _raw_tls(port, prepare_client_context(pki.site_context()))
            await stream.send(payload)
            frames = await _read_until_closed(stream)
            await _wait_for_refusal(server, reason)
            await _assert_still_serving(server, pki, port)
    refusals = [f for f in frames if getattr(f, "kind", None) is FrameKind.REFUSE]
    assert refusals, f"the peer was not told why: {frames}"
    assert reason in refusals[-1].header["why"]


async def _wait_for_refusal(server: Node, reason: str) -> None:
    """Refusals and protocol errors are recorded; wait for the one expected (bounded by fail_after)."""
    while not any(reason in r for r in server.refusals + server.link_errors):
        await server.wait_incident()


async def test_client_without_certificate_is_refused(pki: Pki) -> None:
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cadata=pki.ca.cert_pem.decode())
    async with Node("server", config=FAST) as server, Node("anon", config=FAST) as anon:
        server.register("echo", echo)
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            with pytest.raises(HandshakeError) as info:
                await anon.connect("127.0.0.1", port, context, server_hostname="localhost")
            await _wait_for_refusal(server, "certificate")
            await _assert_still_serving(server, pki, port)
    assert "before the session opened" in str(info.value)
    assert "certificate" in str(info.value)


async def test_certificate_from_another_ca_is_refused(pki: Pki) -> None:
    rogue_ca = create_ca("rogue-ca")
    rogue = rogue_ca.issue(Identity("site-1", "hospital-a", Role.SITE))
    context = client_ssl_context(rogue, pki.ca.cert_pem)  # trusts the real server
    async with Node("server", config=FAST) as server, Node("site-1", config=FAST) as site:
        server.register("echo", echo)
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            with pytest.raises(HandshakeError):
                await site.connect("127.0.0.1", port, context, server_hostname="localhost")
            await _wait_for_refusal(server, "certificate")
            await _assert_still_serving(server, pki, port)


async def test_server_with_wrong_name_is_refused_by_the_client(pki: Pki) -> None:
    async with Node("server", config=FAST) as server, Node("site-1", config=FAST) as site:
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10), pytest.raises(HandshakeError, match="certificate verification"):
            await site.connect(
                "127.0.0.1", port, pki.site_context(), server_hostname="impostor.example"
            )


async def test_identity_policy_refusal_is_reported_to_the_client(pki: Pki) -> None:
    def only_site_2(der: bytes) -> str:
        name = name_from_certificate(der)
        if name != "site-2":
            raise PermissionError(f"{name} is not a participant")
        return name

    async with Node("server", config=FAST) as server, Node("site-1", config=FAST) as site:
        server.register("echo", echo)
        port = await server.serve(pki.server_context(), only_site_2)
        with anyio.fail_after(10):
            with pytest.raises(HandshakeError, match="site-1 is not a participant"):
                await site.connect(
                    "127.0.0.1", port, pki.site_context(), server_hostname="localhost"
                )
            await _assert_still_serving(server, pki, port)


@pytest.mark.parametrize("stage", ["before-tls", "after-tls"])
async def test_silent_peer_is_dropped_after_the_handshake_timeout(pki: Pki, stage: str) -> None:
    async with Node("server", config=FAST) as server:
        server.register("echo", echo)
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            raw = await anyio.connect_tcp("127.0.0.1", port)
            stream: anyio.abc.ByteStream = raw
            if stage == "after-tls":
                stream = await TLSStream.wrap(
                    raw,
                    hostname="localhost",
                    ssl_context=prepare_client_context(pki.site_context()),
                    standard_compatible=False,
                )
            await _read_until_closed(stream)  # the server hangs up on us
            expected = "TLS handshake not completed" if stage == "before-tls" else "no HELLO"
            await _wait_for_refusal(server, expected)
            await _assert_still_serving(server, pki, port)


async def test_resume_of_unknown_session_is_refused_clearly(pki: Pki) -> None:
    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            stream = await _raw_tls(port, prepare_client_context(pki.site_context()))
            hello = {"sid": b"\x01" * 16, "r": 0, "po": {}, "w": 1 << 20, "cw": 1 << 22, "mw": 8}
            await stream.send(b"".join(encode_frame(FrameKind.HELLO, hello)))
            frames = await _read_until_closed(stream)
    assert frames
    assert frames[0].kind is FrameKind.REFUSE
    assert frames[0].header["code"] == "resume"
    assert "unknown or expired session" in frames[0].header["why"]


def test_msgpack_is_what_we_think() -> None:
    # The bad-header case above relies on 0xc1 never being valid msgpack.
    with pytest.raises(Exception):  # noqa: B017, PT011
        msgpack.unpackb(b"\xc1")


async def test_streams_sharing_the_receive_buffer_never_see_each_others_bytes(pki: Pki) -> None:
    """Three connections receive at once into one thread's scratch buffer; each consumer gets
    exactly its own bytes, because a receive never yields between reading and returning."""
    listener = listen_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]
    payloads = [bytes([i]) * 3_000_000 + os.urandom(1000) for i in range(3)]
    received: list[bytearray] = [bytearray() for _ in payloads]

    async def serve(index: int, raw: socket.socket) -> None:
        stream = await accept_tls(raw, prepare_server_context(pki.server_context()), timeout=10)
        async with stream:
            while True:
                try:
                    view = await stream.receive_view()
                except anyio.EndOfStream:
                    return
                await anyio.lowlevel.checkpoint_if_cancelled()
                received[index] += view  # used before the next await, as documented

    async def send(payload: bytes) -> None:
        context = prepare_client_context(pki.site_context())
        stream = await dial_tls("127.0.0.1", port, context, "localhost", timeout=10)
        async with stream:
            for start in range(0, len(payload), 100_000):
                await stream.send(payload[start : start + 100_000])
                await anyio.lowlevel.checkpoint()

    with listener:
        async with anyio.create_task_group() as tg:
            for payload in payloads:
                tg.start_soon(send, payload)
            for index in range(3):
                tg.start_soon(serve, index, await accept_socket(listener))
    # Connections are accepted in some order: match each receiver to the payload it got.
    assert sorted(bytes(r) for r in received) == sorted(payloads)


async def test_a_refused_dial_says_refused() -> None:
    """The operator reads why: 'refused' (nothing listens) is not 'unreachable' or 'timed out'."""
    with socket.socket() as probe:  # a port nobody listens on: bound, then closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionRefusedError, match=f"127.0.0.1:{port}: Connection refused"):
        await SSLSocketStream.open_tcp("127.0.0.1", port)
