"""flrt.trainer: loading a site's trainer by name, and checking what it returns."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flrt.errors import (
    ConfigError,
    TrainerLoadError,
    TrainerOutputError,
    TrainingAbortedError,
)
from flrt.tasks import EvalResult, TrainResult, TrainTask, UpdateKind
from flrt.trainer import CheckedTrainer, SiteContext, Trainer, load_trainer
from tests.fl_site._trainers import Good, Returns

HERE = "tests.fl_site._trainers"


@pytest.fixture
def context(tmp_path: Path) -> SiteContext:
    return SiteContext.create("site-1", scratch=tmp_path, data={"csv": tmp_path / "d.csv"}, seed=7)


def task() -> TrainTask:
    return TrainTask(job_id="j", round=1, weights={"w": np.zeros(2, np.float32)})


# --------------------------------------------------------------------------- loading


def test_loads_a_class_with_arguments(context: SiteContext) -> None:
    trainer = load_trainer(f"{HERE}:Good", {"step": 3.0})
    assert isinstance(trainer, CheckedTrainer)
    assert isinstance(trainer, Trainer)
    assert isinstance(trainer.inner, Good)
    result = trainer.train(task(), context)
    assert np.array_equal(result.weights["w"], [3.0, 3.0])
    assert result.metrics == {"loss": 0.5}
    assert type(result.metrics["loss"]) is float
    evaluation = trainer.evaluate({"w": np.ones(2)}, context)
    assert evaluation == EvalResult(metrics={"mean": 1.0}, num_samples=4)
    assert type(evaluation.num_samples) is int


@pytest.mark.parametrize(
    ("spec", "step"),
    [(f"{HERE}:make_good", 2.0), (f"{HERE}:INSTANCE", 0.5), (f"{HERE}:Namespace.Inner", 1.0)],
)
def test_loads_a_factory_an_instance_or_a_nested_class(
    context: SiteContext, spec: str, step: float
) -> None:
    trainer = load_trainer(spec, {})
    assert np.array_equal(trainer.train(task(), context).weights["w"], [step, step])


def test_initial_weights_hook(context: SiteContext) -> None:
    trainer = load_trainer(f"{HERE}:Good", {})
    assert trainer.has_initial_weights
    assert np.array_equal(trainer.initial_weights()["w"], [0.0, 0.0])
    bare = load_trainer(f"{HERE}:Needs", {"rate": 1.0})
    assert not bare.has_initial_weights
    with pytest.raises(TrainerLoadError, match="no initial_weights"):
        bare.initial_weights()


@pytest.mark.parametrize(
    ("spec", "args", "reason"),
    [
        ("no_colon_here", {}, "is not of the form"),
        ("a b:C", {}, "is not of the form"),
        (f"{HERE}:", {}, "is not of the form"),
        ("flrt_no_such_module:Trainer", {}, "no module named 'flrt_no_such_module'"),
        ("flrt.no_such_module:Trainer", {}, "no module named 'flrt.no_such_module'"),
        (f"{HERE}:Missing", {}, "'tests.fl_site._trainers' has no attribute 'Missing'"),
        (f"{HERE}:Namespace.Missing", {}, "_trainers:Namespace' has no attribute 'Missing'"),
        (f"{HERE}:NOT_A_TRAINER", {}, "names a int, not a trainer"),
        (f"{HERE}:make_nothing", {}, "built a object, which has no train"),
        (f"{HERE}:Good", {"stepp": 1.0}, "refused its arguments: .*stepp"),
        (f"{HERE}:Needs", {}, "refused its arguments: .*rate"),
        (f"{HERE}:Needs", {"rate": -1.0}, "raised ValueError while being built: rate must be"),
        (f"{HERE}:INSTANCE", {"step": 1.0}, "names a trainer instance, which takes no arguments"),
    ],
)
def test_load_errors_name_the_problem(spec: str, args: dict[str, Any], reason: str) -> None:
    with pytest.raises(TrainerLoadError, match=reason) as caught:
        load_trainer(spec, args)
    assert caught.value.spec == spec


def test_a_module_that_fails_to_import_is_reported_with_its_cause(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "flrt_test_broken_a.py").write_text("import flrt_test_absent_dependency\n")
    (tmp_path / "flrt_test_broken_b.py").write_text("raise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(TrainerLoadError, match=r"failed to import: .*flrt_test_absent_dependency"):
        load_trainer("flrt_test_broken_a:T", {})
    with pytest.raises(TrainerLoadError, match="failed to import: RuntimeError: boom") as caught:
        load_trainer("flrt_test_broken_b:T", {})
    assert isinstance(caught.value.__cause__, RuntimeError)


# --------------------------------------------------------------------------- checking results


def checked(train: Any = None, evaluate: Any = None) -> CheckedTrainer:
    return CheckedTrainer(Returns(train or (lambda t: None), evaluate), spec="x:Returns")


def result(**changes: Any) -> Any:
    """A TrainResult with fields set after construction, past the checks of its __post_init__."""

    def make(t: TrainTask) -> Any:
        answer = TrainResult(weights=dict(t.weights), num_samples=1)
        for name, value in changes.items():
            object.__setattr__(answer, name, value)
        return answer

    return make


@pytest.mark.parametrize(
    ("train", "reason"),
    [
        (lambda t: {"w": np.zeros(2)}, "train\\(\\) returned dict, not TrainResult"),
        (result(weights=[1.0]), "returned weights of type list"),
        (result(weights={"w": np.zeros(3, np.float32)}), "do not match the task's model: .*'w'"),
        (result(weights={"w": np.zeros(2)}), "do not match .*float32 \\(2,\\), got float64"),
        (result(weights={}), "do not match .*'w'.*missing"),
        (result(weights={"w": np.array([np.nan, 0], np.float32)}), "'w' with NaN or infinite"),
        (result(weights={"w": np.array([{}, 1], dtype=object)}), "'w' of dtype object, which a"),
        (result(weights={"w": np.array(["a"])}), "'w' of dtype str32, which a model cannot"),
        (result(num_samples=True), "num_samples True"),
        (result(num_samples=2.5), "num_samples 2.5"),
        (result(metrics={"loss": "low"}), "metric 'loss' = str"),
        (result(metrics={"ok": True}), "metric 'ok' = bool"),
        (result(metrics=[("loss", 1.0)]), "metrics of type list"),
        (result(kind="diff"), "kind 'diff', not UpdateKind"),
        (result(extras={"c": {"w": [0.0]}}), "extras\\['c'\\] 'w' of type list"),
        (result(extras=[1]), "extras of type list"),
    ],
)
def test_wrong_train_results_are_caught(context: SiteContext, train: Any, reason: str) -> None:
    with pytest.raises(TrainerOutputError, match=reason) as caught:
        checked(train).train(task(), context)
    assert caught.value.method == "train"
    assert caught.value.spec == "x:Returns"


def test_a_diff_with_extras_passes(context: SiteContext) -> None:
    extras = {"scaffold_delta": {"w": np.ones(2, np.float32)}}
    ok = checked(result(kind=UpdateKind.DIFF, extras=extras)).train(task(), context)
    assert ok.kind is UpdateKind.DIFF
    assert np.array_equal(ok.extras["scaffold_delta"]["w"], [1.0, 1.0])


@pytest.mark.parametrize(
    ("answer", "reason"),
    [
        (None, "evaluate\\(\\) returned NoneType, not EvalResult"),
        ({"accuracy": 1.0}, "returned dict, not EvalResult"),
        (EvalResult(metrics={"auc": None}, num_samples=1), "metric 'auc' = NoneType"),  # type: ignore[dict-item]
        (EvalResult(metrics={}, num_samples=-1), "num_samples -1"),
    ],
)
def test_wrong_evaluate_results_are_caught(context: SiteContext, answer: Any, reason: str) -> None:
    with pytest.raises(TrainerOutputError, match=reason):
        checked(evaluate=answer).evaluate({"w": np.zeros(2)}, context)


def test_initial_weights_of_the_wrong_type_are_caught() -> None:
    with pytest.raises(
        TrainerOutputError, match="initial_weights\\(\\) returned weights of type list"
    ):
        checked().initial_weights()


def test_exceptions_from_the_trainer_propagate(context: SiteContext) -> None:
    def explode(t: TrainTask) -> Any:
        raise KeyError("mine")

    with pytest.raises(KeyError, match="mine"):
        checked(explode).train(task(), context)


# --------------------------------------------------------------------------- context


def test_a_data_location_with_nothing_there_is_a_config_error_naming_the_key(
    tmp_path: Path,
) -> None:
    """It used to hand the trainer the path, whose open() then failed as a bare FileNotFoundError
    that named a path (redacted upstream to '<path>') and not the key to fix."""
    secret = tmp_path / "mnt" / "study-0042" / "wdbc.csv"
    ctx = SiteContext.create("site-2", scratch=tmp_path, data={"wdbc": secret})
    with pytest.raises(ConfigError) as caught:
        ctx.data_path("wdbc")
    assert caught.value.key == "data.wdbc"
    assert "nothing is at data location 'wdbc'" in str(caught.value)
    assert "data.toml of the site kit's local folder" in str(caught.value)
    assert "study-0042" not in str(caught.value)
    secret.parent.mkdir(parents=True)
    secret.write_text("a,b\n")
    assert ctx.data_path("wdbc") == secret  # a share mounted later is found then


def test_context_data_locations_and_abort(tmp_path: Path) -> None:
    flag = [False]
    (tmp_path / "x.csv").write_text("a,b\n")
    ctx = SiteContext.create(
        "site-2", scratch=tmp_path, data={"csv": tmp_path / "x.csv"}, abort=lambda: flag[0]
    )
    assert ctx.data_path("csv") == tmp_path / "x.csv"
    with pytest.raises(
        ConfigError, match=r"site 'site-2' has no data location 'images'.*csv"
    ) as caught:
        ctx.data_path("images")
    assert caught.value.key == "data.images"
    ctx.raise_if_aborted()
    flag[0] = True
    with pytest.raises(TrainingAbortedError, match="site-2"):
        ctx.raise_if_aborted()


def test_context_generator_is_seeded(tmp_path: Path) -> None:
    draws = [SiteContext.create("s", scratch=tmp_path, seed=s).rng.random() for s in (1, 1, 2)]
    assert draws[0] == draws[1] != draws[2]
