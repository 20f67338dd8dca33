"""Small public data sets shipped with flrt, and ways to split them across simulated sites."""

from __future__ import annotations

from flrt.datasets.breast_cancer import (
    FEATURE_NAMES,
    PUBLIC_FEATURE_RANGES,
    SplitMode,
    load_breast_cancer,
    scale_features,
    split_indices,
    split_sites,
    train_validation_split,
)

__all__ = [
    "FEATURE_NAMES",
    "PUBLIC_FEATURE_RANGES",
    "SplitMode",
    "load_breast_cancer",
    "scale_features",
    "split_indices",
    "split_sites",
    "train_validation_split",
]
