"""Server optimizers: how the aggregated update moves the global model.

FedAvg moves the model by the mean update (:class:`ServerSGD` with ``server_lr = 1``). The adaptive
optimizers of Reddi et al. 2021, "Adaptive Federated Optimization" (Algorithm 2), treat the mean
update ``delta`` as a pseudo-gradient::

    m = beta1 * m + (1 - beta1) * delta
    v = v + delta**2                                        FedAdagrad
    v = beta2 * v + (1 - beta2) * delta**2                  FedAdam
    v = v - (1 - beta2) * delta**2 * sign(v - delta**2)     FedYogi
    x = x + server_lr * m / (sqrt(v) + tau)

with ``m`` starting at 0 and ``v`` at ``tau**2`` (the paper's ``v_{-1} >= tau**2``), and no bias
correction. The update may come in float32 (the sums of a float32 model are float32); the step is
computed in float64 all the same. State is kept in float64 per variable and exported by
:meth:`ServerOptimizer.state` for checkpoints. Only floating-point variables are optimized; integer
variables (counters) take the plain mean update. A variable that no update carried this round is
left alone, its moments too.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from flrt.tasks import Weights

from .base import FloatArray, cast_like

__all__ = ["FedAdagrad", "FedAdam", "FedYogi", "ServerOptimizer", "ServerSGD", "make_optimizer"]

F64 = npt.NDArray[np.float64]


class ServerOptimizer(abc.ABC):
    """Applies an aggregated update to the global model."""

    name: ClassVar[str]

    def __init__(self, *, server_lr: float = 1.0) -> None:
        if not server_lr > 0.0:
            raise ValueError(f"server_lr must be > 0, got {server_lr}")
        self.server_lr = server_lr

    @abc.abstractmethod
    def step(self, weights: Weights, delta: Mapping[str, FloatArray]) -> Weights:
        """The next global model, in ``weights``' dtypes."""

    def state(self) -> dict[str, Weights]:
        """The optimizer's state as named groups of arrays (empty if it has none)."""
        return {}

    def load_state(self, state: Mapping[str, Weights]) -> None:  # noqa: B027 - stateless default
        """Restore :meth:`state` (from a checkpoint). Stateless optimizers ignore it."""


class ServerSGD(ServerOptimizer):
    """``x = x + server_lr * delta``; with ``server_lr = 1`` this is FedAvg."""

    name: ClassVar[str] = "sgd"

    def step(self, weights: Weights, delta: Mapping[str, FloatArray]) -> Weights:
        out: Weights = {}
        for name, array in weights.items():
            d = delta.get(name)
            out[name] = (
                array
                if d is None
                else cast_like(array.astype(np.float64) + self.server_lr * d, array.dtype)
            )
        return out


class _Adaptive(ServerOptimizer):
    def __init__(
        self,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> None:
        super().__init__(server_lr=server_lr)
        if not 0.0 <= beta1 < 1.0:
            raise ValueError(f"beta1 must be in [0, 1), got {beta1}")
        if not 0.0 <= beta2 < 1.0:
            raise ValueError(f"beta2 must be in [0, 1), got {beta2}")
        if not tau > 0.0:
            raise ValueError(f"tau must be > 0, got {tau}")
        self.beta1 = beta1
        self.beta2 = beta2
        self.tau = tau
        self._m: dict[str, F64] = {}
        self._v: dict[str, F64] = {}

    @abc.abstractmethod
    def _second_moment(self, v: F64, squared: F64) -> F64: ...

    def step(self, weights: Weights, delta: Mapping[str, FloatArray]) -> Weights:
        out: Weights = {}
        for name, array in weights.items():
            d = delta.get(name)
            if d is None:
                out[name] = array
                continue
            d = np.asarray(d, dtype=np.float64)
            x = array.astype(np.float64)
            if array.dtype.kind != "f":
                out[name] = cast_like(x + d, array.dtype)
                continue
            m = self._m.get(name)
            if m is None:
                m = np.zeros(array.shape, dtype=np.float64)
            v = self._v.get(name)
            if v is None:
                v = np.full(array.shape, self.tau**2, dtype=np.float64)
            # np.asarray: arithmetic on 0-d arrays gives numpy scalars, which are not arrays
            m = np.asarray(self.beta1 * m + (1.0 - self.beta1) * d, dtype=np.float64)
            v = np.asarray(self._second_moment(v, d * d), dtype=np.float64)
            self._m[name], self._v[name] = m, v
            out[name] = cast_like(x + self.server_lr * m / (np.sqrt(v) + self.tau), array.dtype)
        return out

    def state(self) -> dict[str, Weights]:
        return {"m": dict(self._m), "v": dict(self._v)}

    def load_state(self, state: Mapping[str, Weights]) -> None:
        self._m = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("m", {}).items()}
        self._v = {k: np.asarray(a, dtype=np.float64) for k, a in state.get("v", {}).items()}


class FedAdagrad(_Adaptive):
    """FedAdagrad: ``v = v + delta**2``."""

    name: ClassVar[str] = "fedadagrad"

    def _second_moment(self, v: F64, squared: F64) -> F64:
        return v + squared


class FedAdam(_Adaptive):
    """FedAdam: ``v = beta2 * v + (1 - beta2) * delta**2``."""

    name: ClassVar[str] = "fedadam"

    def _second_moment(self, v: F64, squared: F64) -> F64:
        return self.beta2 * v + (1.0 - self.beta2) * squared


class FedYogi(_Adaptive):
    """FedYogi: ``v = v - (1 - beta2) * delta**2 * sign(v - delta**2)``."""

    name: ClassVar[str] = "fedyogi"

    def _second_moment(self, v: F64, squared: F64) -> F64:
        return v - (1.0 - self.beta2) * squared * np.sign(v - squared)


_ADAPTIVE: dict[str, type[_Adaptive]] = {cls.name: cls for cls in (FedAdagrad, FedAdam, FedYogi)}


def make_optimizer(name: str, **hyper: Any) -> ServerOptimizer:
    """An optimizer by name: ``"sgd"``, ``"fedadagrad"``, ``"fedadam"`` or ``"fedyogi"``.

    Raises :class:`ValueError` for an unknown name or a bad hyper-parameter.
    """
    if name == ServerSGD.name:
        return ServerSGD(**hyper)
    cls = _ADAPTIVE.get(name)
    if cls is None:
        raise ValueError(f"unknown server optimizer {name!r}")
    return cls(**hyper)
