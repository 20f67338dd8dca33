"""Aggregators by name, as a job names them (``[workflow.params] aggregator = "median"``)."""

from __future__ import annotations

from pathlib import Path

from .base import Aggregator, Weighting
from .mean import WeightedMean
from .robust import CoordinateMedian, Krum, TrimmedMean

__all__ = ["AGGREGATORS", "make_aggregator"]

#: The names a job may use, and what they are.
AGGREGATORS: dict[str, str] = {
    "weighted_mean": "FedAvg: the mean weighted by sample counts, folded as updates arrive",
    "uniform_mean": "the unweighted mean, folded as updates arrive",
    "median": "the coordinate-wise median of all updates",
    "trimmed_mean": "the coordinate-wise mean after trimming trim_ratio of each tail",
    "krum": "Krum: the update closest to its neighbours, tolerating `byzantine` bad sites",
}


def make_aggregator(
    name: str,
    *,
    memory_budget_bytes: int,
    spill_dir: Path | None = None,
    trim_ratio: float = 0.1,
    byzantine: int = 1,
) -> Aggregator:
    """A new aggregator called ``name`` (a key of :data:`AGGREGATORS`).

    Raises :class:`ValueError` for an unknown name or a bad parameter.
    """
    if name == "weighted_mean":
        return WeightedMean(staging_budget_bytes=memory_budget_bytes, spill_dir=spill_dir)
    if name == "uniform_mean":
        return WeightedMean(
            weighting=Weighting.UNIFORM,
            staging_budget_bytes=memory_budget_bytes,
            spill_dir=spill_dir,
        )
    if name == "median":
        return CoordinateMedian(memory_budget_bytes=memory_budget_bytes, spill_dir=spill_dir)
    if name == "trimmed_mean":
        return TrimmedMean(
            trim_ratio=trim_ratio, memory_budget_bytes=memory_budget_bytes, spill_dir=spill_dir
        )
    if name == "krum":
        return Krum(
            byzantine=byzantine, memory_budget_bytes=memory_budget_bytes, spill_dir=spill_dir
        )
    raise ValueError(f"unknown aggregator {name!r} (known: {', '.join(AGGREGATORS)})")
