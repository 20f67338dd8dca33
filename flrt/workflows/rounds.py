"""One round over a controller: choose sites, scatter the task, drive the quorum, fold results.

:func:`run_round` is the loop every workflow uses. It owns the sans-IO
:class:`~flrt.workflows.quorum.QuorumRound` and translates between it and the controller:

- a reply for this round's task from a site the quorum would accept is handed to ``on_result``
  (which checks it and folds it into the aggregate, and may be a coroutine function, to fold in a
  worker thread) *before* the quorum counts it; if ``on_result`` raises
  :class:`~flrt.errors.UpdateError`, the site is counted as failed instead;
- a reply for another task (an earlier round, another model), from a site not asked, a duplicate,
  or one arriving after the round closed is reported as :class:`UpdateDiscarded` and its staged
  arrays are dropped, never folded;
- a site whose connection drops while it is outstanding (or is down when it is asked) counts as
  failed at once, so the round goes on without it, unless the quorum cannot be reached without it:
  then, as long as its session may resume (:class:`~flrt.workflows.controller.SiteFailed`
  ``resumable``), its answer is waited for, and it fails only when the session ends for good. A
  network blip of a few milliseconds at one site must not fail a round that needs every site;
- when the quorum needs more sites (``wait_for_quorum``), sites that are connected and not yet in
  the round are asked, now or as soon as one joins;
- when the round closes, stragglers are cancelled; when it fails, a
  :class:`~flrt.errors.RoundFailedError` is raised after the stragglers are cancelled.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import assert_never

from flrt.errors import RoundFailedError, UpdateError
from flrt.filters import Task
from flrt.job import Sampling, WorkflowSpec
from flrt.tasks import TrainTask

from .controller import (
    Controller,
    ResultArrived,
    RoundAborted,
    RoundCompleted,
    RoundStarted,
    Scatter,
    SiteFailed,
    SiteJoined,
    UpdateDiscarded,
    UpdateSink,
    task_model,
)
from .quorum import (
    QuorumRound,
    ResultAccepted,
    ResultDiscarded,
    RoundClosed,
    RoundFailed,
    SiteOutcome,
    SitesNeeded,
)
from .sampling import SiteHistory, choose_sites

__all__ = ["RoundOutcome", "RoundPolicy", "run_round"]

#: ``purpose`` values that keep the sampling of different decisions independent.
PURPOSE_TRAIN = 0
PURPOSE_EVALUATE = 1
PURPOSE_REPLACE = 2


@dataclass(frozen=True, slots=True)
class RoundPolicy:
    """How a round picks and waits for sites (from ``[workflow]``); ``sites_per_round = None``
    asks every candidate."""

    min_sites: int
    sites_per_round: int | None = None
    grace_seconds: float = 0.0
    wait_for_quorum: bool = False
    round_timeout: float | None = None
    sampling: Sampling = Sampling.UNIFORM

    @classmethod
    def from_spec(cls, spec: WorkflowSpec, *, all_sites: bool = False) -> RoundPolicy:
        """The policy of ``spec``; ``all_sites`` asks every candidate (evaluation rounds)."""
        return cls(
            min_sites=spec.min_sites,
            sites_per_round=None if all_sites else spec.sites_per_round,
            grace_seconds=spec.grace_seconds,
            wait_for_quorum=spec.wait_for_quorum,
            round_timeout=spec.round_timeout,
            sampling=spec.sampling,
        )


@dataclass(frozen=True, slots=True)
class RoundOutcome:
    """How a closed round went."""

    round: int
    started_at: float
    closed_at: float
    accepted: tuple[str, ...]
    cancelled: tuple[str, ...]
    failed: Mapping[str, str]
    discarded: tuple[tuple[str, str], ...]
    outcomes: Mapping[str, SiteOutcome] = field(default_factory=dict)
    #: Why the round failed (only with ``raise_on_failure=False``); ``None`` if it closed.
    reason: str | None = None


def _eligible(controller: Controller, candidates: frozenset[str] | None) -> frozenset[str]:
    available = controller.available_sites()
    return available if candidates is None else available & candidates


def _kind(task: Task) -> str:
    return "train" if isinstance(task, TrainTask) else "evaluate"


class _Driver:
    def __init__(
        self,
        controller: Controller,
        task: Task,
        quorum: QuorumRound,
        candidates: frozenset[str] | None,
        *,
        seed: int,
        on_result: Callable[[str, ResultArrived], Awaitable[None] | None],
        sink: UpdateSink | None,
    ) -> None:
        self.controller = controller
        self.task = task
        self.model = task_model(task)
        self.quorum = quorum
        self.candidates = candidates
        self.seed = seed
        self.on_result = on_result
        self.sink = sink
        self.discarded: list[tuple[str, str]] = []
        self.replacements = 0

    def _drop(self, site: str, round: int, reason: str) -> None:
        self.discarded.append((site, reason))
        self.controller.report(UpdateDiscarded(round, site, reason))

    async def handle(
        self, scatter: Scatter, reply: ResultArrived | SiteFailed | SiteJoined
    ) -> None:
        q = self.quorum
        now = self.controller.now()
        q.handle_timer(now)
        match reply:
            case ResultArrived():
                if reply.model != self.model:
                    self._drop(reply.site, reply.round, "other_task")
                elif q.would_accept(reply.site, reply.round):
                    try:
                        folding = self.on_result(reply.site, reply)
                        if folding is not None:
                            await folding
                    except UpdateError as exc:
                        if self.sink is not None:
                            self.sink.discard(reply.site)
                        self._drop(reply.site, reply.round, f"invalid: {exc.reason}")
                        q.site_failed(reply.site, f"invalid update: {exc.reason}", now)
                    else:
                        q.result_received(reply.site, reply.round, now)
                else:
                    q.result_received(reply.site, reply.round, now)
                    if reply.staged and self.sink is not None and reply.site not in q.accepted:
                        self.sink.discard(reply.site)  # streamed, then refused: never folded
            case SiteFailed():
                if reply.resumable and self._needed(reply.site):
                    return  # its session may resume and its answer come: see the docstring
                if self.sink is not None and reply.site in q.outstanding:
                    self.sink.discard(reply.site)
                q.site_failed(reply.site, reply.reason, now)
            case SiteJoined():
                if q.sites_needed:
                    await self.ask_more(scatter, q.sites_needed)
            case _:
                assert_never(reply)

    def _needed(self, site: str) -> bool:
        """Whether the quorum can no longer be reached if ``site`` (outstanding) fails."""
        q = self.quorum
        return site in q.outstanding and len(q.accepted) + len(q.outstanding) - 1 < q.min_sites

    async def ask_more(self, scatter: Scatter, count: int) -> None:
        q = self.quorum
        busy = set(q.accepted) | set(q.outstanding)
        pool = _eligible(self.controller, self.candidates) - busy
        self.replacements += 1
        chosen = choose_sites(
            pool,
            count,
            seed=self.seed,
            round=q.round,
            purpose=PURPOSE_REPLACE + self.replacements,
        )
        if chosen:
            await scatter.ask(chosen)
            q.sites_asked(chosen, self.controller.now())

    async def act(self, scatter: Scatter) -> None:
        """Carry out the quorum's decisions until there are none left."""
        while decisions := self.quorum.decisions():
            for d in decisions:
                match d:
                    case ResultAccepted():
                        pass  # folded by on_result before the quorum counted it
                    case ResultDiscarded():
                        self._drop(d.site, d.round, d.reason.value)
                    case SitesNeeded():
                        await self.ask_more(scatter, d.count)
                    case RoundClosed():
                        await scatter.cancel(d.cancelled)
                        self._discard_staged(d.cancelled)
                    case RoundFailed():
                        await scatter.cancel(d.cancelled)
                        self._discard_staged(d.cancelled)
                    case _:
                        assert_never(d)

    def _discard_staged(self, sites: Iterable[str]) -> None:
        if self.sink is not None:
            for site in sites:
                self.sink.discard(site)


