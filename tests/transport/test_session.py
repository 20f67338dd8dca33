"""The session state machine, pure: handshake, messages, windows, time, objects, resumption.

Every test drives real :class:`Session` objects through :class:`tests.transport.sansio.Pair` (or
by hand where a peer must misbehave), with the clock as an input. The harness's endpoints check on
every event that messages arrive exactly once and in order and that object bytes arrive
contiguously, so those properties are asserted by every test here, not only the ones named so.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.transport.sansio import (
    SMALL,
    Endpoint,
    Pair,
    Side,
    WireFrame,
    expected_bytes,
    split_frames,
)
from transport.errors import (
    DigestMismatchError,
    HandshakeError,
    LocalProtocolError,
    PeerTimeoutError,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
    VersionError,
)
from transport.protocol.frames import FrameKind, encode_frame
from transport.protocol.objects import ALLOWED_DTYPES, Manifest, OutgoingObject
from transport.protocol.session import (
    TRANSITIONS,
    ConnectionFailed,
    Hello,
    HelloReader,
    ObjectCompleted,
    ObjectFailed,
    Role,
    Session,
    SessionConfig,
    SessionEnded,
    SessionOpened,
    SessionState,
    refuse_frame,
)

S = SessionState
WINDOW = SMALL.object_window


def state_of(x: Endpoint | Session) -> SessionState:
    """The state, read through a call so that the type checker does not pin it across calls."""
    return x.state


def window_open(ep: Endpoint) -> bool:
    return ep.session.send_window_open


def undelivered(ep: Endpoint) -> list[int]:
    return list(ep.session.undelivered)


def frame(kind: FrameKind, header: dict[str, Any], payload: bytes = b"") -> bytes:
    return b"".join(encode_frame(kind, header, payload))


def parse(buffers: list[bytes | memoryview]) -> list[WireFrame]:
    return [WireFrame.parse(raw) for raw in split_frames(b"".join(buffers))]


def kinds(buffers: list[bytes | memoryview]) -> list[FrameKind]:
    return [f.kind for f in parse(buffers)]


def blob(n: int, seed: int = 0) -> dict[str, npt.NDArray[Any]]:
    """An object of exactly ``n`` bytes of random content."""
    data = np.random.default_rng(seed).integers(0, 256, n, dtype=np.uint8)
    return {"blob": data}


def opened(**kwargs: Any) -> Pair:
    pair = Pair(**kwargs)
    pair.open()
    return pair


def step(pair: Pair, n: int) -> None:
    """Flush both sides, then deliver at most ``n`` bytes each way (frames split anywhere)."""
    pair.flush()
    pair.deliver("server", n)
    pair.deliver("client", n)


# -- the transition table ------------------------------------------------------------------------

TABLE = {(state, event.value): result for (state, event), result in TRANSITIONS.items()}
CLIENT_STATES = list(SessionState)
SERVER_STATES = [s for s in SessionState if s is not S.HANDSHAKING]  # a server never handshakes


def client_in(state: SessionState) -> Session:
    pair = Pair()
    if state is S.IDLE:
        pass
    elif state is S.HANDSHAKING:
        pair.connect()
    elif state is S.CLOSED:
        pair.client.session.close()
    else:
        pair.open()
        if state is S.DISCONNECTED:
            pair.cut()
    assert state_of(pair.client) is state
    return pair.client.session


def server_in(state: SessionState) -> Session:
    pair = Pair()
    if state is S.CLOSED:
        pair.server.session.close()
    elif state is not S.IDLE:
        pair.open()
        if state is S.DISCONNECTED:
            pair.cut()
    assert state_of(pair.server) is state
    return pair.server.session


def hello_for(session: Session) -> Hello:
    return Hello(session.session_id, 0, {}, WINDOW, SMALL.connection_window, 4)


def apply(session: Session, event: str) -> None:
    match event:
        case "connect":
            session.connect(1.0)
        case "accept":
            session.accept(hello_for(session), 1.0)
        case "lost":
            session.connection_lost(1.0)
        case "close":
            session.close("test", 1.0)


@pytest.mark.parametrize("event", ["connect", "lost", "close"])
@pytest.mark.parametrize("state", CLIENT_STATES, ids=lambda s: s.value)
def test_client_transitions_follow_the_table(state: SessionState, event: str) -> None:
    session = client_in(state)
    expected = TABLE.get((state, event))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            apply(session, event)
        assert state_of(session) is state
    else:
        apply(session, event)
        assert state_of(session) is expected


@pytest.mark.parametrize("event", ["accept", "lost", "close"])
@pytest.mark.parametrize("state", SERVER_STATES, ids=lambda s: s.value)
def test_server_transitions_follow_the_table(state: SessionState, event: str) -> None:
    session = server_in(state)
    expected = TABLE.get((state, event))
    if expected is None:
        with pytest.raises(LocalProtocolError):
            apply(session, event)
        assert state_of(session) is state
    else:
        apply(session, event)
        assert state_of(session) is expected


def test_welcome_is_only_taken_while_handshaking() -> None:
    assert {state for state, event in TABLE if event == "welcome"} == {S.HANDSHAKING}
    pair = Pair()
    pair.connect()
    pair.pump()
    assert state_of(pair.client) is S.OPEN


def test_every_table_entry_is_reachable_by_a_test_above() -> None:
    covered = {(s, e) for s in CLIENT_STATES for e in ("connect", "lost", "close")}
    covered |= {(s, e) for s in SERVER_STATES for e in ("accept", "lost", "close")}
    covered.add((S.HANDSHAKING, "welcome"))
    assert set(TABLE) <= covered


@pytest.mark.parametrize("state", CLIENT_STATES, ids=lambda s: s.value)
def test_only_the_client_connects_and_only_the_server_accepts(state: SessionState) -> None:
    with pytest.raises(LocalProtocolError):
        client_in(state).accept(Hello(None, 0, {}, 1, 1, 1), 0.0)
    if state is not S.HANDSHAKING:
        with pytest.raises(LocalProtocolError):
            server_in(state).connect(0.0)


def test_accept_of_another_session_is_misuse() -> None:
    server = server_in(S.DISCONNECTED)
    with pytest.raises(LocalProtocolError):
        server.accept(Hello(b"\x01" * 16, 0, {}, WINDOW, 1024, 4), 1.0)
    assert state_of(server) is S.DISCONNECTED


# -- handshake -------------------------------------------------------------------------------------


def test_handshake_opens_one_session_on_both_sides() -> None:
    pair = opened()
    sid = pair.client.session.session_id
    assert sid is not None
    assert len(sid) == 16
    assert pair.server.session.session_id == sid
    assert pair.client.opened == [SessionOpened(sid, resumed=False)]
    assert pair.server.opened == [SessionOpened(sid, resumed=False)]
    assert (state_of(pair.client), state_of(pair.server)) == (S.OPEN, S.OPEN)


def test_handshake_in_every_two_way_split() -> None:
    pair = Pair()
    pair.connect()
    pair.flush()
    hello = pair.to_server.read()
    for cut in range(len(hello) + 1):
        pair = Pair()
        pair.connect()
        pair.flush()
        pair.feed("server", hello[:cut])
        assert state_of(pair.server) is (S.OPEN if cut == len(hello) else S.IDLE)
        pair.feed("server", hello[cut:])
        assert state_of(pair.server) is S.OPEN
        pair.flush()
        welcome = pair.to_client.read()
        pair.feed("client", welcome[:cut])
        assert state_of(pair.client) is (S.OPEN if cut >= len(welcome) else S.HANDSHAKING)
        pair.feed("client", welcome[cut:])
        assert state_of(pair.client) is S.OPEN


def test_handshake_byte_by_byte() -> None:
    pair = Pair()
    pair.connect()
    pair.flush()
    while pair.to_server.pending:
        pair.deliver("server", 1)
    pair.flush()
    while pair.to_client.pending:
        assert state_of(pair.client) is S.HANDSHAKING
        pair.deliver("client", 1)
    assert state_of(pair.client) is S.OPEN
    assert pair.client.opened == pair.server.opened


def test_bytes_after_the_hello_reach_the_session() -> None:
    """The client's HELLO and its CLOSE arrive in one read: the CLOSE is the leftover."""
    pair = Pair()
    pair.connect()
    pair.client.session.close("changed my mind", 0.0)
    pair.flush()
    assert pair.to_server.kinds() == [FrameKind.HELLO, FrameKind.CLOSE]
    pair.deliver("server")
    assert pair.server.ended == [SessionEnded("changed my mind", None, ())]
    assert state_of(pair.server) is S.CLOSED


