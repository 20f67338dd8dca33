"""Filters: the site's mandatory filters run first and always; exclude_variables keeps variables on
the site and aggregation still works without them."""

from __future__ import annotations

from collections.abc import MutableMapping
from dataclasses import replace
from typing import Any, ClassVar

import numpy as np
import pytest
from structlog.testing import capture_logs

from flrt.aggregation import WeightedMean
from flrt.errors import ConfigError
from flrt.filters import (
    FILTERS,
    ExcludeVariables,
    Filter,
    FilterChain,
    FilterContext,
    Result,
    Task,
    build_filter,
    build_filters,
    parse_filter_spec,
    register_filter,
)
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask, UpdateKind, Weights

CTX = FilterContext(site="hospital-a", job_id="job-1", round=1)


class Recorder(Filter):
    """Appends its label to a shared log in both directions."""

    type_name: ClassVar[str] = "recorder"

    def __init__(self, label: str, log: list[str]) -> None:
        self.label = label
        self.log = log

    def filter_task(self, task: Task, context: FilterContext) -> Task:
        self.log.append(f"task:{self.label}")
        return task

    def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
        self.log.append(f"result:{self.label}")
        return result


def _task(weights: Weights, round: int = 1) -> TrainTask:
    return TrainTask(job_id="job-1", round=round, weights=weights)


def test_mandatory_filters_run_first_in_both_directions() -> None:
    log: list[str] = []
    chain = FilterChain(
        mandatory=[Recorder("site-1", log), Recorder("site-2", log)],
        job=[Recorder("job-1", log)],
    )
    task = chain.filter_task(_task({}), CTX)
    chain.filter_result(TrainResult(weights={}, num_samples=1), task, CTX)
    assert log == [
        "task:site-1",
        "task:site-2",
        "task:job-1",
        "result:site-1",
        "result:site-2",
        "result:job-1",
    ]
    assert [f.label for f in chain.filters if isinstance(f, Recorder)] == [
        "site-1",
        "site-2",
        "job-1",
    ]


def test_a_job_filter_only_sees_what_the_site_policy_let_through() -> None:
    seen: list[set[str]] = []

    class Spy(Filter):
        type_name: ClassVar[str] = "spy"

        def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
            assert isinstance(result, TrainResult)
            seen.append(set(result.weights))
            return result

    site_policy = ExcludeVariables(names=["secret"])
    chain = FilterChain(mandatory=[site_policy], job=[Spy()])
    weights = {"secret": np.ones(2), "public": np.ones(2)}
    out = chain.filter_result(TrainResult(weights=weights, num_samples=3), _task(weights), CTX)
    assert seen == [{"public"}]
    assert isinstance(out, TrainResult)
    assert set(out.weights) == {"public"}


def test_exclude_variables_drops_by_name_and_pattern_including_extras() -> None:
    f = ExcludeVariables(names=["head.weight"], patterns=[r"bn\d\..*"])
    assert f.excludes("head.weight")
    assert f.excludes("bn1.running_mean")
    assert not f.excludes("xbn1.running_mean")  # patterns match whole names
    assert not f.excludes("head.bias")
    weights = {
        "head.weight": np.ones(2),
        "head.bias": np.ones(2),
        "bn1.running_mean": np.ones(2),
    }
    result = TrainResult(
        weights=weights,
        num_samples=5,
        metrics={"loss": 0.5},
        extras={"scaffold_delta": {"head.weight": np.ones(2), "head.bias": np.ones(2)}},
    )
    out = f.filter_result(result, _task(weights), CTX)
    assert isinstance(out, TrainResult)
    assert set(out.weights) == {"head.bias"}
    assert set(out.extras["scaffold_delta"]) == {"head.bias"}
    assert (out.num_samples, out.metrics) == (5, {"loss": 0.5})
    evaluation = EvalResult(metrics={"acc": 1.0}, num_samples=3)
    assert f.filter_result(evaluation, _task(weights), CTX) is evaluation


def test_exclude_variables_restores_the_sites_own_values_into_later_tasks() -> None:
    f = ExcludeVariables(names=["head"])
    global_1 = {"head": np.zeros(2, np.float32), "body": np.zeros(2, np.float32)}
    assert f.filter_task(_task(global_1), CTX).weights["head"] is global_1["head"]  # nothing yet
    trained = {"head": np.array([3.0, 4.0], np.float32), "body": np.ones(2, np.float32)}
    f.filter_result(TrainResult(weights=trained, num_samples=1), _task(global_1), CTX)

    global_2 = {"head": np.zeros(2, np.float32), "body": np.full(2, 0.5, np.float32)}
    task = f.filter_task(_task(global_2, round=2), CTX)
    assert np.array_equal(task.weights["head"], [3.0, 4.0])  # the site's own head
    assert np.array_equal(task.weights["body"], [0.5, 0.5])  # the global body
    assert global_2["head"][0] == 0.0  # the incoming task was not modified

    # a DIFF result: the local value is the task's value plus the difference
    diff = {"head": np.array([1.0, 1.0], np.float32), "body": np.zeros(2, np.float32)}
    f.filter_result(TrainResult(weights=diff, num_samples=1, kind=UpdateKind.DIFF), task, CTX)
    task3 = f.filter_task(EvalTask(job_id="job-1", round=3, weights=global_2), CTX)
    assert np.array_equal(task3.weights["head"], [4.0, 5.0])

    other_job = replace(CTX, job_id="job-2")  # local values are kept per job
    assert f.filter_task(_task(global_2), other_job).weights["head"] is global_2["head"]

    no_restore = ExcludeVariables(names=["head"], restore_local=False)
    no_restore.filter_result(TrainResult(weights=trained, num_samples=1), _task(global_1), CTX)
    assert no_restore.filter_task(_task(global_2), CTX).weights["head"] is global_2["head"]


