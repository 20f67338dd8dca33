"""The frame codec, pure: round trips, every split of the input, trailing bytes, bad input.

Streamed kinds (CHUNK) come out as :class:`PayloadPiece` events whose views are only valid as long
as the caller's input is, so :func:`drain` copies each piece at once and joins a frame's pieces
back into one :class:`Frame` for comparison.

The decoder reads its input in place (only cut-short frames are copied into its buffer), so the
split tests also feed through one reused receive buffer, as the link does, and overwrite it after
every drain: a byte the decoder still needed from it would come back as garbage.
"""

from __future__ import annotations

import itertools
import struct
import tracemalloc
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
    KEEP_CAPACITY,
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


def drain(
    decoder: FrameDecoder,
    partial: dict[str, Any] | None = None,
    frames: list[Frame] | None = None,
) -> list[Frame]:
    """Every whole frame available, appended to ``frames`` as it comes (so that they are there
    if the decoder raises); CHUNK pieces are copied and joined (state in ``partial``)."""
    partial = {} if partial is None else partial
    frames = [] if frames is None else frames
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


# -- held pieces ---------------------------------------------------------------------------------


def test_a_held_piece_survives_more_data() -> None:
    """A piece is a view of the caller's input, not of the decoder's buffer: an immutable input
    keeps it valid however much more is fed."""
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
    """Over 1 MiB consumed, then more data: the held view still shows the payload."""
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


def test_a_partial_frame_after_a_large_chunk() -> None:
    """A 2 MiB chunk then a partial frame in one input: only the partial frame is buffered."""
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
    assert decoder.capacity <= KEEP_CAPACITY
    decoder.receive_data(STREAM[5:])
    assert decoder.buffered == len(STREAM)
    assert drain(decoder) == SAMPLES


# -- reading the input in place --------------------------------------------------------------------

GARBAGE = 0xA5


def decode_through_scratch(stream: bytes, cuts: list[int], undrained: set[int]) -> list[Frame]:
    """Feed ``stream`` cut at ``cuts`` as the link does: each read lands in one reused receive
    buffer, the decoder is drained, then the buffer is overwritten before the next read.

    A read whose index is in ``undrained`` is fed without draining (into a buffer of its own, as
    the contract asks): the next ``receive_data`` must keep what is left of it.
    """
    bounds = [0, *sorted(cuts), len(stream)]
    scratch = bytearray(max(len(stream), 1))
    decoder = FrameDecoder()
    partial: dict[str, Any] = {}
    frames: list[Frame] = []
    pending: list[bytearray] = []  # inputs fed since the last drain
    for index, (start, end) in enumerate(itertools.pairwise(bounds)):
        if index in undrained and end != len(stream):
            own = bytearray(stream[start:end])
            decoder.receive_data(own)
            pending.append(own)
            continue
        scratch[: end - start] = stream[start:end]
        decoder.receive_data(memoryview(scratch)[: end - start])
        frames += drain(decoder, partial)
        # next_event() returned None: the decoder must hold nothing of what it was given.
        for used in [scratch, *pending]:
            used[:] = bytes([GARBAGE]) * len(used)
        pending.clear()
    assert not partial, "a CHUNK was left unfinished"
    assert decoder.buffered == 0
    return frames


HEADERS = st.dictionaries(
    st.text(max_size=3),
    st.one_of(st.integers(0, 1 << 40), st.binary(max_size=40), st.none()),
    max_size=4,
)
FRAMES = st.lists(
    st.builds(Frame, st.sampled_from(list(FrameKind)), HEADERS, st.binary(max_size=300)),
    max_size=8,
)


@given(FRAMES, st.data())
@settings(max_examples=300, deadline=None)
def test_any_frames_any_split_through_a_reused_buffer(frames: list[Frame], data: Any) -> None:
    stream = b"".join(encode(f) for f in frames)
    cuts = data.draw(st.lists(st.integers(0, len(stream)), max_size=16))
    undrained = data.draw(st.sets(st.integers(0, len(cuts)), max_size=4))
    assert decode_through_scratch(stream, cuts, undrained) == frames


@given(st.lists(st.integers(0, len(STREAM)), max_size=12), st.sets(st.integers(0, 12)))
@settings(max_examples=200, deadline=None)
def test_samples_any_split_through_a_reused_buffer(cuts: list[int], undrained: set[int]) -> None:
    assert decode_through_scratch(STREAM, cuts, undrained) == SAMPLES


BAD_TAILS = [
    prefix(0, FrameKind.HELLO, 1, 0),
    prefix(WIRE_VERSION, 99, 1, 0),
    prefix(WIRE_VERSION, FrameKind.MESSAGE, 1, 0) + b"\xc1",
    prefix(WIRE_VERSION, FrameKind.CHUNK, 2, 5) + b"\x92\x01" + b"12345",
    prefix(WIRE_VERSION, FrameKind.MESSAGE, 1 << 30, 0),
    prefix(WIRE_VERSION, FrameKind.CHUNK, 0, 0),
]


def decode_until_error(pieces: list[bytes]) -> tuple[list[Frame], RemoteProtocolError]:
    decoder = FrameDecoder()
    partial: dict[str, Any] = {}
    frames: list[Frame] = []
    scratch = bytearray(sum(map(len, pieces)) or 1)
    for piece in pieces:
        scratch[: len(piece)] = piece
        decoder.receive_data(memoryview(scratch)[: len(piece)])
        try:
            drain(decoder, partial, frames)
        except RemoteProtocolError as exc:
            return frames, exc
        scratch[:] = bytes([GARBAGE]) * len(scratch)
    raise AssertionError("no error")


