"""An in-process controller on a virtual clock: sites are Python callables, time is simulated.

Theory of operation
-------------------
:class:`LocalController` implements :class:`~flrt.workflows.controller.Controller` without a
network, for tests, notebooks and simulations. Each site is a :class:`LocalSite`: a ``train`` and an
``evaluate`` callable, an optional filter chain (the site's own and the job's), and injectable
behaviour: a ``delay`` (how long, on the virtual clock, the site takes to answer a task) and a
``fail`` hook (the site reports a failure instead of a result).

Time is virtual. Sending a task schedules its answer at ``now + delay``; :meth:`_LocalScatter.receive`
jumps the clock straight to the next scheduled event, runs the site's callable (in a worker thread,
so the event loop stays responsive) and delivers the reply, or jumps to the deadline if nothing is
due before it. Nothing ever sleeps, so a 20-second straggler costs no wall time and every run is
deterministic. When a workflow waits with no deadline and nothing is scheduled, nothing can ever
happen: :class:`~flrt.errors.WorkflowStalledError` is raised instead of hanging.

Tests drive the rest through :meth:`LocalController.set_online` (a site disconnects: its outstanding
tasks fail; it reconnects: open scatters see :class:`~flrt.workflows.controller.SiteJoined`) and
:meth:`LocalController.schedule` (run an action at a virtual time). With ``deliver_late``, a
cancelled straggler still answers, and its result is delivered into whatever scatter is open then,
as a network would. With ``stream_pieces``, train results are streamed into the scatter's sink in
that many pieces per array, as the bus does, before the reply says ``staged=True``.

A site's failure reads as a deployed site's does (see :mod:`flrt.site`): a trainer or filter that
raises is reported as the error's type and message with its paths replaced by ``<path>``, and an
error id (:func:`~flrt._redact_paths.describe_failure`) under which the full error and its
traceback are logged (``task.failed``; ``flrt simulate`` writes the log to its results folder), so
a researcher finds why a trainer failed. A ``fail`` hook's reason is redacted the same way.
"""

from __future__ import annotations

import heapq
import itertools
import math
from collections import deque
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import TracebackType
from typing import Any

import anyio
import anyio.lowlevel
import anyio.to_thread

from flrt._redact_paths import describe_failure, redact_paths
from flrt.aggregation import layout_of
from flrt.checkpoint import CheckpointWriter
from flrt.errors import UpdateError, WorkflowStalledError
from flrt.filters import FilterChain, FilterContext, Task
from flrt.logs import module_logger
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask
from flrt.trainer import SiteContext, Trainer

from .controller import (
    Reply,
    ResultArrived,
    RoundAborted,
    RoundCompleted,
    SiteFailed,
    SiteJoined,
    UpdateSink,
    WorkflowEvent,
    task_model,
)
from .sampling import SiteHistory
from .state import WorkflowState

__all__ = ["LocalController", "LocalSite"]

log = module_logger("flrt.simulation")


def _no_failure(task: Task) -> str | None:
    return None


@dataclass
class LocalSite:
    """One in-process site.

    - ``train`` / ``evaluate``: what the site runs (a site without one fails such tasks).
    - ``delay``: seconds on the virtual clock from sending a task to its answer (a number, or a
      function of the task).
    - ``fail``: returns a reason when the site should fail the task (after its delay) instead of
      running it (its paths are redacted, as a site's are).
    - ``filters``: the site's filter chain (its mandatory filters and the job's).
    """

    train: Callable[[TrainTask], TrainResult] | None = None
    evaluate: Callable[[EvalTask], EvalResult] | None = None
    delay: float | Callable[[Task], float] = 0.0
    fail: Callable[[Task], str | None] = _no_failure
    filters: FilterChain = field(default_factory=FilterChain)

    @classmethod
    def from_trainer(cls, trainer: Trainer, context: SiteContext, **behaviour: Any) -> LocalSite:
        """A site that runs a :class:`~flrt.trainer.Trainer` (as loaded by
        :func:`~flrt.trainer.load_trainer`) with ``context``; ``behaviour`` sets ``delay``, ``fail``
        or ``filters``."""

        def train(task: TrainTask) -> TrainResult:
            return trainer.train(task, context)

        def evaluate(task: EvalTask) -> EvalResult:
            return trainer.evaluate(task.weights, context)

        return cls(train=train, evaluate=evaluate, **behaviour)

    def delay_for(self, task: Task) -> float:
        value = self.delay(task) if callable(self.delay) else self.delay
        if not value >= 0.0:
            raise ValueError(f"a site's delay must be >= 0, got {value}")
        return float(value)


@dataclass(frozen=True, slots=True)
class _Delivery:
    scatter: _LocalScatter
    site: str
    task: Task
    token: int


@dataclass(frozen=True, slots=True)
class _Action:
    action: Callable[[], None]


