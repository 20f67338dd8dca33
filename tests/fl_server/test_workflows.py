"""Workflows over the in-process LocalController, on trio and asyncio, on a virtual clock: no test
sleeps, every test has a deadline."""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from flrt.aggregation import FedAdam
from flrt.errors import RoundFailedError, WorkflowError, WorkflowStalledError
from flrt.examples.logreg import centralised_weights
from flrt.filters import ExcludeVariables, FilterChain, Task
from flrt.job import WORKFLOW_PARAMS, FedAvgParams, load_job
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext, load_trainer
from flrt.workflows import (
    LocalController,
    LocalSite,
    MetricsReported,
    RoundAborted,
    RoundCompleted,
    SiteHistory,
    SiteOutcome,
    UpdateDiscarded,
    WorkflowState,
    event_fields,
    run_workflow,
    training,
)
from flrt.workflows.run import WORKFLOWS

from ._sites import LinearSite, initial_model, job

pytestmark = pytest.mark.anyio

DEADLINE = 20  # seconds of wall time for any one workflow
LOGREG_JOB = Path(__file__).resolve().parents[2] / "examples" / "logreg" / "job.toml"


def _sites(*names: str, samples: int = 20) -> dict[str, LinearSite]:
    return {name: LinearSite(name, samples + 10 * i) for i, name in enumerate(names)}


def _events(ctl: LocalController, cls: type[Any]) -> list[Any]:
    return [e for e in ctl.events if isinstance(e, cls)]


class OffsetSite:
    """Returns the global model plus a fixed offset: FedAvg's answer is known in advance."""

    def __init__(self, offset: float, samples: int) -> None:
        self.offset = offset
        self.samples = samples

    def train(self, task: TrainTask) -> TrainResult:
        return TrainResult(
            weights={
                k: np.asarray(v + self.offset, dtype=v.dtype) for k, v in task.weights.items()
            },
            num_samples=self.samples,
            metrics={"loss": self.offset},
        )


async def _run(ctl: LocalController, spec: Any, **kwargs: Any) -> WorkflowState:
    with anyio.fail_after(DEADLINE):
        return await run_workflow(ctl, spec, job_id="job-1", **kwargs)


# ----------------------------------------------------------------------------- fedavg


async def test_fedavg_round_is_the_sample_weighted_mean() -> None:
    offsets = {"a": (1.0, 10), "b": (2.0, 30), "c": (-4.0, 60)}
    ctl = LocalController(
        {s: LocalSite(train=OffsetSite(o, n).train) for s, (o, n) in offsets.items()}
    )
    start = {"x": np.array([0.0, 10.0], dtype=np.float64)}
    state = await _run(ctl, job(rounds=2, min_sites=3), initial_weights=start)
    step = (1.0 * 10 + 2.0 * 30 - 4.0 * 60) / 100
    assert np.allclose(state.weights["x"], start["x"] + 2 * step)
    assert state.round == 2
    assert state.finished
    assert [c.round for c in ctl.checkpoints] == [1, 2, 2]  # each round, then the final state
    means = [e for e in _events(ctl, MetricsReported) if e.site is None and e.kind == "train"]
    assert means[0].metrics == {"loss": pytest.approx(step)}
    assert means[0].num_samples == 100