def test_a_frame_before_welcome_kills_the_session() -> None:
    session = client_in(S.HANDSHAKING)
    session.data_to_send(0.0)
    session.receive_data(frame(FrameKind.MESSAGE, {"s": 1}, b"hi"), 0.5)
    [ended] = session.events_received()
    assert isinstance(ended, SessionEnded)
    assert isinstance(ended.error, RemoteProtocolError)
    assert state_of(session) is S.CLOSED
    [refuse] = parse(session.data_to_send(0.5))
    assert refuse.kind is FrameKind.REFUSE
    assert refuse.header["code"] == "protocol"


def test_a_chunk_before_welcome_kills_the_session() -> None:
    """Even for an object the client holds part of: nothing but WELCOME opens the session."""
    pair = opened(auto_consume=False)
    seq = pair.send("server", b"obj", blob(1000))
    step(pair, 150)
    held = len(pair.client.objects[seq].data)
    assert 0 < held < WINDOW - 10  # so flow control would take these 10 bytes
    pair.cut()
    pair.connect()
    pair.flush()
    pair.feed("client", frame(FrameKind.CHUNK, {"s": seq, "o": held}, b"\x00" * 10))
    assert len(pair.client.objects[seq].data) == held
    [ended] = pair.client.ended
    assert isinstance(ended.error, RemoteProtocolError)


def test_a_refusal_during_the_handshake_ends_the_session() -> None:
    session = client_in(S.HANDSHAKING)
    session.receive_data(b"".join(refuse_frame("not on the list", "identity")), 0.1)
    [ended] = session.events_received()
    assert isinstance(ended, SessionEnded)
    assert ended.reason == "not on the list"
    assert isinstance(ended.error, HandshakeError)
    assert state_of(session) is S.CLOSED


def refused_after_resuming(**welcome: Any) -> None:
    """The link breaks and the client dials again; a WELCOME resuming its session, but for
    ``welcome``'s changes, is a protocol error that ends the session."""
    pair = opened()
    pair.cut()
    pair.connect()
    good: dict[str, Any] = {"sid": pair.client.session.session_id, "res": True, "r": 0, "po": {}}
    limits = {"w": 256, "cw": 1024, "mw": 4}
    pair.feed("client", frame(FrameKind.WELCOME, good | limits | welcome))
    [ended] = pair.client.ended
    assert isinstance(ended.error, RemoteProtocolError)


def test_a_welcome_for_another_session_is_refused() -> None:
    refused_after_resuming(sid=b"\x02" * 16)


def test_a_welcome_that_does_not_resume_is_refused() -> None:
    refused_after_resuming(res=False)


def test_handshake_timeout() -> None:
    session = Session(Role.CLIENT, SMALL)
    session.connect(10.0)
    assert session.get_timer() == 10.0 + SMALL.handshake_timeout
    session.handle_timer(12.99)
    assert session.events_received() == []
    assert state_of(session) is S.HANDSHAKING
    session.handle_timer(13.0)
    [failed] = session.events_received()
    assert isinstance(failed, ConnectionFailed)
    assert isinstance(failed.error, HandshakeError)
    assert state_of(session) is S.DISCONNECTED
    assert session.get_timer() is None
    session.connect(20.0)  # and it may dial again
    assert state_of(session) is S.HANDSHAKING


# -- the server's HELLO reader ----------------------------------------------------------------------


def hello_bytes() -> bytes:
    session = Session(Role.CLIENT, SMALL)
    session.connect(0.0)
    return b"".join(session.data_to_send(0.0))


def test_hello_reader_in_every_split_keeps_the_leftover() -> None:
    data = hello_bytes()
    extra = frame(FrameKind.HEARTBEAT, {})[:7]
    for cut in range(len(data) + 1):
        reader = HelloReader(SMALL, 0.0)
        first = reader.receive_data(data[:cut])
        hello = first or reader.receive_data(data[cut:] + extra)
        assert hello == Hello(None, 0, {}, WINDOW, SMALL.connection_window, 4)
        assert reader.take_buffered() == (extra if first is None else b"")


@pytest.mark.parametrize(
    "first",
    [
        frame(FrameKind.HEARTBEAT, {}),
        frame(FrameKind.MESSAGE, {"s": 1}, b"x"),
        frame(FrameKind.CHUNK, {"s": 1, "o": 0}, b"abc"),
        frame(FrameKind.WELCOME, {"sid": b"\x00" * 16}),
    ],
    ids=["heartbeat", "message", "chunk", "welcome"],
)
def test_hello_reader_refuses_another_frame_first(first: bytes) -> None:
    reader = HelloReader(SMALL, 0.0)
    with pytest.raises(RemoteProtocolError, match="expected HELLO"):
        reader.receive_data(first + hello_bytes())