def test_aggregation_still_works_when_sites_exclude_variables() -> None:
    global_weights = {"head": np.zeros(2), "body": np.zeros(2)}
    policy = FilterChain(mandatory=[ExcludeVariables(names=["head"])])
    agg = WeightedMean()
    agg.begin(global_weights)
    for site, value, n in (("a", 1.0, 1), ("b", 4.0, 2)):
        trained = {"head": np.full(2, 99.0), "body": np.full(2, value)}
        out = policy.filter_result(
            TrainResult(weights=trained, num_samples=n), _task(global_weights), CTX
        )
        assert isinstance(out, TrainResult)
        agg.add(site, out)
    new = agg.finish()
    assert np.array_equal(new["body"], [3.0, 3.0])
    assert new["head"] is global_weights["head"]  # never left a site, never changed


def test_filters_are_configured_from_toml_tables_with_a_registry() -> None:
    spec = parse_filter_spec({"type": "exclude_variables", "names": ["a"]}, key="filters[0]")
    f = build_filter(spec)
    assert isinstance(f, ExcludeVariables)
    assert f.names == frozenset({"a"})
    chain = build_filters([{"type": "exclude_variables", "patterns": ["x.*"]}, spec])
    assert len(chain) == 2
    with pytest.raises(ConfigError, match="unknown filter type 'dp'") as info:
        build_filter({"type": "dp"}, path="local/privacy.toml", key="mandatory[2]")
    assert info.value.key == "mandatory[2].type"
    assert str(info.value.path) == "local/privacy.toml"
    with pytest.raises(ConfigError) as info:
        build_filters([spec, {"type": "exclude_variables", "names": [1]}])
    assert info.value.key == "filters[1].names[0]"


def test_the_registry_refuses_silent_replacement() -> None:
    assert "exclude_variables" in FILTERS
    with pytest.raises(ValueError, match="already registered"):
        register_filter("exclude_variables", ExcludeVariables.from_config)
    register_filter("exclude_variables", ExcludeVariables.from_config, replace=True)
    with pytest.raises(ValueError, match="names or patterns"):
        ExcludeVariables()


def _unmatched(logs: list[MutableMapping[str, Any]]) -> list[MutableMapping[str, Any]]:
    return [e for e in logs if e["event"] == "filter.unmatched"]


def test_names_and_patterns_that_match_no_variable_are_logged_once_per_job() -> None:
    """A typo in a site's mandatory filter used to let the variable leave the site unremarked."""
    model = {"head.weight": np.ones(2), "head.bias": np.ones(1), "bn1.mean": np.ones(1)}
    typo = ExcludeVariables(
        names=["head.bais", "head.weight"], patterns=["bn[0-9]+[.].*", "norm.*"]
    )
    fine = ExcludeVariables(names=["head.bias"])
    chain = FilterChain(mandatory=[fine, typo], job=[ExcludeVariables(patterns=["classifier.*"])])
    with capture_logs() as logs:
        for round in (1, 2):
            task = chain.filter_task(_task(model, round), replace(CTX, round=round))
            result = TrainResult(weights=dict(task.weights), num_samples=1)
            sent = chain.filter_result(result, task, replace(CTX, round=round))
        assert isinstance(sent, TrainResult)
        assert sent.weights == {}  # the names that match still keep their variables back
        second_job = replace(CTX, job_id="job-2")
        task = chain.filter_task(_task(model), second_job)
        chain.filter_result(TrainResult(weights=dict(model), num_samples=1), task, second_job)
    warned = _unmatched(logs)
    assert [(e["job"], e["filter"]) for e in warned] == [
        ("job-1", "local/privacy.toml result_filters[1]"),
        ("job-1", "job.toml filters[0]"),
        ("job-2", "local/privacy.toml result_filters[1]"),
        ("job-2", "job.toml filters[0]"),
    ]
    mandatory, job = warned[0], warned[1]
    assert mandatory["log_level"] == "warning"
    assert mandatory["site"] == "hospital-a"
    assert mandatory["mandatory"] is True
    assert mandatory["names"] == ["head.bais"]
    assert mandatory["patterns"] == ["norm.*"]
    assert "fix local/privacy.toml result_filters[1]" in str(mandatory["hint"])
    assert job["mandatory"] is False
    assert (job["names"], job["patterns"]) == ([], ["classifier.*"])


def test_a_filter_whose_names_all_match_logs_nothing() -> None:
    f = ExcludeVariables(names=["a"], patterns=["c[0-9]"])
    task = _task({"a": np.ones(1), "b": np.ones(1)})
    result = TrainResult(
        weights={"a": np.ones(1), "b": np.ones(1)},
        num_samples=1,
        extras={"scaffold_delta": {"c1": np.ones(1)}},
    )
    with capture_logs() as logs:
        sent = f.filter_result(result, task, CTX)
    assert _unmatched(logs) == []
    assert isinstance(sent, TrainResult)
    assert set(sent.weights) == {"b"}
