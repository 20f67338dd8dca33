"""Server optimizers (Reddi et al. 2021) against a naive scalar transcription of Algorithm 2, and
the SCAFFOLD server step."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.aggregation import (
    FedAdagrad,
    FedAdam,
    FedYogi,
    ServerSGD,
    apply_delta,
    control_for_sites,
    initial_control,
    make_optimizer,
    scaffold_server_step,
)
from flrt.aggregation.optimizers import ServerOptimizer
from flrt.tasks import Weights

deltas = st.lists(st.floats(-5, 5, allow_nan=False), min_size=1, max_size=6)


def _naive(
    name: str, x: float, steps: list[float], lr: float, b1: float, b2: float, tau: float
) -> float:
    m, v = 0.0, tau * tau
    for d in steps:
        m = b1 * m + (1 - b1) * d
        if name == "fedadagrad":
            v = v + d * d
        elif name == "fedadam":
            v = b2 * v + (1 - b2) * d * d
        else:
            v = v - (1 - b2) * d * d * math.copysign(1.0, v - d * d) if v != d * d else v
        x = x + lr * m / (math.sqrt(v) + tau)
    return x


@settings(max_examples=60, deadline=None)
@given(
    st.sampled_from(["fedadagrad", "fedadam", "fedyogi"]),
    deltas,
    st.floats(1e-3, 1.0),
    st.floats(0.0, 0.99),
    st.floats(0.0, 0.999),
    st.floats(1e-4, 1e-1),
)
def test_adaptive_optimizers_follow_algorithm_2(
    name: str, steps: list[float], lr: float, b1: float, b2: float, tau: float
) -> None:
    opt = make_optimizer(name, server_lr=lr, beta1=b1, beta2=b2, tau=tau)
    weights = {"x": np.array([0.5], dtype=np.float64)}
    for d in steps:
        weights = opt.step(weights, {"x": np.array([d])})
    assert weights["x"][0] == pytest.approx(
        _naive(name, 0.5, steps, lr, b1, b2, tau), rel=1e-9, abs=1e-12
    )


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_optimizer_state_round_trips_for_resumption(cls: type[ServerOptimizer]) -> None:
    a = cls(server_lr=0.1)
    weights: Weights = {"x": np.zeros(3, dtype=np.float32), "n": np.array([3], dtype=np.int64)}
    for d in (0.1, -0.3, 0.2):
        weights = a.step(weights, {"x": np.full(3, d), "n": np.array([1.0])})
    b = cls(server_lr=0.1)
    b.load_state({k: {n: v.copy() for n, v in g.items()} for k, g in a.state().items()})
    step = {"x": np.array([0.5, -0.5, 0.0]), "n": np.array([2.0])}
    wa, wb = a.step(weights, step), b.step(weights, step)
    assert np.array_equal(wa["x"], wb["x"])
    assert wa["x"].dtype == np.float32
    assert wa["n"].dtype == np.int64
    assert wa["n"][0] == 3 + 3 * 1 + 2  # integers take the plain mean update, not Adam's


@pytest.mark.parametrize("cls", [FedAdagrad, FedAdam, FedYogi])
def test_a_float32_update_is_stepped_in_float64(cls: type[ServerOptimizer]) -> None:
    # The sums of a float32 model are float32: the optimizer widens the update, not its maths.
    weights: Weights = {"x": np.array([0.5, -1.0, 2.0], dtype=np.float32)}
    narrow, wide = cls(server_lr=0.3), cls(server_lr=0.3)
    for d in ([0.1, -0.3, 1e-3], [0.7, 0.2, -0.4]):
        d32 = np.array(d, dtype=np.float32)
        a = narrow.step(weights, {"x": d32})
        b = wide.step(weights, {"x": d32.astype(np.float64)})
        assert np.array_equal(a["x"], b["x"])
        weights = a
    for group in ("m", "v"):
        assert narrow.state()[group]["x"].dtype == np.float64
        assert np.array_equal(narrow.state()[group]["x"], wide.state()[group]["x"])


def test_variables_without_an_update_are_left_alone() -> None:
    opt = FedAdam(server_lr=1.0)
    w = {"a": np.ones(2), "b": np.ones(2)}
    out = opt.step(w, {"a": np.full(2, 0.5)})
    assert out["b"] is w["b"]
    assert set(opt.state()["m"]) == {"a"}


def test_server_sgd_with_rate_one_is_fedavg() -> None:
    w = {"x": np.array([1.0, 2.0], dtype=np.float32)}
    d = {"x": np.array([0.25, -1.0])}
    assert np.array_equal(ServerSGD().step(w, d)["x"], apply_delta(w, d)["x"])
    assert np.array_equal(ServerSGD(server_lr=0.5).step(w, d)["x"], [1.125, 1.5])


def test_optimizer_parameters_are_checked() -> None:
    cases: list[dict[str, float]] = [
        {"server_lr": 0.0},
        {"beta1": 1.0},
        {"beta2": -0.1},
        {"tau": 0.0},
    ]
    for kwargs in cases:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            FedAdam(**kwargs)
    with pytest.raises(ValueError, match="unknown"):
        make_optimizer("fedsomething")
    assert isinstance(make_optimizer("sgd", server_lr=2.0), ServerSGD)


def test_scaffold_server_step_follows_the_paper() -> None:
    w: Weights = {
        "x": np.array([1.0, 1.0], dtype=np.float32),
        "steps": np.array([4], dtype=np.int64),
    }
    c = initial_control(w)
    assert set(c) == {"x"}  # integers carry no control variate
    c["x"] += 0.5
    new_w, new_c = scaffold_server_step(
        w,
        c,
        {"x": np.array([0.2, -0.2]), "steps": np.array([2.0])},
        {"x": np.array([0.4, 0.8])},
        answered=2,
        population=8,
        server_lr=0.5,
    )
    assert np.allclose(new_w["x"], [1.1, 0.9])
    assert new_w["x"].dtype == np.float32
    assert new_w["steps"][0] == 5  # 4 + 0.5 * 2
    assert np.allclose(new_c["x"], [0.5 + 0.25 * 0.4, 0.5 + 0.25 * 0.8])
    sent = control_for_sites(new_c, w)
    assert sent["x"].dtype == np.float32
    with pytest.raises(ValueError, match="answered"):
        scaffold_server_step(w, c, {}, {}, answered=0, population=3)
    with pytest.raises(ValueError, match="answered"):
        scaffold_server_step(w, c, {}, {}, answered=4, population=3)
    with pytest.raises(ValueError, match="server_lr"):
        scaffold_server_step(w, c, {}, {}, answered=1, population=3, server_lr=0.0)
