"""Helpers shared by the benchmarks: peak RSS, percentiles, and the one closing JSON line."""

from __future__ import annotations

import json
import resource
import statistics
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["emit", "peak_rss_mib", "percentile"]


def peak_rss_mib() -> float:
    """This process's peak resident set size in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


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
