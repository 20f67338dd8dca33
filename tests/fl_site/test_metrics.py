"""The example trainers' metrics, against brute force."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.examples._metrics import binary_metrics, log_loss, roc_auc


def pairwise_auc(labels: list[int], scores: list[float]) -> float:
    positives = [s for s, y in zip(scores, labels, strict=True) if y]
    negatives = [s for s, y in zip(scores, labels, strict=True) if not y]
    wins = sum((p > n) + 0.5 * (p == n) for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([-2.0, -1.0, 0.0, 0.5, 1.0, 3.0])),
        min_size=1,
        max_size=40,
    )
)
@settings(max_examples=200)
def test_auc_equals_the_pairwise_definition_with_ties(pairs: list[tuple[int, float]]) -> None:
    labels = [y for y, _ in pairs]
    scores = [s for _, s in pairs]
    auc = roc_auc(np.array(labels), np.array(scores))
    if len(set(labels)) < 2:
        assert auc is None
    else:
        assert auc == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_known_values() -> None:
    assert roc_auc(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8])) == 0.75
    assert roc_auc(np.array([1, 1, 0]), np.array([0.9, 0.8, 0.1])) == 1.0
    assert roc_auc(np.array([1, 0]), np.array([0.5, 0.5])) == 0.5
    z = np.array([2.0, -1.0, 0.0])
    y = np.array([1, 0, 1])
    naive = -np.mean(y * np.log(1 / (1 + np.exp(-z))) + (1 - y) * np.log(1 - 1 / (1 + np.exp(-z))))
    assert log_loss(y, z) == pytest.approx(naive, rel=1e-12)
    assert log_loss(np.array([0]), np.array([1000.0])) == pytest.approx(1000.0)  # no overflow
    metrics = binary_metrics(y, z)
    assert metrics["accuracy"] == pytest.approx(2 / 3)  # z = 0 is predicted benign
    assert metrics["auc"] == 1.0
    assert "auc" not in binary_metrics(np.array([1, 1]), np.array([0.3, 0.1]))
