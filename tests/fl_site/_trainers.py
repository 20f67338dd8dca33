"""Trainers for the loader tests, importable as ``tests.fl_site._trainers:...``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

NOT_A_TRAINER = 42


class Good:
    """Adds ``step`` to every weight; evaluates to the mean weight."""

    def __init__(self, step: float = 1.0) -> None:
        self.step = step

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        weights = {name: array + self.step for name, array in task.weights.items()}
        return TrainResult(weights=weights, num_samples=3, metrics={"loss": np.float32(0.5)})  # type: ignore[dict-item]

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        mean = float(np.mean([a.mean() for a in weights.values()]))
        return EvalResult(metrics={"mean": mean}, num_samples=np.int64(4))  # type: ignore[arg-type]

    def initial_weights(self) -> Weights:
        return {"w": np.zeros(2, np.float32)}


class Needs:
    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        raise NotImplementedError

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        raise NotImplementedError


class Returns:
    """Returns whatever it is told to, to test the checks."""

    def __init__(self, train: Callable[[TrainTask], Any], evaluate: Any = None) -> None:
        self._train = train
        self._evaluate = evaluate

    def train(self, task: TrainTask, context: SiteContext) -> Any:
        return self._train(task)

    def evaluate(self, weights: Weights, context: SiteContext) -> Any:
        return self._evaluate

    def initial_weights(self) -> Any:
        return [1, 2]


def make_good(step: float = 2.0) -> Good:
    return Good(step)


def make_nothing() -> object:
    return object()


INSTANCE = Good(0.5)


class Namespace:
    Inner = Good
