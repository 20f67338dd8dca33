"""The training workflows: FedAvg, FedProx, SCAFFOLD and FedOpt, one loop with four strategies.

Every round: choose the sites (seeded by the job's seed and the round), send them a
:class:`~flrt.tasks.TrainTask`, fold each accepted result into the round's aggregator as it arrives
(the aggregator is also the scatter's sink, so a controller may stream arrays into it), close on the
quorum and grace period, apply the server step, optionally evaluate the new model on the sites, and
checkpoint the state through the controller. One aggregator serves every round of a job, so its
buffers are reused; large folds and the server step of a large model run in a worker thread, so the
event loop keeps receiving the other sites' updates meanwhile (small ones run inline: the hop would
cost more). A round without quorum raises
:class:`~flrt.errors.RoundFailedError` (the job fails with that reason); a resumed workflow continues
after the last checkpointed round and, with the same seed and site behaviour, reaches the same model
as a run that never stopped.

- **fedavg**: the new model is the aggregate (weighted mean by sample count by default, or a robust
  aggregator: ``[workflow.params] aggregator``).
- **fedprox**: fedavg, with ``fedprox_mu`` in the task parameters; the proximal term is applied by
  the site's trainer.
- **scaffold**: the server control variate goes out in ``TrainTask.extras["scaffold_c"]`` and each
  site's control delta comes back in ``TrainResult.extras["scaffold_delta"]`` (a site that omits it
  has sent an invalid update); see :mod:`flrt.aggregation.scaffold`.
- **fedopt**: the aggregate difference is a pseudo-gradient for FedAdam, FedYogi or FedAdagrad,
  whose moments are part of the checkpointed state.
"""

from __future__ import annotations

import abc
import hashlib
from collections.abc import Mapping
from dataclasses import replace
from typing import Any, ClassVar

import anyio
import anyio.to_thread
import numpy as np
import numpy.typing as npt

from flrt.aggregation import (
    Aggregator,
    PendingUpdate,
    WeightedMean,
    Weighting,
    control_for_sites,
    initial_control,
    layout_of,
    make_aggregator,
    make_optimizer,
    prefault,
    scaffold_server_step,
)
from flrt.errors import AggregationError, RoundFailedError, UpdateError, WorkflowError
from flrt.job import FedAvgParams, FedOptParams, FedProxParams, JobSpec, ScaffoldParams
from flrt.model import all_finite
from flrt.tasks import Metrics, TrainResult, TrainTask, UpdateKind, Weights

from .controller import Controller, MetricsReported, ResultArrived, Workflow
from .evaluation import cross_site_eval, evaluate_global, weighted_metrics
from .quorum import SiteOutcome
from .rounds import RoundOutcome, RoundPolicy, run_round
from .sampling import SiteHistory
from .state import RoundSummary, WorkflowState

__all__ = ["TRAINING_WORKFLOWS", "fedavg", "fedopt", "fedprox", "job_seed", "scaffold", "train"]

_MB = 1024 * 1024

#: A fold or server step over fewer bytes than this runs on the event loop: a hop to a worker
#: thread and back would cost more than the work.
_THREAD_BYTES = 1 * _MB


async def fold_pending(aggregator: Aggregator, pending: PendingUpdate) -> None:
    """Fold a prepared update (in a worker thread if it is large and the aggregator allows it)
    and settle it, whatever happens. Raises :class:`~flrt.errors.UpdateError` like ``commit``."""
    try:
        size = sum(array.nbytes for array in pending.arrays.values())
        if aggregator.fold_in_thread and size >= _THREAD_BYTES:
            await anyio.to_thread.run_sync(pending.fold)
        else:
            pending.fold()
    finally:
        aggregator.settle(pending)


async def _server_step(
    strategy: _Strategy, state: WorkflowState, aggregator: Aggregator, outcome: RoundOutcome
) -> tuple[Weights, Mapping[str, Weights]]:
    """The round's new model and array groups, built in a worker thread if they are large (so the
    event loop keeps serving the sites meanwhile)."""
    size = sum(a.nbytes for a in state.weights.values())
    size += sum(a.nbytes for group in state.arrays.values() for a in group.values())
    if size < _THREAD_BYTES:
        return strategy.step(state, aggregator, outcome)
    return await anyio.to_thread.run_sync(strategy.step, state, aggregator, outcome)


def job_seed(job: JobSpec, job_id: str) -> int:
    """The job's seed: ``[workflow] seed`` if set, else derived from the job id (stable across
    restarts of the same job)."""
    if job.workflow.seed is not None:
        return job.workflow.seed
    return int.from_bytes(hashlib.sha256(job_id.encode()).digest()[:8], "big") >> 1


