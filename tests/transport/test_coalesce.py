"""How a link turns a batch of frame buffers into socket writes (pure: no IO)."""

from __future__ import annotations

import numpy as np
from hypothesis import given
from hypothesis import strategies as st

from transport._link import COPY_LIMIT, JOIN_LIMIT, LEND, coalesce


def nbytes(buffer: bytes | memoryview) -> int:
    return buffer.nbytes if isinstance(buffer, memoryview) else len(buffer)


def test_a_small_model_goes_in_one_write() -> None:
    """A message and four 100 KiB chunks with their headers: one write, not nine."""
    header = b"h" * 21
    payloads = [memoryview(bytes([i]) * 100_000) for i in range(4)]
    buffers: list[bytes | memoryview] = [b"message frame"]
    for payload in payloads:
        buffers += [header, payload]
    writes = coalesce(buffers)
    assert len(writes) == 1
    assert writes[0] == b"".join(buffers)


def test_a_large_payload_lends_its_head_to_the_header_before_it() -> None:
    header = b"h" * 21
    array = np.arange(1 << 18, dtype=np.float32)
    payload = memoryview(array.data)  # 1 MiB, not a byte view
    writes = coalesce([header, payload])
    assert [nbytes(w) for w in writes] == [21 + LEND, (1 << 20) - LEND]
    assert b"".join(writes) == header + payload.tobytes()
    assert isinstance(writes[1], memoryview)  # the bulk is written from where it lies


def test_a_large_buffer_alone_is_not_copied() -> None:
    payload = memoryview(bytearray(COPY_LIMIT + 1))
    [write] = coalesce([payload])
    assert write is payload


def test_a_single_small_buffer_is_not_copied() -> None:
    small = memoryview(b"abc")
    [write] = coalesce([small])
    assert write is small


def test_joined_writes_stay_under_the_limit() -> None:
    buffers: list[bytes | memoryview] = [bytes(COPY_LIMIT)] * 20
    writes = coalesce(buffers)
    assert all(nbytes(w) <= JOIN_LIMIT for w in writes)
    assert len(writes) == -(-20 * COPY_LIMIT // JOIN_LIMIT)


sizes = st.lists(
    st.integers(0, 64) | st.integers(0, 3 * COPY_LIMIT) | st.just(COPY_LIMIT), max_size=30
)


@given(sizes)
def test_writes_carry_the_same_bytes_in_order(lengths: list[int]) -> None:
    buffers: list[bytes | memoryview] = [
        memoryview(bytes([i % 251]) * n) if i % 2 else bytes([i % 251]) * n
        for i, n in enumerate(lengths)
    ]
    writes = coalesce(buffers)
    assert b"".join(writes) == b"".join(buffers)
    assert all(nbytes(w) <= JOIN_LIMIT + LEND or nbytes(w) > COPY_LIMIT for w in writes)
    large = sum(n > COPY_LIMIT for n in lengths)
    small = sum(n for n in lengths if n <= COPY_LIMIT)
    assert len(writes) <= 2 * large + small // (JOIN_LIMIT - COPY_LIMIT) + 1
