"""Binary-classification metrics for the example trainers (no scikit-learn)."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from flrt.tasks import Metrics

__all__ = ["binary_metrics", "log_loss", "roc_auc"]


def roc_auc(labels: npt.NDArray[Any], scores: npt.NDArray[Any]) -> float | None:
    """The area under the ROC curve: P(score of a random positive > score of a random negative).

    Ties count one half (the Mann-Whitney U statistic over average ranks). ``None`` when there are no
    positives or no negatives, where the AUC is undefined.
    """
    y = np.asarray(labels).astype(bool).ravel()
    s = np.asarray(scores, dtype=np.float64).ravel()
    positives = int(y.sum())
    negatives = y.size - positives
    if positives == 0 or negatives == 0:
        return None
    _, inverse, counts = np.unique(s, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    average_rank = ends - (counts - 1) / 2.0  # 1-based ranks, ties share their mean rank
    rank_sum = float(average_rank[inverse][y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def log_loss(labels: npt.NDArray[Any], logits: npt.NDArray[Any]) -> float:
    """Mean binary cross-entropy of labels in {0, 1} given logits, computed stably."""
    y = np.asarray(labels, dtype=np.float64).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    return float(np.mean(np.logaddexp(0.0, z) - y * z)) if y.size else 0.0


def binary_metrics(labels: npt.NDArray[Any], logits: npt.NDArray[Any]) -> Metrics:
    """``loss`` (cross-entropy), ``accuracy`` (threshold 0.5) and ``auc`` (left out if undefined)."""
    y = np.asarray(labels).ravel()
    z = np.asarray(logits, dtype=np.float64).ravel()
    metrics: Metrics = {
        "loss": log_loss(y, z),
        "accuracy": float(np.mean((z > 0) == (y == 1))) if y.size else 0.0,
    }
    auc = roc_auc(y, z)
    if auc is not None:
        metrics["auc"] = auc
    return metrics
