"""Arrays kept in memory up to a budget, and in memory-mapped files beyond it.

Aggregators use an :class:`UpdateStore` for everything whose size grows with the number of sites:
updates being received (staging, until they are verified and committed) and, for robust rules such as
the coordinate-wise median, every committed update. Once the bytes held in memory would pass
``budget_bytes``, new arrays are created as ``.npy`` files (written and read with numpy's own format
code, never pickle) in a private temporary directory, and mapped into memory; the operating system
pages them in and out as they are read. The directory is removed by :meth:`UpdateStore.close`, or when
the store is garbage collected.

**Reuse** (``reuse=True``, for an owner that never lets its arrays out of its hands, as an
aggregator's staging). An in-memory array that is deleted (or cleared) is kept, within the budget, for the next
:meth:`UpdateStore.allocate` of the same shape and dtype, across rounds, instead of going back to the
operating system: on a virtual machine the first touch of fresh memory is the slow part of receiving
an update (about 1 s per GiB here), and the next round's updates have the same layout. Kept arrays
count against the budget (they are dropped first when a new array would not fit), so reuse never
raises the store's memory. :meth:`UpdateStore.take_free` hands one out for good (the aggregator
builds the next global model in it) and :meth:`UpdateStore.close` frees them all.

**Lent arrays.** An array handed out by :meth:`UpdateStore.lend` is being written by someone else
(the transport receives a site's update straight into its staging). Deleted while lent (the update
was dropped mid-transfer, when bytes may still land in it), it is never kept for reuse: it goes
back to the operating system once the writer lets go. :meth:`UpdateStore.returned` ends the loan.

**Memory that goes back to the operating system.** Every large in-memory array of the store (and
of the aggregators: running sums, the new global model) is made by :func:`mapped_zeros`, in an
anonymous mapping of its own that is unmapped as soon as the array and its last view are gone. An
ordinary numpy array of that size comes from glibc's ``malloc``, which serves a large request from a
mapping of its own only until it has freed one such block: it then raises its threshold (up to
32 MiB) and serves blocks of that size from its heap, where a freed block below the top stays
resident. Model-sized arrays allocated and freed every round (the staging, the new global model)
then leave holes that the next round's arrays do not fit, and the heap grows: measured on the
server of ``bench/rounds.py`` (a 100 MiB float32 model in four 25 MiB arrays), 90 to 150 MiB of free
but resident heap after three rounds.
"""

from __future__ import annotations

import contextlib
import math
import mmap
import shutil
import tempfile
import weakref
from collections.abc import Hashable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from transport.memory import populate
from transport.protocol.objects import new_region

__all__ = ["DEFAULT_BUDGET_BYTES", "MAPPED_BYTES", "UpdateStore", "mapped_zeros", "prefault"]

#: The default in-memory budget of a store: 256 MiB.
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024

#: Arrays at least this large get an anonymous mapping of their own (see the module docstring).
MAPPED_BYTES = 4 * 1024 * 1024


