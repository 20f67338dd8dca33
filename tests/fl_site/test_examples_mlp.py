"""The PyTorch example trainer: FedAvg learns; FedProx and SCAFFOLD are wired to the task."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from flrt.model import load_weights
from flrt.tasks import TrainTask, Weights
from flrt.trainer import SiteContext, load_trainer

pytest.importorskip("torch")

MLP = "flrt.examples.mlp:MLPTrainer"


def sites(tmp_path: Path) -> list[SiteContext]:
    return [SiteContext.create(f"site-{i}", scratch=tmp_path / f"s{i}", seed=i) for i in (1, 2, 3)]


def distance(a: Weights, b: Weights) -> float:
    return float(np.sqrt(sum(np.sum((a[k].astype(np.float64) - b[k]) ** 2) for k in a)))


def test_fedavg_with_scaffold_learns_and_is_deterministic(tmp_path: Path) -> None:
    def run(root: Path) -> tuple[Weights, list[SiteContext]]:
        trainer = load_trainer(MLP, {"num_sites": 3, "local_steps": 10})
        weights = trainer.initial_weights()
        c = {k: np.zeros_like(v) for k, v in weights.items()}
        contexts = sites(root)
        for r in range(3):
            task = TrainTask("j", r, weights, extras={"scaffold_c": c})
            results = [trainer.train(task, site) for site in contexts]
            for result in results:
                assert sorted(result.extras["scaffold_delta"]) == sorted(c)
            counts = np.array([x.num_samples for x in results], dtype=np.float64)
            weights = {
                k: (np.tensordot(counts, np.stack([x.weights[k] for x in results]), axes=1)).astype(
                    np.float32
                )
                / np.float32(counts.sum())
                for k in weights
            }
            c = {
                k: c[k] + sum(x.extras["scaffold_delta"][k] for x in results) / len(results)
                for k in c
            }
        # The first round's c_i was zero, so the stored c_i is the sum of a site's deltas; it
        # exists and has the model's structure.
        stored = load_weights(contexts[0].scratch / "scaffold_c_local.safetensors")
        assert sorted(stored) == sorted(weights)
        metrics = trainer.evaluate(weights, contexts[0]).metrics
        assert sorted(metrics) == ["accuracy", "auc", "loss"]
        assert metrics["accuracy"] > 0.85
        assert metrics["auc"] > 0.95
        return weights, contexts

    first, _ = run(tmp_path / "a")
    second, _ = run(tmp_path / "b")
    assert all(np.array_equal(first[k], second[k]) for k in first)


def test_fedprox_keeps_the_local_model_near_the_global_one(tmp_path: Path) -> None:
    trainer = load_trainer(MLP, {"num_sites": 3, "local_steps": 10})
    start = trainer.initial_weights()

    def local(params: dict[str, float]) -> Weights:
        site = SiteContext.create("site-1", scratch=tmp_path, seed=5)  # same batches each time
        return trainer.train(TrainTask("j", 0, start, params=params), site).weights

    plain, zero_mu, prox = local({}), local({"fedprox_mu": 0.0}), local({"fedprox_mu": 1.5})
    assert all(np.array_equal(plain[k], zero_mu[k]) for k in plain)
    assert distance(prox, start) < 0.9 * distance(plain, start)
