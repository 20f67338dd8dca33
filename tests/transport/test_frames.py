"""The frame codec, pure: round trips, every split of the input, trailing bytes, bad input.

Streamed kinds (CHUNK) come out as :class:`PayloadPiece` events whose views are only valid until
the next call into the decoder, so :func:`drain` copies each piece at once and joins a frame's
pieces back into one :class:`Frame` for comparison.
"""

from __future__ import annotations

import itertools
import struct
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from transport.errors import (
    FrameTooLargeError,
    RemoteProtocolError,
    UnknownFrameKindError,
    VersionError,
)
from transport.protocol.frames import (
    DEFAULT_MAX_FRAME_SIZE,
    PREFIX,
    WIRE_VERSION,
    Frame,
    FrameDecoder,
    FrameKind,
    PayloadPiece,
    encode_frame,
)

# One frame of every kind, with headers that use every msgpack type the protocol sends.
SAMPLES: list[Frame] = [
    Frame(FrameKind.HELLO, {"sid": None, "r": 0, "po": {}, "w": 8, "cw": 32, "mw": 4}),
    Frame(FrameKind.WELCOME, {"sid": b"\x00" * 16, "res": False, "r": 3, "po": {"2": 5}}),
    Frame(FrameKind.REFUSE, {"why": "nope \u00e9", "code": "resume"}),
    Frame(
        FrameKind.MESSAGE,
        {"s": 1, "o": {"n": ["w"], "d": ["float32"], "sh": [[2]], "t": 8}},
        b"body",
    ),
    Frame(FrameKind.ACK, {"s": 7, "d": [1, 2]}),
    Frame(FrameKind.HEARTBEAT, {}),
    Frame(FrameKind.CLOSE, {"why": "done"}),
    Frame(FrameKind.CHUNK, {"s": 1, "o": 0, "h": b"\x01" * 32}, bytes(range(256)) * 3),
    Frame(FrameKind.CREDIT, {"s": 1, "l": 1 << 40}),
    Frame(FrameKind.CHUNK, {"s": 2, "o": 9}),  # an empty chunk: one empty, last piece
    Frame(FrameKind.MESSAGE, {"s": 2}, b"\x00" * 1000),
]


def encode(frame: Frame) -> bytes:
    return b"".join(encode_frame(frame.kind, frame.header, frame.payload))


STREAM = b"".join(encode(f) for f in SAMPLES)


def drain(decoder: FrameDecoder, partial: dict[str, Any] | None = None) -> list[Frame]:
    """Every whole frame available; CHUNK pieces are copied and joined (state in ``partial``)."""
    partial = {} if partial is None else partial
    frames: list[Frame] = []
    while (event := decoder.next_event()) is not None:
        if isinstance(event, Frame):
            frames.append(event)
            continue
        assert event.kind is FrameKind.CHUNK
        if event.offset == 0:
            assert "data" not in partial, "a new CHUNK started before the last one ended"
            partial["data"] = bytearray()
            partial["header"] = event.header
        assert event.offset == len(partial["data"]), "pieces out of order"
        assert event.header == partial["header"]
        partial["data"] += event.data
        if event.last:
            frames.append(Frame(event.kind, partial.pop("header"), bytes(partial.pop("data"))))
    return frames


def decode_in_pieces(
    pieces: list[bytes] | list[memoryview], decoder: FrameDecoder | None = None
) -> list[Frame]:
    decoder = decoder or FrameDecoder()
    partial: dict[str, Any] = {}
    frames: list[Frame] = []
    for piece in pieces:
        decoder.receive_data(piece)
        frames += drain(decoder, partial)
    assert not partial, "a CHUNK was left unfinished"
    return frames


def prefix(version: int, kind: int, header_len: int, payload_len: int) -> bytes:
    return PREFIX.pack(version, kind, header_len, payload_len)


# -- round trips -------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.kind.name)
def test_every_kind_round_trips(frame: Frame) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(frame))
    assert drain(decoder) == [frame]
    assert decoder.next_event() is None
    assert decoder.buffered == 0
    assert not decoder.in_frame


def test_every_kind_is_sampled() -> None:
    assert {f.kind for f in SAMPLES} == set(FrameKind)