def test_hello_reader_refuses_garbage() -> None:
    reader = HelloReader(SMALL, 0.0)
    with pytest.raises(VersionError):
        reader.receive_data(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03")  # a TLS ClientHello


def test_hello_reader_deadline() -> None:
    reader = HelloReader(SMALL, 100.0)
    reader.receive_data(hello_bytes()[:5])
    reader.check_timer(100.0 + SMALL.handshake_timeout - 0.01)
    with pytest.raises(HandshakeError):
        reader.check_timer(100.0 + SMALL.handshake_timeout)


GOOD_HELLO: dict[str, Any] = {"sid": None, "r": 0, "po": {}, "w": 256, "cw": 1024, "mw": 4}


@pytest.mark.parametrize(
    "change",
    [
        {"sid": b"\x00" * 15},
        {"sid": "a" * 16},
        {"r": -1},
        {"r": "0"},
        {"r": True},
        {"w": 0},
        {"w": None},
        {"cw": -1},  # 0 is fine: a receiver still holding a window offers no credit yet
        {"mw": 0},
        {"po": [1]},
        {"po": {"x": 1}},
        {"po": {"1": -1}},
        {"po": {"-1": 1}},
        {"po": {"1": "1"}},
        {"po": {"\u00b2": 1}},  # a digit to str.isdigit(), not to int()
        {"po": {"\u0663": 1}},  # an Arabic-Indic three
    ],
    ids=repr,
)
def test_hello_fields_are_validated(change: dict[str, Any]) -> None:
    reader = HelloReader(SMALL, 0.0)
    with pytest.raises(RemoteProtocolError):
        reader.receive_data(frame(FrameKind.HELLO, GOOD_HELLO | change))


# -- messages ------------------------------------------------------------------------------------


def test_messages_both_ways_in_order_with_acks() -> None:
    pair = opened()
    for i in range(30):
        pair.send("client", f"c{i}".encode())
        pair.send("server", f"s{i}".encode() * i)
        if i % 3 == 2:
            pair.pump()
    pair.send("client", b"")
    pair.pump()
    pair.assert_all_delivered()
    assert pair.server.bodies() == [f"c{i}".encode() for i in range(30)] + [b""]
    for ep in (pair.client, pair.server):
        assert ep.session.undelivered == ()
        assert ep.session.unacked_bytes == 0


def test_messages_sent_before_the_session_opens_follow_the_handshake() -> None:
    pair = Pair()
    pair.send("client", b"early 1")
    pair.connect()
    pair.send("client", b"early 2")
    pair.pump()
    assert pair.server.bodies() == [b"early 1", b"early 2"]


def test_acks_release_messages_only_when_the_application_takes_them() -> None:
    pair = opened(auto_deliver=False)
    pair.send("client", b"one")
    pair.send("client", b"two")
    pair.pump()
    assert list(pair.client.session.undelivered) == [1, 2]
    assert pair.client.session.unacked_bytes == 6
    pair.server.deliver_messages(1)
    pair.pump()
    assert list(pair.client.session.undelivered) == [2]
    with pytest.raises(LocalProtocolError):
        pair.server.session.message_delivered(3, pair.now)


WIDE = SessionConfig(max_frame_size=8192, chunk_size=64, message_window=256, ack_delay=0.25)


def test_a_delivery_ack_waits_for_ack_delay() -> None:
    pair = opened(config=WIDE)
    pair.send("client", b"hello")
    pair.pump()
    assert pair.server.delivered == 1
    assert undelivered(pair.client) == [1]  # no ACK frame yet
    assert pair.server.session.get_timer() == pytest.approx(0.25)
    pair.advance(0.24)
    pair.pump()
    assert undelivered(pair.client) == [1]
    pair.advance(0.01)
    pair.pump()
    assert undelivered(pair.client) == []
    assert [f.kind for f in pair.to_client.history].count(FrameKind.ACK) == 1


def test_a_delivery_ack_goes_at_the_time_its_timer_names() -> None:
    """At 2.0 + 0.05 the timer is due, while 2.05 - 2.0 < 0.05 in floating point: the ACK must
    still go then, or the driver wakes at the timer for nothing, again and again."""
    config = dataclasses.replace(WIDE, ack_delay=0.05)
    pair = opened(config=config)
    pair.advance(2.0)
    pair.send("client", b"hello")
    pair.pump()
    assert undelivered(pair.client) == [1]
    timer = pair.server.session.get_timer()
    assert timer is not None
    pair.advance(timer - pair.now)
    pair.pump()
    assert undelivered(pair.client) == []


def test_half_a_window_of_deliveries_makes_the_ack_due_at_once() -> None:
    """The timer, not only data_to_send(), must say so: a driver whose writer sleeps until the
    timer would otherwise leave the sender stopped at a full window for ack_delay."""
    pair = opened(config=WIDE)
    for i in range(WIDE.message_window // 2 - 1):
        pair.send("client", b"m%d" % i)
    pair.flush("client")
    pair.deliver("server")
    assert pair.server.session.get_timer() == pytest.approx(pair.now + WIDE.ack_delay)
    pair.send("client", b"one more")
    pair.flush("client")
    pair.deliver("server")
    timer = pair.server.session.get_timer()
    assert timer is not None
    assert timer <= pair.now


def test_a_delivery_ack_rides_on_a_message_going_back() -> None:
    pair = opened(config=WIDE)
    pair.send("client", b"question")
    pair.pump()
    pair.send("server", b"answer")
    pair.pump()
    assert pair.client.session.undelivered == ()
    replies = [f for f in pair.to_client.history if f.kind is FrameKind.MESSAGE]
    assert replies[-1].header["a"] == 1
    assert FrameKind.ACK not in [f.kind for f in pair.to_client.history]


def test_a_received_object_is_reported_done_on_the_reply() -> None:
    """A request with an object and its reply within ack_delay: no ACK frame either way, and the
    reply tells the sender it may forget the object."""
    pair = opened(config=WIDE)
    seq = pair.send("client", b"update", blob(1000))
    pair.pump()
    assert pair.server.objects[seq].completed
    assert pair.client.session.unacked_bytes > 0  # not told yet
    pair.send("server", b"thanks")
    pair.pump()
    assert pair.client.session.unacked_bytes == 0
    [reply] = [f for f in pair.to_client.history if f.kind is FrameKind.MESSAGE]
    assert reply.header["a"] == seq
    assert reply.header["d"] == [seq]
    kinds = [f.kind for f in pair.to_client.history + pair.to_server.history]
    assert FrameKind.ACK not in kinds


def test_a_received_object_is_reported_done_within_ack_delay() -> None:
    pair = opened(config=WIDE)
    seq = pair.send("client", b"update", blob(1000))
    pair.pump()
    assert pair.server.objects[seq].completed
    assert pair.server.session.get_timer() == pytest.approx(0.25)
    pair.advance(0.24)
    pair.pump()
    assert pair.client.session.unacked_bytes > 0
    pair.advance(0.01)
    pair.pump()
    assert pair.client.session.unacked_bytes == 0
    [ack] = [f for f in pair.to_client.history if f.kind is FrameKind.ACK]
    assert ack.header == {"s": seq, "d": [seq]}


def test_messages_behind_an_object_in_flight_are_forgotten_once_acked() -> None:
    """A long transfer must not pin every small message sent after it."""
    pair = opened(auto_consume=False)
    pair.send("client", b"model", blob(4096))
    for i in range(20):
        pair.send("client", b"metrics %d" % i)
        pair.pump()
    assert not pair.server.objects[1].completed
    assert pair.client.session.undelivered == ()
    assert pair.client.session.unacked_bytes == len(b"model")  # only the object's message


def test_messages_behind_a_zero_byte_object_are_forgotten() -> None:
    pair = opened()
    pair.send("client", b"empty", {})
    pair.send("client", b"after")
    pair.pump()
    assert pair.client.session.unacked_bytes == 0


def test_message_body_limit() -> None:
    session = Session(Role.CLIENT, SMALL)
    session.send_message(b"x" * (SMALL.max_frame_size - 4096))
    with pytest.raises(LocalProtocolError):
        session.send_message(b"x" * (SMALL.max_frame_size - 4095))


def test_sending_on_a_closed_session_is_misuse() -> None:
    pair = opened()
    pair.client.session.close()
    with pytest.raises(LocalProtocolError):
        pair.client.session.send_message(b"late")


# -- the message window ----------------------------------------------------------------------------


def test_a_full_window_closes_the_senders_window() -> None:
    pair = opened(auto_deliver=False)
    for i in range(SMALL.message_window):
        assert window_open(pair.client)
        pair.send("client", bytes([i]))
    assert not window_open(pair.client)
    pair.pump()
    assert not window_open(pair.client)  # received is not delivered
    pair.server.deliver_messages(2)
    pair.pump()
    assert window_open(pair.client)
    pair.send("client", b"a")
    pair.send("client", b"b")
    assert not window_open(pair.client)


def test_a_receiver_refuses_a_sender_over_its_window() -> None:
    pair = opened(auto_deliver=False)
    for i in range(SMALL.message_window + 1):
        pair.send("client", bytes([i]))  # the last one ignores send_window_open
    pair.pump()
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)
    assert len(pair.server.messages) == SMALL.message_window
    refusals = [f for f in pair.to_client.history if f.kind is FrameKind.REFUSE]
    assert [f.header["code"] for f in refusals] == ["protocol"]
    assert state_of(pair.client) is S.CLOSED
    assert pair.client.ended[0].error is not None


def test_the_window_survives_a_resumption() -> None:
    """Messages received but not yet taken still count against the window after a resume."""
    pair = opened(auto_deliver=False)
    for i in range(SMALL.message_window):
        pair.send("server", bytes([i]))
    pair.pump()
    pair.cut()
    pair.open()
    assert not window_open(pair.server)
    pair.client.deliver_messages()
    pair.pump()
    assert window_open(pair.server)
    for i in range(SMALL.message_window):
        pair.send("server", bytes([i]))
    pair.pump()
    assert pair.client.ended == []
    assert len(pair.client.messages) == 2 * SMALL.message_window


def test_an_ack_lost_in_a_cut_is_repeated_on_the_next_connection() -> None:
    pair = opened(auto_deliver=False)
    for i in range(SMALL.message_window):
        pair.send("server", bytes([i]))
    pair.pump()
    pair.client.deliver_messages()
    pair.flush()
    assert pair.to_server.kinds() == [FrameKind.ACK]
    pair.cut()  # the ACK is lost
    pair.open()
    assert window_open(pair.server)


# -- time ----------------------------------------------------------------------------------------


def test_heartbeat_after_a_quiet_interval() -> None:
    pair = opened()
    session = pair.client.session
    assert session.get_timer() == SMALL.heartbeat_interval
    session.handle_timer(0.99)
    assert session.data_to_send(0.99) == []
    session.send_message(b"x")
    assert kinds(session.data_to_send(0.5)) == [FrameKind.MESSAGE]
    assert session.get_timer() == 1.5  # sending counts as not quiet
    session.handle_timer(1.49)
    assert session.data_to_send(1.49) == []
    session.handle_timer(1.5)
    assert kinds(session.data_to_send(1.5)) == [FrameKind.HEARTBEAT]
    assert session.get_timer() == 2.5


def test_a_silent_peer_is_declared_dead_after_the_liveness_timeout() -> None:
    session = opened().client.session  # nothing more ever arrives
    heartbeats = 0
    while (timer := session.get_timer()) is not None:
        session.handle_timer(timer)
        if events := session.events_received():
            break
        assert kinds(session.data_to_send(timer)) == [FrameKind.HEARTBEAT]
        heartbeats += 1
    assert timer == SMALL.liveness_timeout
    assert heartbeats == SMALL.liveness_timeout / SMALL.heartbeat_interval - 1
    [failed] = events
    assert isinstance(failed, ConnectionFailed)
    assert isinstance(failed.error, PeerTimeoutError)
    assert state_of(session) is S.DISCONNECTED


def test_liveness_timeout_reports_a_peer_timeout() -> None:
    session = opened().client.session
    session.handle_timer(SMALL.liveness_timeout - 0.001)
    assert not [e for e in session.events_received() if isinstance(e, ConnectionFailed)]
    session.handle_timer(SMALL.liveness_timeout)
    [failed] = session.events_received()
    assert isinstance(failed, ConnectionFailed)
    assert isinstance(failed.error, PeerTimeoutError)
    assert failed.error.interval == SMALL.liveness_timeout
    assert state_of(session) is S.DISCONNECTED


def test_heartbeats_keep_an_idle_session_alive() -> None:
    pair = opened()
    for _ in range(200):
        pair.advance(0.3)
        pair.pump()
    assert pair.now > 10 * SMALL.liveness_timeout
    assert (pair.client.failures, pair.server.failures) == ([], [])
    heartbeats = [f for f in pair.to_server.history if f.kind is FrameKind.HEARTBEAT]
    # Timers run only when the clock moves (every 0.3 s), so a beat may come up to 0.3 s late.
    assert len(heartbeats) >= pair.now / (SMALL.heartbeat_interval + 0.3) - 1


TRICKLE = SessionConfig(
    max_frame_size=64 * 1024,
    chunk_size=32 * 1024,
    object_window=64 * 1024,
    connection_window=64 * 1024,
    heartbeat_interval=1.0,
    liveness_timeout=5.0,
)


def trickle(gap: float, pieces: int) -> Pair:
    """A 64 KiB object reaches the server 1 KiB at a time, ``gap`` seconds apart.

    The server hears nothing but the trickle: the client's heartbeats queue behind the chunk bytes
    on the wire. The server's own heartbeats reach the client at once.
    """
    pair = opened(config=TRICKLE)
    pair.send("client", b"model", blob(64 * 1024))
    pair.flush()
    for _ in range(pieces):
        waited = 0.0
        while waited < gap:
            dt = min(0.5, gap - waited)
            pair.advance(dt)
            waited += dt
            pair.flush()
            pair.deliver("client")
        if not pair.connected:
            break
        pair.deliver("server", 1024)
    return pair


def test_a_transfer_that_keeps_moving_never_times_out() -> None:
    pair = trickle(gap=0.9 * TRICKLE.liveness_timeout, pieces=80)
    pair.pump()
    assert pair.now > 50 * TRICKLE.liveness_timeout
    assert (pair.client.failures, pair.server.failures) == ([], [])
    assert pair.server.objects[1].completed
    pair.assert_all_delivered()


def test_a_stalled_transfer_times_out() -> None:
    pair = trickle(gap=TRICKLE.liveness_timeout, pieces=3)
    [failed] = pair.server.failures
    assert isinstance(failed.error, PeerTimeoutError)
    assert not pair.connected


# -- objects ---------------------------------------------------------------------------------------


def mixed_arrays() -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(42)
    arrays: dict[str, npt.NDArray[Any]] = {
        dtype: (rng.standard_normal((3, 7)) * 100).astype(dtype) for dtype in sorted(ALLOWED_DTYPES)
    }
    arrays["bool"] = rng.integers(0, 2, (5, 5)).astype(bool)
    arrays["empty"] = np.zeros((0,), np.float32)
    arrays["empty 2d"] = np.zeros((4, 0), np.int64)
    arrays["big-endian"] = np.arange(50, dtype=">i4")
    arrays["strided"] = np.arange(80, dtype=np.int16).reshape(8, 10)[:, ::3]
    arrays["fortran"] = np.asfortranarray(rng.standard_normal((6, 4)))
    arrays["large"] = rng.standard_normal(700).astype(np.float32)
    return arrays


def assert_same_arrays(got: dict[str, npt.NDArray[Any]], sent: dict[str, npt.NDArray[Any]]) -> None:
    assert list(got) == list(sent)
    for name, array in sent.items():
        assert got[name].shape == array.shape, name
        assert got[name].dtype.name == array.dtype.name, name
        assert np.array_equal(got[name], array), name


@pytest.mark.parametrize("side", ["client", "server"])
def test_an_object_of_every_dtype_round_trips(side: Side) -> None:
    pair = opened()
    arrays = mixed_arrays()
    seq = pair.send(side, b"update", arrays)
    pair.pump()
    receiver = pair.peer(side)
    [message] = receiver.messages
    assert message.manifest is not None
    assert message.manifest.total == len(expected_bytes(arrays))
    assert receiver.objects[seq].completed
    assert_same_arrays(receiver.arrays(seq), arrays)
    pair.settle()
    assert pair.endpoint(side).session.unacked_bytes == 0


def test_a_zero_dimensional_array_keeps_its_shape() -> None:
    pair = opened()
    arrays = {"scalar": np.array(2.5), "int": np.array(7, dtype=np.int64)}
    seq = pair.send("client", b"scalars", arrays)
    pair.pump()
    assert_same_arrays(pair.server.arrays(seq), arrays)


@pytest.mark.parametrize(
    "arrays",
    [{}, {"e": np.zeros(0, np.float32)}, {"a": np.zeros((0, 3)), "b": np.zeros((2, 0), bool)}],
    ids=["no arrays", "one empty", "two empty"],
)
def test_a_zero_byte_object_completes_on_arrival(arrays: dict[str, npt.NDArray[Any]]) -> None:
    pair = opened()
    seq = pair.send("client", b"nothing", arrays)
    pair.pump()
    assert pair.server.order == [("message", seq), ("completed", seq)]
    assert_same_arrays(pair.server.arrays(seq), arrays)
    assert [f.kind for f in pair.to_server.history].count(FrameKind.CHUNK) == 0
    assert pair.client.session.undelivered == ()
    assert pair.client.session.unacked_bytes == 0


def test_a_small_message_overtakes_a_large_object() -> None:
    pair = opened()
    big = pair.send("client", b"big", blob(8 * 1024))
    for _ in range(5):
        step(pair, 100)
    small = pair.send("client", b"small")
    pair.pump()
    order = pair.server.order
    assert order.index(("message", small)) < order.index(("completed", big))
    assert ("chunk", big) in order[: order.index(("message", small))]
    assert ("chunk", big) in order[order.index(("message", small)) :]
    pair.assert_all_delivered()


def test_chunks_of_two_objects_interleave() -> None:
    pair = opened()
    first = pair.send("client", b"a", blob(2048, 1))
    second = pair.send("client", b"b", blob(2048, 2))
    pair.pump()
    chunks = [seq for what, seq in pair.server.order if what == "chunk"]
    assert chunks.index(second) < len(chunks) - chunks[::-1].index(first) - 1
    pair.assert_all_delivered()


def test_flow_control_bounds_what_the_receiver_buffers() -> None:
    pair = opened(auto_consume=False)
    seq = pair.send("client", b"slow", blob(4096))
    pair.pump()
    inc = pair.server.objects[seq]
    assert pair.server.session.buffered_object_bytes == len(inc.data) == WINDOW
    assert pair.to_server.chunk_bytes(seq) == WINDOW  # the sender stopped at its credit
    assert not pair.client.session.has_pending_chunks
    for steps in range(1000):  # noqa: B007 - a stall must fail the test, not hang it
        if pair.server.objects[seq].completed:
            break
        pair.server.consume(seq, min(50, inc.buffered))
        pair.pump()
        assert pair.server.session.buffered_object_bytes <= WINDOW
        assert pair.to_server.chunk_bytes(seq) <= inc.consumed + WINDOW
    else:
        pytest.fail("the transfer stalled")
    assert steps >= 4096 // 50
    pair.assert_all_delivered()


def four_objects_held_back() -> tuple[Pair, list[int]]:
    """Four 1 KiB objects sent to a server that does not consume: it holds one 512-byte
    connection window of them, at most 256 bytes of each."""
    config = SessionConfig(
        max_frame_size=8192, chunk_size=64, object_window=256, connection_window=512
    )
    pair = opened(config=config, auto_consume=False)
    seqs = [pair.send("client", bytes([i]), blob(1024, i)) for i in range(4)]
    pair.pump()
    assert pair.server.session.buffered_object_bytes == 512
    assert all(pair.server.objects[s].buffered <= 256 for s in seqs)
    return pair, seqs


def consume_within_the_window(pair: Pair, seqs: list[int], *, one_at_a_time: bool) -> None:
    """The server takes what it holds, pumping between takes, until every object is complete;
    it never holds more than the connection window."""
    for _ in range(1000):
        if all(pair.server.objects[s].completed for s in seqs):
            break
        for s in [s for s in seqs if pair.server.objects[s].buffered][
            : 1 if one_at_a_time else None
        ]:
            pair.server.consume(s, pair.server.objects[s].buffered)
        pair.pump()
        assert pair.server.session.buffered_object_bytes <= 512
    else:
        pytest.fail("the transfers stalled")
    pair.assert_all_delivered()


def test_the_connection_window_bounds_several_objects() -> None:
    pair, seqs = four_objects_held_back()
    consume_within_the_window(pair, seqs, one_at_a_time=False)


def test_the_connection_window_bounds_what_is_buffered_across_cuts() -> None:
    """Bytes held from an earlier connection count against the next one's credit: however many
    times the link breaks, a receiver that does not consume holds at most one connection window."""
    pair, seqs = four_objects_held_back()
    for _ in range(3):
        pair.cut()
        pair.open()
        assert pair.server.session.buffered_object_bytes <= 512
    consume_within_the_window(pair, seqs, one_at_a_time=True)


def test_consuming_more_than_received_is_misuse() -> None:
    pair = opened(auto_consume=False)
    seq = pair.send("client", b"x", blob(100))
    pair.pump()
    with pytest.raises(LocalProtocolError):
        pair.server.session.consume(seq, 101)
    with pytest.raises(LocalProtocolError):
        pair.server.session.consume(seq, -1)


def test_a_corrupted_byte_fails_the_digest() -> None:
    pair = opened()
    seq = pair.send("client", b"tampered", blob(1000))
    pair.flush()
    frames = pair.to_server.frames
    i = next(i for i, f in enumerate(frames) if f.kind is FrameKind.CHUNK)
    raw = bytearray(frames[i].raw)
    raw[-1] ^= 0x01
    frames[i] = WireFrame.parse(bytes(raw))
    pair.pump()
    inc = pair.server.objects[seq]
    assert isinstance(inc.failed, DigestMismatchError)
    assert inc.failed.object_id == seq
    assert [e for e in pair.server.log if isinstance(e, ObjectFailed)] == [
        ObjectFailed(seq, inc.failed)
    ]
    assert not any(isinstance(e, ObjectCompleted) for e in pair.server.log)
    # The sender forgets the object; the session goes on.
    pair.settle()
    assert pair.client.session.unacked_bytes == 0
    assert not pair.client.session.has_pending_chunks
    pair.send("client", b"after")
    pair.pump()
    assert pair.server.bodies() == [b"tampered", b"after"]


def test_an_object_not_yet_taken_may_send_only_the_first_window() -> None:
    """Until the application starts taking an object, the peer may send ``first_object_window``
    of it, across reconnections too; from the first byte taken, a whole ``object_window``."""
    config = dataclasses.replace(SMALL, first_object_window=64)
    pair = opened(config=config, auto_consume=False)
    seq = pair.send("client", b"waits its turn", blob(1000))
    for _ in range(2):
        pair.pump()
        assert pair.server.objects[seq].buffered == 64
        pair.cut()
        pair.open()
    pair.server.consume(seq, 1)
    pair.pump()
    assert pair.server.objects[seq].buffered == config.object_window  # a whole window past it
    take_all(pair, seq)
    assert pair.server.objects[seq].completed
    with pytest.raises(ValueError, match="first_object_window"):
        dataclasses.replace(SMALL, first_object_window=SMALL.object_window + 1)


def take_all(pair: Pair, *seqs: int) -> None:
    """The server's application takes every byte of ``seqs`` as it arrives."""
    for _ in range(100):
        pair.pump()
        for seq in seqs:
            inc = pair.server.objects[seq]
            if inc.buffered:
                pair.server.consume(seq, inc.buffered)
        if all(
            len(pair.server.objects[s].data) == pair.server.objects[s].manifest.total for s in seqs
        ):
            return
    raise AssertionError("the objects did not arrive")


def test_a_last_chunk_without_digest_is_a_protocol_error() -> None:
    pair = opened()
    manifest = OutgoingObject(blob(10)).manifest.to_wire()
    pair.feed("server", frame(FrameKind.MESSAGE, {"s": 1, "o": manifest}, b"m"))
    pair.feed("server", frame(FrameKind.CHUNK, {"s": 1, "o": 0}, bytes(10)))
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)


