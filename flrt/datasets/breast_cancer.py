"""The Wisconsin Diagnostic Breast Cancer data (569 patients, 30 features), and site splits.

The CSV ships with flrt (``flrt/datasets/data/``, CC BY 4.0, see ``SOURCE.md`` there). Labels are
``1`` for malignant (212 patients) and ``0`` for benign (357).

Splitting across simulated sites
--------------------------------
:func:`split_indices` hands every sample to exactly one site, deterministically for a seed:

- ``"iid"``: a random permutation cut into ``n_sites`` parts whose sizes differ by at most one.
- ``"skewed"``: Dirichlet label skew (Hsu et al. 2019): for each class, the class's samples are
  shared out in proportions drawn from ``Dirichlet(alpha, ..., alpha)``. Small ``alpha`` gives sites
  dominated by one class and of very unequal sizes; large ``alpha`` approaches ``"iid"``. Draws that
  leave a site with fewer than ``min_samples`` samples are redrawn (from the same seeded generator).

Feature scaling without leaking data
------------------------------------
Standardising with statistics of the pooled data would tell every site something about the others,
and standardising with each site's own statistics would put the sites' models in different
coordinates (and break "FedAvg of one full-batch step = centralised gradient descent"). So
:func:`scale_features` maps each feature to about ``[0, 1]`` with :data:`PUBLIC_FEATURE_RANGES`: the
per-feature minimum and maximum printed in the data set's published description (UCI; also in
scikit-learn's documentation). They are public constants fixed before any site shares anything, the
same at every site; in a real study the lead researcher would fix such ranges from domain knowledge.
"""

from __future__ import annotations

import functools
import importlib.resources
import os
from pathlib import Path
from typing import Any, Literal, TypeAlias

import numpy as np
import numpy.typing as npt

from flrt.errors import DatasetError

__all__ = [
    "FEATURE_NAMES",
    "NUM_FEATURES",
    "NUM_SAMPLES",
    "PUBLIC_FEATURE_RANGES",
    "SplitMode",
    "load_breast_cancer",
    "scale_features",
    "split_indices",
    "split_sites",
    "train_validation_split",
]

SplitMode: TypeAlias = Literal["iid", "skewed"]

NUM_SAMPLES = 569
NUM_FEATURES = 30

_MEASURES = (
    "radius",
    "texture",
    "perimeter",
    "area",
    "smoothness",
    "compactness",
    "concavity",
    "concave points",
    "symmetry",
    "fractal dimension",
)
#: The 30 features in file order: the mean, the standard error and the worst value of ten measures.
FEATURE_NAMES: tuple[str, ...] = tuple(
    f"{prefix} {measure}" if prefix != "error" else f"{measure} error"
    for prefix in ("mean", "error", "worst")
    for measure in _MEASURES
)

#: Per-feature (minimum, maximum) from the data set's published description, in file order.
PUBLIC_FEATURE_RANGES: tuple[tuple[float, float], ...] = (
    (6.981, 28.11),
    (9.71, 39.28),
    (43.79, 188.5),
    (143.5, 2501.0),
    (0.053, 0.163),
    (0.019, 0.345),
    (0.0, 0.427),
    (0.0, 0.201),
    (0.106, 0.304),
    (0.05, 0.097),
    (0.112, 2.873),
    (0.36, 4.885),
    (0.757, 21.98),
    (6.802, 542.2),
    (0.002, 0.031),
    (0.002, 0.135),
    (0.0, 0.396),
    (0.0, 0.053),
    (0.008, 0.079),
    (0.001, 0.03),
    (7.93, 36.04),
    (12.02, 49.54),
    (50.41, 251.2),
    (185.2, 4254.0),
    (0.071, 0.223),
    (0.027, 1.058),
    (0.0, 1.252),
    (0.0, 0.291),
    (0.156, 0.664),
    (0.055, 0.208),
)

_RESOURCE = "breast_cancer.csv"


def _read_csv(text: str, source: str) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    lines = text.splitlines()
    try:
        rows, columns = (int(v) for v in lines[0].split(",")[:2])
        table = np.array([[float(v) for v in line.split(",")] for line in lines[1:] if line], float)
    except (ValueError, IndexError) as exc:
        raise DatasetError(f"{source}: not a breast-cancer CSV ({exc})") from None
    if table.shape != (rows, columns + 1):
        raise DatasetError(
            f"{source}: header promises {rows} rows of {columns} features and a label, "
            f"found shape {table.shape}"
        )
    labels = table[:, -1]
    if not np.isin(labels, (0.0, 1.0)).all():
        raise DatasetError(f"{source}: labels must be 0 (malignant) or 1 (benign)")
    if not np.isfinite(table).all():
        raise DatasetError(f"{source}: features must be finite numbers")
    # The file says 0 = malignant; we return 1 = malignant, the positive class.
    return table[:, :-1].copy(), (1 - labels).astype(np.int64)