def test_encode_does_not_copy_the_payload() -> None:
    payload = memoryview(bytearray(b"x" * 100))
    buffers = encode_frame(FrameKind.CHUNK, {"s": 1, "o": 0}, payload)
    assert len(buffers) == 2
    assert buffers[1] is payload
    assert len(encode_frame(FrameKind.HEARTBEAT, {})) == 1


def test_prefix_layout() -> None:
    raw = encode(Frame(FrameKind.MESSAGE, {"s": 1}, b"abc"))
    header = msgpack.packb({"s": 1})
    assert raw[:10] == struct.pack("!BBII", WIRE_VERSION, FrameKind.MESSAGE, len(header), 3)
    assert raw[10:] == header + b"abc"


def test_an_empty_chunk_is_one_empty_last_piece() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 4})))
    piece = decoder.next_event()
    assert isinstance(piece, PayloadPiece)
    assert (piece.offset, bytes(piece.data), piece.last) == (0, b"", True)
    assert decoder.next_event() is None


def test_chunk_pieces_are_handed_out_as_bytes_arrive() -> None:
    payload = bytes(range(200))
    raw = encode(Frame(FrameKind.CHUNK, {"s": 3, "o": 1000}, payload))
    body_start = len(raw) - len(payload)
    decoder = FrameDecoder()
    decoder.receive_data(raw[: body_start + 50])
    first = decoder.next_event()
    assert isinstance(first, PayloadPiece)
    assert (first.offset, bytes(first.data), first.last) == (0, payload[:50], False)
    assert first.header == {"s": 3, "o": 1000}
    assert decoder.next_event() is None
    decoder.receive_data(raw[body_start + 50 :])
    second = decoder.next_event()
    assert isinstance(second, PayloadPiece)
    assert (second.offset, bytes(second.data), second.last) == (50, payload[50:], True)


# -- every split -------------------------------------------------------------------------------


def test_whole_stream() -> None:
    assert decode_in_pieces([STREAM]) == SAMPLES


def test_byte_by_byte() -> None:
    assert decode_in_pieces([STREAM[i : i + 1] for i in range(len(STREAM))]) == SAMPLES


def test_every_two_way_split() -> None:
    for cut in range(len(STREAM) + 1):
        assert decode_in_pieces([STREAM[:cut], STREAM[cut:]]) == SAMPLES, cut


@given(st.lists(st.integers(0, len(STREAM)), max_size=12))
@settings(max_examples=100, deadline=None)
def test_any_split(cuts: list[int]) -> None:
    bounds = [0, *sorted(cuts), len(STREAM)]
    pieces = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert decode_in_pieces(pieces) == SAMPLES


def test_memoryview_and_bytearray_input() -> None:
    assert decode_in_pieces([memoryview(STREAM)]) == SAMPLES
    decoder = FrameDecoder()
    decoder.receive_data(bytearray(STREAM))
    assert drain(decoder) == SAMPLES


# -- trailing bytes ----------------------------------------------------------------------------


@pytest.mark.parametrize("frame", SAMPLES, ids=lambda f: f.kind.name)
def test_trailing_partial_frame_stays_buffered(frame: Frame) -> None:
    """After whole frames, every proper prefix of one more frame yields nothing until the rest."""
    tail = encode(frame)
    for cut in range(1, len(tail)):
        decoder = FrameDecoder()
        decoder.receive_data(STREAM + tail[:cut])
        partial: dict[str, Any] = {}
        assert drain(decoder, partial) == SAMPLES
        assert decoder.in_frame
        if frame.kind is not FrameKind.CHUNK:
            assert decoder.next_event() is None
            # Nothing of the partial frame is lost: it is buffered (less what was parsed).
            assert decoder.buffered <= cut
        decoder.receive_data(tail[cut:])
        assert drain(decoder, partial) == [frame]
        assert not decoder.in_frame


def test_take_buffered_returns_the_bytes_after_a_frame() -> None:
    decoder = FrameDecoder()
    hello = encode(SAMPLES[0])
    decoder.receive_data(hello + STREAM[:7])
    assert drain(decoder) == [SAMPLES[0]]
    assert decoder.buffered == 7
    assert decoder.take_buffered() == STREAM[:7]
    assert decoder.buffered == 0


