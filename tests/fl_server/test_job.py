"""job.toml: the documented shape parses; every wrong field is refused with file, key and reason;
the job life cycle and job ids."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest

from flrt.errors import ConfigError, JobError, JobStateError
from flrt.job import (
    JOB_TRANSITIONS,
    MAX_LOCAL_EPOCHS,
    MAX_LOCAL_STEPS,
    MAX_MEMORY_BUDGET_MB,
    MAX_ROUNDS,
    MAX_SECONDS,
    MAX_SITES,
    CrossSiteEvalParams,
    FedAvgParams,
    FedOptParams,
    FedProxParams,
    JobRecord,
    JobStatus,
    Sampling,
    ScaffoldParams,
    is_job_id,
    load_job,
    loads_job,
    new_job_id,
    parse_job,
)

EXAMPLE = """
name = "breast-cancer-logreg"
[workflow]
name = "fedavg"
rounds = 10
sites_per_round = 3
min_sites = 2
grace_seconds = 2.0
[workflow.params]
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
[trainer.args]
learning_rate = 0.1
[targets]
sites = []
"""


def test_the_documented_example_parses() -> None:
    job = loads_job(EXAMPLE)
    assert job.name == "breast-cancer-logreg"
    wf = job.workflow
    assert (wf.name, wf.rounds, wf.sites_per_round, wf.min_sites, wf.grace_seconds) == (
        "fedavg",
        10,
        3,
        2,
        2.0,
    )
    assert (wf.wait_for_quorum, wf.round_timeout, wf.sampling, wf.seed) == (
        False,
        None,
        Sampling.UNIFORM,
        None,
    )
    assert wf.params == FedAvgParams()
    assert job.trainer.spec == "flrt.examples.logreg:LogisticRegressionTrainer"
    assert dict(job.trainer.args) == {"learning_rate": 0.1}
    assert job.targets == ()
    assert job.filters == ()


def test_a_full_job_parses(tmp_path: Path) -> None:
    path = tmp_path / "job.toml"
    path.write_text(
        """
