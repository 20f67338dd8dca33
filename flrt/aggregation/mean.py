"""FedAvg: the weighted mean of the updates, folded in as each one is committed.

Memory is one float64 accumulator per variable plus its total weight, whatever the number of sites:
each committed update is folded into the accumulator chunk by chunk and then freed.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from flrt.errors import AggregationError
from flrt.tasks import UpdateKind

from .base import CHUNK_ELEMENTS, Aggregator, Memory, Operation

__all__ = ["WeightedMean"]


class WeightedMean(Aggregator):
    """The weighted mean of the updates (FedAvg with :attr:`~.Weighting.SAMPLES`).

    Each variable is averaged over the updates that carry it. An update of weight zero (a site with
    no samples) contributes nothing.
    """

    requires: ClassVar[frozenset[Operation]] = frozenset({Operation.ADD, Operation.SCALE})
    memory: ClassVar[Memory] = Memory.CONSTANT

    def _begin(self) -> None:
        self._sum: dict[str, npt.NDArray[np.float64]] = {}
        self._total: dict[str, float] = {}
        self._any_weight = False

    def _take(
        self,
        site: str,
        weight: float,
        kind: UpdateKind,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        owned: bool,
    ) -> bool:
        if weight <= 0.0:
            return False
        self._any_weight = True
        for name, array in arrays.items():
            acc = self._sum.get(name)
            if acc is None:
                acc = self._sum[name] = np.zeros(array.size, dtype=np.float64)
            for lo in range(0, array.size, CHUNK_ELEMENTS):
                hi = min(lo + CHUNK_ELEMENTS, array.size)
                piece = self._delta_piece(name, array, kind, lo, hi)
                piece *= weight
                acc[lo:hi] += piece
            self._total[name] = self._total.get(name, 0.0) + weight
        return False

    def _finish(self) -> dict[str, npt.NDArray[np.float64]]:
        if not self._any_weight:
            raise AggregationError("the committed updates have a total weight of zero")
        delta: dict[str, npt.NDArray[np.float64]] = {}
        for name, acc in self._sum.items():
            acc /= self._total[name]
            delta[name] = acc.reshape(self.global_weights[name].shape)
        self._sum = {}
        return delta
