"""A thin adapter between PyTorch modules and flrt models, and the FedProx and SCAFFOLD helpers.

PyTorch is an optional extra (``pip install flrt[torch]``): this module imports it only when one of
its functions is called, so ``import flrt.pytorch`` works without it, and the first call raises
:class:`ImportError` with the install hint.

Names are the module's ``state_dict()`` keys, values copies as numpy arrays. ``bfloat16`` tensors,
which numpy cannot hold, travel as ``float32`` and are cast back on the way in.

FedProx (Li et al. 2020) adds ``mu/2 * ||w - w_global||^2`` to the local loss, over the trainable
parameters. SCAFFOLD (Karimireddy et al. 2020) corrects every local gradient by ``c - c_i`` (server
minus site control variate) and, after ``K`` local steps of size ``lr`` from the global model ``x`` to
the local model ``y_i``, sets the site's control variate to (option II)::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

and sends the server ``c_i+ - c_i``. Option II assumes plain SGD steps; with momentum or an adaptive
optimizer it is the usual approximation.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from flrt.errors import IncompatibleWeightsError
from flrt.tasks import Weights

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "FedProxTerm",
    "ScaffoldCorrection",
    "import_torch",
    "state_dict_to_weights",
    "weights_to_module",
]


def import_torch() -> Any:
    """The ``torch`` module, or :class:`ImportError` saying how to install it."""
    try:
        import torch
    except ImportError as exc:  # pragma: no cover - the dev set-up has torch
        raise ImportError(
            "flrt.pytorch needs PyTorch: pip install 'flrt[torch]'", name="torch"
        ) from exc
    return torch


def _to_numpy(tensor: torch.Tensor) -> npt.NDArray[Any]:
    th = import_torch()
    tensor = tensor.detach().cpu()
    if tensor.dtype == th.bfloat16:
        tensor = tensor.float()
    return np.array(tensor.numpy(), copy=True)


def _describe(shape: tuple[int, ...], dtype: object) -> str:
    return f"{dtype} {shape}"


def state_dict_to_weights(module: nn.Module) -> Weights:
    """Copy a module's ``state_dict()`` (parameters and buffers) into a model of numpy arrays."""
    return {name: _to_numpy(tensor) for name, tensor in module.state_dict().items()}


def weights_to_module(module: nn.Module, weights: Weights) -> None:
    """Load a model into a module in place, checking names and shapes strictly.

    Values are cast to each tensor's dtype (a float64 aggregate loads into float32 parameters).
    Raises :class:`~flrt.errors.IncompatibleWeightsError` naming the first tensor (in sorted order)
    that is missing, unexpected or of another shape; the module is unchanged then.
    """
    th = import_torch()
    state = module.state_dict()
    for name in sorted(state.keys() | weights.keys()):
        if name not in weights:
            raise IncompatibleWeightsError(
                name, expected=_describe(tuple(state[name].shape), state[name].dtype), got="missing"
            )
        array = np.asarray(weights[name])
        if name not in state:
            raise IncompatibleWeightsError(
                name, expected="missing", got=_describe(array.shape, array.dtype)
            )
        if tuple(state[name].shape) != array.shape:
            raise IncompatibleWeightsError(
                name,
                expected=_describe(tuple(state[name].shape), state[name].dtype),
                got=_describe(array.shape, array.dtype),
            )
    with th.no_grad():
        for name, tensor in state.items():
            array = np.asarray(weights[name])
            source = th.from_numpy(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("=")))
            tensor.copy_(source.to(dtype=tensor.dtype))


def _parameters(module: nn.Module) -> dict[str, torch.nn.Parameter]:
    return dict(module.named_parameters())


def _require(names: Mapping[str, Any], weights: Mapping[str, Any], what: str) -> None:
    for name in sorted(names):
        if name not in weights:
            raise IncompatibleWeightsError(
                name, expected="a trainable parameter", got=f"missing in {what}"
            )


class FedProxTerm:
    """The FedProx proximal term ``mu/2 * sum ||w - w_global||^2`` over a module's parameters.

    Build it once per round from the global model, then add ``term(module)`` to every local loss::

        prox = FedProxTerm(task.weights, mu=task.params.get("fedprox_mu", 0.0))
        loss = criterion(module(x), y) + prox(module)

    Buffers (batch-norm statistics) are not trainable and are left out. ``mu = 0`` gives zero.
    """

    def __init__(self, global_weights: Weights, mu: float) -> None:
        if not mu >= 0.0:
            raise ValueError(f"mu must be >= 0, got {mu!r}")
        self.mu = float(mu)
        self._global = dict(global_weights)
        self._tensors: dict[str, torch.Tensor] = {}

    def __call__(self, module: nn.Module) -> torch.Tensor:
        """The penalty, a scalar tensor that is differentiable in the module's parameters.

        Raises :class:`~flrt.errors.IncompatibleWeightsError` if a parameter is not in the global
        model or has another shape there.
        """
        th = import_torch()
        parameters = _parameters(module)
        _require(parameters, self._global, "the global model")
        terms: list[Any] = []
        for name, parameter in parameters.items():
            reference = self._tensors.get(name)
            if reference is None or reference.device != parameter.device:
                array = np.asarray(self._global[name])
                if array.shape != tuple(parameter.shape):
                    raise IncompatibleWeightsError(
                        name,
                        expected=_describe(tuple(parameter.shape), parameter.dtype),
                        got=_describe(array.shape, array.dtype),
                    )
                reference = th.from_numpy(np.ascontiguousarray(array)).to(
                    device=parameter.device, dtype=parameter.dtype
                )
                self._tensors[name] = reference
            terms.append(((parameter - reference) ** 2).sum())
        result: torch.Tensor = 0.5 * self.mu * th.stack(terms).sum() if terms else th.zeros(())
        return result