class _Strategy(abc.ABC):
    """What differs between the training workflows."""

    name: ClassVar[str]

    def __init__(self, job: JobSpec) -> None:
        self.job = job
        self.params: FedAvgParams | ScaffoldParams = self._params(job)

    @staticmethod
    @abc.abstractmethod
    def _params(job: JobSpec) -> FedAvgParams | ScaffoldParams: ...

    def initial_arrays(self, weights: Weights) -> dict[str, Weights]:
        return {}

    def task_params(self) -> dict[str, Any]:
        params: dict[str, Any] = {}
        if self.params.local_epochs is not None:
            params["local_epochs"] = self.params.local_epochs
        if self.params.local_steps is not None:
            params["local_steps"] = self.params.local_steps
        return params

    def task_extras(self, state: WorkflowState) -> dict[str, Weights]:
        return {}

    def aggregator(self) -> Aggregator:
        p = self.params
        assert isinstance(p, FedAvgParams)
        return make_aggregator(
            p.aggregator,
            memory_budget_bytes=int(p.memory_budget_mb * _MB),
            trim_ratio=p.trim_ratio,
            byzantine=p.byzantine,
        )

    def begin(self, state: WorkflowState, aggregator: Aggregator) -> None:
        aggregator.begin(state.weights)

    async def fold(self, site: str, reply: ResultArrived, aggregator: Aggregator) -> None:
        result = reply.result
        assert isinstance(result, TrainResult)
        if reply.staged:
            pending = aggregator.prepare_commit(site)
        else:
            pending = aggregator.prepare_add(site, result)
        await fold_pending(aggregator, pending)

    @abc.abstractmethod
    def step(
        self, state: WorkflowState, aggregator: Aggregator, outcome: RoundOutcome
    ) -> tuple[Weights, Mapping[str, Weights]]:
        """The next global model and array groups."""

    def close(self, aggregator: Aggregator) -> None:
        aggregator.close()


class _FedAvg(_Strategy):
    name: ClassVar[str] = "fedavg"

    @staticmethod
    def _params(job: JobSpec) -> FedAvgParams:
        params = job.workflow.params
        assert isinstance(params, FedAvgParams)
        return params

    def step(
        self, state: WorkflowState, aggregator: Aggregator, outcome: RoundOutcome
    ) -> tuple[Weights, Mapping[str, Weights]]:
        return aggregator.finish(), state.arrays


class _FedProx(_FedAvg):
    name: ClassVar[str] = "fedprox"

    def task_params(self) -> dict[str, Any]:
        params = super().task_params()
        assert isinstance(self.params, FedProxParams)
        params["fedprox_mu"] = self.params.mu
        return params


class _FedOpt(_FedAvg):
    name: ClassVar[str] = "fedopt"

    def step(
        self, state: WorkflowState, aggregator: Aggregator, outcome: RoundOutcome
    ) -> tuple[Weights, Mapping[str, Weights]]:
        p = self.params
        assert isinstance(p, FedOptParams)
        optimizer = make_optimizer(
            p.optimizer, server_lr=p.server_lr, beta1=p.beta1, beta2=p.beta2, tau=p.tau
        )
        optimizer.load_state(
            {"m": state.arrays.get("fedopt.m", {}), "v": state.arrays.get("fedopt.v", {})}
        )
        weights = optimizer.step(state.weights, aggregator.finish_delta())
        moments = optimizer.state()
        return weights, {**state.arrays, "fedopt.m": moments["m"], "fedopt.v": moments["v"]}