@pytest.mark.parametrize(
    "chunk",
    [
        {"s": 9, "o": 0},  # unknown object
        {"s": 1, "o": 5},  # skips bytes
        {"s": 1, "o": 8},  # runs past the end
        {"s": 1, "o": -1},
    ],
    ids=["unknown", "gap", "past end", "negative"],
)
def test_bad_chunks_are_protocol_errors(chunk: dict[str, Any]) -> None:
    pair = opened()
    manifest = OutgoingObject(blob(10)).manifest.to_wire()
    pair.feed("server", frame(FrameKind.MESSAGE, {"s": 1, "o": manifest}, b"m"))
    pair.feed("server", frame(FrameKind.CHUNK, chunk, bytes(4)))
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)


def test_a_sender_over_its_object_credit_is_a_protocol_error() -> None:
    pair = opened(auto_consume=False)
    manifest = OutgoingObject(blob(1000)).manifest.to_wire()
    pair.feed("server", frame(FrameKind.MESSAGE, {"s": 1, "o": manifest}, b"m"))
    pair.feed("server", frame(FrameKind.CHUNK, {"s": 1, "o": 0}, bytes(WINDOW + 1)))
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)


# -- manifests ---------------------------------------------------------------------------------------

GOOD_MANIFEST = {"n": ["a", "b"], "d": ["float32", "uint8"], "sh": [[2, 3], [4]], "t": 28}