class ScaffoldCorrection:
    """SCAFFOLD for one site and one round: corrects gradients, then computes the new control variate.

    ::

        scaffold = ScaffoldCorrection(c=task.extras["scaffold_c"], c_local=previous_or_None)
        for step in range(K):
            loss.backward()
            scaffold.correct(module)          # grad += c - c_i
            optimizer.step()                  # plain SGD with learning rate lr
        delta = scaffold.finish(task.weights, module, steps=K, learning_rate=lr)
        # keep scaffold.c_local_new for the next round; send delta as extras["scaffold_delta"]

    ``c`` and ``c_local`` are models with the same names as the module's parameters (names of
    buffers, if the server's ``c`` has them, get a zero delta). ``c_local=None`` means zeros, a
    site's first round.
    """

    def __init__(self, c: Weights, c_local: Weights | None = None) -> None:
        self.c = {name: np.asarray(value) for name, value in c.items()}
        self.c_local = (
            {name: np.asarray(value) for name, value in c_local.items()}
            if c_local is not None
            else {name: np.zeros_like(value) for name, value in self.c.items()}
        )
        self.c_local_new: Weights | None = None
        self._corrections: dict[str, torch.Tensor] = {}

    def correct(self, module: nn.Module) -> None:
        """Add ``c - c_i`` to the gradient of every parameter (call after ``backward()``).

        Parameters without a gradient are left alone. Raises
        :class:`~flrt.errors.IncompatibleWeightsError` if a parameter is missing from ``c`` or
        ``c_local`` or has another shape.
        """
        th = import_torch()
        parameters = _parameters(module)
        if not self._corrections:
            _require(parameters, self.c, "c")
            _require(parameters, self.c_local, "c_local")
            for name, parameter in parameters.items():
                difference = self.c[name].astype(np.float64) - self.c_local[name].astype(np.float64)
                if difference.shape != tuple(parameter.shape):
                    raise IncompatibleWeightsError(
                        name,
                        expected=_describe(tuple(parameter.shape), parameter.dtype),
                        got=_describe(difference.shape, self.c[name].dtype),
                    )
                self._corrections[name] = th.from_numpy(difference).to(
                    device=parameter.device, dtype=parameter.dtype
                )
        with th.no_grad():
            for name, parameter in parameters.items():
                if parameter.grad is not None:
                    parameter.grad.add_(self._corrections[name])

    def finish(
        self, global_weights: Weights, module: nn.Module, *, steps: int, learning_rate: float
    ) -> Weights:
        """The site's control-variate delta ``c_i+ - c_i = (x - y_i) / (K * lr) - c``.

        ``global_weights`` is ``x`` (the task's model), ``module`` holds ``y_i`` after ``steps``
        local steps of size ``learning_rate``. Sets :attr:`c_local_new` to ``c_i+``. The delta has
        the names, shapes and dtypes of ``c``. Raises :class:`ValueError` for ``steps < 1`` or a
        non-positive learning rate, and :class:`~flrt.errors.IncompatibleWeightsError` for a
        parameter missing from ``global_weights`` or ``c``.
        """
        if steps < 1 or not learning_rate > 0:
            raise ValueError(f"need steps >= 1 and learning_rate > 0, got {steps}, {learning_rate}")
        local = {name: _to_numpy(p) for name, p in _parameters(module).items()}
        _require(local, global_weights, "the global model")
        _require(local, self.c, "c")
        delta: Weights = {}
        new: Weights = {}
        for name, c in self.c.items():
            if name in local:
                x = np.asarray(global_weights[name], dtype=np.float64)
                step = (x - local[name].astype(np.float64)) / (steps * learning_rate)
                change = step - c.astype(np.float64)
            else:
                change = np.zeros(c.shape, dtype=np.float64)
            before = self.c_local.get(name)
            base = before.astype(np.float64) if before is not None else np.zeros(c.shape)
            delta[name] = change.astype(c.dtype)
            new[name] = (base + change).astype(c.dtype)
        self.c_local_new = new
        return delta