def test_take_buffered_in_the_middle_of_a_frame_is_misuse() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(SAMPLES[3])[:15])
    assert decoder.next_event() is None  # the prefix is parsed, the header is not whole
    with pytest.raises(RuntimeError):
        decoder.take_buffered()


# -- refused input -----------------------------------------------------------------------------


def test_an_oversized_frame_is_refused_on_its_prefix() -> None:
    decoder = FrameDecoder(max_frame_size=1000)
    decoder.receive_data(prefix(WIRE_VERSION, FrameKind.MESSAGE, 10, 991))  # the prefix only
    with pytest.raises(FrameTooLargeError) as caught:
        decoder.next_event()
    assert (caught.value.size, caught.value.limit) == (1001, 1000)


def test_a_frame_at_the_limit_is_accepted() -> None:
    header = msgpack.packb({"s": 1})
    decoder = FrameDecoder(max_frame_size=len(header) + 100)
    decoder.receive_data(encode(Frame(FrameKind.MESSAGE, {"s": 1}, b"x" * 100)))
    assert drain(decoder) == [Frame(FrameKind.MESSAGE, {"s": 1}, b"x" * 100)]


def test_the_default_limit() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(WIRE_VERSION, FrameKind.CHUNK, 0, DEFAULT_MAX_FRAME_SIZE + 1))
    with pytest.raises(FrameTooLargeError) as caught:
        decoder.next_event()
    assert caught.value.limit == DEFAULT_MAX_FRAME_SIZE


def test_a_huge_declared_length_is_refused_without_waiting_for_it() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(WIRE_VERSION, FrameKind.CHUNK, 0xFFFFFFFF, 0xFFFFFFFF))
    with pytest.raises(FrameTooLargeError) as caught:
        decoder.next_event()
    assert caught.value.size == 2 * 0xFFFFFFFF


@pytest.mark.parametrize("kind", [0, 10, 127, 255])
def test_unknown_kind(kind: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(WIRE_VERSION, kind, 1, 0))
    with pytest.raises(UnknownFrameKindError) as caught:
        decoder.next_event()
    assert caught.value.kind == kind


@pytest.mark.parametrize("version", [0, WIRE_VERSION + 1, 255, ord("G")])
def test_wrong_version(version: int) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(version, FrameKind.HELLO, 1, 0))
    with pytest.raises(VersionError) as caught:
        decoder.next_event()
    assert (caught.value.version, caught.value.supported) == (version, WIRE_VERSION)


def test_http_request_is_a_version_error() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    with pytest.raises(VersionError):
        decoder.next_event()


BAD_HEADERS = {
    "reserved byte": b"\xc1",
    "truncated array": b"\x92\x01",
    "trailing data": b"\x80\x00",
    "list": msgpack.packb([1, 2]),
    "int": msgpack.packb(7),
    "nil": msgpack.packb(None),
    "string": msgpack.packb("map"),
    "int key": msgpack.packb({1: 2}),
    "invalid utf-8": b"\x81\xa1\xff\x01",
    "empty": b"",
}


@pytest.mark.parametrize("header", BAD_HEADERS.values(), ids=BAD_HEADERS.keys())
def test_a_header_that_is_not_a_msgpack_map(header: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(prefix(WIRE_VERSION, FrameKind.MESSAGE, len(header), 0) + header)
    with pytest.raises(RemoteProtocolError) as caught:
        decoder.next_event()
    assert type(caught.value) is RemoteProtocolError


@pytest.mark.parametrize(
    "bad",
    [
        prefix(0, FrameKind.HELLO, 1, 0),
        prefix(WIRE_VERSION, 99, 1, 0),
        prefix(WIRE_VERSION, FrameKind.MESSAGE, 1, 0) + b"\xc1",
        prefix(WIRE_VERSION, FrameKind.MESSAGE, 1 << 30, 0),
    ],
)
def test_after_an_error_the_decoder_keeps_raising(bad: bytes) -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(SAMPLES[5]) + bad)
    assert decoder.next_event() == SAMPLES[5]
    with pytest.raises(RemoteProtocolError) as first:
        decoder.next_event()
    decoder.receive_data(encode(SAMPLES[5]))
    for _ in range(2):
        with pytest.raises(RemoteProtocolError) as again:
            decoder.next_event()
        assert again.value is first.value


