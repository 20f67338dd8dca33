"""flrt.pytorch: state dicts as flrt models, and the FedProx and SCAFFOLD math on a tiny MLP."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import numpy.typing as npt
import pytest

from flrt.errors import IncompatibleWeightsError
from flrt.tasks import Weights

pytest.importorskip("torch")
import torch
from torch import nn

from flrt.pytorch import (
    FedProxTerm,
    ScaffoldCorrection,
    state_dict_to_weights,
    weights_to_module,
)


def mlp(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1)).double()


def grad(parameter: torch.Tensor) -> npt.NDArray[np.float64]:
    assert parameter.grad is not None
    return np.asarray(parameter.grad.numpy(), dtype=np.float64)


def batch(seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(5, 3, generator=g, dtype=torch.float64), torch.randn(
        5, 1, generator=g, dtype=torch.float64
    )


def test_state_dict_round_trip_and_strict_loading() -> None:
    source, target = mlp(0), mlp(1)
    weights = state_dict_to_weights(source)
    assert sorted(weights) == ["0.bias", "0.weight", "2.bias", "2.weight"]
    assert weights["0.weight"].shape == (4, 3)
    assert weights["0.weight"].dtype == np.float64
    weights["0.weight"][0, 0] = 99.0  # a copy: the module is not changed through it
    assert state_dict_to_weights(source)["0.weight"][0, 0] != 99.0

    weights_to_module(target, state_dict_to_weights(source))
    x, _ = batch(0)
    assert torch.equal(target(x), source(x))

    before = state_dict_to_weights(target)
    bad: list[tuple[Weights, str]] = [
        ({k: v for k, v in before.items() if k != "2.bias"}, "'2.bias'.*got missing"),
        ({**before, "extra": np.zeros(1)}, "'extra': expected missing"),
        ({**before, "0.weight": np.zeros((3, 4))}, r"'0.weight': expected torch.float64 \(4, 3\)"),
    ]
    for weights, reason in bad:
        with pytest.raises(IncompatibleWeightsError, match=reason):
            weights_to_module(target, weights)
        after = state_dict_to_weights(target)
        assert all(np.array_equal(after[k], before[k]) for k in before)  # unchanged

    as_float32 = {k: v.astype(np.float32) for k, v in before.items()}
    weights_to_module(target, as_float32)  # cast to the module's dtype
    assert all(p.dtype == torch.float64 for p in target.parameters())


def test_fedprox_term_value_and_gradient_match_the_formula() -> None:
    module, global_model = mlp(0), state_dict_to_weights(mlp(1))
    mu = 0.3
    prox = FedProxTerm(global_model, mu)
    penalty = prox(module)
    local = state_dict_to_weights(module)
    expected = mu / 2 * sum(float(((local[k] - global_model[k]) ** 2).sum()) for k in local)
    assert penalty.item() == pytest.approx(expected, rel=1e-12)
    torch.autograd.backward(penalty)
    for name, parameter in module.named_parameters():
        np.testing.assert_allclose(
            grad(parameter), mu * (local[name] - global_model[name]), rtol=1e-12
        )
    assert FedProxTerm(local, mu)(module).item() == 0.0  # no penalty at the global model
    with pytest.raises(ValueError, match="mu"):
        FedProxTerm(local, -1.0)
    with pytest.raises(IncompatibleWeightsError, match=r"'2\.bias'"):
        FedProxTerm({k: v for k, v in local.items() if k != "2.bias"}, mu)(module)


def test_scaffold_correction_and_control_variate_match_a_hand_computation() -> None:
    """With plain SGD, y = x - lr * sum_k (g_k + c - c_i), so c_i+ = mean_k g_k exactly."""
    module = mlp(0)
    x = state_dict_to_weights(module)
    rng = np.random.default_rng(0)
    c = {k: rng.standard_normal(v.shape) for k, v in x.items()}
    c_i = {k: rng.standard_normal(v.shape) for k, v in x.items()}
    scaffold = ScaffoldCorrection(c, c_i)
    lr, steps = 0.05, 3
    optimizer = torch.optim.SGD(module.parameters(), lr=lr)
    raw: list[Weights] = []
    for step in range(steps):
        optimizer.zero_grad()
        features, target = batch(step)
        torch.autograd.backward(nn.functional.mse_loss(module(features), target))
        raw.append({n: grad(p).copy() for n, p in module.named_parameters()})
        scaffold.correct(module)
        for name, parameter in module.named_parameters():  # the correction is c - c_i
            np.testing.assert_allclose(grad(parameter), raw[-1][name] + c[name] - c_i[name])
        optimizer.step()

    delta = scaffold.finish(x, module, steps=steps, learning_rate=lr)
    assert scaffold.c_local_new is not None
    y = state_dict_to_weights(module)
    for name in x:
        mean_gradient = np.mean([g[name] for g in raw], axis=0)
        # c_i+ = c_i - c + (x - y) / (K lr), and with plain SGD that is the mean raw gradient.
        by_formula = c_i[name] - c[name] + (x[name] - y[name]) / (steps * lr)
        np.testing.assert_allclose(scaffold.c_local_new[name], by_formula, rtol=1e-12)
        np.testing.assert_allclose(scaffold.c_local_new[name], mean_gradient, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(delta[name], mean_gradient - c_i[name], rtol=1e-9, atol=1e-12)


def test_scaffold_first_round_and_structure() -> None:
    module = mlp(0)
    x = state_dict_to_weights(module)
    c = {**{k: np.ones_like(v) for k, v in x.items()}, "buffer": np.ones(2)}
    scaffold = ScaffoldCorrection(c)  # c_i = 0
    delta = scaffold.finish(x, module, steps=1, learning_rate=0.1)  # no step taken: y = x
    assert sorted(delta) == sorted(c)
    assert all(np.array_equal(delta[k], -c[k]) for k in x)
    assert np.array_equal(delta["buffer"], np.zeros(2))
    with pytest.raises(ValueError, match="steps"):
        scaffold.finish(x, module, steps=0, learning_rate=0.1)
    with pytest.raises(IncompatibleWeightsError, match=r"'0\.bias'"):
        ScaffoldCorrection({k: v for k, v in c.items() if k != "0.bias"}).correct(module)


def test_importing_the_adapter_does_not_import_torch() -> None:
    """A server without PyTorch can load the MLP trainer and build round 0's model."""
    code = (
        "import sys, flrt.pytorch, flrt.trainer, flrt.model\n"
        "t = flrt.trainer.load_trainer('flrt.examples.mlp:MLPTrainer', {})\n"
        "assert sorted(t.initial_weights()) == ['0.bias', '0.weight', '2.bias', '2.weight']\n"
        "assert 'torch' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
