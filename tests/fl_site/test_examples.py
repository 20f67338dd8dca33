"""The numpy example trainers: FedAvg = centralised GD for logreg, FedProx/SCAFFOLD by hand, noise."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flrt.errors import ConfigError, DatasetError, TrainingAbortedError
from flrt.examples._metrics import log_loss
from flrt.examples._rounds import local_steps
from flrt.examples.logreg import (
    LogisticRegressionTrainer,
    centralised_weights,
    gradient,
    logits,
)
from flrt.examples.noise import NOISE_BLOCK, NoiseTrainer, add_noise, make_model
from flrt.model import load_weights
from flrt.tasks import TrainResult, TrainTask, Weights
from flrt.trainer import CheckedTrainer, SiteContext, load_trainer

LOGREG = "flrt.examples.logreg:LogisticRegressionTrainer"


def contexts(tmp_path: Path, n: int) -> list[SiteContext]:
    return [
        SiteContext.create(f"site-{i}", scratch=tmp_path / f"site-{i}", seed=i)
        for i in range(1, n + 1)
    ]


def fedavg(results: list[TrainResult], *, weighted: bool = True) -> Weights:
    factors = np.array([r.num_samples if weighted else 1 for r in results], dtype=np.float64)
    return {
        name: np.tensordot(factors, np.stack([r.weights[name] for r in results]), axes=1)
        / factors.sum()
        for name in results[0].weights
    }


def run_fedavg(
    trainer: CheckedTrainer, sites: list[SiteContext], rounds: int, *, weighted: bool = True
) -> Weights:
    weights = trainer.initial_weights()
    for r in range(rounds):
        task = TrainTask(job_id="job", round=r, weights=weights)
        weights = fedavg([trainer.train(task, site) for site in sites], weighted=weighted)
    return weights


# --------------------------------------------------------------------------- FedAvg = centralised


@pytest.mark.parametrize("split", ["iid", "skewed"])
def test_fedavg_of_one_full_batch_step_equals_centralised_gradient_descent(
    tmp_path: Path, split: str
) -> None:
    args = {"num_sites": 4, "split": split, "seed": 3, "learning_rate": 2.0, "l2": 0.01}
    federated = run_fedavg(load_trainer(LOGREG, args), contexts(tmp_path, 4), rounds=8)
    centralised = centralised_weights(args, rounds=8)
    assert np.abs(federated["weight"] - centralised["weight"]).max() < 1e-12
    assert np.abs(federated["bias"] - centralised["bias"]).max() < 1e-12
    assert np.abs(centralised["weight"]).max() > 0.1  # it moved: the comparison means something


def test_the_equivalence_needs_sample_weighting(tmp_path: Path) -> None:
    """The same check with an unweighted mean fails on unequal sites: the test above has teeth."""
    args = {"num_sites": 4, "split": "skewed", "seed": 3, "learning_rate": 2.0}
    unweighted = run_fedavg(load_trainer(LOGREG, args), contexts(tmp_path, 4), 8, weighted=False)
    assert np.abs(unweighted["weight"] - centralised_weights(args, 8)["weight"]).max() > 1e-3


def test_centralised_reference_refuses_arguments_where_it_does_not_hold() -> None:
    with pytest.raises(ValueError, match="full_batch, local_steps=1"):
        centralised_weights({"local_steps": 2}, rounds=1)
    with pytest.raises(ValueError, match="full_batch, local_steps=1"):
        centralised_weights({"full_batch": False}, rounds=1)


def test_logreg_learns_the_task(tmp_path: Path) -> None:
    trainer = load_trainer(LOGREG, {"num_sites": 3, "learning_rate": 5.0})
    sites = contexts(tmp_path, 3)
    weights = run_fedavg(trainer, sites, rounds=40)
    spec = LogisticRegressionTrainer(num_sites=3).data
    for index, site in enumerate(sites):
        evaluation = trainer.evaluate(weights, site)
        assert evaluation.num_samples == len(spec.part(index).y_validation) > 30
        assert evaluation.metrics["accuracy"] > 0.9
        assert evaluation.metrics["auc"] > 0.95


# --------------------------------------------------------------------------- FedProx, SCAFFOLD by hand


def one_site(tmp_path: Path, **args: Any) -> tuple[LogisticRegressionTrainer, SiteContext]:
    trainer = LogisticRegressionTrainer(num_sites=2, **args)
    return trainer, SiteContext.create("site-1", scratch=tmp_path, seed=0)


def start_model() -> Weights:
    rng = np.random.default_rng(9)
    return {"weight": rng.normal(0, 0.3, 30), "bias": np.array([0.2])}


def step(w: Weights, lr: float, direction: Mapping[str, Any]) -> Weights:
    return {k: w[k] - lr * direction[k] for k in w}


def test_fedprox_adds_mu_times_the_distance_to_the_global_model(tmp_path: Path) -> None:
    trainer, site = one_site(tmp_path, learning_rate=0.5, local_steps=2)
    x, y = trainer.data.part(0).x_train, trainer.data.part(0).y_train
    w0, mu = start_model(), 3.0
    result = trainer.train(TrainTask("j", 1, w0, params={"fedprox_mu": mu}), site)
    w1 = step(w0, 0.5, gradient(w0, x, y))  # w1 == w0 before the step: no proximal pull yet
    g1 = gradient(w1, x, y)
    w2 = step(w1, 0.5, {k: g1[k] + mu * (w1[k] - w0[k]) for k in w1})
    for name in w0:
        np.testing.assert_allclose(result.weights[name], w2[name], rtol=1e-13)
    plain = trainer.train(TrainTask("j", 1, w0), site)
    assert not np.allclose(plain.weights["weight"], w2["weight"])


def test_scaffold_corrects_gradients_and_keeps_the_control_variate(tmp_path: Path) -> None:
    trainer, site = one_site(tmp_path, learning_rate=0.5, local_steps=2)
    x, y = trainer.data.part(0).x_train, trainer.data.part(0).y_train
    lr, w0 = 0.5, start_model()
    rng = np.random.default_rng(1)
    c = {"weight": rng.normal(0, 0.1, 30), "bias": np.array([0.05])}

    def by_hand(c_i: Weights) -> tuple[Weights, Weights, list[Weights]]:
        w, grads = w0, []
        for _ in range(2):
            grads.append(gradient(w, x, y))
            w = step(w, lr, {k: grads[-1][k] + c[k] - c_i[k] for k in w})
        delta = {k: (w0[k] - w[k]) / (2 * lr) - c[k] for k in w}
        return w, delta, grads

    first = trainer.train(TrainTask("j", 1, w0, extras={"scaffold_c": c}), site)
    zeros = {k: np.zeros_like(v) for k, v in c.items()}
    w, delta, grads = by_hand(zeros)
    for name in w0:
        np.testing.assert_allclose(first.weights[name], w[name], rtol=1e-13)
        np.testing.assert_allclose(first.extras["scaffold_delta"][name], delta[name], atol=1e-13)
        # With plain gradient steps, c_i+ = mean of the raw gradients along the way.
        np.testing.assert_allclose(delta[name], (grads[0][name] + grads[1][name]) / 2, atol=1e-13)
    stored = load_weights(tmp_path / "scaffold_c_local.safetensors")
    c_i = {k: zeros[k] + delta[k] for k in c}
    for name in c:
        np.testing.assert_allclose(stored[name], c_i[name], atol=1e-13)

    second = trainer.train(TrainTask("j", 2, w0, extras={"scaffold_c": c}), site)
    w, delta, _ = by_hand(c_i)  # the second round starts from the stored c_i
    for name in w0:
        np.testing.assert_allclose(second.weights[name], w[name], rtol=1e-12)
        np.testing.assert_allclose(second.extras["scaffold_delta"][name], delta[name], atol=1e-12)


def test_results_keep_the_servers_dtype(tmp_path: Path) -> None:
    trainer, site = one_site(tmp_path)
    model = {k: v.astype(np.float32) for k, v in start_model().items()}
    result = CheckedTrainer(trainer).train(TrainTask("j", 1, model), site)
    assert result.weights["weight"].dtype == np.float32


# --------------------------------------------------------------------------- which data a site holds


def test_site_data_by_name_index_or_list(tmp_path: Path) -> None:
    by_name = LogisticRegressionTrainer(num_sites=3, split="skewed")
    by_index = LogisticRegressionTrainer(num_sites=3, split="skewed", site_index=1)
    by_list = LogisticRegressionTrainer(num_sites=3, split="skewed", site_names=["a", "b", "c"])
    expected = by_name.data.part(1).y_train
    site_2 = SiteContext.create("hospital-2", scratch=tmp_path)
    assert np.array_equal(by_name.data.load(site_2).y_train, expected)
    assert np.array_equal(by_index.data.load(site_2).y_train, expected)
    b = SiteContext.create("b", scratch=tmp_path)
    assert np.array_equal(by_list.data.load(b).y_train, expected)
    with pytest.raises(DatasetError, match="cannot tell which of 3 parts site 'hospital'"):
        by_name.train(
            TrainTask("j", 0, by_name.initial_weights()),
            SiteContext.create("hospital", scratch=tmp_path),
        )
    with pytest.raises(DatasetError, match="cannot tell"):
        by_name.data.index_of("site-4")
    assert [by_name.data.index_of(n) for n in ("hospital-a", "Hospital_B", "h.c")] == [0, 1, 2]
    for name in ("hospital-d", "site-0", "hospitalb"):
        with pytest.raises(DatasetError, match="cannot tell"):
            by_name.data.index_of(name)


def test_site_data_from_the_sites_own_csv(tmp_path: Path) -> None:
    rows = "\n".join(",".join(["10.0"] * 30 + [str(i % 2)]) for i in range(10))
    (tmp_path / "own.csv").write_text(f"10,30,malignant,benign\n{rows}\n")
    trainer = LogisticRegressionTrainer(data_key="wdbc", validation_fraction=0.3)
    site = SiteContext.create("x", scratch=tmp_path, data={"wdbc": tmp_path / "own.csv"})
    result = trainer.train(TrainTask("j", 0, trainer.initial_weights()), site)
    assert result.num_samples == 7
    assert trainer.evaluate(result.weights, site).num_samples == 3
    with pytest.raises(ConfigError, match="no data location 'wdbc'"):
        trainer.train(
            TrainTask("j", 0, trainer.initial_weights()), SiteContext.create("y", scratch=tmp_path)
        )


@pytest.mark.parametrize(
    ("args", "reason"),
    [
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"num_sites": 0}, "num_sites"),
        ({"split": "random"}, "split"),
        ({"validation_fraction": 1.0}, "validation_fraction"),
        ({"site_names": ["a"], "num_sites": 2}, "site_names"),
    ],
)
def test_bad_logreg_arguments_fail_at_load(args: dict[str, Any], reason: str) -> None:
    with pytest.raises(Exception, match=reason):
        load_trainer(LOGREG, args)


# --------------------------------------------------------------------------- noise


def test_make_model_has_the_asked_size() -> None:
    model = make_model(1.0, num_arrays=3, seed=1)
    assert sorted(model) == ["layer_0", "layer_1", "layer_2"]
    assert sum(a.nbytes for a in model.values()) == 1024 * 1024
    assert all(a.dtype == np.float32 for a in model.values())
    assert all(np.array_equal(model[k], make_model(1.0, num_arrays=3, seed=1)[k]) for k in model)
    assert sum(a.nbytes for a in make_model(0.0, num_arrays=2).values()) == 8  # one value each
    with pytest.raises(ValueError, match="size_mib"):
        make_model(-1.0)


def test_noise_trainer_adds_scaled_noise(tmp_path: Path) -> None:
    trainer = load_trainer(
        "flrt.examples.noise:NoiseTrainer", {"noise_scale": 0.1, "num_samples": 7, "size_mib": 0.5}
    )
    model = trainer.initial_weights()
    site = SiteContext.create("site-1", scratch=tmp_path, seed=4)
    result = trainer.train(TrainTask("j", 0, model), site)
    assert result.num_samples == 7
    differences = np.concatenate([result.weights[k] - model[k] for k in model])
    assert result.weights["layer_0"].dtype == np.float32
    assert abs(float(differences.std()) - 0.1) < 0.005
    assert abs(float(differences.mean())) < 0.005
    assert trainer.evaluate(model, site).metrics["rms"] == pytest.approx(1.0, abs=0.01)


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.float16])
def test_noise_reaches_every_value_of_a_large_array(dtype: type) -> None:
    array: np.ndarray[Any, Any] = np.zeros((3, NOISE_BLOCK + 5), dtype=dtype)
    noisy = add_noise(array, 0.5, np.random.default_rng(2))
    assert noisy.dtype == array.dtype
    assert noisy.shape == array.shape
    assert np.all(noisy != 0)
    assert abs(float(noisy.std()) - 0.5) < 0.02
    assert not np.shares_memory(noisy, array)
    assert add_noise(np.zeros(0, dtype=dtype), 1.0, np.random.default_rng(2)).size == 0


def test_noise_trainer_writes_its_last_result_again_only_once_it_is_let_go(tmp_path: Path) -> None:
    trainer = NoiseTrainer(noise_scale=0.1, size_mib=0.01, num_arrays=2)
    model = trainer.initial_weights()
    site = SiteContext.create("site-1", scratch=tmp_path, seed=4)

    held = trainer.train(TrainTask("j", 0, model), site).weights
    kept = {k: v.copy() for k, v in held.items()}
    view = held["layer_1"][1:]  # a view alone keeps its array in use
    second = trainer.train(TrainTask("j", 1, model), site).weights
    assert not any(np.shares_memory(second[k], held[k]) for k in model)
    assert all(np.array_equal(held[k], kept[k]) for k in model)  # what is still held is intact

    addresses = {k: v.ctypes.data for k, v in second.items()}
    del held, view, second
    rng = np.random.default_rng(11)
    site_again = SiteContext.create("site-1", scratch=tmp_path, seed=11)
    third = trainer.train(TrainTask("j", 2, model), site_again).weights
    assert {k: v.ctypes.data for k, v in third.items()} == addresses  # the same memory again
    for name, array in model.items():  # ...with the values a fresh array would have had
        assert np.array_equal(third[name], add_noise(array, 0.1, rng))

    with pytest.raises(ValueError, match="C-contiguous"):
        add_noise(model["layer_0"], 0.1, rng, out=np.empty(3, dtype=np.float32))


def test_noise_trainer_straggles_fails_and_aborts(tmp_path: Path) -> None:
    trainer = NoiseTrainer(sleep_seconds=1.0, poll_seconds=0.25, size_mib=0.001)
    slept: list[float] = []
    trainer.sleep = slept.append
    site = SiteContext.create("site-1", scratch=tmp_path)
    trainer.train(TrainTask("j", 0, trainer.initial_weights()), site)
    assert slept == [0.25, 0.25, 0.25, 0.25]

    slept.clear()
    polls = iter([False, False, True])
    aborting = SiteContext.create("site-1", scratch=tmp_path, abort=lambda: next(polls))
    with pytest.raises(TrainingAbortedError):
        trainer.train(TrainTask("j", 0, trainer.initial_weights()), aborting)
    assert slept == [0.25, 0.25]

    failing = NoiseTrainer(fail=True)
    with pytest.raises(RuntimeError, match="told to fail"):
        failing.train(TrainTask("j", 0, {}), site)


def test_gradient_matches_finite_differences_of_the_loss() -> None:
    x = LogisticRegressionTrainer(num_sites=1).data.part(0).x_train[:50]
    y = LogisticRegressionTrainer(num_sites=1).data.part(0).y_train[:50]
    w, l2, eps = start_model(), 0.3, 1e-6

    def loss(model: Weights) -> float:
        return log_loss(y, logits(model, x)) + l2 / 2 * float(np.sum(model["weight"] ** 2))

    analytic = gradient(w, x, y, l2)
    for name, index in [("bias", 0), ("weight", 0), ("weight", 17), ("weight", 29)]:
        up = {k: v.copy() for k, v in w.items()}
        down = {k: v.copy() for k, v in w.items()}
        up[name][index] += eps
        down[name][index] -= eps
        numeric = (loss(up) - loss(down)) / (2 * eps)
        assert analytic[name][index] == pytest.approx(numeric, rel=1e-6, abs=1e-9)


def test_local_steps_from_the_round_parameters() -> None:
    assert local_steps({}, default=3, num_samples=100, batch_size=32) == 3
    assert local_steps({"local_steps": 5}, default=3, num_samples=100, batch_size=32) == 5
    assert local_steps({"local_epochs": 2}, default=3, num_samples=100, batch_size=32) == 8
    assert local_steps({"local_epochs": 2}, default=3, num_samples=100, batch_size=None) == 2
    with pytest.raises(ValueError, match="at least one"):
        local_steps({"local_steps": 0}, default=3, num_samples=100, batch_size=None)


def test_logreg_runs_local_epochs_as_full_batch_steps(tmp_path: Path) -> None:
    trainer, site = one_site(tmp_path, learning_rate=0.5)
    x, y = trainer.data.part(0).x_train, trainer.data.part(0).y_train
    w0 = start_model()
    result = trainer.train(TrainTask("j", 1, w0, params={"local_epochs": 2}), site)
    w1 = step(w0, 0.5, gradient(w0, x, y))
    w2 = step(w1, 0.5, gradient(w1, x, y))
    np.testing.assert_allclose(result.weights["weight"], w2["weight"], rtol=1e-13)
