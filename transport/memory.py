"""Faulting memory in ahead of use, for the receive path here and for the aggregator's buffers.

On a virtual machine the first touch of a fresh page is slow (a fault in the guest, often one in
the host): faulting a buffer in from a worker thread, before or while it is written, takes that
cost off the thread that fills it. ``MADV_POPULATE_WRITE`` (Linux 5.14+) does it without changing
the memory's contents, so it is safe while another thread writes the same pages.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import threading

__all__ = ["populate"]

_MADV_POPULATE_WRITE = 23
_STEP = 16 * 1024 * 1024
_libc: ctypes.CDLL | None = None


def populate(address: int, size: int, stop: threading.Event | None = None) -> bool:
    """Fault in the pages of ``[address, address + size)`` front to back, a step at a time, until
    done or ``stop`` is set. Blocking: run it in a worker thread (ctypes releases the GIL during
    each call). Returns False where the kernel cannot populate ahead (an older kernel, memory that
    is not anonymous): the pages then fault in as they are written, as usual.

    ``address`` and ``size`` must cover whole pages of memory the caller keeps mapped meanwhile.
    """
    global _libc
    if _libc is None:
        _libc = ctypes.CDLL(ctypes.util.find_library("c") or None, use_errno=True)
        _libc.madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    for offset in range(0, size, _STEP):
        if stop is not None and stop.is_set():
            return True
        length = min(_STEP, size - offset)
        if _libc.madvise(address + offset, length, _MADV_POPULATE_WRITE) != 0:
            return False
    return True
