"""The vocabulary shared by the server's workflows and the sites' trainers.

A *task* goes from the server to a site (train this model for round r, evaluate this model); a
*result* comes back. Models and updates are plain ``dict[str, numpy.ndarray]``: nothing is pickled,
and the bus streams each array as raw bytes.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt

__all__ = [
    "EvalResult",
    "EvalTask",
    "Metrics",
    "TaskKind",
    "TrainResult",
    "TrainTask",
    "UpdateKind",
    "Weights",
]

#: A model, an update or a control variate: named arrays.
Weights: TypeAlias = dict[str, npt.NDArray[Any]]

#: Scalar metrics a trainer reports (loss, accuracy, AUC...).
Metrics: TypeAlias = dict[str, float]


class TaskKind(enum.Enum):
    TRAIN = "train"
    EVALUATE = "evaluate"


class UpdateKind(enum.Enum):
    """What a train result's weights are: the full new model, or the difference to the global one."""

    FULL = "full"
    DIFF = "diff"


@dataclass(frozen=True, slots=True)
class TrainTask:
    """Train the global model for one round.

    ``params`` are the workflow's per-round parameters (learning rate, local epochs, the FedProx mu,
    the SCAFFOLD server control variate is carried in ``extras``).
    """

    job_id: str
    round: int
    weights: Weights
    params: Mapping[str, Any] = field(default_factory=dict)
    extras: Mapping[str, Weights] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class TrainResult:
    """A site's answer to a :class:`TrainTask`.

    ``num_samples`` weighs the update in FedAvg; ``extras`` carries algorithm side-channels such as
    the SCAFFOLD control-variate delta.
    """

    weights: Weights
    num_samples: int
    kind: UpdateKind = UpdateKind.FULL
    metrics: Metrics = field(default_factory=dict)
    extras: Mapping[str, Weights] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.num_samples < 0:
            raise ValueError(f"num_samples must be >= 0, got {self.num_samples}")
        for name, array in self.weights.items():
            if not isinstance(array, np.ndarray):
                raise TypeError(f"weight {name!r} is {type(array).__name__}, not numpy.ndarray")


@dataclass(frozen=True, slots=True)
class EvalTask:
    """Evaluate one model on the site's local data (a trainer's ``evaluate(task.weights, ...)``).

    ``model`` says whose model it is: ``"global"`` for the server's, or a site's name in cross-site
    evaluation. ``round`` is the round the task belongs to; a result is matched to its task by round
    and model.
    """

    job_id: str
    round: int
    weights: Weights
    model: str = "global"
    params: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EvalResult:
    """A site's evaluation of one model on its local data."""

    metrics: Metrics
    num_samples: int