@pytest.mark.parametrize("tail", BAD_TAILS)
@given(st.lists(st.integers(0, len(STREAM) + 20), max_size=8))
@settings(max_examples=50, deadline=None)
def test_errors_come_at_the_same_frame_however_the_input_is_cut(
    tail: bytes, cuts: list[int]
) -> None:
    stream = STREAM + tail
    whole_frames, whole_error = decode_until_error([stream])
    bounds = [0, *sorted(min(c, len(stream)) for c in cuts), len(stream)]
    frames, error = decode_until_error([stream[a:b] for a, b in itertools.pairwise(bounds)])
    assert frames == whole_frames == SAMPLES
    assert type(error) is type(whole_error)
    assert str(error) == str(whole_error)


def test_a_piece_is_a_view_of_the_input_not_a_copy() -> None:
    """A chunk's payload goes from the caller's buffer to the piece without being copied."""
    payload = bytes(range(256)) * 8
    raw = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0}, payload))
    received = bytearray(raw)
    decoder = FrameDecoder()
    decoder.receive_data(memoryview(received))
    piece = decoder.next_event()
    assert isinstance(piece, PayloadPiece)
    assert piece.data.obj is received
    assert bytes(piece.data) == payload
    assert decoder.capacity == 0  # nothing was buffered: not even the header


def test_a_piece_continued_in_the_next_input_is_a_view_of_that_input() -> None:
    payload = bytes(range(200))
    raw = encode(Frame(FrameKind.CHUNK, {"s": 3, "o": 0}, payload))
    cut = len(raw) - 120
    first, second = bytearray(raw[:cut]), bytearray(raw[cut:])
    decoder = FrameDecoder()
    decoder.receive_data(first)
    head = decoder.next_event()
    assert isinstance(head, PayloadPiece)
    assert head.data.obj is first
    assert decoder.next_event() is None
    decoder.receive_data(second)
    rest = decoder.next_event()
    assert isinstance(rest, PayloadPiece)
    assert rest.data.obj is second
    assert bytes(head.data) + bytes(rest.data) == payload


def test_a_header_cut_short_is_copied_before_next_event_returns_none() -> None:
    raw = encode(SAMPLES[7])  # a CHUNK
    received = bytearray(raw[:15])  # the prefix and part of the header
    decoder = FrameDecoder()
    decoder.receive_data(received)
    assert decoder.next_event() is None
    received[:] = bytes([GARBAGE]) * len(received)
    decoder.receive_data(raw[15:])
    assert drain(decoder) == [SAMPLES[7]]


def test_the_buffer_keeps_its_capacity_across_reads() -> None:
    """Reads that each end inside a chunk's header: those few bytes are buffered every time, in
    the same small buffer (not in a fresh allocation per read)."""
    chunk = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0, "h": b"\x01" * 32}, b"\x07" * 99_999))
    stream = chunk * 40
    cut_in_header = PREFIX.size + 20
    bounds = [0, *(i * len(chunk) + cut_in_header for i in range(1, 40)), len(stream)]
    decoder = FrameDecoder()
    capacities = []
    got = 0
    for start, end in itertools.pairwise(bounds):
        decoder.receive_data(stream[start:end])
        while (event := decoder.next_event()) is not None:
            assert isinstance(event, PayloadPiece)
            got += len(event.data)
        capacities.append(decoder.capacity)
        # The prefix was parsed (from the input); the part of the header after it waits.
        assert decoder.buffered == (cut_in_header - PREFIX.size if end != len(stream) else 0)
    assert got == 40 * 99_999
    assert capacities == [4096] * 40


def test_decoding_chunks_allocates_nothing_like_their_size() -> None:
    """Feeding 8 MiB of chunk frames in 1 MiB reads allocates a small, bounded amount: payload
    bytes are not appended to a buffer (which costs a 1 MiB allocation per read)."""
    chunk = encode(Frame(FrameKind.CHUNK, {"s": 1, "o": 0}, b"\x07" * 100_000))
    reads = [
        bytearray(b"".join([chunk] * 84)[i : i + (1 << 20)]) for i in range(0, 8 << 20, 1 << 20)
    ]
    decoder = FrameDecoder()
    tracemalloc.start()
    try:
        before, _ = tracemalloc.get_traced_memory()
        tracemalloc.reset_peak()
        for data in reads:
            decoder.receive_data(data)
            while decoder.next_event() is not None:
                pass
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak - before < 64 * 1024


def test_a_buffer_grown_for_a_large_frame_is_let_go() -> None:
    frame = Frame(FrameKind.MESSAGE, {"s": 1}, b"\x01" * (1 << 20))
    raw = encode(frame)
    decoder = FrameDecoder()
    decoder.receive_data(raw[:-1])
    assert decoder.next_event() is None
    assert decoder.capacity > KEEP_CAPACITY
    decoder.receive_data(raw[-1:])
    assert decoder.next_event() == frame
    assert decoder.capacity <= KEEP_CAPACITY


def test_take_buffered_returns_unread_input_too() -> None:
    decoder = FrameDecoder()
    decoder.receive_data(encode(SAMPLES[0]) + STREAM[:7])
    assert decoder.next_event() == SAMPLES[0]
    assert decoder.take_buffered() == STREAM[:7]
    assert not decoder.in_frame
    decoder.receive_data(STREAM)
    assert drain(decoder) == SAMPLES
