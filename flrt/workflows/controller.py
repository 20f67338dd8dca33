"""The controller API: the small surface a workflow runs on.

Theory of operation
-------------------
A workflow is an async function over a :class:`Controller`. It never touches the network, the clock
or the disk itself; it:

- asks :meth:`Controller.available_sites` who can take part, and reads
  :meth:`Controller.site_history`;
- sends one task to a set of sites with :meth:`Controller.scatter`, and inside that scatter
  receives :data:`Reply`\\ s as they come (:meth:`Scatter.receive` with a deadline on the
  controller's clock, or ``async for``), asks more sites (:meth:`Scatter.ask`), and cancels the
  stragglers (:meth:`Scatter.cancel`); leaving the ``async with`` cancels whatever is still out;
- reads time with :meth:`Controller.now` and waits with :meth:`Controller.sleep_until`, so a test
  controller can run on a virtual clock;
- saves its state after each round with :meth:`Controller.save_checkpoint`;
- reports what happened with :meth:`Controller.report` (:data:`WorkflowEvent`: rounds, discarded
  updates, metrics, cross-site results), which the controller logs, records as metrics, and uses to
  keep each site's reliability history.

What a controller must guarantee
--------------------------------
- :meth:`Scatter.receive` returns ``None`` once the controller's clock has reached ``deadline``
  with nothing to deliver; with ``deadline=None`` it waits until something arrives. A controller
  that can prove nothing will ever arrive may raise
  :class:`~flrt.errors.WorkflowStalledError`.
- A :class:`ResultArrived` carries the ``round`` and ``model`` of the task it answers (the
  controller matches replies to tasks), so a late result of an earlier task is recognised as such
  even when it is delivered into a later scatter.
- A site that disconnects or whose task fails while it is outstanding yields one
  :class:`SiteFailed`; a site that (re)connects yields :class:`SiteJoined` in every open scatter.
  A connection that drops while the site's session may still resume (the bus reconnects and
  delivers what was in flight) yields a :class:`SiteFailed` with ``resumable=True``, and the task
  stays outstanding: its answer may still come, and if the session ends for good, a second
  :class:`SiteFailed` (not resumable) follows.
- **Streaming.** When a scatter is given a ``sink`` (an :class:`UpdateSink`, in practice the
  round's aggregator), the controller may stream a train result's arrays into it as they arrive
  (:meth:`UpdateSink.open`, then :meth:`UpdateSink.accept` per piece), but only for replies to the
  scatter's own task, and at most once per site unless the site was asked again after failing. Once the update is complete and its digest verified, it delivers
  :class:`ResultArrived` with ``staged=True`` (and the result's ``weights`` empty); the workflow then
  commits or discards it. If the transfer breaks or fails verification, the controller calls
  :meth:`UpdateSink.discard` and delivers :class:`SiteFailed`. It never calls the sink after the
  scatter has exited.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Protocol, TypeAlias

import numpy.typing as npt

from flrt.aggregation import ArraySpec
from flrt.filters import Task
from flrt.job import JobSpec
from flrt.tasks import EvalResult, Metrics, TrainResult, UpdateKind, Weights

from .quorum import SiteOutcome
from .sampling import SiteHistory
from .state import CrossSiteResults, WorkflowState

__all__ = [
    "Controller",
    "CrossSiteEvaluated",
    "MetricsReported",
    "Reply",
    "ResultArrived",
    "RoundAborted",
    "RoundCompleted",
    "RoundStarted",
    "Scatter",
    "SiteFailed",
    "SiteJoined",
    "UpdateDiscarded",
    "UpdateSink",
    "Workflow",
    "WorkflowEvent",
    "event_fields",
    "task_model",
]


def task_model(task: Task) -> str | None:
    """The model a task is about: ``None`` for training, the model's owner for evaluation."""
    return getattr(task, "model", None)


# ------------------------------------------------------------------------------- replies


@dataclass(frozen=True, slots=True)
class ResultArrived:
    """A site's result for the task of round ``round`` (and ``model``, for evaluation).

    ``staged`` means the arrays were streamed into the scatter's sink and ``result.weights`` is
    empty.
    """

    site: str
    round: int
    result: TrainResult | EvalResult
    model: str | None = None
    staged: bool = False


@dataclass(frozen=True, slots=True)
class SiteFailed:
    """An outstanding site failed its task or disconnected. ``resumable``: only its connection
    dropped, and its session may resume (see the module docstring): its task may still be
    answered."""

    site: str
    reason: str
    resumable: bool = False


@dataclass(frozen=True, slots=True)
class SiteJoined:
    """A site connected (or reconnected) and can be asked."""

    site: str


Reply: TypeAlias = ResultArrived | SiteFailed | SiteJoined


# ------------------------------------------------------------------------------- events


@dataclass(frozen=True, slots=True)
class RoundStarted:
    round: int
    kind: str  # "train" or "evaluate"
    model: str | None
    asked: tuple[str, ...]
    at: float


