"""Which breast-cancer patients a simulated site holds, from the trainer's arguments."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from flrt.datasets.breast_cancer import (
    SplitMode,
    load_breast_cancer,
    scale_features,
    split_indices,
    train_validation_split,
)
from flrt.errors import DatasetError
from flrt.trainer import SiteContext

__all__ = ["SiteData", "SiteDataSpec"]

_TRAILING_NUMBER = re.compile(r"(\d+)$")
_TRAILING_LETTER = re.compile(r"[-_.]([A-Za-z])$")


@dataclass(frozen=True, slots=True)
class SiteData:
    """One site's patients, scaled with the public ranges, cut into training and validation."""

    x_train: npt.NDArray[np.float64]
    y_train: npt.NDArray[np.int64]
    x_validation: npt.NDArray[np.float64]
    y_validation: npt.NDArray[np.int64]

    def evaluation_set(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """The validation part, or the training part when there is no validation part."""
        if len(self.y_validation):
            return self.x_validation, self.y_validation
        return self.x_train, self.y_train


@dataclass(frozen=True, slots=True)
class SiteDataSpec:
    """Where a site's data comes from.

    With ``data_key``, the site's own CSV (the site's local configuration maps that key to a file,
    see :func:`flrt.datasets.load_breast_cancer` for the format): the whole file is the site's.

    Otherwise the shipped data split among ``num_sites`` simulated sites (:func:`split_indices` with
    ``split``, ``seed``, ``alpha``). A site's part is found by its position in ``site_names`` if
    given, else by its explicit ``site_index`` (0-based), else by the number its name ends with,
    counted from 1 (``site-1`` holds part 0), else by a single letter after a separator at the end
    of its name (``hospital-a`` holds part 0, ``hospital-b`` part 1).

    Either way ``validation_fraction`` of the site's patients are held out for ``evaluate``.
    """

    num_sites: int = 3
    site_index: int | None = None
    site_names: Sequence[str] | None = None
    split: SplitMode = "iid"
    seed: int = 0
    alpha: float = 0.5
    data_key: str | None = None
    validation_fraction: float = 0.2

    def __post_init__(self) -> None:
        if self.data_key is None:
            if not isinstance(self.num_sites, int) or self.num_sites < 1:
                raise DatasetError(f"num_sites must be a positive int, got {self.num_sites!r}")
            if self.site_index is not None and not 0 <= self.site_index < self.num_sites:
                raise DatasetError(
                    f"site_index must be in [0, {self.num_sites}), got {self.site_index}"
                )
            if self.site_names is not None and len(self.site_names) != self.num_sites:
                raise DatasetError(
                    f"site_names lists {len(self.site_names)} sites, not {self.num_sites}"
                )
            if self.split not in ("iid", "skewed"):
                raise DatasetError(f"split must be 'iid' or 'skewed', got {self.split!r}")
        if not 0.0 <= self.validation_fraction < 1.0:
            raise DatasetError(
                f"validation_fraction must be in [0, 1), got {self.validation_fraction}"
            )

    def index_of(self, site: str) -> int:
        """The part of the shared data ``site`` holds (see the class docstring)."""
        if self.site_names is not None:
            if site not in self.site_names:
                raise DatasetError(f"site {site!r} is not in site_names")
            return list(self.site_names).index(site)
        if self.site_index is not None:
            return self.site_index
        number = _TRAILING_NUMBER.search(site)
        letter = _TRAILING_LETTER.search(site)
        if number is not None:
            index = int(number.group(1)) - 1
        elif letter is not None:
            index = ord(letter.group(1).lower()) - ord("a")
        else:
            index = -1
        if not 0 <= index < self.num_sites:
            raise DatasetError(
                f"cannot tell which of {self.num_sites} parts site {site!r} holds: give site_names "
                f"or site_index, or name the sites ...1 to ...{self.num_sites} or ...-a, ...-b"
            )
        return index

    def _cut(self, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64], index: int) -> SiteData:
        train, validation = train_validation_split(
            len(y), self.validation_fraction, seed=self.seed + 1 + index
        )
        x = scale_features(x)
        return SiteData(x[train], y[train], x[validation], y[validation])

    def load(self, context: SiteContext) -> SiteData:
        """The data of the site ``context`` describes."""
        if self.data_key is not None:
            x, y = load_breast_cancer(context.data_path(self.data_key))
            return self._cut(x, y, 0)
        return self.part(self.index_of(context.site))

    def part(self, index: int) -> SiteData:
        """Part ``index`` of the shipped data as split by this spec."""
        x, y = load_breast_cancer()
        parts = split_indices(y, self.num_sites, mode=self.split, seed=self.seed, alpha=self.alpha)
        return self._cut(x[parts[index]], y[parts[index]], index)

    def pooled_training_data(self) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
        """Every simulated site's training part, concatenated: what centralised training would see."""
        parts = [self.part(i) for i in range(self.num_sites)]
        return (
            np.concatenate([p.x_train for p in parts]),
            np.concatenate([p.y_train for p in parts]),
        )
