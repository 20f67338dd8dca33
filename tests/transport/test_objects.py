"""Received objects: the region pool that hands receive memory out again, and an object received
into reused memory, with no network (the link's calls are made by hand)."""

from __future__ import annotations

import gc
import weakref
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from transport.objects import IncomingObject, RegionPool
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
