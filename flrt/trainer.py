"""The trainer API: the plain Python a site runs on its own data.

A trainer is any object with two methods (see :class:`Trainer`)::

    class MyTrainer:
        def __init__(self, learning_rate: float = 0.1) -> None: ...
        def train(self, task: TrainTask, context: SiteContext) -> TrainResult: ...
        def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult: ...
        def initial_weights(self) -> Weights: ...        # optional: round 0's model

A job names it as ``"package.module:MyTrainer"`` with keyword arguments (``[trainer.args]`` in the
job file); :func:`load_trainer` imports it, calls it with those arguments and wraps the instance in a
:class:`CheckedTrainer` that turns a wrong return type into a :class:`~flrt.errors.TrainerOutputError`
instead of a crash three layers further down.

Threads. ``train`` and ``evaluate`` are ordinary blocking functions: the site calls them in a worker
thread, so they may use numpy, PyTorch or anything else that blocks, and must not touch the site's
event loop. Because the thread cannot be cancelled from outside, a long loop should poll
``context.abort()`` (or call ``context.raise_if_aborted()``) now and then; once the site has given up
on the task, whatever the trainer returns is discarded.

Exceptions a trainer raises propagate unchanged: the site reports the task as failed.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from flrt.errors import (
    ConfigError,
    IncompatibleWeightsError,
    TrainerLoadError,
    TrainerOutputError,
    TrainingAbortedError,
)
from flrt.model import all_finite, check_compatible
from flrt.tasks import EvalResult, Metrics, TrainResult, TrainTask, UpdateKind, Weights
from transport.protocol.objects import ALLOWED_DTYPES

__all__ = [
    "MAX_NUM_SAMPLES",
    "CheckedTrainer",
    "InitialWeights",
    "SiteContext",
    "Trainer",
    "load_trainer",
]


def _never() -> bool:
    return False


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a folder on the way this user may not search: not there for the trainer
        return False


@dataclass(frozen=True, slots=True)
class SiteContext:
    """What a site hands its trainer with every call.

    - ``site``: the site's name (from its certificate).
    - ``data``: named data locations from the site's local configuration (``local/``), for example
      ``{"breast_cancer": Path("/data/wdbc.csv")}``. Only the site decides these; a job can only
      name a key.
    - ``scratch``: a directory private to this job on this site, for checkpoints and caches.
    - ``rng``: a seeded generator; use it (not the global numpy state) so a run can be repeated.
    - ``abort``: returns ``True`` once the site has given up on the task; poll it in long loops.
    """

    site: str
    data: Mapping[str, Path]
    scratch: Path
    rng: np.random.Generator
    abort: Callable[[], bool] = field(default=_never)

    @classmethod
    def create(
        cls,
        site: str,
        *,
        scratch: Path,
        data: Mapping[str, Path] | None = None,
        seed: int = 0,
        abort: Callable[[], bool] | None = None,
    ) -> SiteContext:
        """A context with a generator seeded from ``seed`` (for the site runner and for tests)."""
        return cls(
            site=site,
            data=dict(data or {}),
            scratch=scratch,
            rng=np.random.default_rng(seed),
            abort=abort or _never,
        )

    def data_path(self, key: str) -> Path:
        """The data location called ``key``.

        Raises :class:`~flrt.errors.ConfigError` (key ``data.<key>``) when the site has none, or
        when nothing is at its location (or this user cannot reach it). The message names the
        key, never the path: it goes upstream, and the site's log named the path when it started.
        """
        try:
            location = self.data[key]
        except KeyError:
            known = ", ".join(sorted(self.data)) or "none"
            raise ConfigError(
                f"site {self.site!r} has no data location {key!r} (known: {known})",
                key=f"data.{key}",
            ) from None
        if not _exists(location):
            raise ConfigError(
                f"site {self.site!r}: nothing is at data location {key!r} (or this site cannot"
                " reach it): the site's IT must put the data there, or point the key at it in"
                f" data.toml of the site kit's local folder (or --data {key}=PATH) and restart"
                " the site",
                key=f"data.{key}",
            )
        return location

    def raise_if_aborted(self) -> None:
        """Raise :class:`~flrt.errors.TrainingAbortedError` if the site has given up on the task."""
        if self.abort():
            raise TrainingAbortedError(f"site {self.site!r} aborted the task")


@runtime_checkable
class Trainer(Protocol):
    """Trains and evaluates a model on one site's data. Both methods run in a worker thread."""

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        """Train ``task.weights`` locally and return the new model (or its difference).

        ``num_samples`` in the result weighs the update in FedAvg.
        """
        ...

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        """Evaluate a model on the site's local validation data."""
        ...


@runtime_checkable
class InitialWeights(Protocol):
    """The optional hook with which the server creates round 0's model from the trainer."""

    def initial_weights(self) -> Weights: ...


# --------------------------------------------------------------------------------------- checking

#: The kinds of numpy dtype a global model may hold: what the aggregators add up and model files
#: store (a site's update is checked against the model, so this is checked once, in round 0).
_GLOBAL_KINDS = frozenset("biuf")