def test_a_manifest_round_trips() -> None:
    manifest = Manifest.from_wire(GOOD_MANIFEST, max_total=28)
    assert manifest.to_wire() == GOOD_MANIFEST
    assert manifest.starts == (0, 24)
    scalar = OutgoingObject({"s": np.array(1.0)}).manifest
    assert Manifest.from_wire(scalar.to_wire(), max_total=8) == scalar


@pytest.mark.parametrize(
    "change",
    [
        {"d": ["object", "uint8"]},
        {"d": ["O", "uint8"]},
        {"d": ["V8", "uint8"]},
        {"d": ["<f4", "uint8"]},
        {"d": [["float32"], "uint8"]},  # unhashable
        {"d": [{"float": 32}, "uint8"]},
        {"d": [None, "uint8"]},
        {"t": 27},
        {"t": "28"},
        {"t": None},
        {"n": ["a", "a"]},
        {"n": [1, "b"]},
        {"n": ["a"]},
        {"n": None},
        {"sh": [[2, -3], [4]]},
        {"sh": [[2, True], [4]]},
        {"sh": [[2, 3.0], [4]]},
        {"sh": [6, [4]]},
        {"sh": [[2, 3], [4], []]},
        {"sh": [[0, 2**62], [4]], "t": 4},  # no bytes, but no array either
        {"sh": [[2, 3], [1] * 65 + [4]]},  # more dimensions than numpy has
    ],
    ids=repr,
)
def test_bad_manifests_are_refused(change: dict[str, Any]) -> None:
    with pytest.raises(RemoteProtocolError):
        Manifest.from_wire(GOOD_MANIFEST | change, max_total=1000)


