"""Robust aggregators that need every update: coordinate-wise median, trimmed mean, Krum.

They keep each committed update in the aggregator's :class:`~flrt.aggregation.store.UpdateStore`
(in memory up to its budget, then in memory-mapped files) and combine them at
:meth:`~flrt.aggregation.base.Aggregator.finish`, a slice of coordinates at a time, so the working
memory is bounded by ``working_bytes`` whatever the model size and the number of sites.

They ignore sample counts: every update counts once, which is what stops one site that claims many
samples from dominating. Updates are combined in the sorted order of site names, so the result does
not depend on the order in which they arrived (bit for bit).
"""

from __future__ import annotations

import abc
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from flrt.errors import AggregationError
from flrt.tasks import UpdateKind

from .base import DEFAULT_STAGING_BYTES, Aggregator, FloatArray, Memory, Operation, Weighting

__all__ = ["CoordinateMedian", "Krum", "RetainingAggregator", "TrimmedMean"]

#: Default working memory for combining updates: 32 MiB of float64 values.
DEFAULT_WORKING_BYTES = 32 * 1024 * 1024


class RetainingAggregator(Aggregator):
    """An aggregator that keeps every committed update until the round finishes.

    ``memory_budget_bytes`` bounds the updates held in memory (staged and committed); beyond it they
    go to memory-mapped files in ``spill_dir``. ``working_bytes`` bounds the float64 matrix of one
    slice of coordinates across all updates.
    """

    memory: ClassVar[Memory] = Memory.PER_UPDATE

    def __init__(
        self,
        *,
        memory_budget_bytes: int = DEFAULT_STAGING_BYTES,
        spill_dir: Path | None = None,
        working_bytes: int = DEFAULT_WORKING_BYTES,
    ) -> None:
        super().__init__(
            weighting=Weighting.UNIFORM,
            staging_budget_bytes=memory_budget_bytes,
            spill_dir=spill_dir,
        )
        if working_bytes <= 0:
            raise ValueError(f"working_bytes must be > 0, got {working_bytes}")
        self.working_bytes = working_bytes

    def _begin(self) -> None:
        self._kinds: dict[str, UpdateKind] = {}
        self._names: dict[str, tuple[str, ...]] = {}

    def _take(
        self,
        site: str,
        weight: float,
        kind: UpdateKind,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        owned: bool,
    ) -> bool:
        if not owned:
            for name, array in arrays.items():
                self.store.put((site, name), array)
        self._kinds[site] = kind
        self._names[site] = tuple(arrays)
        return True

    def _contributors(self, name: str) -> list[str]:
        return [site for site in self.committed if name in self._names[site]]

    def _slices(self, size: int, rows: int) -> list[tuple[int, int]]:
        step = max(1, self.working_bytes // (8 * max(1, rows)))
        return [(lo, min(lo + step, size)) for lo in range(0, size, step)]

    def _matrix(self, sites: list[str], name: str, lo: int, hi: int) -> npt.NDArray[np.float64]:
        matrix = np.empty((len(sites), hi - lo), dtype=np.float64)
        for row, site in enumerate(sites):
            matrix[row] = self._delta_piece(
                name, self.store.get((site, name)), self._kinds[site], lo, hi
            )
        return matrix


class _Coordinatewise(RetainingAggregator):
    requires: ClassVar[frozenset[Operation]] = frozenset({Operation.ORDER, Operation.ADD})

    def _finish(self) -> dict[str, FloatArray]:
        delta: dict[str, FloatArray] = {}
        for name, reference in self.global_weights.items():
            sites = self._contributors(name)
            if not sites:
                continue
            out = np.empty(reference.size, dtype=np.float64)
            for lo, hi in self._slices(reference.size, len(sites)):
                out[lo:hi] = self._combine(self._matrix(sites, name, lo, hi))
            delta[name] = out.reshape(reference.shape)
        return delta

    @abc.abstractmethod
    def _combine(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        """One value per column of a (updates x coordinates) matrix."""


class CoordinateMedian(_Coordinatewise):
    """The median of the updates, coordinate by coordinate (the mean of the two middle values for
    an even count)."""

    def _combine(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        median: npt.NDArray[np.float64] = np.median(matrix, axis=0)
        return median


class TrimmedMean(_Coordinatewise):
    """The mean of the updates after dropping, coordinate by coordinate, the ``trim_ratio`` share of
    the smallest and of the largest values (``floor(trim_ratio * n)`` each side).

    Raises :class:`ValueError` unless ``0 <= trim_ratio < 0.5``.
    """

    def __init__(self, *, trim_ratio: float = 0.1, **kwargs: Any) -> None:
        if not 0.0 <= trim_ratio < 0.5:
            raise ValueError(f"trim_ratio must be in [0, 0.5), got {trim_ratio}")
        super().__init__(**kwargs)
        self.trim_ratio = trim_ratio

    def _combine(self, matrix: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        n = matrix.shape[0]
        k = int(np.floor(self.trim_ratio * n))
        matrix.sort(axis=0)
        kept: npt.NDArray[np.float64] = matrix[k : n - k].mean(axis=0)
        return kept


class Krum(RetainingAggregator):
    """Krum (Blanchard et al. 2017): the update closest to its ``n - f - 2`` nearest neighbours,
    where ``f`` is the number of Byzantine sites tolerated; with ``select = m > 1``, the mean of the
    ``m`` best (multi-Krum).

    Distances are measured over the variables that every committed update carries; the result holds
    the selected updates' values for every variable they carry. Finishing raises
    :class:`~flrt.errors.AggregationError` unless ``n >= 2 f + 3``.
    """

    requires: ClassVar[frozenset[Operation]] = frozenset(
        {Operation.DISTANCE, Operation.ADD, Operation.SCALE}
    )

    def __init__(self, *, byzantine: int = 1, select: int = 1, **kwargs: Any) -> None:
        if byzantine < 0:
            raise ValueError(f"byzantine must be >= 0, got {byzantine}")
        if select < 1:
            raise ValueError(f"select must be >= 1, got {select}")
        super().__init__(**kwargs)
        self.byzantine = byzantine
        self.select = select
        self.selected: tuple[str, ...] = ()

    def _finish(self) -> dict[str, FloatArray]:
        sites = list(self.committed)
        n, f = len(sites), self.byzantine
        if n < 2 * f + 3:
            raise AggregationError(f"Krum with f={f} needs at least {2 * f + 3} updates, got {n}")
        shared = [
            name for name in self.global_weights if all(name in self._names[s] for s in sites)
        ]
        distances = np.zeros((n, n), dtype=np.float64)
        for name in shared:
            size = self.global_weights[name].size
            for lo, hi in self._slices(size, n * n):
                matrix = self._matrix(sites, name, lo, hi)
                diff = matrix[:, None, :] - matrix[None, :, :]
                distances += np.einsum("ijk,ijk->ij", diff, diff)
        neighbours = n - f - 2
        scores = np.array(
            [np.sort(np.delete(distances[i], i))[:neighbours].sum() for i in range(n)]
        )
        order = np.argsort(scores, kind="stable")
        chosen = sorted(sites[i] for i in order[: min(self.select, n)])
        self.selected = tuple(chosen)
        delta: dict[str, FloatArray] = {}
        for name, reference in self.global_weights.items():
            carriers = [s for s in chosen if name in self._names[s]]
            if not carriers:
                continue
            out = np.empty(reference.size, dtype=np.float64)
            for lo, hi in self._slices(reference.size, len(carriers)):
                out[lo:hi] = self._matrix(carriers, name, lo, hi).mean(axis=0)
            delta[name] = out.reshape(reference.shape)
        return delta
