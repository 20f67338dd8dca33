"""The application's view of a received object: collect it whole, or consume it piece by piece.

Theory of operation
-------------------

An object's message reaches its actor as soon as it is announced; its bytes keep arriving. Until the
actor says how it wants them, pieces are copied into a small holding buffer, which flow control
keeps under one object window. Then either:

- :meth:`IncomingObject.arrays` preallocates every array, moves the held pieces in, and has every
  later piece copied straight to its place: memory is the object's size plus at most one window;
- :meth:`IncomingObject.receive_into` does the same with arrays the caller provides (an
  aggregator's staging for a site's update): the object costs no memory of its own;
- :meth:`IncomingObject.pieces` yields ``(name, start, values)`` slices as they arrive, so a
  streaming consumer (a running weighted sum) never holds more than one window of the object.

Each byte taken by the application is reported back to the session (``consume``), which grants the
sender more credit: a slow consumer slows its sender instead of growing anybody's memory.

A large object's arrays live in one anonymous mapping taken from the node's :class:`RegionPool`.
When every array of an object is gone, its mapping goes back to the pool (up to a configured
number of idle bytes) and the next large object is received into it: a site gets a global model
of the same size every round, and on a virtual machine the first touch of fresh memory costs
more than decrypting it (measured here: 0.25 to 1.4 GB/s). While an object arrives into fresh
memory, a worker thread faults that memory in ahead of the data (``MADV_POPULATE_WRITE``, front
to back), on another core where one is free; it stops as soon as the object is complete.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
import weakref
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from typing import Any

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from transport.errors import ConnectionClosedError, LocalProtocolError, TransportError
from transport.memory import populate
from transport.protocol.objects import (
    HUGE_PAGE_THRESHOLD,
    IncomingArrays,
    Manifest,
    new_region,
    region_size,
)

__all__ = [
    "DEFAULT_KEEP_IDLE",
    "IncomingObject",
    "LocalObject",
    "ObjectPiece",
    "RegionPool",
    "prefault",
]

#: How many bytes of idle receive memory a node keeps for its next objects, by default.
DEFAULT_KEEP_IDLE = 256 * 1024 * 1024


def prefault(region: mmap.mmap, stop: threading.Event) -> None:
    """Fault in ``region``'s pages front to back until done or ``stop`` is set (blocking: run it
    in a worker thread; see :func:`transport.memory.populate`)."""
    anchor = ctypes.c_char.from_buffer(region)  # keeps the mapping exported while we work
    try:
        populate(ctypes.addressof(anchor), len(region), stop)
    finally:
        del anchor


class RegionPool:
    """Mappings for large received objects, handed out again once their arrays are gone.

    :meth:`take` returns the smallest idle mapping that is large enough, or a fresh one;
    :meth:`lease` watches the arrays laid out in it and takes the mapping back when the last of
    them is collected. At most ``keep_idle`` bytes stay idle (the oldest go first); 0 keeps
    none. Arrays may be dropped in any thread, so the pool is thread-safe.
    """

    def __init__(self, keep_idle: int = DEFAULT_KEEP_IDLE) -> None:
        if keep_idle < 0:
            raise ValueError("keep_idle must not be negative")
        self.keep_idle = keep_idle
        # Reentrant: the garbage collector may run a finalizer (a release) in this very thread
        # while the pool holds its lock.
        self._lock = threading.RLock()
        self._idle: list[mmap.mmap] = []  # oldest first
        #: Mappings handed out again, and created afresh (for tests and benchmarks).
        self.reused = 0
        self.created = 0

    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(len(region) for region in self._idle)

    def take(self, size: int) -> tuple[mmap.mmap, bool]:
        """A mapping of at least ``size`` bytes, and whether it was used before (its pages are
        already resident)."""
        with self._lock:
            fits = [region for region in self._idle if len(region) >= size]
            if fits:
                best = min(fits, key=len)
                self._idle.remove(best)
                self.reused += 1
                return best, True
            self.created += 1
        return new_region(size), False

    def lease(self, region: mmap.mmap, arrays: Iterable[npt.NDArray[Any]]) -> None:
        """Take ``region`` back when every array in ``arrays`` (and every view of them) is gone.

        The arrays must be the only ones laid out in ``region``."""
        bases = {id(base): base for base in (_root(array) for array in arrays)}
        if not bases:
            self._give_back(region)
            return
        remaining = [len(bases)]

        def released() -> None:
            with self._lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            self._give_back(region)

        for base in bases.values():
            weakref.finalize(base, released).atexit = False

    def _give_back(self, region: mmap.mmap) -> None:
        with self._lock:
            self._idle.append(region)
            # A dropped mapping is unmapped when its last reference goes; that may be the
            # export of the array being collected right now, so it cannot be closed here.
            while self._idle and sum(len(r) for r in self._idle) > self.keep_idle:
                del self._idle[0]


def _root(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """The array at the bottom of ``array``'s chain of views: it lives as long as any of them."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    return array


