"""Every handshake failure says its kind where it is understood, not only in its text.

Three layers, as the failures arise:

- pure: real ssl errors from handshakes over memory BIOs (no event loop) are classified from their
  codes, the same whether seen raw, wrapped by anyio, or described in a broken link's text; a
  REFUSE frame's code and the handshake timers give the session's kinds;
- streams: :func:`client_handshake` and :func:`server_handshake` over memory streams, on both
  backends (a peer that does not speak TLS, one that hangs up or stays silent, another ALPN name);
- loopback: real sockets on 127.0.0.1, where TLS 1.3 delivers the server's verdict on the client's
  certificate only after the client's handshake is done (an alert while reading WELCOME).

Each test asserts the kind (and the certificate problem or alert), which a caller such as the admin
client decides on; the human text is checked only where it must stay as it was.
"""

from __future__ import annotations

import datetime as dt
import pickle
import socket
import ssl
import struct
from collections.abc import Callable, Coroutine
from typing import Any

import anyio
import anyio.abc
import pytest
from anyio.streams.stapled import StapledObjectStream

from security.pki import Credential, Identity, Role, create_ca
from security.tls import client_ssl_context, server_ssl_context
from tests.transport.conftest import FAST, Pki, name_from_certificate
from tests.transport.sansio import SMALL
from transport._sslsocket import accept_socket, listen_socket
from transport.bus import Node
from transport.errors import (
    CertificateProblem,
    ConnectionBrokenError,
    HandshakeError,
    HandshakeFailure,
    ResumeRefusedError,
)
from transport.protocol.frames import FrameKind, encode_frame
from transport.protocol.session import (
    ConnectionFailed,
    HelloReader,
    Session,
    SessionEnded,
)
from transport.protocol.session import (
    Role as SessionRole,
)
from transport.tls import (
    accept_tls,
    client_handshake,
    connection_broken,
    describe_failure,
    dial_tls,
    handshake_error,
    prepare_client_context,
    prepare_server_context,
    server_handshake,
)

K = HandshakeFailure
P = CertificateProblem

# -- the error itself ------------------------------------------------------------------------------


def test_a_handshake_error_is_unknown_unless_told_and_says_its_reason() -> None:
    error = HandshakeError("something failed")
    assert error.kind is K.UNKNOWN
    assert (error.certificate, error.alert) == (None, None)
    assert str(error) == error.reason == "something failed"


def test_the_kind_and_its_details_survive_pickling() -> None:
    error = HandshakeError(
        "certificate verification failed: x", kind=K.PEER_CERTIFICATE, certificate=P.FOREIGN_CA
    )
    copy = pickle.loads(pickle.dumps(error))
    assert type(copy) is HandshakeError
    assert (str(copy), copy.reason) == (str(error), error.reason)
    assert (copy.kind, copy.certificate, copy.alert) == (K.PEER_CERTIFICATE, P.FOREIGN_CA, None)
    alert = pickle.loads(pickle.dumps(HandshakeError("a", kind=K.TLS_ALERT, alert="unknown_ca")))
    assert (alert.kind, alert.alert) == (K.TLS_ALERT, "unknown_ca")


def test_a_refused_resumption_is_of_its_own_kind_and_pickles() -> None:
    error = ResumeRefusedError("unknown or expired session", [3, 4])
    assert error.kind is K.RESUME_REFUSED
    copy = pickle.loads(pickle.dumps(error))
    assert (type(copy), str(copy), copy.undelivered, copy.kind) == (
        ResumeRefusedError,
        "unknown or expired session",
        (3, 4),
        K.RESUME_REFUSED,
    )


# -- real ssl errors, classified (pure) ------------------------------------------------------------

HOST = "localhost"


def _drive(server: ssl.SSLContext, client: ssl.SSLContext) -> dict[str, ssl.SSLError | None]:
    """Run a handshake over memory BIOs until both sides are done or failed; each side's error.

    After a completed handshake each side also reads once, so that a TLS 1.3 alert sent after the
    client thinks it is done (the server refusing the client's certificate) is seen too.
    """
    s_in, s_out, c_in, c_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    sides = {
        "server": server.wrap_bio(s_in, s_out, server_side=True),
        "client": client.wrap_bio(c_in, c_out, server_hostname=HOST),
    }
    errors: dict[str, ssl.SSLError | None] = {"server": None, "client": None}
    shaken = {"server": False, "client": False}
    for _ in range(50):
        for name in ("client", "server"):
            obj = sides[name]
            if errors[name] is not None:
                continue
            try:
                if not shaken[name]:
                    obj.do_handshake()
                    shaken[name] = True
                obj.read(1)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                pass
            except ssl.SSLError as exc:
                errors[name] = exc
        moved = c_out.pending + s_out.pending
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if moved == 0:
            return errors
    raise AssertionError("the handshake did not settle")  # pragma: no cover


