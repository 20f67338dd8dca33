"""The network controller: a workflow's :class:`~flrt.workflows.Controller` over the message bus.

Theory of operation
-------------------
A :class:`NetworkController` runs one job's workflow on the server. Its scatters send tasks to
sites and turn what comes back into the workflow's :data:`~flrt.workflows.Reply` values:

- **Sending.** A scatter joins the task's arrays into one dict once (:func:`~flrt._protocol.
  join_arrays`, no copy) and tells every asked site ``<site>/site`` a task message with those
  arrays; the bus streams the same arrays to every site, so a broadcast costs no copy per site.
  Each send gets a task id (``tid``) that the site echoes; the server's ``results`` actor looks the
  id up in the :class:`TaskTable` and hands the message to the scatter that sent it.
- **Receiving.** A train result for the open scatter with a sink (the round's aggregator) is
  streamed into it as its bytes arrive (``open``, then ``accept`` per piece from the bus object's
  ``pieces()``); once the object is complete and its digest verified, the scatter delivers
  :class:`~flrt.workflows.ResultArrived` with ``staged=True``. Only what is in flight is held, so
  the server's memory does not grow with the number of sites. Without a sink (cross-site models)
  the arrays are collected whole. Each receipt runs in its own task, so results from many sites
  arrive in parallel and a slow transfer never delays the workflow's clock; how many are received
  at once is bounded by the job's ``memory_budget_mb`` (:class:`ByteBudget`), the others wait with
  their bytes held back by the bus's flow control.
- **Late and unwanted results** (the round closed, the site was cancelled, a duplicate, a task of a
  server that has since restarted) are logged, reported as
  :class:`~flrt.workflows.UpdateDiscarded`, and *drained*: their bytes are read and dropped, because
  an unread object would hold the link's flow-control credit forever. The sink is never touched
  after its scatter has exited.
- **Sites coming and going.** The server tells every controller when a site's connection drops
  (its outstanding tasks are reported failed at once, as resumable: a dropout never stalls a
  round that can still reach its quorum, and a round that needs the site waits for its session
  to resume, see :mod:`flrt.workflows.rounds`), when its session ends for good (they fail), and
  when it connects (:class:`~flrt.workflows.
  SiteJoined` in every open scatter). A site whose connection drops while its result is streaming
  is not failed: the bus resumes the transfer, or fails the object if the session is lost.
- **Cancelling** tells the site to stop (``cancel``); a trainer that honours its abort check stops,
  and a site never sends a cancelled task's result.

**Checkpoints** are written in a worker thread *behind* the workflow: ``save_checkpoint`` takes
the state's snapshot and returns, so the next round's task goes out to the sites while the files are
written and fsynced (the sites train while the server's disk works). The job's one
:class:`~flrt.checkpoint.CheckpointWriter` writes them, so a save appends only its round's summary
to the journal, whatever the number of rounds before. One write is under way at a time, in order,
and it is complete (or its error raised in the workflow) before the next round's scatter returns,
that is before that round's results are aggregated into a new model, and before the server reports
the job over. A crash can lose the round in progress and the checkpoint being written, never a
checkpoint already reported (the ``checkpoint`` event in ``metrics.jsonl``, the ``round`` an admin
sees), and never leaves a partial one (see :mod:`flrt.checkpoint`).

The clock is AnyIO's (:func:`anyio.current_time`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import OrderedDict, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Any

import anyio
import anyio.abc
import anyio.lowlevel
import anyio.to_thread
import numpy as np

from flrt._protocol import (
    PROTOCOL_VERSION,
    ResultMessage,
    TaskIds,
    TaskMessage,
    join_arrays,
    split_arrays,
    split_wire_name,
)
from flrt.aggregation import Aggregator, ArraySpec
from flrt.checkpoint import Checkpoint, CheckpointWriter
from flrt.errors import NodeProtocolError, UpdateError
from flrt.filters import Task
from flrt.job import JobSpec
from flrt.jobstore import JobEntry, JobStore
from flrt.logs import module_logger
from flrt.registry import SiteRegistry
from flrt.tasks import EvalTask, TrainTask, Weights
from flrt.workflows import (
    CrossSiteEvaluated,
    MetricsReported,
    Reply,
    ResultArrived,
    RoundAborted,
    RoundCompleted,
    RoundStarted,
    SiteFailed,
    SiteHistory,
    SiteJoined,
    UpdateDiscarded,
    UpdateSink,
    WorkflowEvent,
    WorkflowState,
)
from flrt.workflows.controller import task_model
from flrt.workflows.training import job_seed
from transport.bus import Arrays, OutgoingObject
from transport.errors import TransportError
from transport.objects import IncomingObject, LocalObject

__all__ = ["ByteBudget", "NetworkController", "TaskTable", "drain", "event_record"]

log = module_logger("flrt.network")

ObjectHandle = IncomingObject | LocalObject
#: Tell ``body`` (and ``arrays``) to ``address``; raises a TransportError if it cannot be sent.
Send = Callable[[str, dict[str, Any], Arrays | None], Awaitable[None]]


async def drain(obj: ObjectHandle | None) -> None:
    """Read an unwanted object to the end and drop it (an unread object would hold its link's
    flow-control credit). Never raises a transport error: a failed object is gone anyway."""
    if obj is None or isinstance(obj, LocalObject):
        return
    try:
        async for _ in obj.pieces():
            pass
    except TransportError:
        pass


# ------------------------------------------------------------------------------- task table


@dataclass(slots=True)
class _Sent:
    scatter: _NetScatter
    site: str


class TaskTable:
    """Every task id this server sent (the newest ``capacity``), with the scatter that sent it.

    Ids outlive their job, so that a result arriving after its job ended is still recognised (and
    recorded in that job's metrics) as late rather than unknown.
    """

    def __init__(self, capacity: int = 200_000) -> None:
        self._sent: OrderedDict[str, _Sent] = OrderedDict()
        self.capacity = capacity
        self.new_id = TaskIds()

    def add(self, tid: str, scatter: _NetScatter, site: str) -> None:
        self._sent[tid] = _Sent(scatter, site)
        while len(self._sent) > self.capacity:
            self._sent.popitem(last=False)

    def get(self, tid: object) -> _Sent | None:
        return self._sent.get(tid) if isinstance(tid, str) else None

    def __len__(self) -> int:
        return len(self._sent)


# ------------------------------------------------------------------------------- memory


class ByteBudget:
    """Admits work of a given size while the sizes admitted add up to at most ``limit`` bytes;
    one piece of work is always admitted, however large, so nothing waits forever.

    Updates are received in parallel (a slow site never holds up the others) as long as their
    staging fits the job's memory budget; beyond it they wait their turn, their bytes held back by
    the bus's flow control, so the server's memory stays bounded whatever the number of sites.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = anyio.Event()

    @contextlib.asynccontextmanager
    async def take(self, nbytes: int) -> AsyncIterator[None]:
        while self.used and self.used + nbytes > self.limit:
            await self._freed.wait()
        self.used += nbytes
        try:
            yield
        finally:
            self.used -= nbytes
            self._freed.set()
            self._freed = anyio.Event()


# ------------------------------------------------------------------------------- events


def _outcomes(outcomes: Mapping[str, Any]) -> dict[str, str]:
    return {site: getattr(o, "value", str(o)) for site, o in outcomes.items()}


def event_record(event: WorkflowEvent) -> dict[str, Any]:
    """A workflow event as a JSON-able map (one line of ``metrics.jsonl``)."""
    now = time.time()
    match event:
        case RoundStarted():
            return {
                "event": "round_started",
                "time": now,
                "round": event.round,
                "kind": event.kind,
                "model": event.model,
                "asked": list(event.asked),
            }
        case RoundCompleted():
            return {
                "event": "round_completed",
                "time": now,
                "round": event.round,
                "kind": event.kind,
                "model": event.model,
                "accepted": list(event.accepted),
                "cancelled": list(event.cancelled),
                "failed": dict(event.failed),
                "outcomes": _outcomes(event.outcomes),
                "seconds": round(event.closed_at - event.started_at, 6),
            }
        case RoundAborted():
            return {
                "event": "round_aborted",
                "time": now,
                "round": event.round,
                "kind": event.kind,
                "model": event.model,
                "reason": event.reason,
                "outcomes": _outcomes(event.outcomes),
            }
        case MetricsReported():
            return {
                "event": "metrics",
                "time": now,
                "round": event.round,
                "kind": event.kind,
                "site": event.site,
                "metrics": {k: v for k, v in event.metrics.items() if math.isfinite(v)},
                "num_samples": event.num_samples,
            }
        case UpdateDiscarded():
            return {
                "event": "update_discarded",
                "time": now,
                "round": event.round,
                "site": event.site,
                "reason": event.reason,
            }
        case CrossSiteEvaluated():
            return {"event": "cross_site", "time": now, "round": event.results.round}
    raise TypeError(f"not a workflow event: {event!r}")  # pragma: no cover


# ------------------------------------------------------------------------------- scatter

_OUTSTANDING = "outstanding"
_STREAMING = "streaming"
_ANSWERED = "answered"
_FAILED = "failed"
_CANCELLED = "cancelled"


def _without_arrays(task: Task) -> Task:
    if isinstance(task, TrainTask):
        return replace(task, weights={}, extras={})
    return replace(task, weights={})


class _NetScatter:
    """One task out to some sites; see the module docstring."""

    def __init__(
        self,
        controller: NetworkController,
        task: Task,
        targets: Iterable[str],
        sink: UpdateSink | None,
    ) -> None:
        self._controller = controller
        self._task = task
        self._targets = tuple(targets)
        self.sink = sink
        if sink is not None:
            sink.on_release = controller.release_staging
        self.kind = "train" if isinstance(task, TrainTask) else "evaluate"
        self.model = task_model(task)
        extras = task.extras if isinstance(task, TrainTask) else {}
        # One payload for every site asked: its digest is computed once, not once per site.
        self._arrays: OutgoingObject | None = OutgoingObject(join_arrays(task.weights, extras))
        self._body: dict[str, Any] | None = None  # the task message, without its tid
        self.status: dict[str, str] = {}
        self.tids: dict[str, str] = {}  # tid -> site
        self._ready: deque[Reply] = deque()
        self._wakeup = anyio.Event()
        self.closed = False

    @property
    def task(self) -> Task:
        return self._task

    # ------------------------------------------------------------------ context

    async def __aenter__(self) -> _NetScatter:
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
        pending = [s for s, st in self.status.items() if st in (_OUTSTANDING, _STREAMING)]
        self._cancel(pending)
        self.closed = True
        self._controller._scatters.remove(self)
        # The task table keeps this scatter (to recognise late results): keep what says which
        # task it was, not the model, or every round's model would stay in memory.
        self._arrays = None
        self._task = _without_arrays(self._task)
        self.sink = None  # the round's aggregator, which holds that round's global model
        self._controller.release_staging()  # receivers waiting on it look again
        if exc_type is None:
            # The previous round's checkpoint is on disk before this round's results are
            # aggregated (and the arrays it is written from may change).
            await self._controller.checkpoint_written()

    # ------------------------------------------------------------------ sending

    def _message(self, tid: str) -> dict[str, Any]:
        """The task message for ``tid``: built once per scatter (the filters' configuration is
        deep-copied), then only the task id differs from site to site."""
        if self._body is None:
            ctl = self._controller
            task = self._task
            self._body = TaskMessage(
                tid="",
                job_id=ctl.job_id,
                kind="train" if isinstance(task, TrainTask) else "evaluate",
                round=task.round,
                model=task.model if isinstance(task, EvalTask) else None,
                seed=ctl.seed,
                trainer_spec=ctl.job.trainer.spec,
                trainer_args=ctl.job.trainer.args,
                filters=tuple(f.to_dict() for f in ctl.job.filters),
                params=dict(task.params),
            ).to_body()
        return {**self._body, "tid": tid}

    def _dispatch(self, sites: Iterable[str]) -> None:
        ctl = self._controller
        for site in sites:
            reconnecting = not ctl.registry.is_connected(site)
            if reconnecting and not ctl.reconnecting(site):
                self._deliver(SiteFailed(site, "not connected"))
                continue
            tid = ctl.table.new_id()
            self.tids[tid] = site
            self.status[site] = _OUTSTANDING
            ctl.table.add(tid, self, site)
            ctl.task_group.start_soon(self._send, site, tid)  # the bus sends it once resumed
            if reconnecting:
                self._deliver(SiteFailed(site, "disconnected", resumable=True))

    async def _send(self, site: str, tid: str) -> None:
        if self.closed:
            return  # the round ended before this send started
        try:
            await self._controller.send(f"{site}/site", self._message(tid), self._arrays)
        except TransportError as exc:
            if self.tids.get(tid) == site and self.status.get(site) == _OUTSTANDING:
                self._fail(site, f"the task could not be sent: {exc}")

    async def ask(self, sites: Iterable[str]) -> None:
        self._dispatch(sites)
        await anyio.lowlevel.checkpoint()

    async def cancel(self, sites: Iterable[str]) -> None:
        self._cancel(sites)
        await anyio.lowlevel.checkpoint()

    def _cancel(self, sites: Iterable[str]) -> None:
        ctl = self._controller
        for site in sites:
            if self.status.get(site) not in (_OUTSTANDING, _STREAMING):
                continue
            self.status[site] = _CANCELLED
            for tid, owner in self.tids.items():
                if owner == site:
                    ctl.task_group.start_soon(ctl.tell_quietly, site, {"op": "cancel", "tid": tid})

    # ------------------------------------------------------------------ receiving

    def _deliver(self, reply: Reply) -> None:
        self._ready.append(reply)
        self._wakeup.set()
        self._wakeup = anyio.Event()

    def _fail(self, site: str, reason: str) -> None:
        self.status[site] = _FAILED
        self._deliver(SiteFailed(site, reason))

    async def receive(self, deadline: float | None) -> Reply | None:
        while not self._ready:
            if deadline is None:
                await self._wakeup.wait()
            else:
                with anyio.CancelScope(deadline=deadline):
                    await self._wakeup.wait()
                if not self._ready and anyio.current_time() >= deadline:
                    return None
        return self._ready.popleft()

    def __aiter__(self) -> AsyncIterator[Reply]:
        return self._replies()

    async def _replies(self) -> AsyncIterator[Reply]:
        while self._ready or any(s in (_OUTSTANDING, _STREAMING) for s in self.status.values()):
            reply = await self.receive(None)
            if reply is not None:
                yield reply

    # ------------------------------------------------------------------ from the server

    def site_lost(self, site: str, reason: str, *, resumable: bool = False) -> None:
        """The site's connection dropped (``resumable``: its session may resume, and its task
        stays outstanding) or its session ended (its outstanding task fails)."""
        if not self.closed and self.status.get(site) == _OUTSTANDING:
            if resumable:
                self._deliver(SiteFailed(site, reason, resumable=True))
            else:
                self._fail(site, reason)

    def site_joined(self, site: str) -> None:
        if not self.closed:
            self._deliver(SiteJoined(site))

    def failed(self, site: str, tid: str, reason: str) -> None:
        """The site says it could not run task ``tid``."""
        if not self.closed and self.status.get(site) == _OUTSTANDING:
            self._fail(site, reason)
        else:
            log.info(
                "task.failed_late", job=self._controller.job_id, site=site, reason=reason[:500]
            )

    def withheld(self, site: str, reason: str) -> None:
        """The site finished a task it had been told to cancel and kept the result."""
        self._controller.report(
            UpdateDiscarded(self._task.round, site, f"late: withheld by the site ({reason})")
        )

    def arrived(
        self, site: str, tid: str, body: Mapping[str, Any], obj: ObjectHandle | None
    ) -> None:
        """A result for task ``tid`` started to arrive (its bytes may still be on the way)."""
        ctl = self._controller
        try:
            message = ResultMessage.from_body(body, site)
            self._check_matches(message, site)
        except NodeProtocolError as exc:
            log.warning("result.malformed", job=ctl.job_id, site=site, reason=exc.reason)
            ctl.task_group.start_soon(drain, obj)
            if self.status.get(site) in (_OUTSTANDING, _FAILED) and not self.closed:
                self._fail(site, f"malformed result: {exc.reason}")
            return
        status = self.status.get(site)
        if self.closed or status not in (_OUTSTANDING, _FAILED):
            why = "duplicate" if status in (_ANSWERED, _STREAMING) else "late: the round had closed"
            ctl.discard(message.round, site, why, obj)
            return
        self.status[site] = _STREAMING
        ctl.task_group.start_soon(self._receive, site, message, obj)

    def _check_matches(self, message: ResultMessage, site: str) -> None:
        if (message.kind, message.round, message.model) != (
            self.kind,
            self._task.round,
            self.model,
        ):
            raise NodeProtocolError(
                f"the result says {message.kind} round {message.round} model {message.model},"
                f" the task was {self.kind} round {self._task.round} model {self.model}",
                peer=site,
            )

    def _wanted(self, site: str) -> bool:
        return not self.closed and self.status.get(site) == _STREAMING

    async def _receive(self, site: str, message: ResultMessage, obj: ObjectHandle | None) -> None:
        try:
            if message.kind == "evaluate":
                await drain(obj)
                reply = ResultArrived(site, message.round, message.eval_result(), message.model)
            elif self.sink is not None and isinstance(obj, IncomingObject) and obj.manifest.total:
                sink = self.sink
                async with self._controller.in_flight.take(obj.nbytes):
                    extras = await self._stream(site, message, obj)
                    reply = ResultArrived(
                        site,
                        message.round,
                        message.train_result({}, extras),
                        message.model,
                        staged=True,
                    )
                    self._answer(site, message, reply)
                    # The update's memory is in use until the workflow has folded it in (or it
                    # is dropped): admitting the next one earlier would stage two at once. Once
                    # this scatter has closed, the aggregator's staging for the site (if any) is
                    # a later round's, and none of this receipt's business.
                    while self.sink is sink and sink.staging(site):
                        await self._controller.staging_released.wait()
                return
            else:
                async with self._controller.in_flight.take(0 if obj is None else obj.nbytes):
                    arrays = {} if obj is None else await obj.arrays()
                weights, extras = split_arrays(arrays, peer=site)
                reply = ResultArrived(
                    site, message.round, message.train_result(weights, extras), message.model
                )
        except (TransportError, UpdateError, NodeProtocolError) as exc:
            if isinstance(exc, TransportError):
                reason = f"the update's transfer failed: {exc}"
            else:
                reason = f"invalid update: {exc}"
                await drain(obj)
            if self._wanted(site):
                if self.sink is not None and message.kind == "train":
                    self.sink.discard(site)  # allowed for a site that never opened
                self._fail(site, reason)
            else:
                log.info("result.dropped", job=self._controller.job_id, site=site, reason=reason)
            return
        self._answer(site, message, reply)

    def _answer(self, site: str, message: ResultMessage, reply: ResultArrived) -> None:
        """Hand a received result to the workflow, or log it as late."""
        if not self._wanted(site):
            self._controller.discard(message.round, site, "late: the round had closed", None)
            if self.sink is not None and self.sink.staging(site):
                self.sink.discard(site)  # free what it staged: the round goes on without it
            return
        self.status[site] = _ANSWERED
        self._deliver(reply)

    async def _stream(
        self, site: str, message: ResultMessage, obj: IncomingObject
    ) -> dict[str, Weights]:
        """Receive the model into the sink and the extras into new arrays. Returns the extras.

        An :class:`~flrt.aggregation.Aggregator` hands out the site's staging, and the bytes are
        received straight into it (no copy of each piece); any other sink is fed piece by piece.
        A site no longer wanted once its update is in is not marked filled: its staging is
        dropped (see :meth:`_answer`), never folded.
        """
        assert self.sink is not None
        layout: dict[str, ArraySpec] = {}
        extras: dict[str, Weights] = {}
        names: list[tuple[str, str, str]] = []  # wire name, group ("" for the model), variable
        for info in obj.manifest.arrays:
            group, variable = split_wire_name(info.name)
            if group is None:
                raise NodeProtocolError(f"array {info.name!r} is neither w/ nor x/", peer=site)
            names.append((info.name, group, variable))
            if group == "":
                layout[variable] = ArraySpec(tuple(info.shape), np.dtype(info.dtype))
            else:
                extras.setdefault(group, {})[variable] = np.empty(
                    info.shape, dtype=np.dtype(info.dtype)
                )
        if not self._wanted(site):
            await drain(obj)
            return extras
        sink = self.sink
        sink.open(site, num_samples=message.num_samples, kind=message.update, layout=layout)
        if isinstance(sink, Aggregator):
            staging = sink.staging_for(site)
            await obj.receive_into(
                {
                    name: staging[variable] if group == "" else extras[group][variable]
                    for name, group, variable in names
                }
            )
            if self._wanted(site):
                sink.mark_filled(site)
            return extras
        async for name, start, values in obj.pieces():
            group, variable = split_wire_name(name)
            if group == "":
                if self._wanted(site):
                    sink.accept(site, variable, values, offset=start)
            elif group is not None:
                target = extras[group][variable].reshape(-1)
                target[start : start + values.size] = values
        return extras


# ------------------------------------------------------------------------------- controller


class NetworkController:
    """The :class:`~flrt.workflows.Controller` of one job on the server (see the module docstring).

    ``send`` tells a site (the server node's ``tell``); ``task_group`` runs the sends and receipts
    (it must outlive the workflow: late results are drained in it); ``on_progress(job_id, round)``
    is called after every checkpoint; ``reconnecting(site)`` says whether a site that is not
    connected may resume its session (none, by default).
    """

    def __init__(
        self,
        *,
        job_id: str,
        job: JobSpec,
        entry: JobEntry,
        store: JobStore,
        registry: SiteRegistry,
        table: TaskTable,
        send: Send,
        task_group: anyio.abc.TaskGroup,
        on_progress: Callable[[str, int], None] | None = None,
        reconnecting: Callable[[str], bool] | None = None,
    ) -> None:
        self.job_id = job_id
        self.job = job
        self.entry = entry
        self.store = store
        self.registry = registry
        self.table = table
        self.send = send
        self.task_group = task_group
        self.on_progress = on_progress
        #: Whether a site that is not connected has a session that may resume (the bus keeps its
        #: link, and sends what it is given once the site is back).
        self.reconnecting: Callable[[str], bool] = reconnecting or (lambda site: False)
        self.seed = job_seed(job, job_id)
        budget = getattr(job.workflow.params, "memory_budget_mb", 256.0)
        #: Bounds the bytes of updates being received or staged at once (the job's
        #: memory_budget_mb): an update holds its share until the workflow has folded it in.
        self.in_flight = ByteBudget(int(budget * 1024 * 1024))
        #: Set (and replaced) whenever the round's aggregator frees an update's staging.
        self.staging_released: anyio.Event = anyio.Event()
        self._scatters: list[_NetScatter] = []
        self._initial: Weights | None = None
        self._writing: anyio.Event | None = None  # set once the checkpoint being written is saved
        self._checkpoints = CheckpointWriter(store.checkpoints(job_id))  # each save: what is new
        self._write_error: Exception | None = None
        #: The last round whose checkpoint is on disk.
        self.rounds_done = 0
        self.log = log.bind(job=job_id)
        self._metrics = store.metrics_log(job_id)  # open while the job runs: see close()

    # ------------------------------------------------------------------ Controller

    def now(self) -> float:
        return anyio.current_time()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep_until(deadline)

    def available_sites(self) -> frozenset[str]:
        """The sites connected now; when they are too few for the job's quorum, also those whose
        connection dropped but whose session may resume (asked, they count as failed at once
        unless the round needs them: see :mod:`flrt.workflows.rounds`). A round that could go on
        without them never waits for them."""
        available = self.registry.available()
        wanted = frozenset(self.job.targets) or frozenset(self.registry.sites)
        if len(available & wanted) >= self.job.workflow.min_sites:
            return available
        return available | {s for s in wanted - available if self.reconnecting(s)}

    def site_history(self) -> Mapping[str, SiteHistory]:
        return self.registry.history()

    def scatter(
        self, task: Task, targets: Iterable[str], *, sink: UpdateSink | None = None
    ) -> _NetScatter:
        return _NetScatter(self, task, targets, sink)

    def release_at_first_checkpoint(self, initial: Weights) -> None:
        """Empty ``initial`` (the dict of round 0's model given to the workflow) once the first
        round is saved: the workflow keeps its own dict of the same arrays, but every frame that
        started it (``run_workflow`` and down) still holds this one, which would keep round 0's
        model in memory for the whole job."""
        self._initial = initial

    async def save_checkpoint(self, state: WorkflowState) -> None:
        """Start writing ``state``'s checkpoint and return: the next round's task goes out while it
        is written (see "Checkpoints" in the module docstring). Raises what the previous write
        raised, if it failed."""
        await self.checkpoint_written()
        if self._initial is not None and state.round >= 1:
            self._initial.clear()
            self._initial = None
        checkpoint = state.to_checkpoint(job=self.entry.to_dict())
        written = self._writing = anyio.Event()
        self.task_group.start_soon(self._write_checkpoint, checkpoint, written)

    async def _write_checkpoint(self, checkpoint: Checkpoint, written: anyio.Event) -> None:
        try:
            # Not abandoned on cancellation: a server that stops waits for the write to end.
            await anyio.to_thread.run_sync(self._checkpoints.save, checkpoint)
        except Exception as exc:  # raised in the workflow, by its next wait for the write
            self._write_error = exc
            return
        finally:
            written.set()
        self.rounds_done = checkpoint.round
        self._record({"event": "checkpoint", "time": time.time(), "round": checkpoint.round})
        if self.on_progress is not None:
            self.on_progress(self.job_id, checkpoint.round)

    async def checkpoint_written(self) -> None:
        """Wait until the checkpoint being written (if any) is on disk. Raises what the write
        raised (:class:`OSError`, :class:`~flrt.errors.ModelFileError`, :class:`TypeError`)."""
        if self._writing is not None:
            await self._writing.wait()
            self._writing = None
        if self._write_error is not None:
            error, self._write_error = self._write_error, None
            raise error

    def report(self, event: WorkflowEvent) -> None:
        record = event_record(event)
        self._record(record)
        match event:
            case RoundCompleted() | RoundAborted():
                self.registry.record(event.outcomes)
                level = "info" if isinstance(event, RoundCompleted) else "warning"
                getattr(self.log, level)(record["event"], **_loggable(record))
            case CrossSiteEvaluated():
                try:
                    self.store.save_cross_site(self.job_id, event.results.to_dict())
                except OSError as exc:
                    self.log.warning("cross_site.not_saved", reason=str(exc))
            case UpdateDiscarded():
                self.log.info("update.discarded", **_loggable(record))
            case _:  # round_started and every site's metrics: debug, and not built unless shown
                if self.log.is_enabled_for(logging.DEBUG):
                    self.log.debug(record["event"], **_loggable(record))

    def _record(self, record: Mapping[str, Any]) -> None:
        try:
            self._metrics.append(record)
        except (OSError, ValueError) as exc:  # metrics are a record, never a reason to stop a job
            self.log.warning("metrics.not_saved", reason=str(exc))

    # ------------------------------------------------------------------ from the server

    def discard(self, round: int, site: str, reason: str, obj: ObjectHandle | None) -> None:
        """A result nobody wants: log it, report it, drain its bytes."""
        self.report(UpdateDiscarded(round, site, reason))
        if obj is not None:
            self.task_group.start_soon(drain, obj)

    def started(self, after_round: int) -> None:
        """The workflow starts in this process after round ``after_round`` (its checkpoint; 0:
        from the start), as ``{"event": "job_started", "round": after_round}`` in
        ``metrics.jsonl``. A server killed after a round completed but before its checkpoint was
        written runs that round again: the events recorded before this line for later rounds
        are of a run that did not last."""
        self._record({"event": "job_started", "time": time.time(), "round": after_round})

    def release_staging(self) -> None:
        """Wake the receivers waiting for staged updates to be folded in or dropped."""
        self.staging_released.set()
        self.staging_released = anyio.Event()

    def site_lost(self, site: str, reason: str, *, resumable: bool = False) -> None:
        """``site``'s connection dropped (``resumable``: its session may resume) or its session
        ended: see :meth:`_NetScatter.site_lost`."""
        for scatter in list(self._scatters):
            scatter.site_lost(site, reason, resumable=resumable)

    def site_joined(self, site: str) -> None:
        for scatter in list(self._scatters):
            scatter.site_joined(site)

    async def tell_quietly(self, site: str, body: dict[str, Any]) -> None:
        """Tell a site something it may miss (it is gone, or will learn it otherwise)."""
        with contextlib.suppress(TransportError):
            await self.send(f"{site}/site", {"v": PROTOCOL_VERSION, **body}, None)

    def close(self) -> None:
        """The job is over: close what is still open (results still on their way are late, and
        still recorded: each opens the metrics file for itself)."""
        for scatter in list(self._scatters):
            scatter.closed = True
        self._metrics.close()


def _loggable(record: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in ("event", "time")}
