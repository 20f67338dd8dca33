"""The session reads its input in place: a driver may reuse its receive buffer after each call.

The link reads every connection into one reused receive buffer and hands the session a view of
it; the session's frame decoder parses that view in place and hands object bytes on as views of
it (``ChunkReceived.data``). That is only safe if :meth:`Session.receive_data` has decoded every
frame in its input, and copied the bytes of any frame the input cuts short, before it returns.
These tests drive a :class:`~tests.transport.sansio.Pair` that way, with the input cut anywhere,
and overwrite the buffer with garbage after every call: a byte the session still needed from it
would corrupt a message, break a frame, or fail an object's digest.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.transport.sansio import Pair, Side
from transport.protocol.session import SessionState

GARBAGE = b"\xa5"


class ReusedBuffer:
    """A driver's receive buffer: each read lands at its start, over the last one."""

    def __init__(self, size: int) -> None:
        self.memory = bytearray(size)

    def feed(self, pair: Pair, to: Side, data: bytes, sizes: Iterator[int], in_place: bool) -> None:
        """Hand ``data`` to ``to`` in reads of the next ``sizes``, as the link's reader does."""
        ep = pair.endpoint(to)
        session = ep.session
        pos = 0
        while pos < len(data):
            n = min(next(sizes), len(data) - pos)
            target = session.receive_target() if in_place else None
            if target is not None:  # the link reads straight into the object's arrays
                seq, offset, most = target
                n = min(n, most)
                place = ep.objects[seq].arrays.destination(offset, n)
                assert place is not None
                place[:n] = data[pos : pos + n]
                session.receive_in_place(place[:n], pair.now)
            else:
                self.memory[:n] = data[pos : pos + n]
                session.receive_data(memoryview(self.memory)[:n], pair.now)
            ep.collect()  # the application copies object bytes out, as IncomingObject does
            self.memory[:] = GARBAGE * len(self.memory)
            pos += n


def run(pair: Pair, sizes: list[int], in_place: bool) -> None:
    """Flush and deliver both ways through reused buffers until nothing moves."""
    buffer = ReusedBuffer(max(sizes))
    cycle = itertools.cycle(sizes)
    for _ in range(10_000):
        pair.flush()
        if not (pair.to_server.pending or pair.to_client.pending):
            return
        for side in ("server", "client"):
            data = pair.wire_to(side).read()
            if data:
                buffer.feed(pair, side, data, cycle, in_place)
    raise AssertionError("the sessions never went quiet")


@given(
    st.lists(st.integers(1, 300), min_size=1, max_size=12),
    st.booleans(),
)
@settings(max_examples=60, deadline=None)
def test_objects_and_messages_survive_a_reused_receive_buffer(
    sizes: list[int], in_place: bool
) -> None:
    pair = Pair()
    pair.open()
    pair.send("client", b"update", {"w": np.arange(700, dtype=np.float32)})
    pair.send("client", b"x" * 500)  # a message longer than many reads
    pair.send("server", b"model", {"b": np.arange(300, dtype=np.float64)})
    run(pair, sizes, in_place)
    pair.assert_all_delivered()
    assert pair.client.state is SessionState.OPEN
    assert pair.server.state is SessionState.OPEN


def test_bytes_after_a_close_are_not_read() -> None:
    """The session stops reading at CLOSE; what follows it in the input is ignored, and the
    session holds on to nothing of the input afterwards."""
    pair = Pair()
    pair.open()
    pair.client.session.close("done", pair.now)
    pair.flush("client")
    data = pair.to_server.read() + b"\x00" * 40  # garbage that would be a bad frame
    buffer = ReusedBuffer(len(data))
    buffer.feed(pair, "server", data, itertools.repeat(len(data)), in_place=False)
    assert pair.server.state is SessionState.CLOSED
    assert [e.reason for e in pair.server.ended] == ["done"]