def _foreign_server(pki: Pki) -> ssl.SSLContext:
    rogue = create_ca("rogue-ca").issue(Identity("server", "hub", Role.SERVER), hosts=[HOST])
    return server_ssl_context(rogue, pki.ca.cert_pem)


def _expired(pki: Pki, identity: Identity, hosts: list[str] | None = None) -> Credential:
    ten_days_ago = dt.datetime.now(dt.UTC) - dt.timedelta(days=10)
    return pki.ca.issue(identity, hosts=hosts or [], not_before=ten_days_ago, valid_days=1)


def _rogue_site(pki: Pki, tls12: bool = False) -> ssl.SSLContext:
    """A site certificate from another CA, in a context that trusts the real server."""
    rogue = create_ca("rogue-ca").issue(Identity("site-1", "hospital-a", Role.SITE))
    context = client_ssl_context(rogue, pki.ca.cert_pem, minimum_version=_lowest(tls12))
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


def _lowest(tls12: bool) -> ssl.TLSVersion:
    return ssl.TLSVersion.TLSv1_2 if tls12 else ssl.TLSVersion.TLSv1_3


def _server12(pki: Pki) -> ssl.SSLContext:
    return server_ssl_context(pki.server, pki.ca.cert_pem, minimum_version=_lowest(True))


def _no_certificate(pki: Pki, tls12: bool = False) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(cadata=pki.ca.cert_pem.decode())
    if tls12:
        context.maximum_version = ssl.TLSVersion.TLSv1_2
    return context


Scenario = Callable[[Pki], tuple[ssl.SSLContext, ssl.SSLContext]]

#: (server context, client context), which side fails, and what it must be classified as.
SCENARIOS: dict[str, tuple[Scenario, str, K, P | None, str | None]] = {
    "server from another CA": (
        lambda pki: (_foreign_server(pki), pki.site_context()),
        "client",
        K.PEER_CERTIFICATE,
        P.FOREIGN_CA,
        None,
    ),
    "server for another name": (
        lambda pki: (
            server_ssl_context(
                pki.ca.issue(Identity("server", "hub", Role.SERVER), hosts=["elsewhere.example"]),
                pki.ca.cert_pem,
            ),
            pki.site_context(),
        ),
        "client",
        K.PEER_CERTIFICATE,
        P.NAME_MISMATCH,
        None,
    ),
    "expired server": (
        lambda pki: (
            server_ssl_context(
                _expired(pki, Identity("server", "hub", Role.SERVER), [HOST]), pki.ca.cert_pem
            ),
            pki.site_context(),
        ),
        "client",
        K.PEER_CERTIFICATE,
        P.EXPIRED,
        None,
    ),
    "site from another CA, seen by the server": (
        lambda pki: (pki.server_context(), _rogue_site(pki)),
        "server",
        K.PEER_CERTIFICATE,
        P.FOREIGN_CA,
        None,
    ),
    "site from another CA, TLS 1.3 alert": (
        lambda pki: (pki.server_context(), _rogue_site(pki)),
        "client",
        K.TLS_ALERT,
        None,
        "unknown_ca",
    ),
    "site from another CA, TLS 1.2 alert": (
        lambda pki: (_server12(pki), _rogue_site(pki, tls12=True)),
        "client",
        K.TLS_ALERT,
        None,
        "unknown_ca",
    ),
    "expired site, TLS 1.3 alert": (
        lambda pki: (
            pki.server_context(),
            client_ssl_context(
                _expired(pki, Identity("site-1", "hospital-a", Role.SITE)), pki.ca.cert_pem
            ),
        ),
        "client",
        K.TLS_ALERT,
        None,
        "certificate_expired",
    ),
    "site without a certificate, seen by the server": (
        lambda pki: (pki.server_context(), _no_certificate(pki)),
        "server",
        K.PEER_CERTIFICATE,
        P.MISSING,
        None,
    ),
    "site without a certificate, TLS 1.3 alert": (
        lambda pki: (pki.server_context(), _no_certificate(pki)),
        "client",
        K.TLS_ALERT,
        None,
        "certificate_required",
    ),
    "TLS versions that do not meet": (
        lambda pki: (pki.server_context(), _rogue_site(pki, tls12=True)),
        "server",
        K.NOT_FLRT,
        None,
        None,
    ),
}