def load_breast_cancer(
    path: str | os.PathLike[str] | None = None,
) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    """The features ``X`` (float64, ``[n, 30]``) and labels ``y`` (int64, 1 = malignant, ``[n]``).

    Without ``path``, the 569 patients shipped with flrt. With ``path``, a CSV in the same format (a
    site's own copy or its own patients): first line ``rows,features,malignant,benign``, then one row
    per patient with the label last, 0 for malignant and 1 for benign.

    Raises :class:`~flrt.errors.DatasetError` for a malformed file and :class:`OSError` when it cannot
    be read.
    """
    if path is None:
        x, y = _shipped()
        return x.copy(), y.copy()
    return _read_csv(Path(path).read_text(encoding="ascii"), str(path))


@functools.cache
def _shipped() -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    resource = importlib.resources.files("flrt.datasets") / "data" / _RESOURCE
    return _read_csv(resource.read_text(encoding="ascii"), f"flrt.datasets:data/{_RESOURCE}")


def scale_features(x: npt.NDArray[Any]) -> npt.NDArray[np.float64]:
    """Map each of the 30 features to about ``[0, 1]`` with :data:`PUBLIC_FEATURE_RANGES`.

    Raises :class:`~flrt.errors.DatasetError` if ``x`` does not have 30 columns.
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != NUM_FEATURES:
        raise DatasetError(f"expected shape [n, {NUM_FEATURES}], got {list(x.shape)}")
    low, high = np.array(PUBLIC_FEATURE_RANGES, dtype=np.float64).T
    result: npt.NDArray[np.float64] = (x - low) / (high - low)
    return result


def split_indices(
    y: npt.NDArray[Any],
    n_sites: int,
    *,
    mode: SplitMode = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    min_samples: int = 10,
    max_draws: int = 1000,
) -> list[npt.NDArray[np.int64]]:
    """Share the samples out among ``n_sites`` sites; each index appears in exactly one site.

    Returns one sorted index array per site. Deterministic for ``(y, n_sites, mode, seed, alpha,
    min_samples)``. ``alpha`` and ``min_samples`` only matter for ``"skewed"`` (see the module
    docstring); ``"iid"`` sizes differ by at most one.

    Raises :class:`~flrt.errors.DatasetError` for fewer than one site, more sites than samples, an
    unknown mode, ``alpha <= 0``, or a skewed split that gives some site fewer than ``min_samples``
    samples in ``max_draws`` draws.
    """
    labels = np.asarray(y)
    n = labels.shape[0]
    if isinstance(n_sites, bool) or not isinstance(n_sites, int) or not 1 <= n_sites <= n:
        raise DatasetError(f"n_sites must be an int between 1 and {n}, got {n_sites!r}")
    rng = np.random.default_rng(seed)
    if mode == "iid":
        return [np.sort(part) for part in np.array_split(rng.permutation(n), n_sites)]
    if mode != "skewed":
        raise DatasetError(f"mode must be 'iid' or 'skewed', got {mode!r}")
    if not alpha > 0:
        raise DatasetError(f"alpha must be > 0, got {alpha!r}")
    if min_samples * n_sites > n:
        raise DatasetError(f"{n_sites} sites of at least {min_samples} samples need more than {n}")
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(max_draws):
        parts: list[list[npt.NDArray[np.int64]]] = [[] for _ in range(n_sites)]
        for members in by_class:
            shares = rng.dirichlet(np.full(n_sites, float(alpha)))
            cuts = np.round(np.cumsum(shares)[:-1] * len(members)).astype(np.int64)
            for site, chunk in enumerate(np.split(members, cuts)):
                parts[site].append(chunk)
        sites = [np.sort(np.concatenate(chunks)).astype(np.int64) for chunks in parts]
        if min(len(s) for s in sites) >= min_samples:
            return sites
    raise DatasetError(
        f"no skewed split with alpha={alpha} gave every one of {n_sites} sites "
        f"{min_samples} samples in {max_draws} draws; raise alpha or lower n_sites"
    )


def split_sites(
    x: npt.NDArray[Any],
    y: npt.NDArray[Any],
    n_sites: int,
    *,
    mode: SplitMode = "iid",
    seed: int = 0,
    alpha: float = 0.5,
    min_samples: int = 10,
) -> list[tuple[npt.NDArray[Any], npt.NDArray[Any]]]:
    """``(X_site, y_site)`` for each site, from :func:`split_indices` (same arguments and errors)."""
    if len(x) != len(y):
        raise DatasetError(f"X has {len(x)} rows but y has {len(y)}")
    return [
        (x[i], y[i])
        for i in split_indices(
            y, n_sites, mode=mode, seed=seed, alpha=alpha, min_samples=min_samples
        )
    ]


def train_validation_split(
    n: int, fraction: float, *, seed: int = 0
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Sorted (train, validation) indices of ``range(n)``, with ``round(fraction * n)`` validated.

    Deterministic for a seed. ``fraction`` 0 gives an empty validation set. Raises
    :class:`~flrt.errors.DatasetError` unless ``0 <= fraction < 1``.
    """
    if not 0.0 <= fraction < 1.0:
        raise DatasetError(f"validation fraction must be in [0, 1), got {fraction!r}")
    order = np.random.default_rng(seed).permutation(n)
    cut = round(fraction * n)
    return np.sort(order[cut:]).astype(np.int64), np.sort(order[:cut]).astype(np.int64)
