"""The benchmark trainer: returns the global model plus a little noise, as fast as it can.

It measures the runtime, not learning: a round costs what moving and aggregating the model costs.
``sleep_seconds`` makes a site a straggler (it still stops at once when the site aborts the task),
``fail=True`` makes it raise, and :func:`make_model` builds an initial model of a given size.
"""

from __future__ import annotations

import math
import sys
import time
from collections.abc import Callable

import numpy as np

from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

__all__ = ["NOISE_BLOCK", "NoiseTrainer", "add_noise", "make_model"]

_MIB = 1024 * 1024
_FLOAT32 = 4


def make_model(size_mib: float, *, num_arrays: int = 4, seed: int = 0) -> Weights:
    """A model of float32 arrays ``layer_0 .. layer_{num_arrays-1}`` totalling ``size_mib`` MiB.

    The total is rounded down to whole float32 values (at least one per array); the values are
    standard-normal draws from ``seed``. Raises :class:`ValueError` for a negative size or fewer
    than one array.
    """
    if not size_mib >= 0 or num_arrays < 1:
        raise ValueError(f"need size_mib >= 0 and num_arrays >= 1, got {size_mib}, {num_arrays}")
    total = max(int(size_mib * _MIB) // _FLOAT32, num_arrays)
    rng = np.random.default_rng(seed)
    sizes = [total // num_arrays + (1 if i < total % num_arrays else 0) for i in range(num_arrays)]
    return {
        f"layer_{i}": rng.standard_normal(size, dtype=np.float32) for i, size in enumerate(sizes)
    }


#: Noise is drawn for this many values and repeated along larger arrays.
NOISE_BLOCK = 4096


def add_noise(
    array: np.ndarray, scale: float, rng: np.random.Generator, out: np.ndarray | None = None
) -> np.ndarray:
    """``array`` plus ``N(0, scale^2)`` noise, in ``out`` (same shape and dtype) or a new array.

    At most :data:`NOISE_BLOCK` values are drawn and repeated along the array: every value moves by
    a little noise for the cost of one pass over the model. (Drawing a normal value per element of
    a 100 MiB model takes about a second: the benchmark would measure numpy's generator, not the
    runtime.)
    """
    precision = np.float32 if array.dtype.itemsize <= 4 else np.float64
    flat = array.reshape(-1)
    block = rng.standard_normal(min(flat.size, NOISE_BLOCK), dtype=precision)
    block *= scale
    if out is None:
        out = np.empty(array.shape, dtype=array.dtype)
    elif out.shape != array.shape or out.dtype != array.dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be a C-contiguous {array.dtype} array of shape {array.shape}")
    target = out.reshape(-1)
    if not flat.size:
        return out
    # The block repeated along the array, in one call (rows of the block's length), then the rest.
    whole = flat.size - flat.size % block.size
    np.add(
        flat[:whole].reshape(-1, block.size),
        block,
        out=target[:whole].reshape(-1, block.size),
        casting="unsafe",
    )
    np.add(flat[whole:], block[: flat.size - whole], out=target[whole:], casting="unsafe")
    return out


class NoiseTrainer:
    """Adds ``N(0, noise_scale^2)`` noise (from the context's generator, see :func:`add_noise`)
    to every float array.

    ``num_samples`` is what it reports (to test weighting); ``size_mib``, ``num_arrays`` and
    ``init_seed`` shape :meth:`initial_weights`. ``sleep_seconds`` delays each ``train`` (polling
    the abort check every ``poll_seconds``); ``fail`` makes ``train`` raise :class:`RuntimeError`.
    """

    def __init__(
        self,
        *,
        noise_scale: float = 0.01,
        sleep_seconds: float = 0.0,
        fail: bool = False,
        num_samples: int = 1,
        size_mib: float = 1.0,
        num_arrays: int = 4,
        init_seed: int = 0,
        poll_seconds: float = 0.05,
    ) -> None:
        if not noise_scale >= 0 or not sleep_seconds >= 0 or num_samples < 0:
            raise ValueError("noise_scale, sleep_seconds and num_samples must be >= 0")
        if not poll_seconds > 0:
            raise ValueError(f"poll_seconds must be > 0, got {poll_seconds!r}")
        self.noise_scale = float(noise_scale)
        self.sleep_seconds = float(sleep_seconds)
        self.fail = bool(fail)
        self.num_samples = int(num_samples)
        self.size_mib = float(size_mib)
        self.num_arrays = int(num_arrays)
        self.init_seed = int(init_seed)
        self.poll_seconds = float(poll_seconds)
        #: How the trainer waits; tests replace it with a fake clock.
        self.sleep: Callable[[float], None] = time.sleep
        # The arrays of the last result, written again once nothing else holds them (see train).
        self._outputs: dict[str, np.ndarray] = {}

    def initial_weights(self) -> Weights:
        return make_model(self.size_mib, num_arrays=self.num_arrays, seed=self.init_seed)

    def _straggle(self, context: SiteContext) -> None:
        remaining = self.sleep_seconds
        while remaining > 0:
            context.raise_if_aborted()
            pause = min(self.poll_seconds, remaining)
            self.sleep(pause)
            remaining -= pause
        context.raise_if_aborted()

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        if self.fail:
            raise RuntimeError(f"NoiseTrainer at site {context.site!r} was told to fail")
        self._straggle(context)
        weights: Weights = {}
        for name, array in task.weights.items():
            out = self._reusable(name, array)
            if array.dtype.kind == "f" and self.noise_scale:
                out = add_noise(array, self.noise_scale, context.rng, out)
            elif out is None:
                out = array.copy()
            else:
                np.copyto(out, array)
            weights[name] = self._outputs[name] = out
        return TrainResult(weights=weights, num_samples=self.num_samples, metrics={"loss": 0.0})

    def _reusable(self, name: str, like: np.ndarray) -> np.ndarray | None:
        """The array this trainer returned for ``name`` last time, if nothing else refers to it
        any more (the site and the bus have let go of the last result) and it fits ``like``.

        A model-sized array written afresh every round is memory touched for the first time every
        round, which on a virtual machine costs more than the arithmetic. Writing the same memory
        again is what a real training loop does with its parameters. The reference count makes it
        safe: a result still being sent (or any view of it) holds a reference.
        """
        previous = self._outputs.get(name)
        if previous is None or previous.shape != like.shape or previous.dtype != like.dtype:
            return None
        # References: the dict, ``previous`` and getrefcount's argument. With no other, nothing
        # else can gain one either. (CPython's counts: an interpreter that counts differently
        # fails test_noise_trainer_writes_its_last_result_again_only_once_it_is_let_go.)
        return previous if sys.getrefcount(previous) <= 3 else None

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        """Reports the root mean square of the model's float values as ``rms``."""
        total = sum(float(np.square(a, dtype=np.float64).sum()) for a in weights.values())
        count = sum(a.size for a in weights.values())
        return EvalResult(
            metrics={"rms": math.sqrt(total / count) if count else 0.0}, num_samples=1
        )