def _failure(pki: Pki, scenario: str) -> ssl.SSLError:
    make, side, *_ = SCENARIOS[scenario]
    error = _drive(*make(pki))[side]
    assert error is not None, f"the {side} did not fail"
    return error


def _classified(error: HandshakeError) -> tuple[K, P | None, str | None]:
    return error.kind, error.certificate, error.alert


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_a_real_ssl_failure_is_classified_by_its_codes(pki: Pki, scenario: str) -> None:
    _, _, *expected = SCENARIOS[scenario]
    exc = _failure(pki, scenario)
    error = handshake_error("text", exc)
    assert _classified(error) == tuple(expected)
    assert str(error) == "text"


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_the_kind_is_the_same_through_anyio_and_a_broken_link(pki: Pki, scenario: str) -> None:
    """anyio wraps the ssl error (``BrokenResourceError from exc``); a link that broke before the
    session opened keeps a :class:`ConnectionBrokenError` (:func:`connection_broken`), not the ssl
    error. Neither loses the kind."""
    exc = _failure(pki, scenario)
    direct = handshake_error("direct", exc)
    wrapped = anyio.BrokenResourceError()
    wrapped.__cause__ = exc
    assert _classified(handshake_error("wrapped", wrapped)) == _classified(direct)
    broken = connection_broken(wrapped)
    assert str(broken) == describe_failure(wrapped)
    kept = handshake_error("kept", broken)
    if direct.kind is K.UNKNOWN:
        assert kept.kind is K.TRANSIENT  # a connection that broke, for all anyone can tell
    else:
        assert _classified(kept) == _classified(direct)


def test_a_broken_links_kind_is_never_read_from_its_text() -> None:
    looks_final = ConnectionBrokenError("TLS failure: tlsv13 alert certificate required")
    assert handshake_error("x", looks_final).kind is K.TRANSIENT
    alert = ConnectionBrokenError("connection broke", kind=K.TLS_ALERT, alert="unknown_ca")
    assert _classified(handshake_error("x", alert)) == _classified(
        HandshakeError("y", kind=K.TLS_ALERT, alert="unknown_ca")
    )


@pytest.mark.parametrize(
    ("cause", "kind"),
    [
        (ConnectionResetError(104, "Connection reset by peer"), K.TRANSIENT),
        (anyio.EndOfStream(), K.TRANSIENT),
        (anyio.BrokenResourceError(), K.TRANSIENT),
        (TimeoutError(), K.TRANSIENT),
        (ConnectionBrokenError("peer closed the connection"), K.TRANSIENT),
        (ConnectionBrokenError("connection broke: Connection reset by peer"), K.TRANSIENT),
        (HandshakeError("refused", kind=K.IDENTITY_REFUSED), K.IDENTITY_REFUSED),
        (None, K.UNKNOWN),
        (ValueError("?"), K.UNKNOWN),
    ],
)
def test_what_is_not_an_ssl_error_is_transient_or_unknown(
    cause: BaseException | None, kind: K
) -> None:
    assert handshake_error("x", cause).kind is kind


# -- the session: refusals and timers (pure) -------------------------------------------------------


def _refused_at_hello(code: object) -> HandshakeError:
    """What a client opening a session makes of a REFUSE frame with ``code``."""
    session = Session(SessionRole.CLIENT, SMALL)
    session.connect(0.0)
    refuse = {"why": "not on the list", "code": code}
    session.receive_data(b"".join(encode_frame(FrameKind.REFUSE, refuse)), 0.1)
    [ended] = session.events_received()
    assert isinstance(ended, SessionEnded)
    assert isinstance(ended.error, HandshakeError)
    assert str(ended.error) == "not on the list"
    return ended.error


