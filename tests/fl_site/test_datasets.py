"""flrt.datasets: the shipped breast-cancer data and its splits across simulated sites."""

from __future__ import annotations

import hashlib
import importlib.resources
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.datasets import (
    FEATURE_NAMES,
    PUBLIC_FEATURE_RANGES,
    load_breast_cancer,
    scale_features,
    split_indices,
    split_sites,
    train_validation_split,
)
from flrt.errors import DatasetError

X, Y = load_breast_cancer()


def test_the_shipped_csv_is_the_documented_file() -> None:
    data = importlib.resources.files("flrt.datasets") / "data"
    csv = (data / "breast_cancer.csv").read_bytes()
    source = (data / "SOURCE.md").read_text(encoding="utf-8")
    documented = re.search(r"SHA-256: `([0-9a-f]{64})`", source)
    assert documented is not None
    assert hashlib.sha256(csv).hexdigest() == documented.group(1)
    assert "CC BY 4.0" in source
    assert csv.startswith(b"569,30,malignant,benign\n")


def test_shape_dtype_and_class_balance() -> None:
    assert X.shape == (569, 30)
    assert X.dtype == np.float64
    assert Y.shape == (569,)
    assert Y.dtype.kind == "i"
    assert int((Y == 1).sum()) == 212  # malignant
    assert int((Y == 0).sum()) == 357  # benign
    assert len(FEATURE_NAMES) == 30
    assert FEATURE_NAMES[0] == "mean radius"
    assert FEATURE_NAMES[10] == "radius error"
    assert FEATURE_NAMES[29] == "worst fractal dimension"
    # The first patient in the file: mean radius 17.99, malignant.
    assert X[0, 0] == 17.99
    assert Y[0] == 1


def test_public_ranges_match_the_published_description() -> None:
    low, high = np.array(PUBLIC_FEATURE_RANGES).T
    # The description rounds to three decimals (four significant digits for the large ones).
    assert np.allclose(X.min(axis=0), low, rtol=2e-3, atol=1.5e-3)
    assert np.allclose(X.max(axis=0), high, rtol=2e-3, atol=1.5e-3)
    scaled = scale_features(X)
    assert scaled.min() > -0.05
    assert scaled.max() < 1.05
    with pytest.raises(DatasetError, match="expected shape"):
        scale_features(X[:, :29])


def test_loads_a_site_csv_in_the_same_format(tmp_path: Path) -> None:
    path = tmp_path / "site.csv"
    rows = "\n".join(",".join(["1.5"] * 30 + [str(label)]) for label in (0, 1, 1))
    path.write_text(f"3,30,malignant,benign\n{rows}\n")
    x, y = load_breast_cancer(path)
    assert x.shape == (3, 30)
    assert y.tolist() == [1, 0, 0]


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "not a breast-cancer CSV"),
        ("2,1,malignant,benign\n1.0,0\n", "header promises 2 rows"),
        ("1,1,malignant,benign\n1.0,2\n", "labels must be 0"),
        ("1,1,malignant,benign\n1.0,x\n", "not a breast-cancer CSV"),
        ("1,1,malignant,benign\nnan,1\n", "finite"),
    ],
)
def test_malformed_site_csv(tmp_path: Path, text: str, reason: str) -> None:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    with pytest.raises(DatasetError, match=reason):
        load_breast_cancer(path)


# --------------------------------------------------------------------------- splits


def assert_partition(parts: list[npt.NDArray[np.int64]], n: int) -> None:
    joined = np.concatenate(parts)
    assert np.array_equal(np.sort(joined), np.arange(n))  # every sample in exactly one site


@given(
    n_sites=st.integers(1, 12),
    mode=st.sampled_from(["iid", "skewed"]),
    seed=st.integers(0, 2**32 - 1),
    alpha=st.floats(0.3, 100.0),
)
@settings(max_examples=60, deadline=None)
def test_every_sample_is_in_exactly_one_site(
    n_sites: int, mode: str, seed: int, alpha: float
) -> None:
    parts = split_indices(Y, n_sites, mode=mode, seed=seed, alpha=alpha)  # type: ignore[arg-type]
    assert len(parts) == n_sites
    assert_partition(parts, len(Y))
    assert all(np.all(np.diff(p) > 0) for p in parts)  # sorted
    assert min(len(p) for p in parts) >= (10 if mode == "skewed" else len(Y) // n_sites)
    again = split_indices(Y, n_sites, mode=mode, seed=seed, alpha=alpha)  # type: ignore[arg-type]
    assert all(np.array_equal(a, b) for a, b in zip(parts, again, strict=True))


def test_iid_sizes_differ_by_at_most_one_and_seeds_matter() -> None:
    parts = split_indices(Y, 4, mode="iid", seed=1)
    assert sorted(len(p) for p in parts) == [142, 142, 142, 143]
    other = split_indices(Y, 4, mode="iid", seed=2)
    assert not np.array_equal(parts[0], other[0])


def test_skewed_split_skews_labels_and_sizes() -> None:
    skewed = split_indices(Y, 5, mode="skewed", seed=3, alpha=0.2)
    iid = split_indices(Y, 5, mode="iid", seed=3)
    share = [Y[p].mean() for p in skewed]  # fraction malignant per site
    iid_share = [Y[p].mean() for p in iid]
    assert max(share) - min(share) > 0.4
    assert max(iid_share) - min(iid_share) < 0.2
    sizes = [len(p) for p in skewed]
    assert max(sizes) > 2 * min(sizes)


def test_split_sites_returns_the_rows_of_each_site() -> None:
    sites = split_sites(X, Y, 3, mode="skewed", seed=0, alpha=1.0)
    indices = split_indices(Y, 3, mode="skewed", seed=0, alpha=1.0)
    for (x, y), idx in zip(sites, indices, strict=True):
        assert np.array_equal(x, X[idx])
        assert np.array_equal(y, Y[idx])


@pytest.mark.parametrize(
    ("n_sites", "mode", "alpha", "reason"),
    [
        (0, "iid", 0.5, "n_sites must be"),
        (570, "iid", 0.5, "n_sites must be"),
        (2, "random", 0.5, "mode must be"),
        (2, "skewed", 0.0, "alpha must be"),
        (60, "skewed", 0.5, "need more than 569"),
        (50, "skewed", 0.001, "no skewed split"),
    ],
)
def test_split_errors(n_sites: int, mode: str, alpha: float, reason: str) -> None:
    with pytest.raises(DatasetError, match=reason):
        split_indices(Y, n_sites, mode=mode, alpha=alpha, max_draws=20)  # type: ignore[arg-type]


def test_train_validation_split() -> None:
    train, validation = train_validation_split(100, 0.2, seed=5)
    assert len(validation) == 20
    assert_partition([train, validation], 100)
    assert np.array_equal(train_validation_split(100, 0.2, seed=5)[1], validation)
    assert len(train_validation_split(10, 0.0)[1]) == 0
    with pytest.raises(DatasetError, match="validation fraction"):
        train_validation_split(10, 1.0)