def _check_weights(value: object, what: str, method: str, spec: str | None) -> Weights:
    if not isinstance(value, dict):
        raise TrainerOutputError(
            f"returned {what} of type {type(value).__name__}, not dict[str, numpy.ndarray]",
            method=method,
            spec=spec,
        )
    for name, array in value.items():
        if not isinstance(name, str):
            raise TrainerOutputError(
                f"returned {what} with a {type(name).__name__} key, not str",
                method=method,
                spec=spec,
            )
        if not isinstance(array, np.ndarray):
            raise TrainerOutputError(
                f"returned {what} {name!r} of type {type(array).__name__}, not numpy.ndarray",
                method=method,
                spec=spec,
            )
        if array.dtype.name not in ALLOWED_DTYPES:
            raise TrainerOutputError(
                f"returned {what} {name!r} of dtype {array.dtype.name}, which a model cannot hold"
                f" (booleans, integers, floats and complex numbers of up to 64 bits per part)",
                method=method,
                spec=spec,
            )
        if not all_finite(array):
            raise TrainerOutputError(
                f"returned {what} {name!r} with NaN or infinite values", method=method, spec=spec
            )
    return value


def _check_metrics(value: object, method: str, spec: str | None) -> Metrics:
    if not isinstance(value, Mapping):
        raise TrainerOutputError(
            f"returned metrics of type {type(value).__name__}, not dict[str, float]",
            method=method,
            spec=spec,
        )
    metrics: Metrics = {}
    for name, number in value.items():
        if (
            not isinstance(name, str)
            or isinstance(number, bool | np.bool_)
            or not isinstance(number, numbers.Real)
        ):
            raise TrainerOutputError(
                f"returned metric {name!r} = {type(number).__name__}, not a real number",
                method=method,
                spec=spec,
            )
        value = float(number)
        if not math.isfinite(value):  # the server would refuse the whole reply for it
            raise TrainerOutputError(
                f"returned metric {name!r} = {value}, not a finite number", method=method, spec=spec
            )
        metrics[name] = value
    return metrics


#: The largest ``num_samples`` a trainer may return: every count up to it is exact as the float
#: that weighs an update, and far below what a message's 64-bit integers carry (a larger count
#: would fail the site's reply after the work was done).
MAX_NUM_SAMPLES = 2**53


def _check_count(value: object, method: str, spec: str | None) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < 0:
        raise TrainerOutputError(
            f"returned num_samples {value!r}, not a non-negative int", method=method, spec=spec
        )
    if value > MAX_NUM_SAMPLES:
        raise TrainerOutputError(
            f"returned num_samples {value!r}, more than the 2**53 samples a count may be",
            method=method,
            spec=spec,
        )
    return int(value)


class CheckedTrainer:
    """A trainer whose answers are checked before anybody else sees them.

    Every method raises :class:`~flrt.errors.TrainerOutputError` when the wrapped trainer returns the
    wrong type, a model whose names, dtypes or shapes differ from the task's, NaN or infinite values
    in the weights or the metrics, or a count past :data:`MAX_NUM_SAMPLES`. Metrics are returned as
    plain ``float`` and counts as plain ``int``. Exceptions the trainer raises itself propagate
    unchanged.
    """

    __slots__ = ("inner", "spec")

    def __init__(self, inner: Trainer, spec: str | None = None) -> None:
        self.inner = inner
        self.spec = spec

    def __repr__(self) -> str:
        return f"CheckedTrainer({self.inner!r}, spec={self.spec!r})"

    def train(self, task: TrainTask, context: SiteContext) -> TrainResult:
        result = self.inner.train(task, context)
        spec = self.spec
        if not isinstance(result, TrainResult):
            raise TrainerOutputError(
                f"returned {type(result).__name__}, not TrainResult", method="train", spec=spec
            )
        if not isinstance(result.kind, UpdateKind):
            raise TrainerOutputError(
                f"returned kind {result.kind!r}, not UpdateKind", method="train", spec=spec
            )
        weights = _check_weights(result.weights, "weights", "train", spec)
        try:
            check_compatible(task.weights, weights)
        except IncompatibleWeightsError as exc:
            raise TrainerOutputError(
                f"returned weights that do not match the task's model: {exc}",
                method="train",
                spec=spec,
            ) from None
        if not isinstance(result.extras, Mapping):
            raise TrainerOutputError(
                f"returned extras of type {type(result.extras).__name__}, not a mapping",
                method="train",
                spec=spec,
            )
        extras = {
            str(key): _check_weights(value, f"extras[{key!r}]", "train", spec)
            for key, value in result.extras.items()
        }
        return replace(
            result,
            weights=weights,
            num_samples=_check_count(result.num_samples, "train", spec),
            metrics=_check_metrics(result.metrics, "train", spec),
            extras=extras,
        )

    def evaluate(self, weights: Weights, context: SiteContext) -> EvalResult:
        result = self.inner.evaluate(weights, context)
        if not isinstance(result, EvalResult):
            raise TrainerOutputError(
                f"returned {type(result).__name__}, not EvalResult",
                method="evaluate",
                spec=self.spec,
            )
        return EvalResult(
            metrics=_check_metrics(result.metrics, "evaluate", self.spec),
            num_samples=_check_count(result.num_samples, "evaluate", self.spec),
        )

    @property
    def has_initial_weights(self) -> bool:
        """Whether the trainer offers the optional :class:`InitialWeights` hook."""
        return isinstance(self.inner, InitialWeights)

    def initial_weights(self) -> Weights:
        """Round 0's model from the trainer's hook.

        Raises :class:`~flrt.errors.TrainerLoadError` if the trainer has no such hook, and
        :class:`~flrt.errors.TrainerOutputError` if it returns something other than a model the
        server can aggregate and keep: no arrays, an array without a name (or named
        ``__metadata__``), or complex numbers. Arrays are returned in this machine's byte order.
        """
        if not isinstance(self.inner, InitialWeights):
            raise TrainerLoadError("has no initial_weights() method", spec=self.spec)
        method, spec = "initial_weights", self.spec
        weights = _check_weights(self.inner.initial_weights(), "weights", method, spec)
        if not weights:
            raise TrainerOutputError(
                "returned an empty model (no arrays)", method=method, spec=spec
            )
        model: Weights = {}
        for name, array in weights.items():
            if not name or name == "__metadata__":
                raise TrainerOutputError(
                    f"returned an array named {name!r}, which a model file cannot hold",
                    method=method,
                    spec=spec,
                )
            if array.dtype.kind not in _GLOBAL_KINDS:
                raise TrainerOutputError(
                    f"returned weights {name!r} of dtype {array.dtype.name}, which a global model"
                    " cannot hold (booleans, integers and floats)",
                    method=method,
                    spec=spec,
                )
            # The same numbers in this machine's byte order (arrays read from some files are not).
            model[name] = array.astype(array.dtype.newbyteorder("="), copy=False)
        return model