@dataclass(frozen=True, slots=True)
class UpdateDiscarded:
    """A result that did not count: late, for another task, unasked, duplicate, or invalid."""

    round: int
    site: str
    reason: str


@dataclass(frozen=True, slots=True)
class RoundCompleted:
    round: int
    kind: str
    model: str | None
    accepted: tuple[str, ...]
    cancelled: tuple[str, ...]
    failed: Mapping[str, str]
    outcomes: Mapping[str, SiteOutcome]
    started_at: float
    closed_at: float


@dataclass(frozen=True, slots=True)
class RoundAborted:
    """A round failed (its quorum was unreachable or it timed out)."""

    round: int
    kind: str
    model: str | None
    reason: str
    outcomes: Mapping[str, SiteOutcome]
    at: float


@dataclass(frozen=True, slots=True)
class MetricsReported:
    """Metrics of round ``round``: one site's (``site``) or the sample-weighted mean (``site=None``)."""

    round: int
    kind: str
    site: str | None
    metrics: Metrics
    num_samples: int


@dataclass(frozen=True, slots=True)
class CrossSiteEvaluated:
    results: CrossSiteResults


WorkflowEvent: TypeAlias = (
    RoundStarted
    | UpdateDiscarded
    | RoundCompleted
    | RoundAborted
    | MetricsReported
    | CrossSiteEvaluated
)


def _plain(value: Any) -> Any:
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, CrossSiteResults):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, tuple | list):
        return [_plain(v) for v in value]
    return value


def event_fields(event: WorkflowEvent) -> tuple[str, dict[str, Any]]:
    """A log event name (``round_started``...) and the event's fields as plain data, for a
    controller's structured log or metrics store."""
    name = "".join(f"_{c.lower()}" if c.isupper() else c for c in type(event).__name__).lstrip("_")
    fields = {f.name: _plain(getattr(event, f.name)) for f in dataclasses.fields(event)}
    return name, fields


# ------------------------------------------------------------------------------- protocols


class UpdateSink(Protocol):
    """Where a controller streams the arrays of incoming updates (the round's aggregator)."""

    def open(
        self,
        site: str,
        *,
        num_samples: int,
        kind: UpdateKind = ...,
        layout: Mapping[str, ArraySpec],
    ) -> None: ...

    def accept(
        self, site: str, name: str, data: npt.NDArray[Any], *, offset: int = ...
    ) -> None: ...

    def discard(self, site: str) -> None: ...

    def staging(self, site: str) -> bool:
        """True while ``site``'s update holds memory here (received, not folded in or dropped)."""
        ...

    #: Called whenever a staged update stops holding memory.
    on_release: Callable[[], None] | None


class Scatter(Protocol):
    """One task sent to some sites; an async context manager (leaving it cancels the rest)."""

    @property
    def task(self) -> Task: ...

    async def ask(self, sites: Iterable[str]) -> None:
        """Send the task to more sites (or again to sites that failed)."""
        ...

    async def cancel(self, sites: Iterable[str]) -> None:
        """Tell these sites to stop; their results will not be delivered as this task's."""
        ...

    async def receive(self, deadline: float | None) -> Reply | None:
        """The next reply, or ``None`` once the controller's clock reaches ``deadline``."""
        ...

    def __aiter__(self) -> AsyncIterator[Reply]:
        """Replies until every site asked has answered, failed or been cancelled."""
        ...

    async def __aenter__(self) -> Scatter: ...

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class Controller(Protocol):
    """What a workflow needs from the node that runs it. See the module docstring."""

    def now(self) -> float:
        """The controller's clock, in seconds."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Wait until the controller's clock reaches ``deadline``."""
        ...

    def available_sites(self) -> frozenset[str]:
        """The sites connected now and allowed to take part."""
        ...

    def site_history(self) -> Mapping[str, SiteHistory]:
        """Each known site's reliability so far."""
        ...

    def scatter(
        self, task: Task, targets: Iterable[str], *, sink: UpdateSink | None = None
    ) -> Scatter:
        """Send ``task`` to ``targets`` (on entering the returned context manager)."""
        ...

    async def save_checkpoint(self, state: WorkflowState) -> None:
        """Persist ``state`` durably (the workflow continues from it after a restart): before the
        next round's scatter returns and before the run is reported over. It may still be writing
        when this returns, while the next round's task goes out; a failed write raises then."""
        ...

    def report(self, event: WorkflowEvent) -> None:
        """Log and record what happened; must not block or raise."""
        ...


class Workflow(Protocol):
    """A workflow: an async function of a controller and a job that returns its final state.

    Give ``initial_weights`` to start, or ``resume`` (a state loaded from a checkpoint) to continue.
    """

    async def __call__(
        self,
        controller: Controller,
        job: JobSpec,
        *,
        job_id: str,
        initial_weights: Weights | None = None,
        resume: WorkflowState | None = None,
    ) -> WorkflowState: ...