def test_a_manifest_over_the_size_limit_is_refused() -> None:
    Manifest.from_wire(GOOD_MANIFEST, max_total=28)
    with pytest.raises(RemoteProtocolError, match="exceeds"):
        Manifest.from_wire(GOOD_MANIFEST, max_total=27)
    with pytest.raises(RemoteProtocolError):
        Manifest.from_wire([GOOD_MANIFEST], max_total=1000)


def test_a_bad_manifest_on_the_wire_ends_the_session() -> None:
    pair = opened()
    bad = GOOD_MANIFEST | {"d": ["object", "uint8"]}
    pair.feed("server", frame(FrameKind.MESSAGE, {"s": 1, "o": bad}, b"m"))
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)
    assert pair.server.messages == []


def test_an_object_larger_than_the_peer_allows_ends_the_session() -> None:
    server_config = SessionConfig(max_frame_size=8192, chunk_size=64, max_object_size=100)
    pair = opened(server_config=server_config)
    pair.send("client", b"too big", blob(101))
    pair.pump()
    [ended] = pair.server.ended
    assert isinstance(ended.error, RemoteProtocolError)


@pytest.mark.parametrize(
    "arrays",
    [
        {"o": np.array([object(), 1], dtype=object)},
        {"s": np.array(["a", "b"])},
        {"t": np.array(["2020-01-01"], dtype="datetime64[D]")},
        {"v": np.zeros(2, dtype="V4")},
        {"l": [1, 2, 3]},
    ],
    ids=["object", "str", "datetime", "void", "list"],
)
def test_only_numeric_arrays_may_be_sent(arrays: dict[str, Any]) -> None:
    with pytest.raises(LocalProtocolError):
        OutgoingObject(arrays)