@pytest.mark.parametrize(("elements", "inline"), [(1000, True), (300_000, False)])
async def test_the_server_step_of_a_small_model_runs_on_the_event_loop(
    elements: int, inline: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = training._FedAvg.step

    def step(self: Any, *args: Any) -> Any:
        threads.append(threading.get_ident())
        return real(self, *args)

    monkeypatch.setattr(training._FedAvg, "step", step)
    ctl = LocalController({s: LocalSite(train=OffsetSite(1.0, 10).train) for s in ("a", "b")})
    start = {"x": np.zeros(elements, dtype=np.float32)}  # 4 kB, or 1.2 MB
    state = await _run(ctl, job(rounds=2, min_sites=2), initial_weights=start)
    assert np.array_equal(state.weights["x"], np.full(elements, 2.0, dtype=np.float32))
    assert len(threads) == 2
    assert (threading.get_ident() in threads) is inline
    assert len(set(threads)) == 1 or not inline


async def test_fedavg_trains_a_linear_model_and_evaluates_it() -> None:
    sites = _sites("a", "b", "c", "d")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    spec = job(rounds=12, min_sites=3, params="evaluate_every = 4")
    state = await _run(ctl, spec, initial_weights=initial_model())
    losses = [r.train_metrics["loss"] for r in state.rounds]
    assert losses[-1] < losses[0] / 50
    assert np.allclose(state.weights["w"], [1.5, -2.0, 0.5], atol=0.05)
    assert state.weights["w"].dtype == np.float32
    assert state.weights["steps"].dtype == np.int64
    assert state.weights["steps"][0] == 12 * 5
    assert [bool(r.eval_metrics) for r in state.rounds] == [r % 4 == 0 for r in range(1, 13)]
    evals = [e for e in _events(ctl, MetricsReported) if e.kind == "evaluate" and e.site]
    assert {e.site for e in evals} == set(sites)  # evaluation asks every site
    assert any(isinstance(t, EvalTask) for t in sites["a"].seen)


async def test_stragglers_are_cancelled_and_late_results_never_mixed_in() -> None:
    sites = _sites("a", "b", "slow")
    ctl = LocalController(
        {
            "a": sites["a"].local_site(delay=1.0),
            "b": sites["b"].local_site(delay=1.0),
            "slow": sites["slow"].local_site(delay=20.0),
        },
        deliver_late=True,  # the straggler's answers still arrive, rounds later
    )
    state = await _run(
        ctl, job(rounds=12, min_sites=2, grace_seconds=2.0), initial_weights=initial_model()
    )

    # every round closed at the grace deadline: 1 s for a and b, then 2 s of grace
    for summary in state.rounds:
        assert summary.accepted == ("a", "b")
        assert summary.cancelled == ("slow",)
        assert summary.closed_at - summary.started_at == pytest.approx(3.0)
    late = [e for e in _events(ctl, UpdateDiscarded) if e.site == "slow"]
    assert late  # the straggler's results did arrive...
    assert {e.reason for e in late} == {"other_round"}  # ...into later rounds, and were dropped
    assert ctl.history["slow"] == SiteHistory(late=12)
    assert state.history["a"].on_time == 12

    # the same run without the straggler ends with the same model, bit for bit
    clean = _sites("a", "b")
    ctl2 = LocalController({n: s.local_site(delay=1.0) for n, s in clean.items()})
    alone = await _run(
        ctl2, job(rounds=12, min_sites=2, grace_seconds=2.0), initial_weights=initial_model()
    )
    for name in state.weights:
        assert np.array_equal(state.weights[name], alone.weights[name])


async def test_a_dropout_does_not_stall_a_round_that_can_still_reach_quorum() -> None:
    sites = _sites("a", "b", "c")
    ctl = LocalController(
        {
            "a": sites["a"].local_site(delay=1.0),
            "b": sites["b"].local_site(delay=2.0),
            "c": sites["c"].local_site(delay=50.0),
        }
    )
    ctl.schedule(1.5, lambda: ctl.set_online("c", False))  # c drops out mid-round 1
    spec = job(rounds=2, min_sites=2, grace_seconds=30.0)
    state = await _run(ctl, spec, initial_weights=initial_model())
    first = state.rounds[0]
    assert first.accepted == ("a", "b")
    assert first.failed == ("c",)
    assert first.closed_at == pytest.approx(2.0)  # as soon as everyone left had answered
    assert state.rounds[1].accepted == ("a", "b")  # c is gone: not asked any more
    assert ctl.history["c"].failed == 1


async def test_a_failing_trainer_is_counted_out_with_its_reason() -> None:
    sites = _sites("a", "b", "c")

    def broken(task: TrainTask) -> TrainResult:
        raise RuntimeError("GPU on fire")

    ctl = LocalController(
        {
            "a": sites["a"].local_site(),
            "b": sites["b"].local_site(),
            "c": LocalSite(train=broken),
        }
    )
    state = await _run(ctl, job(rounds=1, min_sites=2), initial_weights=initial_model())
    completed = _events(ctl, RoundCompleted)[0]
    assert list(completed.failed) == ["c"]
    assert completed.failed["c"].startswith("RuntimeError: GPU on fire (error id ")
    assert state.rounds[0].accepted == ("a", "b")


async def test_a_round_that_cannot_reach_quorum_fails_the_workflow_with_a_reason() -> None:
    sites = _sites("a", "b")
    ctl = LocalController(
        {
            "a": sites["a"].local_site(),
            "b": sites["b"].local_site(
                fail=lambda task: "out of memory" if task.round == 2 else None
            ),
        }
    )
    with pytest.raises(RoundFailedError) as info:
        await _run(ctl, job(rounds=3, min_sites=2), initial_weights=initial_model())
    assert info.value.round == 2
    assert "b (out of memory)" in info.value.reason
    aborted = _events(ctl, RoundAborted)
    assert [e.round for e in aborted] == [2]
    assert ctl.checkpoints[-1].round == 1  # the job can resume from round 1


async def test_wait_for_quorum_waits_for_a_site_to_come_back() -> None:
    sites = _sites("a", "b")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    ctl.set_online("b", False)
    ctl.schedule(50.0, lambda: ctl.set_online("b", True))
    spec = job(rounds=1, min_sites=2, wait_for_quorum=True)
    state = await _run(ctl, spec, initial_weights=initial_model())
    assert state.rounds[0].accepted == ("a", "b")
    assert state.rounds[0].closed_at == pytest.approx(51.0)  # b joined at 50 and answered 1 s later


async def test_wait_for_quorum_gives_up_at_the_round_timeout() -> None:
    sites = _sites("a", "b")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    ctl.set_online("b", False)
    ctl.schedule(50.0, lambda: ctl.set_online("b", True))
    spec = job(rounds=1, min_sites=2, wait_for_quorum=True, round_timeout=30.0)
    with pytest.raises(RoundFailedError, match="round timeout"):
        await _run(ctl, spec, initial_weights=initial_model())
    assert ctl.now() == pytest.approx(30.0)


async def test_waiting_forever_is_reported_not_hung() -> None:
    sites = _sites("a", "b")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    ctl.set_online("b", False)
    with pytest.raises(WorkflowStalledError):
        await _run(
            ctl, job(rounds=1, min_sites=2, wait_for_quorum=True), initial_weights=initial_model()
        )


async def test_invalid_updates_are_refused_and_counted_as_failures() -> None:
    sites = _sites("a", "b")

    def wrong_shape(task: TrainTask) -> TrainResult:
        return TrainResult(weights={"w": np.zeros(4, dtype=np.float32)}, num_samples=5)

    def evaluation_instead(task: TrainTask) -> Any:
        return EvalResult(metrics={}, num_samples=1)

    ctl = LocalController(
        {
            "a": sites["a"].local_site(),
            "b": sites["b"].local_site(),
            "bad": LocalSite(train=wrong_shape),
            "odd": LocalSite(train=evaluation_instead),
        }
    )
    state = await _run(ctl, job(rounds=1, min_sites=2), initial_weights=initial_model())
    assert state.rounds[0].accepted == ("a", "b")
    discarded = {e.site: e.reason for e in _events(ctl, UpdateDiscarded)}
    assert "shape" in discarded["bad"]
    completed = _events(ctl, RoundCompleted)[0]
    assert completed.failed["bad"].startswith("invalid update")
    assert "not TrainResult" in completed.failed["odd"]


async def test_streamed_updates_aggregate_exactly_like_whole_ones() -> None:
    def run(stream: int | None) -> Callable[[], Any]:
        async def go() -> WorkflowState:
            sites = _sites("a", "b", "c")
            sites["c"].diff = True
            ctl = LocalController(
                {n: s.local_site() for n, s in sites.items()}, stream_pieces=stream
            )
            return await _run(ctl, job(rounds=3, min_sites=3), initial_weights=initial_model())

        return go

    whole = await run(None)()
    streamed = await run(2)()
    for name in whole.weights:
        assert np.array_equal(whole.weights[name], streamed.weights[name])


async def test_filters_keep_excluded_variables_on_the_site() -> None:
    sites = _sites("a", "b")
    chain = {n: FilterChain(mandatory=[ExcludeVariables(names=["b"])]) for n in sites}
    ctl = LocalController(
        {n: LocalSite(train=s.train, filters=chain[n], delay=1.0) for n, s in sites.items()}
    )
    state = await _run(ctl, job(rounds=3, min_sites=2), initial_weights=initial_model())
    assert float(state.weights["b"]) == 0.0  # never left the sites, never aggregated
    assert float(np.abs(state.weights["w"]).sum()) > 0
    second = next(t for t in sites["a"].seen if t.round == 2)
    assert float(second.weights["b"]) != 0.0  # the site trained on its own b, restored


# ----------------------------------------------------------------------------- fedprox, scaffold, fedopt


async def test_fedprox_sends_mu_and_local_epochs_to_the_sites() -> None:
    sites = _sites("a", "b")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    spec = job("fedprox", params="mu = 0.5\nlocal_epochs = 2", rounds=2)
    state = await _run(ctl, spec, initial_weights=initial_model())
    params = [t.params for t in sites["a"].seen]
    assert params == [{"local_epochs": 2, "fedprox_mu": 0.5}] * 2
    assert state.weights["steps"][0] == 4


async def test_scaffold_carries_control_variates_both_ways() -> None:
    sites = _sites("a", "b", "c")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    spec = job("scaffold", params="server_lr = 1.0", rounds=1, min_sites=2, sites_per_round=2)
    state = await _run(ctl, spec, initial_weights=initial_model())
    asked = [s for s in sites.values() if s.seen]
    assert len(asked) == 2
    task = asked[0].seen[0]
    assert isinstance(task, TrainTask)
    assert set(task.extras["scaffold_c"]) == {"w", "b"}  # integers carry no control variate
    assert task.extras["scaffold_c"]["w"].dtype == np.float32
    # c = c + |S|/N * mean(delta_c): N = 3 sites in the job, |S| = 2 answered
    deltas = [s.control for s in asked]
    assert all(d is not None for d in deltas)
    expected = (2 / 3) * np.mean([d["w"] for d in deltas if d is not None], axis=0)
    assert np.allclose(state.arrays["scaffold.c"]["w"], expected)
    assert state.population == 3

    # a SCAFFOLD result without its control delta is an invalid update
    plain = _sites("p", "q")
    ctl2 = LocalController(
        {
            "p": plain["p"].local_site(),
            "q": LocalSite(train=lambda t: TrainResult(weights=dict(t.weights), num_samples=1)),
        }
    )
    with pytest.raises(RoundFailedError, match="scaffold_delta"):
        await _run(ctl2, job("scaffold", rounds=1, min_sites=2), initial_weights=initial_model())


async def test_a_scaffold_control_delta_with_a_nan_is_an_invalid_update() -> None:
    def poisoned(task: TrainTask) -> TrainResult:
        delta = {"w": np.array([0.0, np.nan, 0.0]), "b": np.zeros(())}
        return TrainResult(
            weights=dict(task.weights), num_samples=1, extras={"scaffold_delta": delta}
        )

    sites = _sites("p")
    ctl = LocalController({"p": sites["p"].local_site(), "q": LocalSite(train=poisoned)})
    with pytest.raises(RoundFailedError, match="NaN"):
        await _run(ctl, job("scaffold", rounds=1, min_sites=2), initial_weights=initial_model())


async def test_fedopt_applies_fedadam_to_the_mean_update() -> None:
    offsets = {"a": (0.5, 1), "b": (1.5, 1)}
    ctl = LocalController(
        {s: LocalSite(train=OffsetSite(o, n).train) for s, (o, n) in offsets.items()}
    )
    spec = job(
        "fedopt",
        params='optimizer = "fedadam"\nserver_lr = 0.1\nbeta1 = 0.9\nbeta2 = 0.99\ntau = 0.001',
        rounds=3,
    )
    start: Weights = {"x": np.array([1.0, -1.0])}
    state = await _run(ctl, spec, initial_weights=start)
    reference = FedAdam(server_lr=0.1, beta1=0.9, beta2=0.99, tau=0.001)
    expected = start
    for _ in range(3):
        expected = reference.step(expected, {"x": np.full(2, 1.0)})  # mean offset: 1.0
    assert np.allclose(state.weights["x"], expected["x"], rtol=1e-12)
    assert set(state.arrays) == {"fedopt.m", "fedopt.v"}


# ----------------------------------------------------------------------------- cross-site evaluation


async def test_cross_site_evaluation_fills_the_matrix_and_names_missing_cells() -> None:
    sites = _sites("a", "b", "c")

    def refuse_models_of_a(task: Task) -> str | None:
        return (
            "policy: no foreign models"
            if isinstance(task, EvalTask) and task.model == "a"
            else None
        )

    ctl = LocalController(
        {
            "a": sites["a"].local_site(),
            "b": sites["b"].local_site(),
            "c": sites["c"].local_site(fail=refuse_models_of_a),
        }
    )
    spec = job(rounds=2, min_sites=2, params="cross_site_eval = true")
    state = await _run(ctl, spec, initial_weights=initial_model())
    cross = state.cross_site
    assert cross is not None
    assert cross.models == ("global", "a", "b", "c")
    assert cross.evaluators == ("a", "b", "c")
    assert cross.missing == {("c", "a"): "failed: policy: no foreign models"}
    matrix = cross.matrix("mse")
    assert matrix[2][1] is None
    filled = [v for row in matrix for v in row if v is not None]
    assert len(filled) == 11
    # cross-site tasks carry their own round, so late training results cannot pass for them
    assert {
        t.round for t in sites["a"].seen if isinstance(t, EvalTask) and t.model != "global"
    } == {3}
    assert ctl.checkpoints[-1].cross_site == cross


async def test_cross_site_eval_workflow_on_a_given_model() -> None:
    sites = _sites("a", "b")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    spec = job("cross_site_eval", params="include_global = false", min_sites=1)
    state = await _run(ctl, spec, initial_weights=initial_model())
    assert state.cross_site is not None
    assert state.cross_site.models == ("a", "b")
    assert len(state.cross_site.results) == 4


# ----------------------------------------------------------------------------- misuse


async def test_bad_starts_are_refused() -> None:
    ctl = LocalController({"a": _sites("a")["a"].local_site()})
    with pytest.raises(WorkflowError, match="initial_weights"):
        await _run(ctl, job(min_sites=1))
    state = WorkflowState(
        job_id="other", workflow="fedavg", seed=1, round=1, weights=initial_model()
    )
    with pytest.raises(WorkflowError, match="job other"):
        await _run(ctl, job(min_sites=1), resume=state)


# ----------------------------------------------------------------------------- the controller itself


async def test_local_scatter_yields_replies_as_an_async_iterator_on_virtual_time() -> None:
    def answer(value: float) -> Callable[[EvalTask], EvalResult]:
        return lambda task: EvalResult(metrics={"v": value}, num_samples=1)

    ctl = LocalController(
        {
            "a": LocalSite(evaluate=answer(1.0), delay=3.0),
            "b": LocalSite(evaluate=answer(2.0), delay=1.0),
            "c": LocalSite(evaluate=answer(3.0), delay=2.0, fail=lambda t: "refused"),
        }
    )
    task = EvalTask(job_id="j", round=1, weights={})
    arrivals = []
    with anyio.fail_after(DEADLINE):
        async with ctl.scatter(task, ["a", "b", "c", "ghost"]) as scatter:
            async for reply in scatter:
                arrivals.append((ctl.now(), type(reply).__name__, reply.site))
    assert arrivals == [
        (0.0, "SiteFailed", "ghost"),
        (1.0, "ResultArrived", "b"),
        (2.0, "SiteFailed", "c"),
        (3.0, "ResultArrived", "a"),
    ]


async def test_receive_returns_none_at_the_deadline_and_time_only_moves_forward() -> None:
    ctl = LocalController({"a": LocalSite(evaluate=lambda t: EvalResult({}, 1), delay=10.0)})
    fired: list[float] = []
    ctl.schedule(4.0, lambda: fired.append(ctl.now()))
    with anyio.fail_after(DEADLINE):
        async with ctl.scatter(EvalTask(job_id="j", round=1, weights={}), ["a"]) as scatter:
            assert await scatter.receive(5.0) is None
            assert ctl.now() == 5.0
            assert fired == [4.0]
            await scatter.cancel(["a"])
            with pytest.raises(WorkflowStalledError):
                await scatter.receive(None)  # a is cancelled: nothing can arrive
            assert ctl.now() == 10.0  # a's cancelled answer was due at 10, and dropped
        await ctl.sleep_until(2.0)
        assert ctl.now() == 10.0


async def test_targets_limit_the_sites_a_job_uses() -> None:
    sites = _sites("a", "b", "c")
    ctl = LocalController({n: s.local_site() for n, s in sites.items()})
    base = job(rounds=2, min_sites=2)
    spec = replace(base, targets=("a", "c"))
    state = await _run(ctl, spec, initial_weights=initial_model())
    assert all(r.accepted == ("a", "c") for r in state.rounds)
    assert sites["b"].seen == []
    assert state.population == 2


def test_every_workflow_a_job_may_name_is_implemented() -> None:
    assert set(WORKFLOWS) == set(WORKFLOW_PARAMS)


async def test_the_site_sides_logreg_example_matches_centralised_gradient_descent(
    tmp_path: Path,
) -> None:
    """The end-to-end contract with the site side: its example trainer, loaded from its job file,
    run by our FedAvg, gives what gradient descent on the pooled data gives."""
    spec = load_job(LOGREG_JOB)
    spec = replace(spec, workflow=replace(spec.workflow, rounds=5, params=FedAvgParams()))
    names = [f"site-{i}" for i in range(1, spec.trainer.args["num_sites"] + 1)]
    trainers = {n: load_trainer(spec.trainer.spec, spec.trainer.args) for n in names}
    ctl = LocalController(
        {
            n: LocalSite.from_trainer(t, SiteContext.create(n, scratch=tmp_path / n), delay=1.0)
            for n, t in trainers.items()
        }
    )
    initial = trainers["site-1"].initial_weights()
    state = await _run(ctl, spec, initial_weights=initial)
    expected = centralised_weights(spec.trainer.args, rounds=5, initial=initial)
    for name in expected:
        np.testing.assert_allclose(state.weights[name], expected[name], rtol=1e-10, atol=1e-12)


def test_events_turn_into_plain_log_fields() -> None:
    completed = RoundCompleted(
        round=2,
        kind="train",
        model=None,
        accepted=("a",),
        cancelled=("b",),
        failed={"c": "gone"},
        outcomes={"a": SiteOutcome.ON_TIME, "b": SiteOutcome.LATE, "c": SiteOutcome.FAILED},
        started_at=1.0,
        closed_at=4.0,
    )
    name, fields = event_fields(completed)
    assert name == "round_completed"
    assert fields["outcomes"] == {"a": "on_time", "b": "late", "c": "failed"}
    assert fields["accepted"] == ["a"]
    assert event_fields(UpdateDiscarded(1, "x", "late")) == (
        "update_discarded",
        {"round": 1, "site": "x", "reason": "late"},
    )
