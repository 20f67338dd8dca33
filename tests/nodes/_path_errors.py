"""A trainer whose chosen sites fail with an error that names the site's files in every way a
trainer's error may, for the tests of what a site says about it upstream. Sites import it by name
(``tests.nodes._path_errors:PathErrorTrainer``), as they would a study's own trainer."""

from __future__ import annotations

import errno
from collections.abc import Sequence

from flrt.examples.noise import NoiseTrainer
from flrt.tasks import TrainResult, TrainTask
from flrt.trainer import SiteContext

#: What a site tells the server about :func:`path_error`, before the error id.
UPSTREAM = (
    "ValueError: cannot load <path>, <path> or <path>:"
    " [Errno 2] No such file or directory: '<path>'"
)


def path_error(site: str) -> ValueError:
    """An absolute path with spaces and no quotes, a relative path to a data file, an explicitly
    relative path, and a relative name that only the ``OSError`` it was raised from calls a file."""
    try:
        try:
            raise FileNotFoundError(errno.ENOENT, "No such file or directory", f"cohort {site}")
        except OSError as exc:
            raise ValueError(
                f"cannot load /srv/Hospital Data/{site}/cohort 2/x.csv, data/{site}/patients.csv"
                f" or ./cache/{site}: {exc}"
            ) from exc
    except ValueError as exc:
        return exc


class PathErrorTrainer(NoiseTrainer):
    """The noise trainer, with ``failing_sites`` raising :func:`path_error` in ``train``."""

    def __init__(self, *, failing_sites: Sequence[str] = (), **noise: float) -> None:
        super().__init__(**noise)  # type: ignore[arg-type]
        self.failing_sites = frozenset(failing_sites)

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        if context.site in self.failing_sites:
            raise path_error(context.site)
        return super().train(task, context)