def test_an_object_over_max_object_size_is_misuse() -> None:
    session = Session(
        Role.CLIENT, SessionConfig(max_frame_size=8192, chunk_size=64, max_object_size=10)
    )
    with pytest.raises(LocalProtocolError):
        session.send_message(b"x", OutgoingObject(blob(11)))


# -- resumption ------------------------------------------------------------------------------------


def test_a_resumed_session_keeps_its_id() -> None:
    pair = opened()
    sid = pair.client.session.session_id
    assert sid is not None
    pair.cut()
    pair.open()
    assert pair.client.opened == [SessionOpened(sid, False), SessionOpened(sid, True)]
    assert pair.server.opened == pair.client.opened


def test_messages_lost_in_a_cut_are_sent_again_once() -> None:
    pair = opened()
    for i in range(3):
        pair.send("client", bytes([i]))
        pair.send("server", bytes([i]))
    pair.flush()
    pair.deliver("server", 30)  # part of the first messages
    pair.cut()
    pair.send("client", b"while down")
    pair.open()
    pair.assert_all_delivered()
    assert pair.server.bodies() == [b"\x00", b"\x01", b"\x02", b"while down"]


@pytest.mark.parametrize("side", ["client", "server"])
@given(
    cuts=st.lists(st.integers(1, 25), min_size=1, max_size=5),
    piece=st.integers(1, 400),
    slow=st.booleans(),
)
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_an_object_resumes_where_it_stopped(
    side: Side, cuts: list[int], piece: int, slow: bool
) -> None:
    """Cut mid-object any number of times: the object continues from the receiver's offset.

    The harness asserts that no byte reaches the application twice and none is skipped; here we
    also bound what the sender puts on the wire again: at most one object window per cut.
    """
    pair = opened(auto_consume=not slow)
    size = 3000
    seq = pair.send(side, b"object", blob(size, len(cuts)))
    receiver = pair.peer(side)
    for steps in cuts:
        for _ in range(steps):
            step(pair, piece)
            if slow and seq in receiver.objects:
                inc = receiver.objects[seq]
                receiver.consume(seq, inc.buffered // 2)
        pair.cut()
        pair.open()
        if slow:
            assert receiver.session.buffered_object_bytes <= WINDOW
    for _ in range(1000):
        if receiver.objects[seq].completed:
            break
        receiver.consume(seq, receiver.objects[seq].buffered)
        pair.pump()
    else:
        pytest.fail("the transfer stalled")
    pair.assert_all_delivered()
    resent = pair.wire_from(side).chunk_bytes(seq) - size
    assert 0 <= resent <= len(cuts) * WINDOW
    assert len(receiver.opened) == len(cuts) + 1


def test_the_receivers_buffer_stays_bounded_across_resumptions() -> None:
    """A slow application and a flapping connection must not add a window per reconnection."""
    pair = opened(auto_consume=False)
    seq = pair.send("client", b"big", blob(4096))
    pair.pump()
    for _ in range(4):
        pair.cut()
        pair.open()
        assert pair.server.session.buffered_object_bytes <= WINDOW
    inc = pair.server.objects[seq]
    for _ in range(1000):
        if pair.server.objects[seq].completed:
            break
        pair.server.consume(seq, inc.buffered)
        pair.pump()
        assert pair.server.session.buffered_object_bytes <= WINDOW
    else:
        pytest.fail("the transfer stalled")
    pair.assert_all_delivered()


def test_bytes_consumed_during_the_handshake_are_granted_after_it() -> None:
    pair = opened(auto_consume=False)
    seq = pair.send("server", b"model", blob(WINDOW + 8))
    pair.pump()
    assert len(pair.client.objects[seq].data) == WINDOW  # the sender waits for credit
    pair.cut()
    pair.connect()
    pair.client.consume(seq, WINDOW)  # while the client is still handshaking
    pair.pump()
    assert len(pair.client.objects[seq].data) == WINDOW + 8
    pair.client.consume(seq, 8)
    assert pair.client.objects[seq].completed
    pair.assert_all_delivered()


def test_an_object_consumed_while_disconnected_completes() -> None:
    pair = opened(auto_consume=False)
    seq = pair.send("client", b"model", blob(200))
    pair.pump()
    inc = pair.server.objects[seq]
    assert len(inc.data) == 200
    assert not inc.completed  # every byte is in, the application has not taken them
    pair.cut()
    pair.server.consume(seq, 200)
    pair.open()
    assert pair.server.objects[seq].completed
    pair.assert_all_delivered()
    assert pair.client.session.unacked_bytes == 0
    assert not pair.client.session.has_pending_chunks


@pytest.mark.parametrize("which", [0, -1], ids=["first", "latest"])
def test_a_message_seen_again_after_a_resumption_is_ignored(which: int) -> None:
    pair = opened()
    for body in (b"one", b"two", b"three"):
        pair.send("server", body)
    pair.pump()
    pair.cut()
    pair.open()
    messages = [f for f in pair.to_client.delivered_before if f.kind is FrameKind.MESSAGE]
    pair.feed("client", messages[which].raw)  # the harness fails on a second delivery
    assert pair.client.bodies() == [b"one", b"two", b"three"]
    assert pair.client.ended == []
    pair.send("server", b"four")
    pair.pump()
    pair.assert_all_delivered()


@pytest.mark.parametrize("which", [0, 1], ids=["first chunk", "last chunk"])
def test_a_chunk_seen_again_after_a_resumption_is_ignored(which: int) -> None:
    """A frame from an earlier connection turning up again must change nothing.

    The object is whole and verified but not yet consumed, so it is still open at the receiver.
    """
    pair = opened(auto_consume=False)
    arrays = {"a": np.arange(2, dtype=np.uint8), "b": np.arange(2, dtype=np.uint8)}
    seq = pair.send("server", b"two chunks", arrays)  # a chunk never spans two arrays
    pair.pump()
    assert len(pair.client.objects[seq].data) == 4
    pair.cut()
    pair.open()
    chunks = [f for f in pair.to_client.delivered_before if f.kind is FrameKind.CHUNK]
    assert len(chunks) == 2
    pair.feed("client", chunks[which].raw)
    assert pair.client.ended == []
    pair.client.consume(seq, 4)
    assert pair.client.objects[seq].completed
    pair.assert_all_delivered()


def test_resuming_an_unknown_session_is_refused_with_the_undelivered_ids() -> None:
    pair = opened()
    pair.send("client", b"one")
    pair.pump()
    for body in (b"two", b"three", b"four"):
        pair.send("client", body)
    pair.flush()
    pair.cut()  # they never arrive
    pair.restart_server()
    pair.open()
    refusals = [f for f in pair.to_client.history if f.kind is FrameKind.REFUSE]
    assert [f.header["code"] for f in refusals] == ["resume"]
    [ended] = pair.client.ended
    assert isinstance(ended.error, ResumeRefusedError)
    assert ended.error.undelivered == (2, 3, 4)
    assert ended.undelivered == (2, 3, 4)
    assert state_of(pair.client) is S.CLOSED


def test_a_peer_claiming_messages_never_sent_is_refused() -> None:
    refused_after_resuming(r=5)


# -- closing ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["client", "server"])
def test_an_orderly_close_ends_both_sides(side: Side) -> None:
    pair = opened()
    pair.send(side, b"last words")
    pair.endpoint(side).session.close("done", pair.now)
    pair.pump()
    peer = pair.peer(side)
    assert peer.bodies() == [b"last words"]
    assert peer.ended == [SessionEnded("done", None, ())]
    [mine] = pair.endpoint(side).ended
    assert (mine.reason, mine.error) == ("done", None)
    assert (state_of(pair.client), state_of(pair.server)) == (S.CLOSED, S.CLOSED)
    assert pair.client.session.get_timer() is None
    pair.endpoint(side).session.close("again")  # idempotent
    assert pair.endpoint(side).session.events_received() == []


def test_closing_while_disconnected_sends_nothing() -> None:
    pair = opened()
    pair.cut()
    pair.client.session.close("bye")
    pair.client.collect()
    assert pair.client.session.data_to_send(0.0) == []
    assert pair.client.ended == [SessionEnded("bye", None, ())]


# -- arbitrary peer input ----------------------------------------------------------------------------

KEYS = ["s", "o", "h", "l", "d", "r", "po", "w", "cw", "mw", "sid", "res", "why", "code"]
scalars = (
    st.none()
    | st.booleans()
    | st.integers(-3, 300)
    | st.integers(-(2**63), 2**64 - 1)
    | st.binary(max_size=20)
    | st.text(max_size=6)
    | st.floats(allow_nan=False)
)
values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3)
    ),
    max_leaves=8,
)
manifests = st.fixed_dictionaries(
    {
        "n": st.lists(st.text(max_size=2) | values, max_size=3),
        "d": st.lists(st.sampled_from([*sorted(ALLOWED_DTYPES), "object"]) | values, max_size=3),
        "sh": st.lists(st.lists(st.integers(-1, 2**40), max_size=3) | values, max_size=3),
        "t": st.integers(-1, 2**40) | values,
    }
)
headers = st.dictionaries(st.sampled_from(KEYS), values, max_size=5) | st.builds(
    lambda h, m: h | {"o": m}, st.dictionaries(st.sampled_from(KEYS), values, max_size=3), manifests
)
peer_frames = st.lists(
    st.tuples(st.sampled_from(list(FrameKind)), headers, st.binary(max_size=40)), max_size=6
)


