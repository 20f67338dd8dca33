"""Received objects: the region pool that hands receive memory out again, and an object received
into reused memory, with no network (the link's calls are made by hand)."""

from __future__ import annotations

import gc
import weakref
from collections.abc import Callable
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from transport.errors import DigestMismatchError, LocalProtocolError
from transport.objects import DigestPipeline, IncomingObject, RegionPool
from transport.protocol.objects import HUGE_PAGE_THRESHOLD, OutgoingObject, region_size

MiB = 1024 * 1024


def lay_out(pool: RegionPool, size: int) -> tuple[Any, bool, list[npt.NDArray[Any]]]:
    """Take a region and lay two arrays out in it, leased to the pool."""
    region, warm = pool.take(size)
    arrays = [
        np.frombuffer(region, dtype=np.uint8, count=size // 2),
        np.frombuffer(region, dtype=np.uint8, count=size // 2, offset=size // 2).reshape(2, -1),
    ]
    pool.lease(region, arrays)
    return region, warm, arrays


def test_a_region_comes_back_once_every_array_is_gone() -> None:
    pool = RegionPool(keep_idle=16 * MiB)
    region, warm, arrays = lay_out(pool, 8 * MiB)
    assert not warm
    assert pool.created == 1
    first, second = arrays
    del arrays
    view = second[1, :10]  # a view keeps its array, and so the region, in use
    del first, second
    gc.collect()
    assert pool.idle_bytes == 0
    del view
    gc.collect()
    assert pool.idle_bytes == 8 * MiB
    again, warm, _ = lay_out(pool, 4 * MiB)
    assert again is region
    assert warm
    assert pool.reused == 1


def test_the_smallest_region_that_fits_is_chosen() -> None:
    pool = RegionPool(keep_idle=64 * MiB)
    big, _, arrays_big = lay_out(pool, 16 * MiB)
    small, _, arrays_small = lay_out(pool, 6 * MiB)
    del arrays_big, arrays_small
    gc.collect()
    assert pool.take(5 * MiB)[0] is small
    assert pool.take(5 * MiB)[0] is big
    fresh, warm = pool.take(5 * MiB)
    assert fresh is not big
    assert fresh is not small
    assert not warm


def test_idle_memory_is_bounded_and_the_oldest_goes_first() -> None:
    pool = RegionPool(keep_idle=10 * MiB)
    older, _, arrays_older = lay_out(pool, 6 * MiB)
    newer, _, arrays_newer = lay_out(pool, 6 * MiB)
    older_ref = weakref.ref(older)
    del older, arrays_older
    gc.collect()
    del arrays_newer
    gc.collect()
    assert pool.idle_bytes == 6 * MiB
    assert older_ref() is None  # unmapped
    assert pool.take(6 * MiB)[0] is newer


def test_keeping_nothing_unmaps_at_once() -> None:
    pool = RegionPool(keep_idle=0)
    region, _, arrays = lay_out(pool, 4 * MiB)
    region_ref = weakref.ref(region)
    del region, arrays
    gc.collect()
    assert region_ref() is None
    assert pool.idle_bytes == 0


def test_a_negative_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="keep_idle"):
        RegionPool(keep_idle=-1)


async def receive(obj: IncomingObject, source: OutgoingObject) -> dict[str, npt.NDArray[Any]]:
    """Play the link: hand ``source``'s bytes to ``obj`` in 1 MiB pieces while it is collected."""
    result: dict[str, npt.NDArray[Any]] = {}

    async def collect() -> None:
        result.update(await obj.arrays())

    async with anyio.create_task_group() as tg:
        tg.start_soon(collect)
        await anyio.wait_all_tasks_blocked()
        offset = 0
        while offset < source.total:
            piece = source.view(offset, MiB)
            place = obj.destination(offset, len(piece))
            assert place is not None
            assert len(place) == len(piece)
            place[:] = piece
            obj.placed(offset, len(piece))
            offset += len(piece)
        obj.complete()
    return result


@pytest.mark.anyio
async def test_the_next_object_is_received_into_the_memory_of_the_last() -> None:
    pool = RegionPool()
    rng = np.random.default_rng(7)
    models = [
        {"w": rng.standard_normal((1024, 1100), dtype=np.float32), "b": np.arange(1000.0)}
        for _ in range(2)
    ]
    consumed: list[int] = []
    first = OutgoingObject(models[0])
    assert first.total >= HUGE_PAGE_THRESHOLD
    got = await receive(IncomingObject(first.manifest, consumed.append, pool), first)
    np.testing.assert_array_equal(got["w"], models[0]["w"])
    assert pool.created == 1
    assert pool.idle_bytes == 0
    del got
    gc.collect()
    assert pool.idle_bytes == region_size(first.manifest)

    second = OutgoingObject(models[1])
    got = await receive(IncomingObject(second.manifest, consumed.append, pool), second)
    assert pool.reused == 1
    assert pool.created == 1
    np.testing.assert_array_equal(got["w"], models[1]["w"])
    np.testing.assert_array_equal(got["b"], models[1]["b"])
    assert sum(consumed) == first.total + second.total


@pytest.mark.anyio
async def test_small_objects_do_not_use_the_pool() -> None:
    pool = RegionPool()
    source = OutgoingObject({"x": np.arange(10, dtype=np.int64)})
    got = await receive(IncomingObject(source.manifest, lambda n: None, pool), source)
    np.testing.assert_array_equal(got["x"], np.arange(10))
    assert pool.created == 0


# -- digests hashed in a worker thread -----------------------------------------------------------


class Changes:
    """Wakes a waiting test whenever a wrapped callback runs."""

    def __init__(self) -> None:
        self._event = anyio.Event()

    def after(self, callback: Callable[[Any], None]) -> Callable[[Any], None]:
        def wrapped(value: Any) -> None:
            callback(value)
            self._event.set()

        return wrapped

    async def until(self, done: Callable[[], bool]) -> None:
        with anyio.fail_after(10):
            while not done():
                await self._event.wait()
                self._event = anyio.Event()


@pytest.mark.anyio
@pytest.mark.parametrize("mode", ["arrays", "pieces"])
@pytest.mark.parametrize("tamper", [False, True], ids=["intact", "tampered"])
async def test_a_deferred_digest_is_hashed_off_the_loop_before_bytes_count_as_consumed(
    mode: str, tamper: bool
) -> None:
    """The pipeline hashes the bytes where they lie (the arrays, or the held pieces); a byte is
    reported consumed only once taken *and* hashed, and the verdict compares the digests."""
    model = {"w": np.random.default_rng(3).standard_normal(3 * MiB // 4, dtype=np.float32)}
    source = OutgoingObject(model)
    digest = source.digest()
    consumed: list[int] = []
    verdicts: list[bool] = []
    changed = Changes()
    obj = IncomingObject(source.manifest, changed.after(consumed.append), RegionPool())
    pipeline = DigestPipeline()
    obj.defer_digest(pipeline, changed.after(verdicts.append))
    taken: list[npt.NDArray[Any]] = []

    async def application() -> None:
        try:
            if mode == "arrays":
                taken.append((await obj.arrays())["w"])
            else:
                taken.extend([values async for _name, _start, values in obj.pieces()])
        except DigestMismatchError:
            assert tamper

    async with anyio.create_task_group() as tg:
        tg.start_soon(pipeline.run)
        tg.start_soon(application)
        await anyio.wait_all_tasks_blocked()
        pieces = [source.view(offset, MiB // 2) for offset in range(0, source.total, MiB // 2)]
        for offset, piece in zip(range(0, source.total, MiB // 2), pieces, strict=True):
            if tamper and offset == MiB:
                piece = memoryview(bytes(piece[:-1]) + bytes([piece[-1] ^ 1]))
            obj.feed(offset, piece)
        # Every byte is here (arrays: written in place; pieces: held), none hashed yet: the
        # pipeline has had no chance to run, so nothing may count as consumed.
        assert consumed == []
        await changed.until(lambda: sum(consumed) == source.total)
        assert verdicts == []  # every byte hashed, but the peer's digest not named yet
        obj.expect_digest(digest)
        await changed.until(lambda: bool(verdicts))
        assert verdicts == [not tamper]
        if tamper:
            obj.fail(DigestMismatchError(1))
        else:
            obj.complete()
        pipeline.close()
    assert sum(consumed) == source.total
    if not tamper:
        got = taken[0] if mode == "arrays" else np.concatenate(taken)
        np.testing.assert_array_equal(got, model["w"])


def test_a_digest_is_deferred_once_and_before_any_byte() -> None:
    source = OutgoingObject({"w": np.zeros(MiB, dtype=np.uint8)})
    obj = IncomingObject(source.manifest, lambda n: None)
    pipeline = DigestPipeline()
    obj.feed(0, source.view(0, 10))
    with pytest.raises(LocalProtocolError, match="before any byte"):
        obj.defer_digest(pipeline, lambda matched: None)
    with pytest.raises(LocalProtocolError, match="not deferred"):
        obj.expect_digest(b"x")