class _LocalScatter:
    def __init__(
        self,
        controller: LocalController,
        task: Task,
        targets: Iterable[str],
        sink: UpdateSink | None,
    ) -> None:
        self._controller = controller
        self._task = task
        self._targets = tuple(targets)
        self.sink = sink
        self.outstanding: dict[str, int] = {}
        self.ready: deque[Reply] = deque()
        self.closed = False

    @property
    def task(self) -> Task:
        return self._task

    async def __aenter__(self) -> _LocalScatter:
        self._controller._scatters.append(self)
        self._dispatch(self._targets)
        await anyio.lowlevel.checkpoint()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.closed = True
        self.outstanding.clear()
        self._controller._scatters.remove(self)

    def _dispatch(self, sites: Iterable[str]) -> None:
        ctl = self._controller
        for site in sites:
            spec = ctl.sites.get(site)
            if spec is None:
                self.ready.append(SiteFailed(site, "unknown site"))
            elif site not in ctl._online:
                self.ready.append(SiteFailed(site, "not connected"))
            else:
                token = next(ctl._tokens)
                self.outstanding[site] = token
                ctl._push(
                    ctl.now() + spec.delay_for(self._task), _Delivery(self, site, self._task, token)
                )

    async def ask(self, sites: Iterable[str]) -> None:
        self._dispatch(sites)
        await anyio.lowlevel.checkpoint()

    async def cancel(self, sites: Iterable[str]) -> None:
        for site in sites:
            self.outstanding.pop(site, None)
        await anyio.lowlevel.checkpoint()

    async def receive(self, deadline: float | None) -> Reply | None:
        await anyio.lowlevel.checkpoint()
        ctl = self._controller
        while True:
            if self.ready:
                return self.ready.popleft()
            if not await ctl._fire_next(deadline):
                if deadline is None:
                    raise WorkflowStalledError(
                        f"round {self._task.round}: waiting for a reply, but no site is working"
                        " and nothing is scheduled"
                    )
                ctl._clock = max(ctl._clock, deadline)
                return None

    def __aiter__(self) -> AsyncIterator[Reply]:
        return self._replies()

    async def _replies(self) -> AsyncIterator[Reply]:
        while self.outstanding or self.ready:
            reply = await self.receive(None)
            if reply is not None:
                yield reply


