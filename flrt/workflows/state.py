"""A workflow's state between rounds, and its conversion to and from a checkpoint.

Everything a workflow needs to continue after a restart is here: the round reached, the global
model, the optimizer moments and control variates (named array groups), the seed (sampling is
derived from the seed and the round, so no generator state needs saving), each site's reliability
history, a summary of every round, and cross-site results. It converts to a
:class:`~flrt.checkpoint.Checkpoint` of plain msgpack data plus arrays; the round summaries go in
its journal (each save appends only the new round's, see :mod:`flrt.checkpoint`), the rest in its
state.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, overload

from flrt.checkpoint import Checkpoint
from flrt.tasks import EvalResult, Metrics, Weights

from .sampling import SiteHistory

__all__ = ["CrossSiteResults", "RoundSummary", "WorkflowState"]


@dataclass(frozen=True, slots=True)
class RoundSummary:
    """What happened in one training round."""

    round: int
    started_at: float
    closed_at: float
    accepted: tuple[str, ...]
    cancelled: tuple[str, ...] = ()
    failed: tuple[str, ...] = ()
    discarded: int = 0
    num_samples: int = 0
    train_metrics: Metrics = field(default_factory=dict)
    eval_metrics: Metrics = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "started_at": self.started_at,
            "closed_at": self.closed_at,
            "accepted": list(self.accepted),
            "cancelled": list(self.cancelled),
            "failed": list(self.failed),
            "discarded": self.discarded,
            "num_samples": self.num_samples,
            "train_metrics": dict(self.train_metrics),
            "eval_metrics": dict(self.eval_metrics),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RoundSummary:
        return cls(
            round=int(data["round"]),
            started_at=float(data["started_at"]),
            closed_at=float(data["closed_at"]),
            accepted=tuple(data["accepted"]),
            cancelled=tuple(data["cancelled"]),
            failed=tuple(data["failed"]),
            discarded=int(data["discarded"]),
            num_samples=int(data["num_samples"]),
            train_metrics={k: float(v) for k, v in data["train_metrics"].items()},
            eval_metrics={k: float(v) for k, v in data["eval_metrics"].items()},
        )


@dataclass(frozen=True, slots=True)
class CrossSiteResults:
    """Every site's evaluation of every model: ``results[(evaluator, model)]``.

    ``models`` are the columns (``"global"`` and site names), ``evaluators`` the rows; a cell with
    no result has its reason in ``missing``.
    """

    round: int
    models: tuple[str, ...]
    evaluators: tuple[str, ...]
    results: Mapping[tuple[str, str], EvalResult]
    missing: Mapping[tuple[str, str], str] = field(default_factory=dict)

    def matrix(self, metric: str) -> list[list[float | None]]:
        """One metric as rows (evaluators) by columns (models); ``None`` where there is no value."""
        rows: list[list[float | None]] = []
        for evaluator in self.evaluators:
            row: list[float | None] = []
            for model in self.models:
                result = self.results.get((evaluator, model))
                row.append(None if result is None else result.metrics.get(metric))
            rows.append(row)
        return rows

    def to_dict(self) -> dict[str, Any]:
        return {
            "round": self.round,
            "models": list(self.models),
            "evaluators": list(self.evaluators),
            "results": [
                [e, m, dict(r.metrics), r.num_samples] for (e, m), r in sorted(self.results.items())
            ],
            "missing": [[e, m, why] for (e, m), why in sorted(self.missing.items())],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CrossSiteResults:
        return cls(
            round=int(data["round"]),
            models=tuple(data["models"]),
            evaluators=tuple(data["evaluators"]),
            results={
                (e, m): EvalResult({k: float(v) for k, v in metrics.items()}, int(n))
                for e, m, metrics, n in data["results"]
            },
            missing={(e, m): str(why) for e, m, why in data["missing"]},
        )


class _RoundRecords(Sequence[Mapping[str, Any]]):
    """Round summaries as a checkpoint's journal records, each converted when it is read: a
    checkpoint writer reads only the rounds it has not saved yet, and the last one it has."""

    __slots__ = ("_rounds",)

    def __init__(self, rounds: tuple[RoundSummary, ...]) -> None:
        self._rounds = rounds

    def __len__(self) -> int:
        return len(self._rounds)

    @overload
    def __getitem__(self, index: int) -> Mapping[str, Any]: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Mapping[str, Any]]: ...
    def __getitem__(self, index: int | slice) -> Mapping[str, Any] | Sequence[Mapping[str, Any]]:
        if isinstance(index, slice):
            return [r.to_dict() for r in self._rounds[index]]
        return self._rounds[index].to_dict()


@dataclass(frozen=True, slots=True)
class WorkflowState:
    """A workflow's state after ``round`` completed rounds (0: before the first).

    ``population`` is the number of sites taking part (SCAFFOLD's ``N``); ``arrays`` holds named
    groups such as ``"fedopt.m"``, ``"fedopt.v"`` and ``"scaffold.c"``.
    """

    job_id: str
    workflow: str
    seed: int
    round: int
    weights: Weights
    arrays: Mapping[str, Weights] = field(default_factory=dict)
    history: Mapping[str, SiteHistory] = field(default_factory=dict)
    rounds: tuple[RoundSummary, ...] = ()
    population: int = 0
    cross_site: CrossSiteResults | None = None
    finished: bool = False

    def to_checkpoint(self, job: Mapping[str, Any] | None = None) -> Checkpoint:
        """This state as a checkpoint (``job`` is the job record, if the caller keeps one)."""
        return Checkpoint(
            job_id=self.job_id,
            round=self.round,
            weights=self.weights,
            arrays=self.arrays,
            job=job,
            journal=_RoundRecords(self.rounds),
            state={
                "workflow": self.workflow,
                "seed": self.seed,
                "history": {site: h.to_dict() for site, h in sorted(self.history.items())},
                "population": self.population,
                "cross_site": None if self.cross_site is None else self.cross_site.to_dict(),
                "finished": self.finished,
            },
        )

    @classmethod
    def from_checkpoint(cls, checkpoint: Checkpoint) -> WorkflowState:
        """The state saved in ``checkpoint``. Raises :class:`KeyError`, :class:`TypeError` or
        :class:`ValueError` for a checkpoint whose state is not a workflow's."""
        state = checkpoint.state
        cross = state["cross_site"]
        # A checkpoint written before the journal (format 1) has the summaries in its state.
        summaries = state.get("rounds", checkpoint.journal)
        return cls(
            job_id=checkpoint.job_id,
            workflow=str(state["workflow"]),
            seed=int(state["seed"]),
            round=checkpoint.round,
            weights=dict(checkpoint.weights),
            arrays={k: dict(v) for k, v in checkpoint.arrays.items()},
            history={s: SiteHistory.from_dict(h) for s, h in state["history"].items()},
            rounds=tuple(RoundSummary.from_dict(r) for r in summaries),
            population=int(state["population"]),
            cross_site=None if cross is None else CrossSiteResults.from_dict(cross),
            finished=bool(state["finished"]),
        )