name = "full"
[workflow]
name = "fedopt"
rounds = 3
min_sites = 1
grace_seconds = 1
wait_for_quorum = true
round_timeout = 600
sampling = "reliable"
seed = 42
[workflow.params]
optimizer = "fedyogi"
server_lr = 0.5
beta1 = 0
tau = 0.01
aggregator = "trimmed_mean"
trim_ratio = 0.2
evaluate_every = 2
local_epochs = 3
cross_site_eval = true
[trainer]
spec = "pkg.mod:Obj.inner"
[trainer.args]
layers = [8, 4]
nested = {a = 1}
[targets]
sites = ["hospital-a", "hospital-b"]
[[filters]]
type = "exclude_variables"
names = ["head.weight"]
patterns = ["bn\\\\..*"]
""",
        encoding="utf-8",
    )
    job = load_job(path)
    wf = job.workflow
    assert wf.sites_per_round is None
    assert wf.grace_seconds == 1.0
    assert isinstance(wf.grace_seconds, float)
    assert wf.wait_for_quorum
    assert wf.round_timeout == 600.0
    assert wf.sampling is Sampling.RELIABLE
    assert wf.seed == 42
    assert wf.params == FedOptParams(
        optimizer="fedyogi",
        server_lr=0.5,
        beta1=0.0,
        tau=0.01,
        aggregator="trimmed_mean",
        trim_ratio=0.2,
        evaluate_every=2,
        local_epochs=3,
        cross_site_eval=True,
    )
    assert job.targets == ("hospital-a", "hospital-b")
    assert job.filters[0].type == "exclude_variables"
    assert job.filters[0].to_dict() == {
        "type": "exclude_variables",
        "names": ["head.weight"],
        "patterns": ["bn\\..*"],
    }
    assert dict(job.trainer.args) == {"layers": [8, 4], "nested": {"a": 1}}
    with pytest.raises(TypeError):
        job.trainer.args["layers"] = []  # type: ignore[index]


def _base() -> dict[str, Any]:
    return {
        "name": "j",
        "workflow": {"name": "fedavg", "rounds": 2, "min_sites": 1, "params": {}},
        "trainer": {"spec": "m:T", "args": {}},
        "targets": {"sites": []},
    }


def _with(path: str, value: Any) -> dict[str, Any]:
    data = _base()
    *parents, leaf = path.split(".")
    node = data
    for p in parents:
        node = node.setdefault(p, {})
    if value is _DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return data


_DELETE = object()

BAD: list[tuple[str, Any, str, str]] = [
    # (dotted path to set, value, key in the error, words in the reason)
    ("name", _DELETE, "name", "missing"),
    ("name", 3, "name", "must be a string"),
    ("name", "  ", "name", "printable"),
    ("name", "a\nb", "name", "printable"),
    ("colour", "red", "colour", "unknown key"),
    ("workflow", _DELETE, "workflow", "missing"),
    ("workflow", "fedavg", "workflow", "must be a table"),
    ("workflow.name", _DELETE, "workflow.name", "missing"),
    ("workflow.name", "fedmagic", "workflow.name", "unknown workflow"),
    ("workflow.rounds", _DELETE, "workflow.rounds", "missing"),
    ("workflow.rounds", 0, "workflow.rounds", ">= 1"),
    ("workflow.rounds", True, "workflow.rounds", "integer, got a boolean"),
    ("workflow.rounds", 2.0, "workflow.rounds", "integer, got a float"),
    ("workflow.rounds", 10**17, "workflow.rounds", "must be <= 100000, got 100000000000000000"),
    ("workflow.rounds", 100_001, "workflow.rounds", "must be <= 100000"),
    ("workflow.min_sites", _DELETE, "workflow.min_sites", "missing"),
    ("workflow.min_sites", 0, "workflow.min_sites", ">= 1"),
    ("workflow.min_sites", 10_001, "workflow.min_sites", "must be <= 10000, got 10001"),
    ("workflow.sites_per_round", 0, "workflow.sites_per_round", ">= 1"),
    ("workflow.sites_per_round", 10**12, "workflow.sites_per_round", "must be <= 10000"),
    ("workflow.grace_seconds", -1, "workflow.grace_seconds", ">= 0"),
    ("workflow.grace_seconds", 1e300, "workflow.grace_seconds", "must be <= 2592000, got 1e+300"),
    ("workflow.grace_seconds", "2s", "workflow.grace_seconds", "number"),
    ("workflow.grace_seconds", float("inf"), "workflow.grace_seconds", "finite"),
    ("workflow.grace_seconds", float("nan"), "workflow.grace_seconds", "finite"),
    ("workflow.wait_for_quorum", "yes", "workflow.wait_for_quorum", "true or false"),
    ("workflow.round_timeout", 0, "workflow.round_timeout", "> 0"),
    (
        "workflow.round_timeout",
        2_592_001,
        "workflow.round_timeout",
        "must be <= 2592000, got 2592001",
    ),
    ("workflow.sampling", "random", "workflow.sampling", "uniform, reliable"),
    ("workflow.seed", -1, "workflow.seed", ">= 0"),
    ("workflow.seed", 2**63, "workflow.seed", "< 2**63"),
    ("workflow.speed", 1, "workflow.speed", "unknown key"),
    ("workflow.params", [], "workflow.params", "must be a table"),
    ("workflow.params.mu", 0.1, "workflow.params.mu", "unknown parameter for workflow 'fedavg'"),
    ("workflow.params.aggregator", "mode", "workflow.params.aggregator", "must be one of"),
    ("workflow.params.aggregator", 1, "workflow.params.aggregator", "must be a string"),
    ("workflow.params.trim_ratio", 0.5, "workflow.params.trim_ratio", "in [0, 0.5)"),
    ("workflow.params.byzantine", -1, "workflow.params.byzantine", "in [0, 10000]"),
    ("workflow.params.byzantine", 10**9, "workflow.params.byzantine", "in [0, 10000]"),
    ("workflow.params.evaluate_every", -1, "workflow.params.evaluate_every", "in [0, 100000]"),
    ("workflow.params.evaluate_every", 10**18, "workflow.params.evaluate_every", "in [0, 100000]"),
    ("workflow.params.evaluate_every", 1.5, "workflow.params.evaluate_every", "integer"),
    (
        "workflow.params.evaluate_every",
        3,
        "workflow.params.evaluate_every",
        "must be <= rounds (2), got 3: the global model would never be evaluated",
    ),
    (
        "workflow.params.trim_ratio",
        0.2,
        "workflow.params.trim_ratio",
        'only read by aggregator = "trimmed_mean", and this job\'s aggregator is'
        " 'weighted_mean' (the default): remove trim_ratio or set aggregator",
    ),
    (
        "workflow.params",
        {"aggregator": "median", "trim_ratio": 0.2},
        "workflow.params.trim_ratio",
        "this job's aggregator is 'median': remove",
    ),
    (
        "workflow.params",
        {"aggregator": "trimmed_mean", "byzantine": 1},
        "workflow.params.byzantine",
        "only read by aggregator = \"krum\", and this job's aggregator is 'trimmed_mean'",
    ),
    ("workflow.params.local_epochs", 0, "workflow.params.local_epochs", "in [1, 10000]"),
    ("workflow.params.local_epochs", 10**5, "workflow.params.local_epochs", "in [1, 10000]"),
    ("workflow.params.local_steps", 0, "workflow.params.local_steps", "in [1, 100000000]"),
    ("workflow.params.local_steps", 2**64, "workflow.params.local_steps", "in [1, 100000000]"),
    ("workflow.params.cross_site_eval", 1, "workflow.params.cross_site_eval", "true or false"),
    ("workflow.params.memory_budget_mb", 0, "workflow.params.memory_budget_mb", "in (0, 1048576]"),
    (
        "workflow.params.memory_budget_mb",
        1e12,
        "workflow.params.memory_budget_mb",
        "in (0, 1048576]",
    ),
    ("trainer", _DELETE, "trainer", "missing"),
    ("trainer.spec", _DELETE, "trainer.spec", "missing"),
    ("trainer.spec", "no-colon", "trainer.spec", "package.module:object"),
    ("trainer.spec", "a.b:", "trainer.spec", "package.module:object"),
    ("trainer.spec", "../x:y", "trainer.spec", "package.module:object"),
    ("trainer.args", 1, "trainer.args", "must be a table"),
    ("trainer.args.learning-rate", 1, "trainer.args.learning-rate", "identifier"),
    ("trainer.extra", 1, "trainer.extra", "unknown key"),
    ("targets", [], "targets", "must be a table"),
    ("targets.sites", "a", "targets.sites", "array of site names"),
    (
        "targets.sites",
        [f"s{i}" for i in range(10_001)],
        "targets.sites",
        "at most 10000 sites, got 10001",
    ),
    ("targets.sites", [1], "targets.sites[0]", "site name, got an integer"),
    ("targets.sites", ["a", "a"], "targets.sites[1]", "listed twice"),
    ("targets.sites", ["a b"], "targets.sites[0]", "not a valid site name"),
    ("targets.sites", ["../etc"], "targets.sites[0]", "not a valid site name"),
    ("targets.sites", [""], "targets.sites[0]", "not a valid site name"),
    ("targets.groups", [], "targets.groups", "unknown key"),
    ("filters", {"type": "x"}, "filters", "array of tables"),
    ("filters", [{"names": ["a"]}], "filters[0].type", "missing"),
    ("filters", [{"type": 1}], "filters[0].type", "must be a string"),
    ("filters", [{"type": "dp_noise"}], "filters[0].type", "unknown filter type 'dp_noise'"),
    ("filters", ["exclude"], "filters[0]", "must be a table"),
    ("filters", [{"type": "exclude_variables"}], "filters[0].names", "at least one"),
    ("filters", [{"type": "exclude_variables", "names": "a"}], "filters[0].names", "list"),
    ("filters", [{"type": "exclude_variables", "names": [""]}], "filters[0].names[0]", "non-empty"),
    (
        "filters",
        [{"type": "exclude_variables", "patterns": ["("]}],
        "filters[0].patterns[0]",
        "regular expression",
    ),
    (
        "filters",
        [{"type": "exclude_variables", "names": ["a"], "restore_local": "no"}],
        "filters[0].restore_local",
        "true or false",
    ),
    (
        "filters",
        [{"type": "exclude_variables", "names": ["a"], "x": 1}],
        "filters[0].x",
        "unknown key",
    ),
]


@pytest.mark.parametrize(
    ("where", "value", "key", "reason"), BAD, ids=[f"{b[0]}={b[1]!r}"[:80] for b in BAD]
)
def test_every_bad_field_is_refused_with_file_key_and_reason(
    where: str, value: Any, key: str, reason: str
) -> None:
    with pytest.raises(JobError) as info:
        parse_job(_with(where, value), path="jobs/j/job.toml")
    err = info.value
    assert isinstance(err, ConfigError)
    assert err.key == key
    assert reason in err.reason
    assert err.path == Path("jobs/j/job.toml")
    assert str(err).startswith(f"jobs/j/job.toml: {key}: ")


def test_the_upper_bounds_themselves_are_accepted() -> None:
    data = _base()
    data["workflow"].update(
        rounds=MAX_ROUNDS,
        min_sites=MAX_SITES,
        sites_per_round=MAX_SITES,
        grace_seconds=MAX_SECONDS,
        round_timeout=MAX_SECONDS,
        seed=2**63 - 1,
    )
    data["workflow"]["params"] = {
        "evaluate_every": MAX_ROUNDS,
        "local_epochs": MAX_LOCAL_EPOCHS,
        "local_steps": MAX_LOCAL_STEPS,
        "aggregator": "krum",  # byzantine is read by krum only, which needs 2 * it + 3 sites
        "byzantine": (MAX_SITES - 3) // 2,
        "memory_budget_mb": MAX_MEMORY_BUDGET_MB,
    }
    wf = parse_job(data).workflow
    assert (wf.rounds, wf.min_sites, wf.sites_per_round) == (MAX_ROUNDS, MAX_SITES, MAX_SITES)
    assert (wf.grace_seconds, wf.round_timeout) == (MAX_SECONDS, MAX_SECONDS)


def test_a_job_of_absurdly_many_rounds_is_refused_naming_the_key_and_the_bound() -> None:
    text = EXAMPLE.replace("rounds = 10", "rounds = 100000000000000000")
    with pytest.raises(JobError) as info:
        loads_job(text, path="job.toml")
    assert str(info.value) == (
        "job.toml: workflow.rounds: must be <= 100000, got 100000000000000000"
    )


def test_cross_field_rules() -> None:
    data = _with("workflow.sites_per_round", 2)
    data["workflow"]["min_sites"] = 3
    with pytest.raises(JobError) as info:
        parse_job(data)
    assert info.value.key == "workflow.min_sites"
    assert "sites_per_round" in info.value.reason

    data = _with("targets.sites", ["a", "b"])
    data["workflow"]["min_sites"] = 3
    with pytest.raises(JobError, match="2 target sites") as info:
        parse_job(data)
    assert info.value.key == "workflow.min_sites"

    data = _with("targets.sites", ["a"])
    data["workflow"]["sites_per_round"] = 2
    with pytest.raises(JobError) as info:
        parse_job(data)
    assert info.value.key == "workflow.sites_per_round"


def test_krum_needs_enough_sites_for_its_byzantine_bound() -> None:
    data = _with("workflow.params", {"aggregator": "krum", "byzantine": 1})
    data["workflow"]["min_sites"] = 4
    with pytest.raises(JobError, match="min_sites >= 5") as info:
        parse_job(data)
    assert info.value.key == "workflow.min_sites"
    data["workflow"]["min_sites"] = 5
    assert parse_job(data).workflow.params == FedAvgParams(aggregator="krum", byzantine=1)


def test_the_example_jobs_of_the_site_side_parse() -> None:
    examples = Path(__file__).resolve().parents[2] / "examples"
    for path in sorted(examples.glob("*/job.toml")):
        job = load_job(path)
        assert job.trainer.spec.startswith("flrt.examples.")


def test_params_are_validated_per_workflow() -> None:
    data = _with("workflow.name", "fedprox")
    with pytest.raises(JobError, match="required by workflow 'fedprox'") as info:
        parse_job(data)
    assert info.value.key == "workflow.params.mu"
    data["workflow"]["params"] = {"mu": 0.01}
    assert parse_job(data).workflow.params == FedProxParams(mu=0.01)

    data = _with("workflow.name", "fedopt")
    with pytest.raises(JobError) as info:
        parse_job(data)
    assert info.value.key == "workflow.params.optimizer"
    data["workflow"]["params"] = {"optimizer": "fedsgd"}
    with pytest.raises(JobError, match="fedadam, fedyogi, fedadagrad"):
        parse_job(data)
    data["workflow"]["params"] = {"optimizer": "fedadam", "beta2": 1.0}
    with pytest.raises(JobError, match=r"in \[0, 1\)"):
        parse_job(data)

    data = _with("workflow.name", "scaffold")
    data["workflow"]["params"] = {"server_lr": 0.5, "weighted": False}
    assert parse_job(data).workflow.params == ScaffoldParams(server_lr=0.5, weighted=False)
    data["workflow"]["params"] = {"aggregator": "median"}
    with pytest.raises(JobError, match="unknown parameter for workflow 'scaffold'"):
        parse_job(data)

    data = _with("workflow.name", "cross_site_eval")
    with pytest.raises(JobError, match="has no rounds") as info:
        parse_job(data)
    assert info.value.key == "workflow.rounds"
    del data["workflow"]["rounds"]
    job = parse_job(data)
    assert job.workflow.params == CrossSiteEvalParams()
    assert job.workflow.rounds == 1


def test_trainer_args_may_not_hold_dates() -> None:
    with pytest.raises(JobError, match="dates") as info:
        loads_job(EXAMPLE.replace("learning_rate = 0.1", "start = 2026-01-01"))
    assert info.value.key == "trainer.args.start"


def test_toml_syntax_errors_and_encodings_name_the_file(tmp_path: Path) -> None:
    with pytest.raises(JobError, match="not valid TOML") as info:
        loads_job("name = ", path="x/job.toml")
    assert info.value.path == Path("x/job.toml")
    bad = tmp_path / "job.toml"
    bad.write_bytes(b"name = '\xff'")
    with pytest.raises(JobError, match="not UTF-8"):
        load_job(bad)


def test_parsing_does_not_share_state_with_the_input() -> None:
    data = _base()
    data["trainer"]["args"] = {"layers": [1, 2]}
    job = parse_job(copy.deepcopy(data))
    data["trainer"]["args"]["layers"].append(3)
    assert job.trainer.args["layers"] == [1, 2]


# ----------------------------------------------------------------------------- life cycle


def test_job_life_cycle_follows_the_table() -> None:
    record = JobRecord.submitted("j1", "study", now=1.0)
    running = record.advance(JobStatus.RUNNING, now=2.0)
    assert (running.status, running.updated_at, running.submitted_at) == (
        JobStatus.RUNNING,
        2.0,
        1.0,
    )
    done = running.advance(JobStatus.FINISHED, now=3.0, reason="10 rounds completed")
    assert done.reason == "10 rounds completed"
    assert JobRecord.from_dict(done.to_dict()) == done
    for status in JobStatus:
        for target in JobStatus:
            rec = JobRecord("j", "n", status, 0.0, 0.0)
            if target in JOB_TRANSITIONS[status]:
                rec.advance(target, now=1.0, reason="because")
            else:
                with pytest.raises(JobStateError) as info:
                    rec.advance(target, now=1.0, reason="because")
                assert (info.value.current, info.value.requested) == (status.value, target.value)
    assert {s for s in JobStatus if s.terminal} == {
        JobStatus.FINISHED,
        JobStatus.FAILED,
        JobStatus.ABORTED,
    }


def test_terminal_states_need_a_reason() -> None:
    running = JobRecord.submitted("j1", "study", now=0).advance(JobStatus.RUNNING, now=1)
    for terminal in (JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED):
        with pytest.raises(ValueError, match="needs a reason"):
            running.advance(terminal, now=2)
        with pytest.raises(ValueError, match="needs a reason"):
            running.advance(terminal, now=2, reason=" ")


def test_job_ids_sort_by_time_and_are_safe_directory_names() -> None:
    times = [1_700_000_000.0, 1_700_000_000.001, 1_700_000_001.5, 1_800_000_000.0]
    ids = [new_job_id(now=t) for t in times]
    assert ids == sorted(ids)
    for job_id in ids:
        assert is_job_id(job_id)
        assert job_id == job_id.lower()
        assert set(job_id) <= set("0123456789abcdefghjkmnpqrstvwxyz-")
    assert ids[0].startswith("20231114t221320000z-")
    assert new_job_id(now=0, entropy=b"\x00" * 7) == "19700101t000000000z-0000000000"
    assert new_job_id(now=0, entropy=b"\xff" * 7).endswith("-zzzzzzzzzz")
    assert len({new_job_id(now=0) for _ in range(100)}) == 100
    with pytest.raises(ValueError, match="7 bytes"):
        new_job_id(now=0, entropy=b"\x00")
    for bad in (
        "",
        "../etc",
        "20231114t221320000z-0000000000/..",
        "20231114T221320000Z-0000000000",
    ):
        assert not is_job_id(bad)


def test_parameters_that_would_be_read_are_accepted_at_their_edges() -> None:
    """Refused only when they would do nothing: the last round may be the one evaluated."""
    data = _with("workflow.params", {"evaluate_every": 2, "aggregator": "trimmed_mean"})
    data["workflow"]["params"]["trim_ratio"] = 0.3
    params = parse_job(data).workflow.params
    assert params == FedAvgParams(evaluate_every=2, aggregator="trimmed_mean", trim_ratio=0.3)