class LocalController:
    """A :class:`~flrt.workflows.controller.Controller` over in-process sites and a virtual clock.

    ``checkpoint_dir`` saves every checkpoint there (atomically, through one
    :class:`~flrt.checkpoint.CheckpointWriter`, see :mod:`flrt.checkpoint`);
    ``on_checkpoint`` is called after each save (tests use it to stop a workflow after a round).
    Every reported event is kept in :attr:`events`, every saved state in :attr:`checkpoints`.
    """

    def __init__(
        self,
        sites: Mapping[str, LocalSite],
        *,
        start: float = 0.0,
        deliver_late: bool = False,
        stream_pieces: int | None = None,
        checkpoint_dir: Path | None = None,
        on_checkpoint: Callable[[WorkflowState], None] | None = None,
        history: Mapping[str, SiteHistory] | None = None,
    ) -> None:
        if stream_pieces is not None and stream_pieces < 1:
            raise ValueError(f"stream_pieces must be >= 1, got {stream_pieces}")
        self.sites = dict(sites)
        self.deliver_late = deliver_late
        self.stream_pieces = stream_pieces
        self.checkpoint_dir = checkpoint_dir
        self.on_checkpoint = on_checkpoint
        self.events: list[WorkflowEvent] = []
        self.checkpoints: list[WorkflowState] = []
        self.history: dict[str, SiteHistory] = dict(history or {})
        self._clock = start
        self._online = set(self.sites)
        self._queue: list[tuple[float, int, _Delivery | _Action]] = []
        self._order = itertools.count()
        self._tokens = itertools.count()
        self._scatters: list[_LocalScatter] = []
        self._writer: CheckpointWriter | None = None  # for checkpoint_dir, made at the first save

    # ------------------------------------------------------------------------------ Controller

    def now(self) -> float:
        return self._clock

    async def sleep_until(self, deadline: float) -> None:
        await anyio.lowlevel.checkpoint()
        while await self._fire_next(deadline):
            pass
        self._clock = max(self._clock, deadline)

    def available_sites(self) -> frozenset[str]:
        return frozenset(self._online)

    def site_history(self) -> Mapping[str, SiteHistory]:
        return dict(self.history)

    def scatter(
        self, task: Task, targets: Iterable[str], *, sink: UpdateSink | None = None
    ) -> _LocalScatter:
        return _LocalScatter(self, task, targets, sink)

    async def save_checkpoint(self, state: WorkflowState) -> None:
        self.checkpoints.append(state)
        if self.checkpoint_dir is not None:
            if self._writer is None or self._writer.directory != self.checkpoint_dir:
                self._writer = CheckpointWriter(self.checkpoint_dir)
            await anyio.to_thread.run_sync(self._writer.save, state.to_checkpoint())
        if self.on_checkpoint is not None:
            self.on_checkpoint(state)

    def report(self, event: WorkflowEvent) -> None:
        self.events.append(event)
        if isinstance(event, RoundCompleted | RoundAborted):
            for site, outcome in event.outcomes.items():
                self.history[site] = self.history.get(site, SiteHistory()).record(outcome)

    # ------------------------------------------------------------------------------ test hooks

    def set_online(self, site: str, online: bool) -> None:
        """Connect or disconnect ``site`` now (a disconnect fails its outstanding tasks)."""
        if online:
            if site not in self._online:
                self._online.add(site)
                for scatter in self._scatters:
                    scatter.ready.append(SiteJoined(site))
            return
        self._online.discard(site)
        for scatter in self._scatters:
            if scatter.outstanding.pop(site, None) is not None:
                scatter.ready.append(SiteFailed(site, "disconnected"))

    def schedule(self, at: float, action: Callable[[], None]) -> None:
        """Run ``action`` when the virtual clock reaches ``at``."""
        self._push(at, _Action(action))

    # ------------------------------------------------------------------------------ internals

    def _push(self, at: float, entry: _Delivery | _Action) -> None:
        heapq.heappush(self._queue, (at, next(self._order), entry))

    async def _fire_next(self, deadline: float | None) -> bool:
        """Run the next scheduled event due by ``deadline``; ``False`` if there is none."""
        if not self._queue or (deadline is not None and self._queue[0][0] > deadline):
            return False
        at, _, entry = heapq.heappop(self._queue)
        self._clock = max(self._clock, at)
        if isinstance(entry, _Action):
            entry.action()
        else:
            await self._deliver(entry)
        return True

    async def _deliver(self, d: _Delivery) -> None:
        if d.site not in self._online:
            return  # its failure was reported when it disconnected
        scatter = d.scatter
        if scatter.closed or scatter.outstanding.get(d.site) != d.token:
            if self.deliver_late and self._scatters:
                late = await self._run(d.site, d.task, None)
                if isinstance(late, ResultArrived):
                    self._scatters[-1].ready.append(late)
            return
        del scatter.outstanding[d.site]
        scatter.ready.append(await self._run(d.site, d.task, scatter.sink))

    async def _run(self, site: str, task: Task, sink: UpdateSink | None) -> Reply:
        spec = self.sites[site]
        reason = spec.fail(task)
        if reason is not None:
            return SiteFailed(site, redact_paths(reason))  # as a site tells any reason upstream
        context = FilterContext(site=site, job_id=task.job_id, round=task.round)
        result, error = await anyio.to_thread.run_sync(_compute, spec, task, context)
        if result is None:
            return SiteFailed(site, error or "no result")
        model = task_model(task)
        if isinstance(result, TrainResult) and sink is not None and self.stream_pieces:
            try:
                self._stream(site, result, sink)
            except UpdateError as exc:
                sink.discard(site)
                return SiteFailed(site, f"invalid update: {exc.reason}")
            return ResultArrived(site, task.round, replace(result, weights={}), model, staged=True)
        return ResultArrived(site, task.round, result, model)

    def _stream(self, site: str, result: TrainResult, sink: UpdateSink) -> None:
        assert self.stream_pieces is not None
        sink.open(
            site, num_samples=result.num_samples, kind=result.kind, layout=layout_of(result.weights)
        )
        for name, array in result.weights.items():
            flat = array.reshape(-1)
            step = max(1, math.ceil(flat.size / self.stream_pieces))
            for lo in range(0, flat.size, step):
                sink.accept(site, name, flat[lo : lo + step], offset=lo)


def _compute(
    spec: LocalSite, task: Task, context: FilterContext
) -> tuple[TrainResult | EvalResult | None, str | None]:
    """Run a site's callable on a task through its filters; errors become a reason, as a site
    words it (this runs in a worker thread, where a trainer's exception must not escape as a crash
    of the controller)."""
    try:
        seen = spec.filters.filter_task(task, context)
        result: Any
        if isinstance(seen, TrainTask):
            if spec.train is None:
                return None, "this site does not train"
            result = spec.train(seen)
            if not isinstance(result, TrainResult):
                return None, f"train returned {type(result).__name__}, not TrainResult"
        else:
            if spec.evaluate is None:
                return None, "this site does not evaluate"
            result = spec.evaluate(seen)
            if not isinstance(result, EvalResult):
                return None, f"evaluate returned {type(result).__name__}, not EvalResult"
        return spec.filters.filter_result(result, seen, context), None
    except Exception as exc:  # a trainer's failure is the site's failure, reported as such
        failure = describe_failure(exc, log_name="the simulation's log")
        log.warning(
            "task.failed",
            site=context.site,
            job=context.job_id,
            round=context.round,
            error_id=failure.error_id,
            reason=failure.reason,
            exc_info=exc,
        )
        return None, failure.upstream
