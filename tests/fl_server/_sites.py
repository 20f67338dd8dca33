"""Deterministic in-process sites for workflow tests: linear regression with FedProx and SCAFFOLD
support, and offset sites whose FedAvg result can be computed by hand."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from flrt.filters import Task
from flrt.job import JobSpec, loads_job
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask, UpdateKind, Weights
from flrt.workflows import LocalSite

F64 = npt.NDArray[np.float64]
TRUE_W = np.array([1.5, -2.0, 0.5])
TRUE_B = 0.25


def initial_model() -> Weights:
    return {
        "w": np.zeros(3, dtype=np.float32),
        "b": np.zeros((), dtype=np.float32),
        "steps": np.zeros(1, dtype=np.int64),
    }


@dataclass
class LinearSite:
    """Least squares on this site's data, with a few gradient steps per task."""

    name: str
    samples: int
    lr: float = 0.1
    steps: int = 5
    seen: list[Task] = field(default_factory=list)
    control: dict[str, F64] | None = None
    diff: bool = False

    def __post_init__(self) -> None:
        rng = np.random.default_rng([self.samples, *map(ord, self.name)])
        self.x = rng.normal(size=(self.samples, 3)) + rng.normal(size=3)  # non-iid shift
        self.y = self.x @ TRUE_W + TRUE_B + 0.01 * rng.normal(size=self.samples)

    def _mse(self, w: F64, b: float) -> float:
        return float(np.mean((self.x @ w + b - self.y) ** 2))

    def train(self, task: TrainTask) -> TrainResult:
        self.seen.append(task)
        w0 = task.weights["w"].astype(np.float64)
        b0 = float(task.weights["b"])
        w, b = w0.copy(), b0
        mu = float(task.params.get("fedprox_mu", 0.0))
        steps = int(task.params.get("local_epochs", self.steps))
        c = task.extras.get("scaffold_c")
        if c is not None and self.control is None:
            self.control = {"w": np.zeros(3), "b": np.zeros(())}
        for _ in range(steps):
            err = self.x @ w + b - self.y
            gw = self.x.T @ err / self.samples + mu * (w - w0)
            gb = float(err.mean()) + mu * (b - b0)
            if c is not None and self.control is not None:
                gw = gw + c["w"] - self.control["w"]
                gb = gb + float(c["b"]) - float(self.control["b"])
            w = w - self.lr * gw
            b = b - self.lr * gb
        extras: dict[str, Weights] = {}
        if c is not None and self.control is not None:
            new = {
                "w": self.control["w"] - c["w"] + (w0 - w) / (steps * self.lr),
                "b": self.control["b"] - c["b"] + (b0 - b) / (steps * self.lr),
            }
            extras["scaffold_delta"] = {k: np.asarray(new[k] - self.control[k]) for k in new}
            self.control = new
        weights: Weights = {
            "w": w.astype(np.float32),
            "b": np.asarray(b, dtype=np.float32),
            "steps": task.weights["steps"] + steps,
        }
        kind = UpdateKind.FULL
        if self.diff:
            weights = {
                k: np.asarray(v.astype(np.float64) - task.weights[k]) for k, v in weights.items()
            }
            kind = UpdateKind.DIFF
        return TrainResult(
            weights=weights,
            num_samples=self.samples,
            kind=kind,
            metrics={"loss": self._mse(w, b)},
            extras=extras,
        )

    def evaluate(self, task: EvalTask) -> EvalResult:
        self.seen.append(task)
        w = task.weights["w"].astype(np.float64)
        return EvalResult(
            metrics={"mse": self._mse(w, float(task.weights["b"]))}, num_samples=self.samples
        )

    def local_site(
        self,
        *,
        delay: float | Callable[[Task], float] = 1.0,
        fail: Callable[[Task], str | None] | None = None,
    ) -> LocalSite:
        site = LocalSite(train=self.train, evaluate=self.evaluate, delay=delay)
        if fail is not None:
            site.fail = fail
        return site


def job(workflow: str = "fedavg", params: str = "", **fields: Any) -> JobSpec:
    """A job.toml for the tests, with [workflow] fields overridden by keyword arguments."""
    wf: dict[str, Any] = {"name": workflow, "rounds": 3, "min_sites": 2, "grace_seconds": 2.0}
    wf.update(fields)
    if workflow == "cross_site_eval":
        wf.pop("rounds", None)
    lines = [f"{k} = {_toml(v)}" for k, v in wf.items() if v is not None]
    text = "\n".join(
        [
            'name = "test"',
            "[workflow]",
            *lines,
            "[workflow.params]",
            params,
            "[trainer]",
            'spec = "tests.fl_server._sites:LinearSite"',
        ]
    )
    return loads_job(text)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return repr(value)