class _Scaffold(_Strategy):
    name: ClassVar[str] = "scaffold"
    CONTROL = "scaffold.c"

    @staticmethod
    def _params(job: JobSpec) -> ScaffoldParams:
        params = job.workflow.params
        assert isinstance(params, ScaffoldParams)
        return params

    def initial_arrays(self, weights: Weights) -> dict[str, Weights]:
        return {self.CONTROL: dict(initial_control(weights))}

    def task_extras(self, state: WorkflowState) -> dict[str, Weights]:
        return {"scaffold_c": control_for_sites(self._control(state), state.weights)}

    def _control(self, state: WorkflowState) -> dict[str, npt.NDArray[np.float64]]:
        return {k: np.asarray(v, dtype=np.float64) for k, v in state.arrays[self.CONTROL].items()}

    def aggregator(self) -> Aggregator:
        p = self.params
        weighting = (
            Weighting.SAMPLES if isinstance(p, ScaffoldParams) and p.weighted else Weighting.UNIFORM
        )
        budget = int(p.memory_budget_mb * _MB)
        self._control_mean = WeightedMean(weighting=Weighting.UNIFORM, staging_budget_bytes=budget)
        return WeightedMean(weighting=weighting, staging_budget_bytes=budget)

    def begin(self, state: WorkflowState, aggregator: Aggregator) -> None:
        aggregator.begin(state.weights)
        zeros: Weights = {k: np.zeros_like(c) for k, c in self._control(state).items()}
        self._control_mean.begin(zeros)

    async def fold(self, site: str, reply: ResultArrived, aggregator: Aggregator) -> None:
        result = reply.result
        assert isinstance(result, TrainResult)
        delta = result.extras.get("scaffold_delta")
        if delta is None:
            raise UpdateError("a SCAFFOLD result needs extras['scaffold_delta']", site=site)
        control = self._control_mean
        control.open(site, num_samples=1, kind=UpdateKind.DIFF, layout=layout_of(delta))
        try:
            for name, array in delta.items():
                control.accept(site, name, array)
                if not all_finite(array):
                    raise UpdateError("holds a NaN or an infinity", site=site, variable=name)
            await super().fold(site, reply, aggregator)  # the model update, checked and folded
        except BaseException:
            control.discard(site)
            raise
        control.commit(site)

    def step(
        self, state: WorkflowState, aggregator: Aggregator, outcome: RoundOutcome
    ) -> tuple[Weights, Mapping[str, Weights]]:
        p = self.params
        assert isinstance(p, ScaffoldParams)
        answered = len(outcome.accepted)
        weights, control = scaffold_server_step(
            state.weights,
            self._control(state),
            aggregator.finish_delta(),
            self._control_mean.finish_delta(),
            answered=answered,
            population=max(state.population, answered),
            server_lr=p.server_lr,
        )
        return weights, {**state.arrays, self.CONTROL: dict(control)}

    def close(self, aggregator: Aggregator) -> None:
        aggregator.close()
        self._control_mean.close()


_STRATEGIES: dict[str, type[_Strategy]] = {
    cls.name: cls for cls in (_FedAvg, _FedProx, _FedOpt, _Scaffold)
}

#: The workflow names :func:`train` runs.
TRAINING_WORKFLOWS = frozenset(_STRATEGIES)


def _why_not_aggregated(
    error: AggregationError, strategy: _Strategy, trained: Mapping[str, tuple[Metrics, int]]
) -> str:
    """Why a round's updates could not be aggregated, with what the sites said if it explains it."""
    if trained and not any(n for _, n in trained.values()):
        params = strategy.params
        weighing = params.aggregator if isinstance(params, FedAvgParams) else strategy.name
        return (
            f"{error.reason}: every site that answered ({', '.join(sorted(trained))}) reported"
            f" num_samples = 0, and {weighing} weighs updates by their samples"
        )
    return error.reason


def _record(
    history: Mapping[str, SiteHistory], outcomes: Mapping[str, SiteOutcome]
) -> dict[str, SiteHistory]:
    updated = dict(history)
    for site, outcome in outcomes.items():
        updated[site] = updated.get(site, SiteHistory()).record(outcome)
    return updated


def _start(
    controller: Controller,
    job: JobSpec,
    strategy: _Strategy,
    *,
    job_id: str,
    initial_weights: Weights | None,
    resume: WorkflowState | None,
) -> WorkflowState:
    if resume is not None:
        if initial_weights is not None:
            raise WorkflowError("give initial_weights or resume, not both")
        if (resume.job_id, resume.workflow) != (job_id, job.workflow.name):
            raise WorkflowError(
                f"the state to resume is job {resume.job_id} ({resume.workflow}),"
                f" not job {job_id} ({job.workflow.name})"
            )
        return resume
    if initial_weights is None:
        raise WorkflowError("a new workflow needs initial_weights")
    population = len(job.targets) if job.targets else len(controller.available_sites())
    return WorkflowState(
        job_id=job_id,
        workflow=job.workflow.name,
        seed=job_seed(job, job_id),
        round=0,
        weights=dict(initial_weights),
        arrays=strategy.initial_arrays(initial_weights),
        history=dict(controller.site_history()),
        population=population,
    )


