"""Logistic regression in numpy on the breast-cancer data: the reference federated example.

The model is ``{"weight": float64[30], "bias": float64[1]}`` and predicts ``P(malignant) =
sigmoid(x @ weight + bias)`` on features scaled with the public ranges of
:func:`flrt.datasets.scale_features` (the same at every site, so no site learns anything about
another's data, and the sites' models live in one coordinate system).

Why FedAvg of one full-batch step equals centralised gradient descent
--------------------------------------------------------------------
With ``full_batch=True`` and ``local_steps=1``, site ``k`` with ``n_k`` training samples returns
``w - lr * g_k``, where ``g_k`` is the mean gradient of the cross-entropy over its samples, and
``num_samples = n_k``. FedAvg weighs by ``num_samples``::

    sum_k n_k (w - lr g_k) / N  =  w - lr * (sum_k n_k g_k) / N  =  w - lr * g_pooled

which is one step of gradient descent on the pooled training data (an ``l2`` term ``l2 * w`` is the
same at every site and survives the average). :func:`centralised_weights` computes that reference.

FedProx (``task.params["fedprox_mu"]``) adds ``mu * (w - w_global)`` to each gradient; SCAFFOLD
(``task.extras["scaffold_c"]``) adds ``c - c_i`` and returns ``extras["scaffold_delta"]``; the site's
``c_i`` is kept in the job's scratch directory. ``task.params`` may also set ``learning_rate``,
``local_steps`` or ``local_epochs`` for a round.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from flrt.datasets.breast_cancer import NUM_FEATURES, SplitMode
from flrt.examples._metrics import binary_metrics, log_loss
from flrt.examples._rounds import local_steps
from flrt.examples._scaffold import load_control_variate, save_control_variate
from flrt.examples._sites import SiteData, SiteDataSpec
from flrt.model import check_compatible
from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

__all__ = [
    "LogisticRegressionTrainer",
    "centralised_weights",
    "gradient",
    "logits",
]

Array = npt.NDArray[np.float64]


def logits(weights: Weights, x: Array) -> Array:
    """``x @ weight + bias`` for every row of ``x``."""
    result: Array = x @ weights["weight"] + weights["bias"][0]
    return result


def gradient(weights: Weights, x: Array, y: npt.NDArray[Any], l2: float = 0.0) -> Weights:
    """The gradient of the mean cross-entropy over ``(x, y)`` plus ``l2/2 * ||weight||^2``."""
    error = 1.0 / (1.0 + np.exp(-logits(weights, x))) - y
    n = max(len(y), 1)
    return {
        "weight": x.T @ error / n + l2 * weights["weight"],
        "bias": np.array([error.sum() / n]),
    }


def _like(weights: Weights, reference: Mapping[str, npt.NDArray[Any]]) -> Weights:
    """``weights`` in the dtypes of ``reference`` (we compute in float64 whatever the server sends)."""
    return {
        name: value.astype(reference[name].dtype, copy=False) for name, value in weights.items()
    }


def _zeros(num_features: int = NUM_FEATURES) -> Weights:
    return {"weight": np.zeros(num_features), "bias": np.zeros(1)}


class LogisticRegressionTrainer:
    """A numpy logistic-regression trainer (see the module docstring).

    Data arguments (``num_sites``, ``site_index``, ``site_names``, ``split``, ``seed``, ``alpha``,
    ``data_key``, ``validation_fraction``) choose the site's patients, see
    :class:`flrt.examples._sites.SiteDataSpec`. Training arguments: ``learning_rate``,
    ``local_steps`` (gradient steps per round), ``full_batch`` (each step on all of the site's
    training data; otherwise on ``batch_size`` samples drawn with the context's generator), ``l2``.
    """

    def __init__(
        self,
        *,
        learning_rate: float = 0.1,
        local_steps: int = 1,
        full_batch: bool = True,
        batch_size: int = 32,
        l2: float = 0.0,
        num_sites: int = 3,
        site_index: int | None = None,
        site_names: Sequence[str] | None = None,
        split: SplitMode = "iid",
        seed: int = 0,
        alpha: float = 0.5,
        data_key: str | None = None,
        validation_fraction: float = 0.2,
    ) -> None:
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        if local_steps < 1 or batch_size < 1:
            raise ValueError("local_steps and batch_size must be >= 1")
        if not l2 >= 0:
            raise ValueError(f"l2 must be >= 0, got {l2!r}")
        self.learning_rate = float(learning_rate)
        self.local_steps = int(local_steps)
        self.full_batch = bool(full_batch)
        self.batch_size = int(batch_size)
        self.l2 = float(l2)
        self.data = SiteDataSpec(
            num_sites=num_sites,
            site_index=site_index,
            site_names=tuple(site_names) if site_names is not None else None,
            split=split,
            seed=seed,
            alpha=alpha,
            data_key=data_key,
            validation_fraction=validation_fraction,
        )
        self._cache: dict[str, SiteData] = {}

    def _site_data(self, context: SiteContext) -> SiteData:
        data = self._cache.get(context.site)
        if data is None:
            data = self._cache[context.site] = self.data.load(context)
        return data

    def initial_weights(self) -> Weights:
        """Zeros: the loss is convex, so round 0 needs no random start."""
        return _zeros()

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        data = self._site_data(context)
        x, y = data.x_train, data.y_train
        lr = float(task.params.get("learning_rate", self.learning_rate))
        full = self.full_batch or self.batch_size >= len(y)
        steps = local_steps(
            task.params,
            default=self.local_steps,
            num_samples=len(y),
            batch_size=None if full else self.batch_size,
        )
        mu = float(task.params.get("fedprox_mu", 0.0))
        if set(task.weights) != {"weight", "bias"}:
            raise ValueError(f"expected a model of 'weight' and 'bias', got {sorted(task.weights)}")
        start = {name: np.asarray(value, dtype=np.float64) for name, value in task.weights.items()}
        c = task.extras.get("scaffold_c")
        correction: Weights | None = None
        c_local: Weights | None = None
        if c is not None:
            check_compatible({name: task.weights[name] for name in c if name in task.weights}, c)
            c_local = load_control_variate(context.scratch, c, round=task.round) or {
                name: np.zeros_like(value, dtype=np.float64) for name, value in c.items()
            }
            correction = {name: c[name] - c_local[name] for name in c}

        w = {name: value.copy() for name, value in start.items()}
        for _ in range(steps):
            context.raise_if_aborted()
            if full:
                batch_x, batch_y = x, y
            else:
                chosen = context.rng.choice(len(y), size=self.batch_size, replace=False)
                batch_x, batch_y = x[chosen], y[chosen]
            g = gradient(w, batch_x, batch_y, self.l2)
            for name in w:
                step = g[name]
                if mu:
                    step = step + mu * (w[name] - start[name])
                if correction is not None and name in correction:
                    step = step + correction[name]
                w[name] = w[name] - lr * step

        extras: dict[str, Weights] = {}
        if c is not None and c_local is not None:
            delta = {name: (start[name] - w[name]) / (steps * lr) - c[name] for name in c}
            save_control_variate(
                context.scratch, {n: c_local[n] + delta[n] for n in c}, round=task.round
            )
            extras["scaffold_delta"] = _like(delta, c)
        return TrainResult(
            weights=_like(w, task.weights),
            num_samples=len(y),
            metrics={"loss": log_loss(y, logits(w, x))},
            extras=extras,
        )

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        x, y = self._site_data(context).evaluation_set()
        return EvalResult(metrics=binary_metrics(y, logits(weights, x)), num_samples=len(y))


def centralised_weights(
    args: Mapping[str, Any], rounds: int, initial: Weights | None = None
) -> Weights:
    """The model centralised gradient descent reaches after ``rounds`` full-batch steps.

    ``args`` are the trainer's arguments as in the job (``[trainer.args]``); the data are every
    simulated site's training part pooled. FedAvg over all ``num_sites`` sites, weighted by
    ``num_samples``, with ``full_batch=True`` and ``local_steps=1``, gives this model after ``rounds``
    rounds (to rounding). Raises :class:`ValueError` for arguments where that does not hold.
    """
    trainer = LogisticRegressionTrainer(**args)
    if not trainer.full_batch or trainer.local_steps != 1 or trainer.data.data_key is not None:
        raise ValueError(
            "FedAvg equals centralised GD only for full_batch, local_steps=1, shipped data"
        )
    x, y = trainer.data.pooled_training_data()
    w = {
        name: np.asarray(value, dtype=np.float64).copy()
        for name, value in (initial or _zeros()).items()
    }
    for _ in range(rounds):
        g = gradient(w, x, y, trainer.l2)
        w = {name: w[name] - trainer.learning_rate * g[name] for name in w}
    return w
