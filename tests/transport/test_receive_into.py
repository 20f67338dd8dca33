"""An object received straight into the caller's arrays (:meth:`IncomingObject.receive_into`):
by hand (the link's calls made directly), then over real mTLS through the fault-injecting relay,
across cut connections, with a digest that does not match, and into memory-mapped files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import numpy as np
import numpy.typing as npt
import pytest

from tests.transport.conftest import Pki
from tests.transport.test_resume import CONFIG, through_proxy
from transport.bus import Message
from transport.errors import (
    ConnectionClosedError,
    DigestMismatchError,
    LocalProtocolError,
    TransportError,
)
from transport.objects import IncomingObject
from transport.protocol.objects import OutgoingObject, check_destinations

pytestmark = pytest.mark.anyio

MiB = 1024 * 1024
KiB = 1024


def source() -> OutgoingObject:
    rng = np.random.default_rng(3)
    return OutgoingObject(
        {
            "w": rng.standard_normal((64, 100)).astype(np.float32),
            "empty": np.zeros((0, 3)),
            "b": np.arange(1000, dtype=np.int64),
            "flag": np.array(True),
        }
    )


def empty_like(obj: OutgoingObject) -> dict[str, npt.NDArray[Any]]:
    return {name: np.empty_like(array) for name, array in obj.arrays.items()}


class Credit:
    """The link's consume callback: counts the bytes taken by the application."""

    def __init__(self) -> None:
        self.taken = 0

    def __call__(self, nbytes: int) -> None:
        self.taken += nbytes


# -- by hand ------------------------------------------------------------------------------------


@pytest.mark.parametrize("held", [0, 1, 3000, 6400 * 4 + 5])  # held bytes before the call
async def test_held_bytes_move_in_and_later_bytes_land_in_place(held: int) -> None:
    out = source()
    credit = Credit()
    obj = IncomingObject(out.manifest, credit)
    offset = 0
    while offset < held:  # the application has not asked yet: bytes are held (odd splits)
        piece = out.view(offset, min(777, held - offset))
        obj.feed(offset, piece)
        offset += len(piece)
    assert obj.destination(offset, 10) is None
    assert credit.taken == 0
    mine = empty_like(out)
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(obj.receive_into, mine)
            await anyio.wait_all_tasks_blocked()
            assert credit.taken == held
            assert obj.held_bytes == 0
            step = 0
            while offset < out.total:
                piece = out.view(offset, 1000)
                if step % 2:  # the link received it in place...
                    place = obj.destination(offset, len(piece))
                    assert place is not None
                    assert len(place) == len(piece)
                    place[:] = piece
                    obj.placed(offset, len(piece))
                else:  # ...or decrypted it elsewhere first
                    obj.feed(offset, piece)
                offset += len(piece)
                step += 1
            obj.complete()
    assert credit.taken == out.total  # every byte placed was given back as credit, once
    for name, array in out.arrays.items():
        np.testing.assert_array_equal(mine[name], array)
        assert mine[name].dtype == array.dtype


async def test_the_caller_is_told_when_the_object_fails() -> None:
    out = source()
    obj = IncomingObject(out.manifest, Credit())
    obj.feed(0, out.view(0, 100))

    async def fail_soon() -> None:
        await anyio.wait_all_tasks_blocked()
        obj.fail(DigestMismatchError(1))

    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(fail_soon)
            with pytest.raises(DigestMismatchError):
                await obj.receive_into(empty_like(out))


def bad_destinations() -> list[tuple[str, dict[str, Any], str]]:
    out = source()
    good = empty_like(out)
    strided = np.empty((64, 200), dtype=np.float32)[:, ::2]
    readonly = np.empty((64, 100), dtype=np.float32)
    readonly.flags.writeable = False
    return [
        ("missing", {k: v for k, v in good.items() if k != "b"}, "'b'"),
        ("dtype", {**good, "b": np.empty(1000, dtype=np.int32)}, "'b'"),
        ("byte order", {**good, "b": np.empty(1000, dtype=">i8")}, "'b'"),
        ("shape", {**good, "w": np.empty((100, 64), dtype=np.float32)}, "'w'"),
        ("strided", {**good, "w": strided}, "'w'"),
        ("read-only", {**good, "w": readonly}, "'w'"),
        ("not an array", {**good, "flag": [True]}, "'flag'"),
        ("unknown", {**good, "extra": np.empty(3)}, "'extra'"),
    ]


