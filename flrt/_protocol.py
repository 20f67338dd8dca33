"""How tasks, results and control messages travel between the server and the sites over the bus.

Theory of operation
-------------------
Every message is a msgpack map (the bus encodes it) plus, when arrays travel, a bus object of named
numpy arrays streamed as raw bytes. Nothing is pickled; every field read from a peer is checked here
and a bad one is a :class:`~flrt.errors.NodeProtocolError`, never a crash further in.

Actors:

- ``<site>/site`` (server to site, ``tell``): ``task`` (a :class:`TaskMessage`), ``cancel`` (stop
  task ``tid``), ``abort`` (stop every task of a job and forget it), ``end`` (the job is over).
- ``<server>/results`` (site to server, ``tell``): ``result`` (a :class:`ResultMessage`), ``failed``
  (the site could not run the task, with the reason), ``withheld`` (a cancelled task's trainer
  finished anyway; the site kept the result, as the server no longer wants it).
- ``<server>/admin`` (admin to server, ``ask``) and ``<admin>/events`` (server to admin, ``tell``):
  see :mod:`flrt.admin`.

Arrays of a task or result share one object: the model's variables are named ``w/<name>`` and
array groups (SCAFFOLD's control variates) ``x/<group>/<name>``. The prefixes are added to the dict
of the server's arrays once per scatter, so a broadcast to many sites shares the same arrays.

Task ids (``tid``) are unique per server process (a random prefix, then a counter), so a result
that a site computed for a server that has since restarted is recognised as unknown, not matched to
a new task that happens to have the same number.
"""

from __future__ import annotations

import math
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy.typing as npt

from flrt.errors import NodeProtocolError
from flrt.tasks import EvalResult, EvalTask, Metrics, TrainResult, TrainTask, UpdateKind, Weights

__all__ = [
    "ADMIN_ACTOR",
    "EVENTS_ACTOR",
    "PROTOCOL_VERSION",
    "RESULTS_ACTOR",
    "SITE_ACTOR",
    "ResultMessage",
    "TaskIds",
    "TaskMessage",
    "join_arrays",
    "parse_failure",
    "split_arrays",
]

#: The version of these messages; a peer of another version is refused per message.
PROTOCOL_VERSION = 1

SITE_ACTOR = "site"
RESULTS_ACTOR = "results"
ADMIN_ACTOR = "admin"
EVENTS_ACTOR = "events"

_WEIGHTS = "w/"
_EXTRAS = "x/"

Arrays = Mapping[str, npt.NDArray[Any]]


class TaskIds:
    """Task ids unique to this process: ``<random>-<n>``."""

    def __init__(self) -> None:
        self._prefix = secrets.token_hex(4)
        self._next = 0

    def __call__(self) -> str:
        self._next += 1
        return f"{self._prefix}-{self._next}"


def join_arrays(weights: Arrays, extras: Mapping[str, Arrays]) -> dict[str, npt.NDArray[Any]]:
    """One dict of arrays for the wire (no array is copied)."""
    out: dict[str, npt.NDArray[Any]] = {_WEIGHTS + name: array for name, array in weights.items()}
    for group, arrays in extras.items():
        if not group or "/" in group:
            raise ValueError(f"array group names must be non-empty and free of '/': {group!r}")
        for name, array in arrays.items():
            out[f"{_EXTRAS}{group}/{name}"] = array
    return out


def split_wire_name(name: str) -> tuple[str | None, str]:
    """``("", variable)`` for a weight, ``(group, variable)`` for an extra; ``(None, name)`` if the
    name is neither."""
    if name.startswith(_WEIGHTS):
        return "", name[len(_WEIGHTS) :]
    if name.startswith(_EXTRAS):
        group, sep, variable = name[len(_EXTRAS) :].partition("/")
        if sep and group:
            return group, variable
    return None, name


def split_arrays(arrays: Arrays, *, peer: str | None = None) -> tuple[Weights, dict[str, Weights]]:
    """Undo :func:`join_arrays`. Raises :class:`NodeProtocolError` for a name of neither kind."""
    weights: Weights = {}
    extras: dict[str, Weights] = {}
    for name, array in arrays.items():
        group, variable = split_wire_name(name)
        if group is None:
            raise NodeProtocolError(f"array {name!r} is neither w/ nor x/<group>/", peer=peer)
        if group == "":
            weights[variable] = array
        else:
            extras.setdefault(group, {})[variable] = array
    return weights, extras