@given(frames=peer_frames, side=st.sampled_from(["client", "server"]))
@settings(max_examples=200, deadline=None)
def test_arbitrary_frames_from_the_peer_never_crash_the_session(
    frames: list[tuple[FrameKind, dict[str, Any], bytes]], side: Side
) -> None:
    pair = opened()
    ep = pair.endpoint(side)
    data = b"".join(frame(kind, header, payload) for kind, header, payload in frames)
    ep.session.receive_data(data, 1.0)
    events = ep.session.events_received()
    for event in events:
        if isinstance(event, SessionEnded) and event.error is not None:
            assert isinstance(event.error, TransportError)
    assert state_of(ep.session) in (S.OPEN, S.CLOSED)
    ep.session.data_to_send(1.0)


@given(header=headers)
@settings(max_examples=200, deadline=None)
def test_arbitrary_hello_headers_raise_only_remote_protocol_errors(header: dict[str, Any]) -> None:
    reader = HelloReader(SMALL, 0.0)
    with contextlib.suppress(RemoteProtocolError):
        reader.receive_data(frame(FrameKind.HELLO, header))


@given(manifest=manifests)
@settings(max_examples=200, deadline=None)
def test_arbitrary_manifests_are_refused_or_allocatable(manifest: dict[str, Any]) -> None:
    try:
        parsed = Manifest.from_wire(manifest, max_total=1 << 20)
    except RemoteProtocolError:
        return
    for info in parsed.arrays:
        assert np.empty(info.shape, dtype=info.dtype).nbytes == info.nbytes
