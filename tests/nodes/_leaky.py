"""A trainer and a filter that fail with a message naming a local file, as a site's code does when
its data is not where it should be. Sites import the trainer by name
(``tests.nodes._leaky:LeakyTrainer``). The paths come from the site (its data locations, its
policy), never from the job, as in a real study."""

from __future__ import annotations

import errno
from collections.abc import Mapping
from typing import Any

from flrt.examples.noise import NoiseTrainer
from flrt.filters import Filter, FilterContext, Result, Task
from flrt.tasks import EvalResult, TrainResult, TrainTask, Weights
from flrt.trainer import SiteContext

#: Where a Windows site would keep the data (this trainer's ``windows = true``).
WINDOWS_PATH = "C:\\Users\\alice\\study-0042 patients\\wdbc.csv"


def missing(path: str) -> FileNotFoundError:
    """What ``open(path)`` raises when ``path`` is not there."""
    return FileNotFoundError(errno.ENOENT, "No such file or directory", path)


class LeakyTrainer(NoiseTrainer):
    """The noise trainer, whose ``fail_in`` method (``train`` or ``evaluate``) cannot find the
    site's data location ``wdbc`` (or :data:`WINDOWS_PATH` if ``windows``)."""

    def __init__(self, *, fail_in: str, windows: bool = False, **noise: float) -> None:
        super().__init__(**noise)  # type: ignore[arg-type]
        self.fail_in = fail_in
        self.windows = windows

    def _fail(self, method: str, context: SiteContext) -> None:
        if self.fail_in == method:
            # Its own open() of the location, not data_path (which refuses a missing one, naming
            # only the key): the path in the message is what these tests must not see upstream.
            raise missing(WINDOWS_PATH if self.windows else str(context.data["wdbc"]))

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        self._fail("train", context)
        return super().train(task, context)

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        self._fail("evaluate", context)
        return super().evaluate(weights, context)


class LeakyFilter(Filter):
    """A result filter that cannot read its own configuration file, ``path``."""

    type_name = "leaky_test_filter"

    def __init__(self, args: Mapping[str, Any]) -> None:
        self.path = str(args["path"])

    def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
        raise ValueError(f"cannot read the filter's word list {self.path}: it is empty")