# ------------------------------------------------------------------------------- checking


def _field(
    body: Mapping[str, Any], key: str, kind: type | tuple[type, ...], peer: str | None
) -> Any:
    value = body.get(key)
    if not isinstance(value, kind) or (isinstance(value, bool) and kind is int):
        raise NodeProtocolError(f"field {key!r} is missing or of the wrong type", peer=peer)
    return value


def _optional_str(body: Mapping[str, Any], key: str, peer: str | None) -> str | None:
    value = body.get(key)
    if value is not None and not isinstance(value, str):
        raise NodeProtocolError(f"field {key!r} must be a string or nil", peer=peer)
    return value


def _metrics(raw: Any, peer: str | None) -> Metrics:
    if not isinstance(raw, dict):
        raise NodeProtocolError("metrics must be a map", peer=peer)
    metrics: Metrics = {}
    for key, value in raw.items():
        if (
            not isinstance(key, str)
            or isinstance(value, bool)
            or not isinstance(value, int | float)
            or not math.isfinite(value)
        ):
            raise NodeProtocolError(f"metric {key!r} is not a finite number", peer=peer)
        metrics[key] = float(value)
    return metrics


def check_version(body: Any, peer: str | None) -> Mapping[str, Any]:
    """``body`` as a map of this protocol's version; raises :class:`NodeProtocolError`."""
    if not isinstance(body, dict):
        raise NodeProtocolError("message body is not a map", peer=peer)
    version = body.get("v")
    if version != PROTOCOL_VERSION:
        raise NodeProtocolError(
            f"protocol version {version!r}, this node speaks {PROTOCOL_VERSION}", peer=peer
        )
    return body


# ------------------------------------------------------------------------------- tasks


@dataclass(frozen=True, slots=True)
class TaskMessage:
    """A task as it travels to a site, without its arrays.

    ``trainer`` and ``filters`` repeat the job's ``[trainer]`` and ``[[filters]]`` in every task, so a
    site needs no other message to run it (it loads the trainer once per job and keeps it).
    """

    tid: str
    job_id: str
    kind: Literal["train", "evaluate"]
    round: int
    model: str | None
    seed: int
    trainer_spec: str
    trainer_args: Mapping[str, Any]
    filters: tuple[Mapping[str, Any], ...] = ()
    params: Mapping[str, Any] = field(default_factory=dict)

    def to_body(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "op": "task",
            "tid": self.tid,
            "job": self.job_id,
            "task": self.kind,
            "round": self.round,
            "model": self.model,
            "seed": self.seed,
            "trainer": {"spec": self.trainer_spec, "args": dict(self.trainer_args)},
            "filters": [dict(f) for f in self.filters],
            "params": dict(self.params),
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], peer: str | None = None) -> TaskMessage:
        """Raises :class:`NodeProtocolError` for a malformed task."""
        kind = body.get("task")
        if kind not in ("train", "evaluate"):
            raise NodeProtocolError(f"unknown task kind {kind!r}", peer=peer)
        trainer = _field(body, "trainer", dict, peer)
        filters = _field(body, "filters", list, peer)
        if not all(isinstance(f, dict) for f in filters):
            raise NodeProtocolError("filters must be maps", peer=peer)
        args = trainer.get("args")
        if not isinstance(args, dict):
            raise NodeProtocolError("trainer args must be a map", peer=peer)
        return cls(
            tid=_field(body, "tid", str, peer),
            job_id=_field(body, "job", str, peer),
            kind=kind,
            round=_field(body, "round", int, peer),
            model=_optional_str(body, "model", peer),
            seed=_field(body, "seed", int, peer),
            trainer_spec=_field(trainer, "spec", str, peer),
            trainer_args=args,
            filters=tuple(filters),
            params=_field(body, "params", dict, peer),
        )

    def task(self, arrays: Arrays, peer: str | None = None) -> TrainTask | EvalTask:
        """The :class:`TrainTask` or :class:`EvalTask` with its arrays."""
        weights, extras = split_arrays(arrays, peer=peer)
        if self.kind == "train":
            return TrainTask(
                job_id=self.job_id,
                round=self.round,
                weights=weights,
                params=dict(self.params),
                extras=extras,
            )
        return EvalTask(
            job_id=self.job_id,
            round=self.round,
            weights=weights,
            model=self.model or "global",
            params=dict(self.params),
        )


