"""FedAvg: the weighted mean of the updates, folded in as each one is committed.

Memory is one running sum per variable plus its total weight, whatever the number of sites: each
committed update is folded into the sum and then freed. The sum is kept in the model's floating
dtype (float32 for a float32 model: see "Precision" in :mod:`flrt.aggregation.base`), in memory
that goes back to the operating system once freed (:func:`~flrt.aggregation.store.mapped_zeros`).
The fold goes through the update in slices of :data:`~flrt.aggregation.base.FOLD_ELEMENTS` (the
weighted difference of a slice, computed in the sum's dtype, stays in the CPU's cache), touches
only the update and the sum, and so may run in a worker thread
(:attr:`~flrt.aggregation.base.Aggregator.fold_in_thread`). The sums are kept from one round to the
next (zeroed, not reallocated), and :meth:`WeightedMean.finish` builds the new model in slices, in a
buffer the staging no longer needs when there is one, with no whole-model temporary.
"""

from __future__ import annotations

from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from flrt.errors import AggregationError
from flrt.tasks import UpdateKind, Weights

from .base import (
    FOLD_ELEMENTS,
    Aggregator,
    FloatArray,
    Memory,
    Operation,
    accumulation_dtype,
    new_model_into,
)
from .store import mapped_zeros

__all__ = ["WeightedMean"]


class WeightedMean(Aggregator):
    """The weighted mean of the updates (FedAvg with :attr:`~.Weighting.SAMPLES`).

    Each variable is averaged over the updates that carry it. An update of weight zero (a site with
    no samples) contributes nothing.
    """

    requires: ClassVar[frozenset[Operation]] = frozenset({Operation.ADD, Operation.SCALE})
    memory: ClassVar[Memory] = Memory.CONSTANT
    fold_in_thread: ClassVar[bool] = True

    #: Running sums kept across rounds, by variable (flat, in :func:`accumulation_dtype`).
    _kept: dict[str, FloatArray]

    def _begin(self) -> None:
        if not hasattr(self, "_kept"):
            self._kept = {}
        self._sum: dict[str, FloatArray] = {}
        self._total: dict[str, float] = {}
        self._any_weight = False

    def _accumulator(self, name: str) -> FloatArray:
        acc = self._sum.get(name)
        if acc is None:
            reference = self.global_weights[name]
            dtype = accumulation_dtype(reference.dtype)
            acc = self._kept.pop(name, None)
            if acc is None or acc.size != reference.size or acc.dtype != dtype:
                acc = mapped_zeros(reference.size, dtype)
            else:
                acc.fill(0)
            self._sum[name] = acc
        return acc

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
        largest = max((array.size for array in arrays.values()), default=0)
        scratch: dict[np.dtype[Any], FloatArray] = {}  # one slice per sum dtype, reused
        for name, array in arrays.items():
            acc = self._accumulator(name)
            if acc.dtype not in scratch:
                scratch[acc.dtype] = np.empty(min(FOLD_ELEMENTS, largest), dtype=acc.dtype)
            buffer = scratch[acc.dtype]
            flat = array.reshape(-1)
            reference = self.global_weights[name].reshape(-1)
            for lo in range(0, flat.size, FOLD_ELEMENTS):
                hi = min(lo + FOLD_ELEMENTS, flat.size)
                piece = buffer[: hi - lo]
                if kind is UpdateKind.FULL:
                    np.subtract(flat[lo:hi], reference[lo:hi], out=piece, dtype=acc.dtype)
                else:
                    piece[...] = flat[lo:hi]
                piece *= weight  # a Python float: the slice keeps the sum's dtype
                acc[lo:hi] += piece
            self._total[name] = self._total.get(name, 0.0) + weight
        return False

    def _check_weight(self) -> None:
        if not self._any_weight:
            raise AggregationError("the committed updates have a total weight of zero")

    def _finish(self) -> dict[str, FloatArray]:
        self._check_weight()
        delta: dict[str, FloatArray] = {}
        for name, acc in self._sum.items():  # handed over: not kept for the next round
            acc /= self._total[name]
            delta[name] = acc.reshape(self.global_weights[name].shape)
        self._sum = {}
        return delta

    def _finish_model(self) -> Weights:
        self._check_weight()
        sums, totals = self._sum, self._total

        def piece(name: str, lo: int, hi: int, out: FloatArray) -> bool:
            acc = sums.get(name)
            if acc is None:
                return False
            np.divide(acc[lo:hi], totals[name], out=out)
            return True

        def allocate(shape: tuple[int, ...], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
            reused = self.store.take_free(shape, dtype)
            return np.empty(shape, dtype) if reused is None else reused

        model = new_model_into(self.global_weights, piece, allocate, in_sum_dtype=True)
        self._kept.update(sums)
        self._sum = {}
        return model

    def close(self) -> None:
        super().close()
        self._kept = {}
        self._sum = {}
