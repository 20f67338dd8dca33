"""Helpers shared by the benchmarks: peak RSS, busy cores, percentiles, the closing JSON line."""

from __future__ import annotations

import json
import os
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["CpuClock", "emit", "peak_rss_mib", "percentile"]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class CpuClock:
    """How many of the machine's cores were busy between :meth:`start` and :meth:`stop`, read
    from ``/proc/stat`` (every process, so measure on a quiet machine).

    A benchmark whose baseline already keeps every core busy shows that work added on top of it
    (a digest, say) cannot hide in idle time: it costs wall time, whatever the implementation.
    """

    def __init__(self) -> None:
        self._start: tuple[int, int] | None = None
        self._busy = 0.0

    @staticmethod
    def _read() -> tuple[int, int]:
        """(busy, total) jiffies of all cores since boot."""
        with open("/proc/stat", encoding="ascii") as stat:
            fields = [int(value) for value in stat.readline().split()[1:]]
        total = sum(fields[:8])  # guest time is already counted in user time
        idle = fields[3] + fields[4]  # idle + iowait
        return total - idle, total

    def start(self) -> None:
        self._start = self._read()

    def stop(self) -> float:
        """Busy cores over the window: 0 .. ``os.cpu_count()``."""
        if self._start is None:
            raise RuntimeError("CpuClock.stop() before start()")
        busy, total = self._read()
        spent = total - self._start[1]
        cores = os.cpu_count() or 1
        self._busy = cores * (busy - self._start[0]) / spent if spent else 0.0
        return self._busy


def percentile(samples: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of ``samples``, by linear interpolation."""
    if not samples:
        raise ValueError("no samples")
    if len(samples) == 1:
        return samples[0]
    cuts = statistics.quantiles(samples, n=100, method="inclusive")
    if q <= 0:
        return min(samples)
    if q >= 100:
        return max(samples)
    return cuts[int(q) - 1]


def emit(figures: dict[str, Any]) -> None:
    """Print the benchmark's closing JSON line and flush it."""
    print(json.dumps(figures, sort_keys=False), flush=True)
    sys.stdout.flush()
