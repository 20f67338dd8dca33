"""A small PyTorch MLP on the breast-cancer data, with FedProx and SCAFFOLD when a round asks.

The network is ``Linear(30, hidden) -> ReLU -> Linear(hidden, 1)`` (float32), trained with plain
SGD on the cross-entropy of its logit; names are the ``state_dict`` keys (``0.weight``, ``0.bias``,
``2.weight``, ``2.bias``). Data arguments are those of :class:`flrt.examples.logreg.
LogisticRegressionTrainer` (the same split, the same public feature scaling).

Per round, ``task.params`` may set ``learning_rate``, ``local_steps`` or ``local_epochs``;
``fedprox_mu > 0`` adds the FedProx term (:class:`flrt.pytorch.FedProxTerm`);
``task.extras["scaffold_c"]`` (the server's control variate, one array per parameter) switches on
the SCAFFOLD correction (:class:`flrt.pytorch.ScaffoldCorrection`): the result then carries
``extras["scaffold_delta"] = c_i+ - c_i``, and the site keeps ``c_i`` in the job's scratch
directory.

PyTorch is imported when the trainer trains or evaluates, not when it is built, so a server
without PyTorch can still create round 0's model with :meth:`MLPTrainer.initial_weights`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from flrt.datasets.breast_cancer import NUM_FEATURES, SplitMode
from flrt.examples._metrics import binary_metrics
from flrt.examples._rounds import local_steps
from flrt.examples._scaffold import load_control_variate, save_control_variate
from flrt.examples._sites import SiteData, SiteDataSpec
from flrt.pytorch import (
    FedProxTerm,
    ScaffoldCorrection,
    import_torch,
    state_dict_to_weights,
    weights_to_module,
)
from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

if TYPE_CHECKING:
    from torch import nn

__all__ = ["MLPTrainer"]


class MLPTrainer:
    """Trains a one-hidden-layer MLP with ``local_steps`` minibatch SGD steps per round.

    ``hidden`` is the width of the hidden layer, ``init_seed`` seeds round 0's model (see
    :meth:`initial_weights`). Batches are drawn with the site context's generator.
    """

    def __init__(
        self,
        *,
        hidden: int = 16,
        learning_rate: float = 0.5,
        local_steps: int = 20,
        batch_size: int = 32,
        init_seed: int = 0,
        num_sites: int = 3,
        site_index: int | None = None,
        site_names: Sequence[str] | None = None,
        split: SplitMode = "iid",
        seed: int = 0,
        alpha: float = 0.5,
        data_key: str | None = None,
        validation_fraction: float = 0.2,
    ) -> None:
        if hidden < 1 or local_steps < 1 or batch_size < 1:
            raise ValueError("hidden, local_steps and batch_size must be >= 1")
        if not learning_rate > 0:
            raise ValueError(f"learning_rate must be > 0, got {learning_rate!r}")
        self.hidden = int(hidden)
        self.learning_rate = float(learning_rate)
        self.local_steps = int(local_steps)
        self.batch_size = int(batch_size)
        self.init_seed = int(init_seed)
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

    def _network(self) -> nn.Sequential:
        layers = import_torch().nn
        network: nn.Sequential = layers.Sequential(
            layers.Linear(NUM_FEATURES, self.hidden), layers.ReLU(), layers.Linear(self.hidden, 1)
        )
        return network

    def _site_data(self, context: SiteContext) -> SiteData:
        data = self._cache.get(context.site)
        if data is None:
            data = self._cache[context.site] = self.data.load(context)
        return data

    def initial_weights(self) -> Weights:
        """PyTorch's default initialisation (uniform in +-1/sqrt(fan_in)), drawn from ``init_seed``.

        Drawn with numpy so that building it touches no global random state.
        """
        rng = np.random.default_rng(self.init_seed)
        weights: Weights = {}
        for layer, (fan_in, fan_out) in ((0, (NUM_FEATURES, self.hidden)), (2, (self.hidden, 1))):
            bound = 1.0 / math.sqrt(fan_in)
            weights[f"{layer}.weight"] = rng.uniform(-bound, bound, (fan_out, fan_in)).astype(
                np.float32
            )
            weights[f"{layer}.bias"] = rng.uniform(-bound, bound, fan_out).astype(np.float32)
        return weights

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        torch = import_torch()
        data = self._site_data(context)
        lr = float(task.params.get("learning_rate", self.learning_rate))
        steps = local_steps(
            task.params,
            default=self.local_steps,
            num_samples=len(data.y_train),
            batch_size=self.batch_size,
        )
        mu = float(task.params.get("fedprox_mu", 0.0))

        network = self._network()
        weights_to_module(network, task.weights)
        prox = FedProxTerm(task.weights, mu) if mu > 0 else None
        c = task.extras.get("scaffold_c")
        scaffold = (
            ScaffoldCorrection(c, load_control_variate(context.scratch, c, round=task.round))
            if c is not None
            else None
        )
        optimizer = torch.optim.SGD(network.parameters(), lr=lr)
        x = torch.from_numpy(data.x_train.astype(np.float32))
        y = torch.from_numpy(data.y_train.astype(np.float32)).unsqueeze(1)
        loss_function = torch.nn.BCEWithLogitsLoss()
        n = len(data.y_train)
        for _ in range(steps):
            context.raise_if_aborted()
            chosen = torch.from_numpy(
                context.rng.choice(n, size=min(self.batch_size, n), replace=False)
            )
            optimizer.zero_grad()
            loss = loss_function(network(x[chosen]), y[chosen])
            if prox is not None:
                loss = loss + prox(network)
            torch.autograd.backward(loss)
            if scaffold is not None:
                scaffold.correct(network)
            optimizer.step()

        extras: dict[str, Weights] = {}
        if scaffold is not None:
            extras["scaffold_delta"] = scaffold.finish(
                task.weights, network, steps=steps, learning_rate=lr
            )
            assert scaffold.c_local_new is not None
            save_control_variate(context.scratch, scaffold.c_local_new, round=task.round)
        with torch.no_grad():
            train_loss = float(loss_function(network(x), y))
        trained = state_dict_to_weights(network)
        return TrainResult(
            # In the server's dtypes: the network computes in float32 whatever it was sent.
            weights={name: a.astype(task.weights[name].dtype) for name, a in trained.items()},
            num_samples=n,
            metrics={"loss": train_loss},
            extras=extras,
        )

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        torch = import_torch()
        x, y = self._site_data(context).evaluation_set()
        network = self._network()
        weights_to_module(network, weights)
        with torch.no_grad():
            logits: Any = network(torch.from_numpy(x.astype(np.float32))).squeeze(1).numpy()
        return EvalResult(metrics=binary_metrics(y, logits), num_samples=len(y))