@given(st.binary(max_size=300), st.integers(1, 64))
@settings(max_examples=300, deadline=None)
def test_arbitrary_bytes_raise_only_remote_protocol_errors(data: bytes, step: int) -> None:
    decoder = FrameDecoder(max_frame_size=4096)
    try:
        for start in range(0, len(data), step):
            decoder.receive_data(data[start : start + step])
            drain(decoder)
    except RemoteProtocolError:
        pass


@given(
    st.sampled_from(list(FrameKind)),
    st.binary(max_size=40),
    st.binary(max_size=40),
    st.integers(1, 16),
)
@settings(max_examples=300, deadline=None)
def test_a_valid_prefix_then_arbitrary_bytes(
    kind: FrameKind, header: bytes, payload: bytes, step: int
) -> None:
    """Past the prefix check: arbitrary header bytes still raise only RemoteProtocolError."""
    data = prefix(WIRE_VERSION, kind, len(header), len(payload)) + header + payload
    decoder = FrameDecoder()
    partial: dict[str, Any] = {}
    frames: list[Frame] = []
    try:
        for start in range(0, len(data), step):
            decoder.receive_data(data[start : start + step])
            frames += drain(decoder, partial)
    except RemoteProtocolError:
        return
    # It decoded, so the header was a msgpack map and the payload came out whole.
    assert len(frames) == 1
    assert frames[0].kind is kind
    assert frames[0].payload == payload


# -- held pieces (the BufferError path) ----------------------------------------------------------


def test_a_held_piece_survives_more_data() -> None:
    """Holding a piece's view pins the decoder's buffer; feeding more must still work."""
    payload = bytes(range(256)) * 4
    chunk = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0}, payload))
    cut = len(chunk) - 500
    decoder = FrameDecoder()
    # 1. The whole buffer is consumed by the piece (the decoder would clear it).
    decoder.receive_data(chunk[:cut])
    held = decoder.next_event()
    assert isinstance(held, PayloadPiece)
    assert decoder.next_event() is None
    snapshot = bytes(held.data)
    decoder.receive_data(chunk[cut : cut + 100])
    # 2. Part of the buffer is left (the decoder would append to it).
    second = decoder.next_event()
    assert isinstance(second, PayloadPiece)
    decoder.receive_data(chunk[cut + 100 :] + STREAM[:5])
    third = decoder.next_event()
    assert isinstance(third, PayloadPiece)
    assert third.last
    decoder.receive_data(STREAM[5:])
    assert bytes(held.data) == snapshot  # the held view still shows what it showed
    assert snapshot + bytes(second.data) + bytes(third.data) == payload
    assert drain(decoder) == SAMPLES


def test_a_held_piece_survives_compaction() -> None:
    """Over 1 MiB consumed: the decoder would compact its buffer, but a view pins it."""
    payload = bytes(range(256)) * (5 * 1024)  # 1.25 MiB
    chunk = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0}, payload))
    decoder = FrameDecoder()
    decoder.receive_data(chunk[:-10])
    held = decoder.next_event()
    assert isinstance(held, PayloadPiece)
    decoder.receive_data(chunk[-10:] + STREAM)
    rest = decoder.next_event()
    assert isinstance(rest, PayloadPiece)
    assert bytes(held.data) + bytes(rest.data) == payload
    assert drain(decoder) == SAMPLES


def test_compaction_without_held_pieces() -> None:
    """Over 1 MiB consumed and a partial frame left: the decoder compacts its buffer."""
    payload = b"\x07" * (1 << 21)
    chunk = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0}, payload))
    decoder = FrameDecoder()
    decoder.receive_data(chunk + STREAM[:5])
    got = bytearray()
    while (event := decoder.next_event()) is not None:
        assert isinstance(event, PayloadPiece)
        got += event.data
    assert got == payload
    assert decoder.buffered == 5
    decoder.receive_data(STREAM[5:])
    assert decoder.buffered == len(STREAM)
    assert drain(decoder) == SAMPLES