@pytest.mark.parametrize(
    ("code", "kind"),
    [
        ("identity", K.IDENTITY_REFUSED),
        ("protocol", K.NOT_FLRT),
        ("duplicate", K.DUPLICATE),
        ("refused", K.UNKNOWN),
        # A code from a peer is anything msgpack carries: never a lookup that raises.
        (["identity"], K.UNKNOWN),
        ({"a": 1}, K.UNKNOWN),
        (7, K.UNKNOWN),
        (None, K.UNKNOWN),
        (b"identity", K.UNKNOWN),
    ],
)
def test_a_refusal_at_hello_says_its_kind_from_the_frames_code(code: object, kind: K) -> None:
    assert _refused_at_hello(code).kind is kind


def test_a_refused_resumption_from_the_server_is_of_that_kind() -> None:
    error = _refused_at_hello("resume")
    assert isinstance(error, ResumeRefusedError)
    assert error.kind is K.RESUME_REFUSED


def test_no_welcome_in_time_is_transient() -> None:
    session = Session(SessionRole.CLIENT, SMALL)
    session.connect(0.0)
    session.handle_timer(SMALL.handshake_timeout)
    [failed] = session.events_received()
    assert isinstance(failed, ConnectionFailed)
    assert isinstance(failed.error, HandshakeError)
    assert failed.error.kind is K.TRANSIENT


def test_no_hello_in_time_is_transient() -> None:
    reader = HelloReader(SMALL, 0.0)
    with pytest.raises(HandshakeError) as late:
        reader.check_timer(SMALL.handshake_timeout)
    assert late.value.kind is K.TRANSIENT


# -- over memory streams, both backends --------------------------------------------------------------


def _memory_pair() -> tuple[StapledObjectStream[bytes], StapledObjectStream[bytes]]:
    a_send, a_receive = anyio.create_memory_object_stream[bytes](100)
    b_send, b_receive = anyio.create_memory_object_stream[bytes](100)
    return StapledObjectStream(a_send, b_receive), StapledObjectStream(b_send, a_receive)


async def _client_against(
    answer: Callable[[StapledObjectStream[bytes]], Coroutine[Any, Any, None]],
    context: ssl.SSLContext,
) -> HandshakeError:
    """The client's handshake failure against a peer that runs ``answer`` on its end."""
    ours, theirs = _memory_pair()
    async with anyio.create_task_group() as tg:
        tg.start_soon(answer, theirs)
        with pytest.raises(HandshakeError) as failed:
            await client_handshake(ours, context, HOST, 0.5)
        tg.cancel_scope.cancel()
    return failed.value


@pytest.mark.anyio
async def test_a_peer_that_answers_in_plain_text_does_not_speak_flrt(pki: Pki) -> None:
    async def http(stream: StapledObjectStream[bytes]) -> None:
        await stream.receive()  # the ClientHello
        await stream.send(b"HTTP/1.1 400 Bad Request\r\n\r\n")
        await stream.aclose()

    with anyio.fail_after(10):
        error = await _client_against(http, prepare_client_context(pki.site_context()))
    assert error.kind is K.NOT_FLRT


@pytest.mark.anyio
async def test_a_client_that_sends_http_does_not_speak_flrt(pki: Pki) -> None:
    ours, theirs = _memory_pair()
    await theirs.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with anyio.fail_after(10), pytest.raises(HandshakeError) as failed:
        await server_handshake(ours, prepare_server_context(pki.server_context()), 5)
    assert failed.value.kind is K.NOT_FLRT


@pytest.mark.anyio
async def test_a_peer_that_hangs_up_mid_handshake_is_transient(pki: Pki) -> None:
    async def hang_up(stream: StapledObjectStream[bytes]) -> None:
        await stream.receive()
        await stream.aclose()

    with anyio.fail_after(10):
        error = await _client_against(hang_up, prepare_client_context(pki.site_context()))
    assert error.kind is K.TRANSIENT


@pytest.mark.anyio
async def test_a_silent_peer_is_transient(pki: Pki) -> None:
    async def silent(stream: StapledObjectStream[bytes]) -> None:
        await anyio.sleep_forever()

    with anyio.fail_after(10):
        error = await _client_against(silent, prepare_client_context(pki.site_context()))
    assert error.kind is K.TRANSIENT
    assert str(error) == "TLS handshake not completed within 0.5 s"