async def run_round(
    controller: Controller,
    task: Task,
    *,
    candidates: Iterable[str] | None,
    policy: RoundPolicy,
    seed: int,
    history: Mapping[str, SiteHistory],
    on_result: Callable[[str, ResultArrived], Awaitable[None] | None],
    sink: UpdateSink | None = None,
    purpose: int = PURPOSE_TRAIN,
    raise_on_failure: bool = True,
) -> RoundOutcome:
    """Run ``task`` as one round among ``candidates`` (those connected are eligible; ``None``
    means every site, including sites that connect during the round).

    ``on_result(site, reply)`` checks and folds an accepted result (it may return an awaitable, which
    is awaited before anything else is handled); it raises
    :class:`~flrt.errors.UpdateError` to refuse it (the site then counts as failed). Returns how the
    round went; if the quorum was not reached, raises :class:`~flrt.errors.RoundFailedError`, or
    with ``raise_on_failure=False`` returns an outcome whose ``reason`` says why.
    """
    pool = None if candidates is None else frozenset(candidates)
    started = controller.now()
    available = _eligible(controller, pool)
    count = policy.sites_per_round if policy.sites_per_round is not None else len(available)
    asked = choose_sites(
        available,
        count,
        seed=seed,
        round=task.round,
        sampling=policy.sampling,
        history=history,
        purpose=purpose,
    )
    quorum = QuorumRound(
        task.round,
        asked,
        min_sites=policy.min_sites,
        now=started,
        grace_seconds=policy.grace_seconds,
        wait_for_quorum=policy.wait_for_quorum,
        round_timeout=policy.round_timeout,
    )
    kind, model = _kind(task), task_model(task)
    controller.report(RoundStarted(task.round, kind, model, asked, started))
    driver = _Driver(controller, task, quorum, pool, seed=seed, on_result=on_result, sink=sink)
    async with controller.scatter(task, asked, sink=sink) as scatter:
        await driver.act(scatter)
        while not quorum.closed:
            reply = await scatter.receive(quorum.get_timer())
            if reply is None:
                quorum.handle_timer(controller.now())
            else:
                await driver.handle(scatter, reply)
            await driver.act(scatter)
    closed = controller.now()
    outcomes = quorum.outcomes()
    cancelled = tuple(s for s, o in outcomes.items() if o is SiteOutcome.LATE)
    failed = quorum.failed
    if quorum.reason is not None:
        controller.report(RoundAborted(task.round, kind, model, quorum.reason, outcomes, closed))
        if raise_on_failure:
            raise RoundFailedError(task.round, quorum.reason)
    else:
        controller.report(
            RoundCompleted(
                task.round,
                kind,
                model,
                quorum.accepted,
                cancelled,
                failed,
                outcomes,
                started,
                closed,
            )
        )
    return RoundOutcome(
        round=task.round,
        started_at=started,
        closed_at=closed,
        accepted=quorum.accepted,
        cancelled=cancelled,
        failed=failed,
        discarded=tuple(driver.discarded),
        outcomes=outcomes,
        reason=quorum.reason,
    )
