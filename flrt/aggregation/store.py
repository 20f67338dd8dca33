"""Arrays kept in memory up to a budget, and in memory-mapped files beyond it.

Aggregators use an :class:`UpdateStore` for everything whose size grows with the number of sites:
updates being received (staging, until they are verified and committed) and, for robust rules such as
the coordinate-wise median, every committed update. Once the bytes held in memory would pass
``budget_bytes``, new arrays are created as ``.npy`` files (written and read with numpy's own format
code, never pickle) in a private temporary directory, and mapped into memory; the operating system
pages them in and out as they are read. The directory is removed by :meth:`UpdateStore.close`, or when
the store is garbage collected.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import weakref
from collections.abc import Hashable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

__all__ = ["DEFAULT_BUDGET_BYTES", "UpdateStore"]

#: The default in-memory budget of a store: 256 MiB.
DEFAULT_BUDGET_BYTES = 256 * 1024 * 1024


class UpdateStore:
    """Named arrays, in memory while they fit in ``budget_bytes``, on disk (memory-mapped) after.

    ``directory`` is where the spill directory is created (the system's temporary directory by
    default). Keys are any hashable value; aggregators use ``(site, variable)``.
    """

    def __init__(
        self, budget_bytes: int = DEFAULT_BUDGET_BYTES, directory: Path | None = None
    ) -> None:
        if budget_bytes < 0:
            raise ValueError(f"budget_bytes must be >= 0, got {budget_bytes}")
        self.budget_bytes = budget_bytes
        self._parent = directory
        self._spill: Path | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None
        self._arrays: dict[Hashable, npt.NDArray[Any]] = {}
        self._files: dict[Hashable, Path] = {}
        self._memory_bytes = 0
        self._disk_bytes = 0
        self._counter = 0

    @property
    def memory_bytes(self) -> int:
        """Bytes held in ordinary (anonymous) memory."""
        return self._memory_bytes

    @property
    def disk_bytes(self) -> int:
        """Bytes held in memory-mapped files."""
        return self._disk_bytes

    def __contains__(self, key: Hashable) -> bool:
        return key in self._arrays

    def __len__(self) -> int:
        return len(self._arrays)

    def keys(self) -> Iterator[Hashable]:
        return iter(list(self._arrays))

    def allocate(
        self, key: Hashable, shape: tuple[int, ...], dtype: np.dtype[Any]
    ) -> npt.NDArray[Any]:
        """A new zero-filled array for ``key`` (replacing any previous one), in memory or on disk.

        Raises :class:`OSError` when the spill file cannot be created.
        """
        self.delete(key)
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if self._memory_bytes + nbytes <= self.budget_bytes or nbytes == 0:
            array: npt.NDArray[Any] = np.zeros(shape, dtype=dtype)
            self._memory_bytes += nbytes
        else:
            path = self._spill_directory() / f"{self._counter:08d}.npy"
            self._counter += 1
            array = np.lib.format.open_memmap(path, mode="w+", dtype=dtype, shape=shape)
            self._files[key] = path
            self._disk_bytes += nbytes
        self._arrays[key] = array
        return array

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
        if path is None:
            self._memory_bytes -= array.nbytes
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
        """Forget every array and remove the spill directory."""
        self.clear()
        if self._finalizer is not None:
            self._finalizer()
            self._finalizer = None
            self._spill = None

    def _spill_directory(self) -> Path:
        if self._spill is None:
            self._spill = Path(tempfile.mkdtemp(prefix="flrt-updates-", dir=self._parent))
            self._finalizer = weakref.finalize(self, shutil.rmtree, self._spill, True)
        return self._spill
