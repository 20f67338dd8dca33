"""The wire messages between server and sites: round trips, and every malformed field refused."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flrt._protocol import (
    PROTOCOL_VERSION,
    ResultMessage,
    TaskIds,
    TaskMessage,
    check_version,
    join_arrays,
    split_arrays,
)
from flrt.errors import NodeProtocolError
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask, UpdateKind


def task_message(**changes: Any) -> TaskMessage:
    fields: dict[str, Any] = {
        "tid": "ab-1",
        "job_id": "job",
        "kind": "train",
        "round": 3,
        "model": None,
        "seed": 7,
        "trainer_spec": "pkg.mod:Trainer",
        "trainer_args": {"lr": 0.1, "layers": [1, 2]},
        "filters": ({"type": "exclude_variables", "names": ["b"]},),
        "params": {"local_epochs": 2},
    }
    return TaskMessage(**(fields | changes))


def test_a_task_round_trips_with_its_arrays_uncopied() -> None:
    weights: dict[str, npt.NDArray[Any]] = {
        "w": np.arange(6, dtype=np.float32).reshape(2, 3),
        "b/x": np.zeros(1),
    }
    extras = {"scaffold_c": {"w": np.ones((2, 3))}}
    arrays = join_arrays(weights, extras)
    assert arrays["w/w"] is weights["w"]
    assert set(arrays) == {"w/w", "w/b/x", "x/scaffold_c/w"}
    message = task_message()
    again = TaskMessage.from_body(message.to_body())
    assert again == message
    task = again.task(arrays)
    assert isinstance(task, TrainTask)
    assert task.weights["b/x"] is weights["b/x"]
    assert task.extras["scaffold_c"]["w"] is extras["scaffold_c"]["w"]
    assert task.params == {"local_epochs": 2}


def test_an_evaluation_task_names_its_model() -> None:
    message = task_message(kind="evaluate", model="site-2")
    task = TaskMessage.from_body(message.to_body()).task({"w/w": np.zeros(2)})
    assert isinstance(task, EvalTask)
    assert task.model == "site-2"


def test_results_round_trip() -> None:
    message = task_message()
    result = TrainResult(
        weights={"w": np.ones(3)},
        num_samples=12,
        kind=UpdateKind.DIFF,
        metrics={"loss": 0.5},
        extras={"scaffold_delta": {"w": np.zeros(3)}},
    )
    sent, arrays = ResultMessage.of("ab-1", message, result)
    assert arrays is not None
    got = ResultMessage.from_body(sent.to_body())
    assert got == sent
    weights, extras = split_arrays(arrays)
    back = got.train_result(weights, extras)
    assert back.kind is UpdateKind.DIFF
    assert back.num_samples == 12
    assert back.extras["scaffold_delta"]["w"] is arrays["x/scaffold_delta/w"]
    evaluated, none = ResultMessage.of(
        "ab-2", task_message(kind="evaluate", model="global"), EvalResult({"auc": 0.9}, 5)
    )
    assert none is None
    assert ResultMessage.from_body(evaluated.to_body()).eval_result() == EvalResult({"auc": 0.9}, 5)


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("task", "predict", "unknown task kind"),
        ("round", "3", "'round'"),
        ("round", True, "'round'"),
        ("tid", None, "'tid'"),
        ("trainer", {"spec": "a:b", "args": []}, "trainer args"),
        ("filters", [1], "filters must be maps"),
        ("model", 3, "'model'"),
    ],
)
def test_a_malformed_task_is_refused(key: str, value: Any, words: str) -> None:
    body = task_message().to_body() | {key: value}
    with pytest.raises(NodeProtocolError, match=words):
        TaskMessage.from_body(body, peer="server")


@pytest.mark.parametrize(
    ("key", "value", "words"),
    [
        ("num_samples", -1, "num_samples"),
        ("metrics", {"loss": float("nan")}, "finite"),
        ("metrics", {"loss": "low"}, "finite"),
        ("update", "half", "update kind"),
    ],
)
def test_a_malformed_result_is_refused(key: str, value: Any, words: str) -> None:
    sent, _ = ResultMessage.of("t", task_message(), TrainResult({"w": np.ones(1)}, 1))
    with pytest.raises(NodeProtocolError, match=words):
        ResultMessage.from_body(sent.to_body() | {key: value}, peer="site-1")


def test_other_versions_and_stray_arrays_are_refused() -> None:
    assert check_version({"v": PROTOCOL_VERSION}, None) == {"v": PROTOCOL_VERSION}
    with pytest.raises(NodeProtocolError, match="protocol version 2"):
        check_version({"v": 2}, "site-1")
    with pytest.raises(NodeProtocolError, match="not a map"):
        check_version([1], "site-1")
    with pytest.raises(NodeProtocolError, match="neither"):
        split_arrays({"weights": np.zeros(1)})
    with pytest.raises(ValueError, match="free of '/'"):
        join_arrays({}, {"a/b": {"w": np.zeros(1)}})


def test_task_ids_are_unique_per_process() -> None:
    first, second = TaskIds(), TaskIds()
    ids = {first() for _ in range(100)} | {second() for _ in range(100)}
    assert len(ids) == 200