# ------------------------------------------------------------------------------- results


@dataclass(frozen=True, slots=True)
class ResultMessage:
    """A result as it travels to the server, without its arrays (``extras`` names the groups)."""

    tid: str
    job_id: str
    kind: Literal["train", "evaluate"]
    round: int
    model: str | None
    num_samples: int
    metrics: Metrics
    update: UpdateKind = UpdateKind.FULL

    @classmethod
    def of(
        cls, tid: str, task: TaskMessage, result: TrainResult | EvalResult
    ) -> tuple[ResultMessage, dict[str, npt.NDArray[Any]] | None]:
        """The message and the arrays for ``result`` of ``task``."""
        message = cls(
            tid=tid,
            job_id=task.job_id,
            kind=task.kind,
            round=task.round,
            model=task.model,
            num_samples=result.num_samples,
            metrics=dict(result.metrics),
            update=result.kind if isinstance(result, TrainResult) else UpdateKind.FULL,
        )
        if isinstance(result, TrainResult):
            return message, join_arrays(result.weights, result.extras)
        return message, None

    def to_body(self) -> dict[str, Any]:
        return {
            "v": PROTOCOL_VERSION,
            "op": "result",
            "tid": self.tid,
            "job": self.job_id,
            "task": self.kind,
            "round": self.round,
            "model": self.model,
            "num_samples": self.num_samples,
            "metrics": dict(self.metrics),
            "update": self.update.value,
        }

    @classmethod
    def from_body(cls, body: Mapping[str, Any], peer: str | None = None) -> ResultMessage:
        """Raises :class:`NodeProtocolError` for a malformed result."""
        kind = body.get("task")
        if kind not in ("train", "evaluate"):
            raise NodeProtocolError(f"unknown task kind {kind!r}", peer=peer)
        num_samples = _field(body, "num_samples", int, peer)
        if num_samples < 0:
            raise NodeProtocolError("num_samples must be >= 0", peer=peer)
        try:
            update = UpdateKind(body.get("update"))
        except ValueError:
            raise NodeProtocolError(
                f"unknown update kind {body.get('update')!r}", peer=peer
            ) from None
        return cls(
            tid=_field(body, "tid", str, peer),
            job_id=_field(body, "job", str, peer),
            kind=kind,
            round=_field(body, "round", int, peer),
            model=_optional_str(body, "model", peer),
            num_samples=num_samples,
            metrics=_metrics(body.get("metrics"), peer),
            update=update,
        )

    def eval_result(self) -> EvalResult:
        return EvalResult(metrics=dict(self.metrics), num_samples=self.num_samples)

    def train_result(self, weights: Weights, extras: Mapping[str, Weights]) -> TrainResult:
        return TrainResult(
            weights=weights,
            num_samples=self.num_samples,
            kind=self.update,
            metrics=dict(self.metrics),
            extras=dict(extras),
        )


def failure_body(
    op: Literal["failed", "withheld"], tid: str, task: TaskMessage | None, reason: str
) -> dict[str, Any]:
    """A ``failed`` or ``withheld`` message for task ``tid``."""
    return {
        "v": PROTOCOL_VERSION,
        "op": op,
        "tid": tid,
        "job": None if task is None else task.job_id,
        "round": None if task is None else task.round,
        "model": None if task is None else task.model,
        "reason": reason[:2000],
    }


def parse_failure(body: Mapping[str, Any], peer: str | None = None) -> tuple[str, str]:
    """``(tid, reason)`` of a ``failed`` or ``withheld`` message."""
    reason = body.get("reason")
    return _field(body, "tid", str, peer), reason if isinstance(reason, str) else "no reason given"