async def train(
    controller: Controller,
    job: JobSpec,
    *,
    job_id: str,
    initial_weights: Weights | None = None,
    resume: WorkflowState | None = None,
) -> WorkflowState:
    """Run (or resume) a training job: ``fedavg``, ``fedprox``, ``scaffold`` or ``fedopt``.

    Give ``initial_weights`` for a new run, or ``resume`` (a state loaded from a checkpoint).
    Returns the final state. Raises :class:`~flrt.errors.RoundFailedError` if a round cannot reach
    its quorum, :class:`~flrt.errors.WorkflowError` for a bad start, and lets cancellation through
    (the last checkpoint is then the place to resume from).
    """
    strategy_cls = _STRATEGIES.get(job.workflow.name)
    if strategy_cls is None:
        raise WorkflowError(f"{job.workflow.name!r} is not a training workflow")
    strategy = strategy_cls(job)
    state = _start(
        controller, job, strategy, job_id=job_id, initial_weights=initial_weights, resume=resume
    )
    if state.finished:
        return state
    params = strategy.params
    spec = job.workflow
    policy = RoundPolicy.from_spec(spec)
    everyone = RoundPolicy.from_spec(spec, all_sites=True)

    candidates = frozenset(job.targets) if job.targets else None  # None: every site

    aggregator = strategy.aggregator()  # one for the whole job: its buffers serve every round
    try:
        for r in range(state.round + 1, spec.rounds + 1):
            trained: dict[str, tuple[Metrics, int]] = {}

            async def on_result(
                site: str,
                reply: ResultArrived,
                trained: dict[str, tuple[Metrics, int]] = trained,
            ) -> None:
                if not isinstance(reply.result, TrainResult):
                    raise UpdateError("expected a train result", site=site)
                await strategy.fold(site, reply, aggregator)
                trained[site] = (dict(reply.result.metrics), reply.result.num_samples)

            strategy.begin(state, aggregator)
            task = TrainTask(
                job_id=job_id,
                round=r,
                weights=state.weights,
                params=strategy.task_params(),
                extras=strategy.task_extras(state),
            )
            failure: Exception | None = None
            async with anyio.create_task_group() as tg:
                fresh = aggregator.new_buffers()
                if sum(buffer.nbytes for buffer in fresh) >= _THREAD_BYTES:
                    # First touch of fresh memory is slow here: take it while the task goes out.
                    tg.start_soon(anyio.to_thread.run_sync, prefault, fresh)
                del fresh
                try:
                    outcome = await run_round(
                        controller,
                        task,
                        candidates=candidates,
                        policy=policy,
                        seed=state.seed,
                        history=state.history,
                        on_result=on_result,
                        sink=aggregator,
                    )
                except Exception as exc:  # raised as itself, not in the task group's group
                    failure = exc
            if failure is not None:
                raise failure
            try:
                weights, arrays = await _server_step(strategy, state, aggregator, outcome)
            except AggregationError as exc:
                raise RoundFailedError(r, _why_not_aggregated(exc, strategy, trained)) from exc
            for site in sorted(trained):
                metrics, n = trained[site]
                controller.report(MetricsReported(r, "train", site, metrics, n))
            train_metrics, samples = weighted_metrics(trained.values())
            controller.report(MetricsReported(r, "train", None, train_metrics, samples))
            history = _record(state.history, outcome.outcomes)
            eval_metrics: Metrics = {}
            if params.evaluate_every and r % params.evaluate_every == 0:
                eval_metrics, evaluated = await evaluate_global(
                    controller,
                    job_id=job_id,
                    round=r,
                    weights=weights,
                    candidates=candidates,
                    policy=everyone,
                    seed=state.seed,
                    history=history,
                )
                history = _record(history, evaluated.outcomes)
            summary = RoundSummary(
                round=r,
                started_at=outcome.started_at,
                closed_at=outcome.closed_at,
                accepted=outcome.accepted,
                cancelled=outcome.cancelled,
                failed=tuple(outcome.failed),
                discarded=len(outcome.discarded),
                num_samples=samples,
                train_metrics=train_metrics,
                eval_metrics=eval_metrics,
            )
            state = replace(
                state,
                round=r,
                weights=weights,
                arrays=arrays,
                history=history,
                rounds=(*state.rounds, summary),
            )
            await controller.save_checkpoint(state)
    finally:
        strategy.close(aggregator)

    if params.cross_site_eval and state.cross_site is None:
        cross = await cross_site_eval(
            controller,
            job_id=job_id,
            round=state.round + 1,
            weights=state.weights,
            candidates=candidates,
            policy=everyone,
            seed=state.seed,
            history=state.history,
            task_params=strategy.task_params(),
            memory_budget_bytes=int(params.memory_budget_mb * _MB),
        )
        state = replace(state, cross_site=cross)
        await controller.save_checkpoint(state)
    state = replace(state, finished=True)
    await controller.save_checkpoint(state)
    return state


def _named(name: str) -> Workflow:
    async def workflow(
        controller: Controller,
        job: JobSpec,
        *,
        job_id: str,
        initial_weights: Weights | None = None,
        resume: WorkflowState | None = None,
    ) -> WorkflowState:
        if job.workflow.name != name:
            raise WorkflowError(
                f"this is the {name} workflow, the job asks for {job.workflow.name}"
            )
        return await train(
            controller, job, job_id=job_id, initial_weights=initial_weights, resume=resume
        )

    workflow.__name__ = workflow.__qualname__ = name
    workflow.__doc__ = f"The {name} workflow: :func:`train` for a job whose workflow is {name!r}."
    return workflow


fedavg = _named("fedavg")
fedprox = _named("fedprox")
scaffold = _named("scaffold")
fedopt = _named("fedopt")
