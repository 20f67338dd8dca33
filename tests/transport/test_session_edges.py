"""Edge cases of the session found in review: a lying HELLO or WELCOME, a refusal after opening."""

from __future__ import annotations

import numpy as np

from transport.errors import HandshakeError, RemoteProtocolError
from transport.protocol.frames import Frame, FrameDecoder, FrameKind, encode_frame
from transport.protocol.objects import OutgoingObject
from transport.protocol.session import (
    Hello,
    Role,
    Session,
    SessionConfig,
    SessionEnded,
    SessionState,
)

CONFIG = SessionConfig()


def _frames(data: list[bytes | memoryview]) -> list[Frame]:
    decoder = FrameDecoder()
    decoder.receive_data(b"".join(bytes(d) for d in data))
    frames = []
    while (event := decoder.next_event()) is not None:
        assert isinstance(event, Frame)
        frames.append(event)
    return frames


def assert_ended_by_protocol_error(session: Session, reason: str) -> None:
    assert session.state is SessionState.CLOSED
    ended = [e for e in session.events_received() if isinstance(e, SessionEnded)]
    assert len(ended) == 1
    assert isinstance(ended[0].error, RemoteProtocolError)
    assert reason in ended[0].reason


def test_hello_claiming_messages_never_sent_is_refused_not_left_open() -> None:
    server = Session(Role.SERVER, CONFIG)
    lying = Hello(None, received=5, partial={}, object_window=1 << 20, connection_window=1 << 22,
                  message_window=8)  # fmt: skip
    server.accept(lying, 0.0)
    assert_ended_by_protocol_error(server, "never sent")
    kinds = [f.kind for f in _frames(server.data_to_send(0.0))]
    assert kinds[-1] is FrameKind.REFUSE


def _open_pair() -> tuple[Session, Session]:
    client, server = Session(Role.CLIENT, CONFIG), Session(Role.SERVER, CONFIG)
    client.connect(0.0)
    hello_frame = _frames(client.data_to_send(0.0))[0]
    server.accept(Hello.from_wire(hello_frame.header), 0.0)
    for data in server.data_to_send(0.0):
        client.receive_data(data, 0.0)
    assert client.state is SessionState.OPEN
    client.events_received()
    return client, server


def test_refusal_in_an_open_session_is_a_protocol_error_not_a_handshake_error() -> None:
    client, _server = _open_pair()
    refusal = encode_frame(FrameKind.REFUSE, {"why": "bad envelope", "code": "protocol"})
    for data in refusal:
        client.receive_data(data, 1.0)
    ended = [e for e in client.events_received() if isinstance(e, SessionEnded)]
    assert len(ended) == 1
    assert isinstance(ended[0].error, RemoteProtocolError)
    assert not isinstance(ended[0].error, HandshakeError)
    assert "bad envelope" in str(ended[0].error)


def test_refusal_while_opening_is_a_handshake_error() -> None:
    client = Session(Role.CLIENT, CONFIG)
    client.connect(0.0)
    client.data_to_send(0.0)
    for data in encode_frame(FrameKind.REFUSE, {"why": "not a participant", "code": "identity"}):
        client.receive_data(data, 0.5)
    ended = [e for e in client.events_received() if isinstance(e, SessionEnded)]
    assert len(ended) == 1
    assert isinstance(ended[0].error, HandshakeError)


def test_resume_offset_past_what_was_ever_sent_is_a_protocol_error() -> None:
    """A peer claiming object bytes it was never sent would make the sender skip them: the
    digest would fail much later; the session refuses the claim at once instead."""
    client, _server = _open_pair()
    obj = OutgoingObject({"x": np.zeros(4 * CONFIG.chunk_size, dtype=np.uint8)})
    client.send_message(b"m", obj)
    client.data_to_send(0.0)  # the message and its first chunk go out; then the link breaks
    client.connection_lost(0.0)
    client.connect(1.0)
    client.data_to_send(1.0)  # HELLO
    welcome = {
        "sid": client.session_id,
        "res": True,
        "r": 1,
        "po": {"1": 3 * CONFIG.chunk_size},  # only one chunk was ever sent
        "w": CONFIG.object_window,
        "cw": CONFIG.connection_window,
        "mw": CONFIG.message_window,
    }
    for data in encode_frame(FrameKind.WELCOME, welcome):
        client.receive_data(data, 1.0)
    assert_ended_by_protocol_error(client, "were ever sent")
