"""How a link turns a batch of frame buffers into socket writes (pure: no IO)."""

from __future__ import annotations

from typing import Any

import anyio.abc
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from transport._link import (
    COPY_LIMIT,
    JOIN_LIMIT,
    JOIN_MEMORY_LIMIT,
    LEND,
    Buffer,
    _JoinMemory,
    _write_all,
    plan_writes,
)


def nbytes(buffer: Buffer) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def joined(parts: list[Buffer]) -> bytes:
    return b"".join(parts)


def small_model_batch() -> list[Buffer]:
    """A message and four 100 KiB chunks with their headers, as a session hands them out."""
    header = b"h" * 21
    buffers: list[Buffer] = [b"message frame"]
    for i in range(4):
        buffers += [header, memoryview(np.full(25_000, i, dtype=np.float32).data)]
    return buffers


def test_a_small_model_goes_in_one_write() -> None:
    buffers = small_model_batch()
    [write] = plan_writes(buffers)
    assert joined(write) == joined(buffers)


def test_a_large_payload_lends_its_head_to_the_header_before_it() -> None:
    header = b"h" * 21
    array = np.arange(1 << 18, dtype=np.float32)
    payload = memoryview(array.data)  # 1 MiB, not a byte view
    first, second = plan_writes([header, payload])
    assert [sum(map(nbytes, w)) for w in (first, second)] == [21 + LEND, (1 << 20) - LEND]
    assert joined(first) + joined(second) == header + array.tobytes()
    assert len(second) == 1  # the bulk is written from where it lies


def test_a_large_buffer_alone_is_not_copied() -> None:
    payload = memoryview(bytearray(COPY_LIMIT + 1))
    assert plan_writes([payload]) == [[payload]]


def test_joined_writes_stay_under_the_limit() -> None:
    writes = plan_writes([bytes(COPY_LIMIT)] * 20)
    assert all(sum(map(nbytes, w)) <= JOIN_LIMIT for w in writes)
    assert len(writes) == -(-20 * COPY_LIMIT // JOIN_LIMIT)


def test_joined_writes_reuse_one_memory() -> None:
    """Copying into fresh bytes every batch faults in fresh pages every batch."""
    memory = _JoinMemory()
    buffers = small_model_batch()
    [first] = memory.join(plan_writes(buffers))
    assert isinstance(first, memoryview)
    assert bytes(first) == joined(buffers)
    kept = memory.memory
    del first
    [again] = memory.join(plan_writes(buffers))
    assert memory.memory is kept
    assert isinstance(again, memoryview)
    assert again.obj is kept


def test_a_batch_past_the_memory_limit_is_joined_into_new_bytes() -> None:
    memory = _JoinMemory()
    buffers: list[Buffer] = [
        bytes([i]) * COPY_LIMIT for i in range(3 * JOIN_MEMORY_LIMIT // COPY_LIMIT)
    ]
    writes = memory.join(plan_writes(buffers))
    assert all(isinstance(w, bytes) for w in writes)
    assert b"".join(writes) == b"".join(buffers)
    assert len(memory.memory) == 0


sizes = st.lists(
    st.integers(0, 64) | st.integers(0, 3 * COPY_LIMIT) | st.just(COPY_LIMIT), max_size=30
)


@given(sizes)
def test_writes_carry_the_same_bytes_in_order(lengths: list[int]) -> None:
    buffers: list[Buffer] = [
        memoryview(bytes([i % 251]) * n) if i % 2 else bytes([i % 251]) * n
        for i, n in enumerate(lengths)
    ]
    writes = plan_writes(buffers)
    assert b"".join(joined(w) for w in writes) == b"".join(buffers)
    assert b"".join(_JoinMemory().join(writes)) == b"".join(buffers)
    for write in writes:
        assert len(write) == 1 or sum(map(nbytes, write)) <= JOIN_LIMIT + LEND
    large = sum(n > COPY_LIMIT for n in lengths)
    small = sum(n for n in lengths if n <= COPY_LIMIT)
    assert len(writes) <= 2 * large + small // (JOIN_LIMIT - COPY_LIMIT) + 1


class KeepingStream(anyio.abc.ByteStream):
    """A byte stream that keeps what it is sent, as an in-memory pipe does."""

    def __init__(self) -> None:
        self.sent: list[Any] = []

    async def send(self, item: bytes) -> None:
        self.sent.append(item)

    async def receive(self, max_bytes: int = 65536) -> bytes:
        raise NotImplementedError

    async def send_eof(self) -> None:
        pass

    async def aclose(self) -> None:
        pass


@pytest.mark.anyio
async def test_a_stream_that_keeps_its_bytes_gets_bytes_of_its_own() -> None:
    """Only a socket is done with a write when send() returns: reusing the join memory under a
    stream that queues what it is sent would rewrite bytes already 'sent'."""
    stream = KeepingStream()
    first = [b"a" * 10, b"b" * 10]
    await _write_all(stream, list(first))
    await _write_all(stream, [b"c" * 10, b"d" * 10])
    assert [bytes(item) for item in stream.sent] == [b"a" * 10 + b"b" * 10, b"c" * 10 + b"d" * 10]