def prefault(arrays: Iterable[npt.NDArray[Any]]) -> None:
    """Fault in the memory of ``arrays`` without changing their values, so that writing them later
    does not pay for the first touch of each page. Blocking: run it in a worker thread; it is safe
    while another thread writes the same arrays (see :func:`transport.memory.populate`)."""
    page = mmap.PAGESIZE
    for array in arrays:
        start = -(-array.ctypes.data // page) * page  # whole pages inside the array only
        end = (array.ctypes.data + array.nbytes) // page * page
        if end > start and not populate(start, end - start):
            return


def mapped_zeros(shape: int | tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """A new zero-filled array. One of at least :data:`MAPPED_BYTES` lives in an anonymous mapping
    of its own (advised for transparent huge pages, as numpy advises its own large arrays), which is
    unmapped when the array and every view of it are gone, whatever ``malloc`` would have done (see
    the module docstring); its pages are zero when first touched, so zeroing costs nothing. Smaller
    arrays are ordinary numpy arrays."""
    dtype = np.dtype(dtype)
    dims = (shape,) if isinstance(shape, int) else tuple(int(n) for n in shape)
    count = math.prod(dims)
    if count * dtype.itemsize < MAPPED_BYTES:
        return np.zeros(dims, dtype=dtype)
    region = new_region(count * dtype.itemsize)
    # The array holds the mapping's buffer; the mapping is unmapped when the last view goes.
    return np.frombuffer(region, dtype=dtype, count=count).reshape(dims)


class UpdateStore:
    """Named arrays, in memory while they fit in ``budget_bytes``, on disk (memory-mapped) after.

    ``directory`` is where the spill directory is created (the system's temporary directory by
    default). Keys are any hashable value; aggregators use ``(site, variable)``. With ``reuse``,
    deleted in-memory arrays are kept for later allocations (see the module docstring): only for an
    owner that holds no reference to an array once it is deleted.
    """

    def __init__(
        self,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        directory: Path | None = None,
        *,
        reuse: bool = False,
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self.reuse = reuse
        self._parent = directory
        self._spill: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._arrays: dict[Hashable, npt.NDArray[Any]] = {}
        self._files: dict[Hashable, Path] = {}
        self._memory_bytes = 0
        self._disk_bytes = 0
        self._counter = 0
        self._free: dict[tuple[tuple[int, ...], np.dtype[Any]], list[npt.NDArray[Any]]] = {}
        self._free_bytes = 0
        self._lent: set[Hashable] = set()

    @property
    def memory_bytes(self) -> int:
        """Bytes held in ordinary (anonymous) memory."""
        return self._memory_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes held in memory-mapped files."""
        return self._disk_bytes

    @property
    def free_bytes(self) -> int:
        """Bytes of deleted in-memory arrays kept for reuse (within the budget)."""
        return self._free_bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._arrays

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._arrays))

    def allocate(
        self,
        key: Hashable,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        *,
        zeroed: bool = True,
    ) -> npt.NDArray[Any]:
        """A new array for ``key`` (replacing any previous one), in memory or on disk; zero-filled
        unless ``zeroed`` is false (its values are then undefined, for a caller that overwrites
        every element).

        Raises :class:`OSError` when the spill file cannot be created.
        """
        self.delete(key)
        dtype = np.dtype(dtype)
        shape = tuple(int(n) for n in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        array = self._reuse(shape, dtype)
        if array is not None:
            if zeroed:
                array.fill(0)
            self._memory_bytes += nbytes
        elif self._fits(nbytes) or nbytes == 0:
            array = mapped_zeros(shape, dtype)  # zero either way: free for a fresh mapping
            self._memory_bytes += nbytes
        else:
            path = self._spill_directory() / f"{self._counter:08d}.npy"
            self._counter += 1
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            self._files[key] = path
            self._disk_bytes += nbytes
        self._arrays[key] = array
        return array

    def lend(self, key: Hashable) -> npt.NDArray[Any]:
        """The array stored under ``key``, now lent (see the module docstring): once deleted it is
        never reused, until :meth:`returned`. Raises :class:`KeyError` if there is none."""
        array = self._arrays[key]
        self._lent.add(key)
        return array

    def returned(self, key: Hashable) -> None:
        """The array lent under ``key`` is back in the owner's hands alone: once deleted, it may
        be reused again."""
        self._lent.discard(key)

    def reserve(
        self, layout: Iterable[tuple[tuple[int, ...], np.dtype[Any]]]
    ) -> list[npt.NDArray[Any]]:
        """Keep an (unwritten) array for each ``(shape, dtype)`` of ``layout`` that has none kept
        yet, as far as the budget allows, for later allocations; returns the new ones (to
        :func:`prefault` them in a worker thread)."""
        wanted: dict[tuple[tuple[int, ...], np.dtype[Any]], int] = {}
        for shape, dtype in layout:
            key = (tuple(int(n) for n in shape), np.dtype(dtype))
            wanted[key] = wanted.get(key, 0) + 1
        created: list[npt.NDArray[Any]] = []
        for (shape, dtype), count in wanted.items():
            nbytes = math.prod(shape) * dtype.itemsize
            missing = count - len(self._free.get((shape, dtype), ()))
            for _ in range(missing):
                if not nbytes or self._memory_bytes + self._free_bytes + nbytes > self.budget_bytes:
                    break
                array = mapped_zeros(shape, dtype)
                self._free.setdefault((shape, dtype), []).append(array)
                self._free_bytes += nbytes
                created.append(array)
        return created

    def take_free(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any] | None:
        """A kept in-memory array of this shape and dtype, handed over for good (the store forgets
        it; its values are undefined), or ``None`` if there is none."""
        return self._reuse(tuple(int(n) for n in shape), np.dtype(dtype))

    def _reuse(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any] | None:
        kept = self._free.get((shape, dtype))
        if not kept:
            return None
        array = kept.pop()
        if not kept:
            del self._free[(shape, dtype)]
        self._free_bytes -= array.nbytes
        return array

    def _fits(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in memory, dropping kept arrays to make room if need be."""
        if self._memory_bytes + nbytes > self.budget_bytes:
            return False
        while self._free and self._memory_bytes + self._free_bytes + nbytes > self.budget_bytes:
            key = next(iter(self._free))
            self._free_bytes -= self._free[key].pop().nbytes
            if not self._free[key]:
                del self._free[key]
        return True

    def put(self, key: Hashable, array: npt.NDArray[Any]) -> npt.NDArray[Any]:
        """Store a copy of ``array`` under ``key`` and return the stored array."""
        stored = self.allocate(key, tuple(array.shape), array.dtype)
        stored[...] = array
        return stored

    def get(self, key: Hashable) -> npt.NDArray[Any]:
        """The array stored under ``key``; raises :class:`KeyError` if there is none."""
        return self._arrays[key]

    def delete(self, key: Hashable) -> None:
        """Forget ``key`` (and remove its file); nothing happens if it is not stored."""
        array = self._arrays.pop(key, None)
        if array is None:
            return
        path = self._files.pop(key, None)
        lent = key in self._lent
        self._lent.discard(key)
        if path is None:
            self._memory_bytes -= array.nbytes
            # Made by allocate: the store's own, whole array (unless someone may still write it).
            if self.reuse and array.nbytes and not lent:
                self._free.setdefault((array.shape, array.dtype), []).append(array)
                self._free_bytes += array.nbytes
        else:
            self._disk_bytes -= array.nbytes
            del array
            with contextlib.suppress(OSError):  # still mapped elsewhere on some platforms
                path.unlink()

    def clear(self) -> None:
        """Forget every array."""
        for key in list(self._arrays):
            self.delete(key)

    def close(self) -> None:
        """Forget every array (kept ones included) and remove the spill directory."""
        self.clear()
        self._free.clear()
        self._free_bytes = 0
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._spill = None

    def _spill_directory(self) -> Path:
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="flrt-updates-", dir=self._parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._spill, True)
        return self._spill