# --------------------------------------------------------------------------------------- loading


def _parse_spec(spec: str) -> tuple[str, list[str]]:
    module, sep, attribute = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    parts = attribute.split(".")
    if (
        not sep
        or not all(part.isidentifier() for part in module.split("."))
        or not all(part.isidentifier() for part in parts)
    ):
        raise TrainerLoadError("is not of the form 'package.module:object'", spec=str(spec)[:200])
    return module, parts


def _import(module: str, spec: str) -> Any:
    try:
        return importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name is not None and (module == exc.name or module.startswith(exc.name + ".")):
            raise TrainerLoadError(f"no module named {module!r}", spec=spec) from None
        raise TrainerLoadError(
            f"module {module!r} failed to import: {type(exc).__name__}: {exc}", spec=spec
        ) from exc
    except Exception as exc:
        raise TrainerLoadError(
            f"module {module!r} failed to import: {type(exc).__name__}: {exc}", spec=spec
        ) from exc


def _is_trainer(value: object) -> bool:
    return callable(getattr(value, "train", None)) and callable(getattr(value, "evaluate", None))


def load_trainer(spec: str, args: Mapping[str, Any] | None = None) -> CheckedTrainer:
    """Import ``module:object`` and build the trainer with ``args`` as keyword arguments.

    ``object`` (dotted attributes allowed) may be a class or a factory function, called as
    ``object(**args)``, or, with no arguments, a ready trainer instance. The result is wrapped in a
    :class:`CheckedTrainer`.

    Raises :class:`~flrt.errors.TrainerLoadError` for a malformed spec, a missing module or
    attribute, an object that is not a trainer (no ``train``/``evaluate`` methods), arguments the
    object does not accept, or an exception raised while building the trainer (chained as
    ``__cause__``).
    """
    module_name, path = _parse_spec(spec)
    arguments = dict(args or {})
    if not all(isinstance(key, str) for key in arguments):
        raise TrainerLoadError("argument names must be strings", spec=spec)

    target: Any = _import(module_name, spec)
    for depth, part in enumerate(path):
        try:
            target = getattr(target, part)
        except AttributeError:
            owner = ":".join([module_name, *([".".join(path[:depth])] if depth else [])])
            raise TrainerLoadError(f"{owner!r} has no attribute {part!r}", spec=spec) from None

    if _is_trainer(target) and not inspect.isclass(target):
        if arguments:
            raise TrainerLoadError(
                "names a trainer instance, which takes no arguments "
                f"(got {', '.join(sorted(arguments))})",
                spec=spec,
            )
        return CheckedTrainer(target, spec)
    if not callable(target):
        raise TrainerLoadError(
            f"names a {type(target).__name__}, not a trainer class, factory or instance", spec=spec
        )

    try:
        signature = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        signature = None
    if signature is not None:
        try:
            signature.bind(**arguments)
        except TypeError as exc:
            raise TrainerLoadError(f"refused its arguments: {exc}", spec=spec) from None
    try:
        trainer = target(**arguments)
    except Exception as exc:
        raise TrainerLoadError(
            f"raised {type(exc).__name__} while being built: {exc}", spec=spec
        ) from exc
    if not _is_trainer(trainer):
        raise TrainerLoadError(
            f"built a {type(trainer).__name__}, which has no train() and evaluate() methods",
            spec=spec,
        )
    return CheckedTrainer(trainer, spec)
