"""Which sites a round asks: uniformly, or preferring sites that have answered on time before.

Choices are deterministic for a seed: the generator for round ``r`` is derived from ``(seed, r,
purpose)``, not carried from round to round, so a workflow resumed from a checkpoint at round ``r``
asks the same sites as one that never stopped (given the same history).

With :attr:`Sampling.RELIABLE`, a site is drawn with a probability proportional to its smoothed
on-time rate ``(on_time + 1) / (asked + 2)`` (a new site starts at one half), so unreliable sites
are asked less often but never excluded: a site that recovers can earn its place back.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from flrt.job import Sampling

from .quorum import SiteOutcome

__all__ = ["Sampling", "SiteHistory", "choose_sites", "round_rng"]


@dataclass(frozen=True, slots=True)
class SiteHistory:
    """How often a site answered on time, late (cancelled or discarded), or failed."""

    on_time: int = 0
    late: int = 0
    failed: int = 0

    @property
    def asked(self) -> int:
        return self.on_time + self.late + self.failed

    @property
    def reliability(self) -> float:
        """The smoothed on-time rate, in (0, 1): one half for a site never asked."""
        return (self.on_time + 1) / (self.asked + 2)

    def record(self, outcome: SiteOutcome) -> SiteHistory:
        """This history with one more round's outcome (a round that gave up on the site because
        the others failed, :attr:`SiteOutcome.CANCELLED`, says nothing about it)."""
        if outcome is SiteOutcome.ON_TIME:
            return replace(self, on_time=self.on_time + 1)
        if outcome is SiteOutcome.LATE:
            return replace(self, late=self.late + 1)
        if outcome is SiteOutcome.CANCELLED:
            return self
        return replace(self, failed=self.failed + 1)

    def to_dict(self) -> dict[str, int]:
        return {"on_time": self.on_time, "late": self.late, "failed": self.failed}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SiteHistory:
        return cls(int(data["on_time"]), int(data["late"]), int(data["failed"]))


def round_rng(seed: int, round: int, purpose: int = 0) -> np.random.Generator:
    """The generator for one round and purpose, independent of every other round."""
    return np.random.default_rng([seed, round, purpose])


def choose_sites(
    candidates: Iterable[str],
    count: int,
    *,
    seed: int,
    round: int,
    sampling: Sampling = Sampling.UNIFORM,
    history: Mapping[str, SiteHistory] | None = None,
    purpose: int = 0,
) -> tuple[str, ...]:
    """Up to ``count`` distinct sites out of ``candidates``, sorted; all of them if there are fewer.

    Deterministic for ``(candidates, count, seed, round, sampling, history, purpose)``; the order in
    which candidates are given does not matter.
    """
    pool = sorted(set(candidates))
    if count >= len(pool):
        return tuple(pool)
    if count <= 0:
        return ()
    rng = round_rng(seed, round, purpose)
    if sampling is Sampling.RELIABLE:
        known = history or {}
        p = np.array([known.get(s, SiteHistory()).reliability for s in pool], dtype=np.float64)
        p /= p.sum()
        picked = rng.choice(len(pool), size=count, replace=False, p=p)
    else:
        picked = rng.choice(len(pool), size=count, replace=False)
    return tuple(sorted(pool[int(i)] for i in picked))