@pytest.mark.parametrize(
    ("why", "destinations", "named"), bad_destinations(), ids=[c[0] for c in bad_destinations()]
)
async def test_destinations_that_do_not_fit_are_refused_before_anything_is_written(
    why: str, destinations: dict[str, Any], named: str
) -> None:
    out = source()
    credit = Credit()
    obj = IncomingObject(out.manifest, credit)
    obj.feed(0, out.view(0, 100))
    with pytest.raises(LocalProtocolError, match=named):
        await obj.receive_into(destinations)
    with pytest.raises(LocalProtocolError, match=named):
        check_destinations(out.manifest, destinations)
    assert obj.held_bytes == 100
    assert credit.taken == 0
    assert obj.destination(100, 10) is None
    # The object can still be taken another way.
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            tg.start_soon(obj.receive_into, empty_like(out))
            await anyio.wait_all_tasks_blocked()
            obj.feed(100, out.view(100, out.total))
            obj.complete()


async def test_an_object_is_consumed_one_way_only() -> None:
    out = source()
    obj = IncomingObject(out.manifest, Credit())
    obj.close()
    with pytest.raises(ConnectionClosedError):
        await obj.receive_into(empty_like(out))
    with pytest.raises(LocalProtocolError):
        await obj.arrays()
    with pytest.raises(LocalProtocolError):
        await obj.receive_into(empty_like(out))
    with pytest.raises(LocalProtocolError):
        async for _ in obj.pieces():
            pass
    other = IncomingObject(out.manifest, Credit())
    other.close()
    with pytest.raises(TransportError):
        await other.arrays()
    with pytest.raises(LocalProtocolError):
        await other.receive_into(empty_like(out))


# -- over mTLS, through the relay ---------------------------------------------------------------


def big_model() -> dict[str, npt.NDArray[Any]]:
    rng = np.random.default_rng(11)
    return {
        "a": rng.standard_normal(6 * MiB // 4).astype(np.float32),  # 6 MiB
        "b": rng.integers(0, 1 << 30, size=(26 * MiB // 8 // 16, 16), dtype=np.int64),  # 26 MiB
        "c": np.arange(5, dtype=np.uint8),
    }


async def test_an_object_received_into_caller_memory_survives_cuts(
    pki: Pki, tmp_path: Path
) -> None:
    model = big_model()
    # One destination is a memory-mapped file, as an aggregator's staging past its budget.
    mapped = np.lib.format.open_memmap(
        tmp_path / "b.npy", mode="w+", dtype=np.int64, shape=model["b"].shape
    )
    mine: dict[str, npt.NDArray[Any]] = {
        "a": np.empty_like(model["a"]),
        "b": mapped,
        "c": np.empty_like(model["c"]),
    }
    done = anyio.Event()
    held: list[int] = []

    async def store(message: Message) -> None:
        assert isinstance(message.object, IncomingObject)
        await message.object.receive_into(mine)
        held.append(message.object.held_bytes)
        done.set()

    async with through_proxy(pki) as (server, site, proxy):
        server.register("store", store)
        proxy.cut_after(5 * MiB, direction="up", repeat=True)
        with anyio.fail_after(90):
            await site.tell("server/store", None, arrays=model)
            await done.wait()
        cuts = proxy.stats.cuts
        resent = site.link("server").session.resent_object_bytes
    assert cuts >= 5
    assert resent <= cuts * CONFIG.object_window
    assert held == [0]
    for name, array in model.items():
        np.testing.assert_array_equal(mine[name], array)
    mapped.flush()
    np.testing.assert_array_equal(np.load(tmp_path / "b.npy"), model["b"])


async def test_a_digest_mismatch_raises_in_the_receiver(
    pki: Pki, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(OutgoingObject, "digest", lambda self: b"\0" * 32)
    model = big_model()
    mine = {name: np.empty_like(array) for name, array in model.items()}
    outcome: list[BaseException] = []
    done = anyio.Event()

    async def store(message: Message) -> None:
        assert isinstance(message.object, IncomingObject)
        try:
            await message.object.receive_into(mine)
        except TransportError as exc:
            outcome.append(exc)
        done.set()

    async with through_proxy(pki) as (server, site, _proxy):
        server.register("store", store)
        with anyio.fail_after(60):
            await site.tell("server/store", None, arrays=model)
            await done.wait()
    assert len(outcome) == 1
    assert isinstance(outcome[0], DigestMismatchError)