#: ``(array name, index of the first element in the flattened array, the values)``.
ObjectPiece = tuple[str, int, npt.NDArray[Any]]


class IncomingObject:
    """A dict of named arrays arriving from a peer."""

    def __init__(
        self,
        manifest: Manifest,
        consume: Callable[[int], None],
        regions: RegionPool | None = None,
    ) -> None:
        self.manifest = manifest
        self._consume = consume
        self._regions = regions
        self._held: deque[tuple[int, bytes]] = deque()
        self._held_bytes = 0
        self._sink: IncomingArrays | None = None
        self._destinations: dict[str, npt.NDArray[Any]] | None = None  # the caller's arrays
        self._streaming = False
        self._received = 0
        self._complete = manifest.total == 0
        self._error: TransportError | None = None
        # Set (and dropped) at the next change, made only when the application waits for one:
        # the link feeds an object once per chunk, mostly while nobody waits.
        self._changed: anyio.Event | None = None

    # -- fed by the link -------------------------------------------------------------------------

    def feed(self, offset: int, data: memoryview) -> None:
        """Take bytes from the session (``data`` is only valid during this call)."""
        self._received = offset + len(data)
        if self._sink is not None:
            self._sink.write(offset, data)
            self._consume(len(data))
        else:
            self._held.append((offset, bytes(data)))
            self._held_bytes += len(data)
        self._notify()

    def destination(self, offset: int, nbytes: int) -> memoryview | None:
        """Where up to ``nbytes`` bytes at ``offset`` may be received in place, if the arrays
        are allocated already (the application called :meth:`arrays`); else None."""
        if self._sink is None:
            return None
        return self._sink.destination(offset, nbytes)

    def placed(self, offset: int, nbytes: int) -> None:
        """``nbytes`` bytes at ``offset`` were received straight into the arrays."""
        self._received = offset + nbytes
        self._consume(nbytes)
        self._notify()

    def complete(self) -> None:
        self._complete = True
        self._notify()

    def fail(self, error: TransportError) -> None:
        if not self._complete:
            self._error = error
            self._notify()

    @property
    def held_bytes(self) -> int:
        """Bytes received and waiting for the application (bounded by the object window)."""
        return self._held_bytes

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None

    async def _wait_changed(self) -> None:
        """Wait for the next change (bytes, completion, failure); the caller checks the state
        first, with no await in between, so no change can slip past."""
        if self._changed is None:
            self._changed = anyio.Event()
        await self._changed.wait()

    # -- for the application ---------------------------------------------------------------------

    @property
    def names(self) -> list[str]:
        return [info.name for info in self.manifest.arrays]

    @property
    def nbytes(self) -> int:
        return self.manifest.total

    async def arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Wait for the whole object and return it. Raises a TransportError if it fails."""
        if self._streaming:
            raise LocalProtocolError("object is being consumed piece by piece")
        warm = False
        if self._sink is None:
            sink, warm = self._allocate()
            self._take_over(sink)
        elif self._sink.arrays is self._destinations:
            raise LocalProtocolError("object is being received into the caller's arrays")
        assert self._sink is not None
        region = self._sink.region
        if region is not None and not warm and not self._complete:
            stop = threading.Event()
            async with anyio.create_task_group() as tg:
                tg.start_soon(anyio.to_thread.run_sync, prefault, region, stop)
                try:
                    await self._wait_complete()
                finally:
                    stop.set()  # the thread ends within one step; the task group waits for it
        else:
            await self._wait_complete()
        return self._sink.arrays

    async def receive_into(self, destinations: Mapping[str, npt.NDArray[Any]]) -> None:
        """Receive the object straight into the caller's arrays and wait until it is complete
        and verified.

        ``destinations`` maps every array name of the manifest (and nothing else) to a writable
        C-contiguous numpy array of the announced dtype and shape. Bytes held so far are moved
        in; later ones are decrypted in place where the link can, copied there otherwise. Until
        this returns, the arrays must be left alone; if it raises a TransportError, bytes may
        still land in them for a moment (a read under way), so drop them rather than reuse them.

        Raises :class:`LocalProtocolError` (before anything is written) if a destination does
        not fit or the object is already being consumed, and the object's
        :class:`TransportError` if it fails (a digest mismatch, a lost connection).
        """
        if self._sink is not None or self._streaming:
            raise LocalProtocolError("object is already being consumed")
        sink = IncomingArrays(self.manifest, destinations=destinations)
        self._destinations = sink.arrays
        self._take_over(sink)
        await self._wait_complete()

    def _take_over(self, sink: IncomingArrays) -> None:
        """Receive into ``sink`` from now on, starting with the bytes held so far."""
        self._sink = sink
        while self._held:
            offset, data = self._held.popleft()
            sink.write(offset, memoryview(data))
            self._held_bytes -= len(data)
            self._consume(len(data))

    def _allocate(self) -> tuple[IncomingArrays, bool]:
        """The arrays to receive into, and whether their memory is resident already."""
        if self._regions is None or self.manifest.total < HUGE_PAGE_THRESHOLD:
            return IncomingArrays(self.manifest), False
        region, warm = self._regions.take(region_size(self.manifest))
        sink = IncomingArrays(self.manifest, region)
        self._regions.lease(region, sink.arrays.values())
        return sink, warm

    async def _wait_complete(self) -> None:
        while not self._complete:
            if self._error is not None:
                raise self._error
            await self._wait_changed()
        if self._error is not None:
            raise self._error

    async def pieces(self) -> AsyncIterator[ObjectPiece]:
        """Yield slices of the arrays as they arrive, in order, each element exactly once.

        Bytes may arrive split in the middle of an element (a connection can break anywhere); the
        partial element is carried over so that every yielded slice holds whole elements.
        """
        if self._sink is not None or self._streaming:
            raise LocalProtocolError("object is already being consumed")
        self._streaming = True
        manifest = self.manifest
        carry = b""
        while True:
            while self._held:
                offset, held = self._held.popleft()
                self._held_bytes -= len(held)
                if carry:
                    offset -= len(carry)
                    held, carry = carry + held, b""
                data = memoryview(held)  # slices of it are views, not copies of a chunk
                while data:
                    index, inner = manifest.locate(offset)
                    info = manifest.arrays[index]
                    itemsize = np.dtype(info.dtype).itemsize
                    span = min(len(data), info.nbytes - inner)
                    whole = span - span % itemsize
                    if whole:
                        values = np.frombuffer(data[:whole], dtype=np.dtype(info.dtype))
                        yield info.name, inner // itemsize, values
                        self._consume(whole)
                        data = data[whole:]
                        offset += whole
                    if span != whole:  # a partial element: only ever at the end of the data
                        carry, data = bytes(data), memoryview(b"")
            if self._error is not None:
                raise self._error
            if self._complete and not self._held:
                if carry:
                    raise LocalProtocolError("object ended in the middle of an element")
                return
            await self._wait_changed()

    def close(self) -> None:
        """Give up on the object (the link is gone)."""
        self.fail(ConnectionClosedError("connection closed before the object arrived"))


class LocalObject:
    """The same interface over arrays that never left this process (actor to actor on one node)."""

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        self._arrays = dict(arrays)

    @property
    def names(self) -> list[str]:
        return list(self._arrays)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in self._arrays.values())

    async def arrays(self) -> dict[str, npt.NDArray[Any]]:
        return self._arrays

    async def pieces(self) -> AsyncIterator[ObjectPiece]:
        for name, array in self._arrays.items():
            yield name, 0, array.reshape(-1)
