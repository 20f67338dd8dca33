"""Trainers for the node tests. Sites import them by name (``tests.nodes._trainers:...``), as they
would a study's own trainer."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence

from flrt.examples.noise import NoiseTrainer
from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext


def _never() -> bool:
    return False


class SiteBehaviour(NoiseTrainer):
    """The noise trainer, with chosen sites slow or failing.

    ``slow_sites`` sleep ``sleep_seconds`` in ``train``, polling the abort check unless
    ``ignore_abort`` (then they finish and their result is withheld); ``failing_sites`` raise
    :class:`RuntimeError` in ``train``, ``failing_evaluation_sites`` in ``evaluate``;
    ``delay_seconds`` slows every site a little so that a test can act while a round is running.
    """

    def __init__(
        self,
        *,
        slow_sites: Sequence[str] = (),
        failing_sites: Sequence[str] = (),
        failing_evaluation_sites: Sequence[str] = (),
        ignore_abort: bool = False,
        delay_seconds: float = 0.0,
        **noise: float,
    ) -> None:
        sleep = float(noise.pop("sleep_seconds", 0.0))
        super().__init__(**noise)  # type: ignore[arg-type]
        self.slow_sites = frozenset(slow_sites)
        self.failing_sites = frozenset(failing_sites)
        self.failing_evaluation_sites = frozenset(failing_evaluation_sites)
        self.ignore_abort = ignore_abort
        self.delay_seconds = delay_seconds
        self.slow_seconds = sleep

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        if context.site in self.failing_sites:
            raise RuntimeError(f"the data of {context.site} cannot be read")
        pause = self.delay_seconds
        if context.site in self.slow_sites:
            pause += self.slow_seconds
        if self.ignore_abort:
            time.sleep(pause)
            context = dataclasses.replace(context, abort=_never)
        else:
            deadline = time.monotonic() + pause
            while time.monotonic() < deadline:
                context.raise_if_aborted()
                time.sleep(min(0.02, max(0.0, deadline - time.monotonic())))
        return super().train(task, context)

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        if context.site in self.failing_evaluation_sites:
            raise RuntimeError(f"{context.site} cannot evaluate: its labels are missing")
        return super().evaluate(weights, context)


class NoInitialWeights:
    """A trainer the server cannot start a job from: it has no ``initial_weights()``."""

    def __init__(self, **args: object) -> None:
        self.args = args

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        return TrainResult(weights=dict(task.weights), num_samples=1)

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        return EvalResult(metrics={}, num_samples=1)
