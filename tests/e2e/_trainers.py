"""Trainers for the end-to-end tests, imported by name by the server and site processes."""

from __future__ import annotations

import time
from typing import Any

from flrt.examples.logreg import LogisticRegressionTrainer
from flrt.tasks import TrainResult, TrainTask
from flrt.trainer import SiteContext


class SlowLogisticRegression(LogisticRegressionTrainer):
    """The logistic-regression example, ``delay_seconds`` slower per round (so that a test can
    kill the server while a job is running)."""

    def __init__(self, *, delay_seconds: float = 0.0, **args: Any) -> None:
        super().__init__(**args)
        self.delay_seconds = delay_seconds

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        deadline = time.monotonic() + self.delay_seconds
        while time.monotonic() < deadline:
            context.raise_if_aborted()
            time.sleep(0.01)
        return super().train(task, context)