@pytest.mark.anyio
async def test_a_peer_with_another_alpn_name_does_not_speak_flrt(pki: Pki) -> None:
    server_context = pki.server_context()
    server_context.set_alpn_protocols(["h2"])
    ours, theirs = _memory_pair()

    async def serve() -> None:
        with pytest.raises(HandshakeError):  # the client hangs up as soon as it sees the ALPN
            await server_handshake(theirs, server_context, 5)

    with anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with pytest.raises(HandshakeError) as failed:
                await client_handshake(ours, prepare_client_context(pki.site_context()), HOST, 5)
            await ours.aclose()
    assert failed.value.kind is K.NOT_FLRT
    assert str(failed.value) == "peer does not speak flrt/1 (ALPN: None)"


# -- loopback: real sockets, the bus's dial ---------------------------------------------------------


async def _dial_error(port: int, context: ssl.SSLContext) -> HandshakeError:
    async with Node("site-1", config=FAST) as site:
        with pytest.raises(HandshakeError) as failed:
            await site.connect("127.0.0.1", port, context, server_hostname=HOST)
    return failed.value


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("client", "alert"),
    [
        ("from another CA", "unknown_ca"),
        ("expired", "certificate_expired"),
        ("without a certificate", "certificate_required"),
    ],
)
async def test_a_server_that_refuses_the_clients_certificate_is_a_tls_alert(
    pki: Pki, client: str, alert: str
) -> None:
    """TLS 1.3: the alert arrives after the client's handshake, while it waits for WELCOME."""
    if client == "from another CA":
        context = _rogue_site(pki)
    elif client == "expired":
        expired = _expired(pki, Identity("site-1", "hospital-a", Role.SITE))
        context = client_ssl_context(expired, pki.ca.cert_pem)
    else:
        context = _no_certificate(pki)
    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), name_from_certificate)
        with anyio.fail_after(10):
            error = await _dial_error(port, context)
    assert (error.kind, error.alert) == (K.TLS_ALERT, alert)
    assert str(error).startswith("the server ended the connection before the session opened")


@pytest.mark.anyio
async def test_a_server_from_another_ca_is_a_peer_certificate_failure(pki: Pki) -> None:
    async with Node("server", config=FAST) as server:
        port = await server.serve(_foreign_server(pki), name_from_certificate)
        with anyio.fail_after(10):
            error = await _dial_error(port, pki.site_context())
    assert (error.kind, error.certificate) == (K.PEER_CERTIFICATE, P.FOREIGN_CA)
    assert str(error).startswith("certificate verification failed: ")


@pytest.mark.anyio
async def test_a_refused_identity_is_of_that_kind(pki: Pki) -> None:
    def nobody(der: bytes) -> str:
        raise PermissionError(f"{name_from_certificate(der)} is not a participant")

    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), nobody)
        with anyio.fail_after(10):
            error = await _dial_error(port, pki.site_context())
            while not server.refusals:
                await server.wait_incident()
    assert error.kind is K.IDENTITY_REFUSED
    assert str(error) == "site-1 is not a participant"


@pytest.mark.anyio
@pytest.mark.parametrize("where", ["during TLS", "after TLS"])
async def test_a_server_that_drops_the_connection_is_transient(pki: Pki, where: str) -> None:
    """A reset in the TLS handshake, or a close after it with no word (a server restarting)."""
    listener = listen_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]

    async def drop() -> None:
        raw = await accept_socket(listener)
        if where == "during TLS":
            await anyio.wait_readable(raw)  # the ClientHello is in
            raw.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            raw.close()  # a reset
            return
        stream = await accept_tls(raw, prepare_server_context(pki.server_context()), 5)
        await stream.receive()  # the HELLO
        await stream.aclose()

    with listener, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(drop)
            if where == "during TLS":
                context = prepare_client_context(pki.site_context())
                with pytest.raises(HandshakeError) as failed:
                    await dial_tls("127.0.0.1", port, context, HOST, 5)
                error = failed.value
            else:
                error = await _dial_error(port, pki.site_context())
    assert error.kind is K.TRANSIENT, error


@pytest.mark.anyio
async def test_a_port_that_answers_in_plain_text_does_not_speak_flrt(pki: Pki) -> None:
    listener = listen_socket("127.0.0.1", 0)
    port = listener.getsockname()[1]

    async def http() -> None:
        raw = await accept_socket(listener)
        with raw:
            await anyio.wait_readable(raw)
            raw.recv(65536)
            raw.sendall(b"HTTP/1.1 400 Bad Request\r\n\r\n")

    with listener, anyio.fail_after(10):
        async with anyio.create_task_group() as tg:
            tg.start_soon(http)
            error = await _dial_error(port, pki.site_context())
    assert error.kind is K.NOT_FLRT
