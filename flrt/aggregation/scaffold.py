"""The SCAFFOLD server step (Karimireddy et al. 2020, "SCAFFOLD", Algorithm 1, lines 16-17).

Each sampled site ``i`` returns its model update ``dy_i`` and the change of its control variate
``dc_i``. With ``S`` the sampled sites that answered and ``N`` the sites taking part in the job::

    x = x + server_lr * mean(dy_i)
    c = c + (|S| / N) * mean(dc_i)

The model update's mean is the round's aggregate (weighted like FedAvg by default); the control
variate's mean is unweighted, as in the paper, so that ``c`` stays the mean of all sites' ``c_i``. The
server's ``c`` is kept in float64 and sent to sites cast to the model's dtypes.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from flrt.tasks import Weights

from .base import FloatArray, apply_delta, cast_like

__all__ = ["control_for_sites", "initial_control", "scaffold_server_step"]

F64 = npt.NDArray[np.float64]


def initial_control(weights: Weights) -> dict[str, F64]:
    """A zero control variate for every floating-point variable of ``weights``."""
    return {
        name: np.zeros(array.shape, dtype=np.float64)
        for name, array in weights.items()
        if array.dtype.kind == "f"
    }


def control_for_sites(control: Mapping[str, F64], weights: Weights) -> Weights:
    """The server control variate as sent in ``TrainTask.extras["scaffold_c"]``: in the dtypes of
    the model's variables."""
    return {name: cast_like(c, weights[name].dtype) for name, c in control.items()}


def scaffold_server_step(
    weights: Weights,
    control: Mapping[str, F64],
    delta_model: Mapping[str, FloatArray],
    delta_control: Mapping[str, FloatArray],
    *,
    answered: int,
    population: int,
    server_lr: float = 1.0,
) -> tuple[Weights, dict[str, F64]]:
    """The next global model and server control variate.

    ``delta_model`` and ``delta_control`` are the round's mean updates (float64, or float32 for a
    float32 model); ``answered`` is ``|S|`` and ``population`` is ``N``. Variables absent from a
    delta are left alone.

    Raises :class:`ValueError` unless ``0 < answered <= population`` and ``server_lr > 0``.
    """
    if not 0 < answered <= population:
        raise ValueError(f"need 0 < answered <= population, got {answered} and {population}")
    if not server_lr > 0.0:
        raise ValueError(f"server_lr must be > 0, got {server_lr}")
    new_weights = apply_delta(weights, {k: server_lr * d for k, d in delta_model.items()})
    share = answered / population
    new_control = {
        name: np.asarray(c + share * delta_control[name]) if name in delta_control else c.copy()
        for name, c in control.items()
    }
    return new_weights, new_control
