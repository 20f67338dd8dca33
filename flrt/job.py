"""Jobs: the ``job.toml`` a researcher submits, its validation, and a job's life cycle.

A job names a workflow (with its rounds, quorum and per-workflow parameters), a trainer that the
sites load (``module:object`` with keyword arguments), the target sites and the job's filters::

    name = "breast-cancer-logreg"
    [workflow]
    name = "fedavg"
    rounds = 10
    sites_per_round = 3          # optional: all target sites by default
    min_sites = 2
    grace_seconds = 2.0          # optional, 0 by default
    wait_for_quorum = false      # optional
    round_timeout = 600.0        # optional, none by default
    sampling = "uniform"         # optional: "uniform" or "reliable"
    seed = 7                     # optional: chosen at submission if absent
    [workflow.params]            # validated per workflow, see WORKFLOW_PARAMS
    [trainer]
    spec = "flrt.examples.logreg:LogisticRegressionTrainer"
    [trainer.args]
    learning_rate = 0.1
    [targets]
    sites = []                   # empty: every site
    [[filters]]                  # optional, any number, run on the sites after their own filters
    type = "exclude_variables"
    names = ["head.weight"]

Everything is checked when the file is read; an unknown key or a wrong value is a
:class:`~flrt.errors.JobError` naming the file, the dotted key and the reason. Counts and durations
have upper bounds as well as lower ones (:data:`MAX_ROUNDS`, :data:`MAX_SITES`, ...): a job of
``rounds = 100000000000000000`` is a typing mistake, refused when it is submitted, not a job that
runs for ever and fills the disk with its journal. A parameter that would do nothing is refused too
(``trim_ratio`` without ``aggregator = "trimmed_mean"``, ``byzantine`` without ``"krum"``, an
``evaluate_every`` past the last round): its author expects it to act.

A job's life (:class:`JobStatus`) follows :data:`JOB_TRANSITIONS`; each terminal state carries a
reason. Job ids (:func:`new_job_id`) sort by creation time and are safe as directory names.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import enum
import math
import os
import re
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final, TypeAlias

from flrt.errors import ConfigError, JobError, JobStateError
from flrt.filters import FilterSpec, parse_filter_spec

__all__ = [
    "JOB_TRANSITIONS",
    "MAX_JOB_FILE_BYTES",
    "MAX_LOCAL_EPOCHS",
    "MAX_LOCAL_STEPS",
    "MAX_MEMORY_BUDGET_MB",
    "MAX_ROUNDS",
    "MAX_SECONDS",
    "MAX_SITES",
    "WORKFLOW_PARAMS",
    "CrossSiteEvalParams",
    "FedAvgParams",
    "FedOptParams",
    "FedProxParams",
    "JobRecord",
    "JobSpec",
    "JobStatus",
    "Sampling",
    "ScaffoldParams",
    "TrainerSpec",
    "TrainingParams",
    "WorkflowParams",
    "WorkflowSpec",
    "is_job_id",
    "load_job",
    "loads_job",
    "new_job_id",
    "parse_job",
]


class Sampling(enum.Enum):
    """How a round chooses the sites it asks."""

    #: Uniformly at random.
    UNIFORM = "uniform"
    #: Preferring sites that answered on time before (see :mod:`flrt.workflows.sampling`).
    RELIABLE = "reliable"


# ----------------------------------------------------------------------------- bounds

#: The most rounds a job may ask for (a round a minute: more than two months).
MAX_ROUNDS: Final = 100_000
#: The most sites a job may name or need (``min_sites``, ``sites_per_round``, ``targets.sites``,
#: ``byzantine``): far more hospitals than any study has.
MAX_SITES: Final = 10_000
#: The most local epochs and steps a task may ask of a trainer per round.
MAX_LOCAL_EPOCHS: Final = 10_000
MAX_LOCAL_STEPS: Final = 100_000_000
#: The longest ``grace_seconds`` and ``round_timeout``: 30 days.
MAX_SECONDS: Final = 30 * 24 * 3600.0
#: The largest ``memory_budget_mb``: 1 TiB.
MAX_MEMORY_BUDGET_MB: Final = 1024.0 * 1024.0
#: The largest ``job.toml``, in bytes (1 MiB): a job names its data, it does not carry it.
MAX_JOB_FILE_BYTES: Final = 1024 * 1024


# ----------------------------------------------------------------------------- per-workflow params


def _check(predicate: Any, expected: str) -> dict[str, Any]:
    return {"check": (predicate, expected)}


def _choices(*options: str) -> dict[str, Any]:
    return {"choices": options}


@dataclass(frozen=True, slots=True, kw_only=True)
class TrainingParams:
    """Parameters shared by the training workflows.

    - ``evaluate_every``: evaluate the global model on the sites every this many rounds (0: never).
    - ``local_epochs``, ``local_steps``: passed to the trainers in the task parameters, if set.
    - ``cross_site_eval``: after the last round, every site evaluates every site's model and the
      global one.
    - ``memory_budget_mb``: memory for updates being received or waiting to be folded in (and,
      for robust aggregators, for all updates) before they spill to disk. An update larger than
      the budget is still received, alone; the others wait, held back by flow control.
    """

    evaluate_every: int = dataclasses.field(
        default=0, metadata=_check(lambda v: 0 <= v <= MAX_ROUNDS, f"in [0, {MAX_ROUNDS}]")
    )
    local_epochs: int | None = dataclasses.field(
        default=None,
        metadata=_check(lambda v: 1 <= v <= MAX_LOCAL_EPOCHS, f"in [1, {MAX_LOCAL_EPOCHS}]"),
    )
    local_steps: int | None = dataclasses.field(
        default=None,
        metadata=_check(lambda v: 1 <= v <= MAX_LOCAL_STEPS, f"in [1, {MAX_LOCAL_STEPS}]"),
    )
    cross_site_eval: bool = False
    memory_budget_mb: float = dataclasses.field(
        default=256.0,
        metadata=_check(
            lambda v: 0 < v <= MAX_MEMORY_BUDGET_MB, f"in (0, {MAX_MEMORY_BUDGET_MB:.0f}]"
        ),
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FedAvgParams(TrainingParams):
    """FedAvg. ``aggregator`` is one of :data:`flrt.aggregation.AGGREGATORS`; ``trim_ratio`` is for
    ``trimmed_mean``, ``byzantine`` for ``krum``."""

    aggregator: str = dataclasses.field(
        default="weighted_mean",
        metadata=_choices("weighted_mean", "uniform_mean", "median", "trimmed_mean", "krum"),
    )
    trim_ratio: float = dataclasses.field(
        default=0.1, metadata=_check(lambda v: 0 <= v < 0.5, "in [0, 0.5)")
    )
    byzantine: int = dataclasses.field(
        default=1, metadata=_check(lambda v: 0 <= v <= MAX_SITES, f"in [0, {MAX_SITES}]")
    )


@dataclass(frozen=True, slots=True, kw_only=True)
class FedProxParams(FedAvgParams):
    """FedProx: FedAvg whose sites add ``mu / 2 * |w - w_global|^2`` to their loss; ``mu`` is sent
    as ``fedprox_mu`` in the task parameters."""

    mu: float = dataclasses.field(metadata=_check(lambda v: v >= 0, ">= 0"))


@dataclass(frozen=True, slots=True, kw_only=True)
class ScaffoldParams(TrainingParams):
    """SCAFFOLD with server learning rate ``server_lr``; updates are weighted by sample counts
    unless ``weighted = false``."""

    server_lr: float = dataclasses.field(default=1.0, metadata=_check(lambda v: v > 0, "> 0"))
    weighted: bool = True


@dataclass(frozen=True, slots=True, kw_only=True)
class FedOptParams(FedAvgParams):
    """FedOpt (Reddi et al. 2021): ``optimizer`` with ``server_lr``, ``beta1``, ``beta2``, ``tau``."""

    optimizer: str = dataclasses.field(metadata=_choices("fedadam", "fedyogi", "fedadagrad"))
    server_lr: float = dataclasses.field(default=0.01, metadata=_check(lambda v: v > 0, "> 0"))
    beta1: float = dataclasses.field(
        default=0.9, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)")
    )
    beta2: float = dataclasses.field(
        default=0.99, metadata=_check(lambda v: 0 <= v < 1, "in [0, 1)")
    )
    tau: float = dataclasses.field(default=1e-3, metadata=_check(lambda v: v > 0, "> 0"))


@dataclass(frozen=True, slots=True, kw_only=True)
class CrossSiteEvalParams:
    """Cross-site evaluation of the job's model: ``include_global`` adds the global model's column."""

    include_global: bool = True


WorkflowParams: TypeAlias = (
    FedAvgParams | FedProxParams | ScaffoldParams | FedOptParams | CrossSiteEvalParams
)

#: The workflows a job may name, with the class of their ``[workflow.params]``.
WORKFLOW_PARAMS: Final[Mapping[str, type[Any]]] = MappingProxyType(
    {
        "fedavg": FedAvgParams,
        "fedprox": FedProxParams,
        "scaffold": ScaffoldParams,
        "fedopt": FedOptParams,
        "cross_site_eval": CrossSiteEvalParams,
    }
)

#: Workflows that do not train, and so take no ``rounds``.
_NO_ROUNDS = frozenset({"cross_site_eval"})


# ----------------------------------------------------------------------------- specs


@dataclass(frozen=True, slots=True)
class WorkflowSpec:
    """``[workflow]``: which workflow, how many rounds, the quorum, and the workflow's params.

    ``sites_per_round = None`` asks every target site; ``seed = None`` lets the server choose one
    when the job is submitted.
    """

    name: str
    rounds: int
    min_sites: int
    params: WorkflowParams
    sites_per_round: int | None = None
    grace_seconds: float = 0.0
    wait_for_quorum: bool = False
    round_timeout: float | None = None
    sampling: Sampling = Sampling.UNIFORM
    seed: int | None = None


@dataclass(frozen=True, slots=True)
class TrainerSpec:
    """``[trainer]``: the ``module:object`` the sites load, with its keyword arguments."""

    spec: str
    args: Mapping[str, Any] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A validated job. ``targets`` empty means every site."""

    name: str
    workflow: WorkflowSpec
    trainer: TrainerSpec
    targets: tuple[str, ...] = ()
    filters: tuple[FilterSpec, ...] = ()


# ----------------------------------------------------------------------------- parsing


class _Reader:
    """Checks one TOML table, remembering the file and the dotted key for errors."""

    def __init__(self, table: Mapping[str, Any], path: Path | str | None, prefix: str) -> None:
        self.table = table
        self.path = path
        self.prefix = prefix
        self.seen: set[str] = set()

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def error(self, name: str | None, reason: str) -> JobError:
        return JobError(reason, path=self.path, key=self.key(name) if name else self.prefix or None)

    def has(self, name: str) -> bool:
        return name in self.table

    def raw(self, name: str) -> Any:
        self.seen.add(name)
        return self.table[name]

    def table_at(self, name: str, *, required: bool = False) -> _Reader:
        if name not in self.table:
            if required:
                raise self.error(name, "is missing")
            return _Reader({}, self.path, self.key(name))
        value = self.raw(name)
        if not isinstance(value, dict):
            raise self.error(name, f"must be a table, got {_kind(value)}")
        return _Reader(value, self.path, self.key(name))

    def string(self, name: str, *, required: bool = True, default: str = "") -> str:
        if name not in self.table:
            if required:
                raise self.error(name, "is missing")
            return default
        value = self.raw(name)
        if not isinstance(value, str):
            raise self.error(name, f"must be a string, got {_kind(value)}")
        return value

    def integer(
        self, name: str, *, minimum: int, maximum: int, required: bool = True
    ) -> int | None:
        if name not in self.table:
            if required:
                raise self.error(name, "is missing")
            return None
        value = self.raw(name)
        if isinstance(value, bool) or not isinstance(value, int):
            raise self.error(name, f"must be an integer, got {_kind(value)}")
        if value < minimum:
            raise self.error(name, f"must be >= {minimum}, got {value}")
        if value > maximum:
            raise self.error(name, f"must be <= {maximum}, got {value}")
        return value

    def number(self, name: str, *, maximum: float, positive: bool = False) -> float | None:
        if name not in self.table:
            return None
        value = _as_float(self.raw(name))
        if value is None:
            raise self.error(name, f"must be a number, got {_kind(self.table[name])}")
        if not math.isfinite(value):
            raise self.error(name, "must be finite")
        if value < 0 or (positive and value == 0):
            raise self.error(name, f"must be {'> 0' if positive else '>= 0'}, got {value:g}")
        if value > maximum:
            raise self.error(name, f"must be <= {_plain(maximum)}, got {_plain(value)}")
        return value

    def boolean(self, name: str, default: bool) -> bool:
        if name not in self.table:
            return default
        value = self.raw(name)
        if not isinstance(value, bool):
            raise self.error(name, f"must be true or false, got {_kind(value)}")
        return value

    def refuse_unknown(self) -> None:
        unknown = sorted(set(self.table) - self.seen)
        if unknown:
            raise self.error(unknown[0], "unknown key")


def _kind(value: object) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "a table"
    return f"a {type(value).__name__}"


def _plain(number: float) -> str:
    """A number as people write it: 2592001, not 2.592e+06 (but 1e+300, not 301 digits)."""
    return str(int(number)) if number.is_integer() and abs(number) < 1e15 else f"{number:g}"


def _as_float(value: object) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


_SPEC = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_SITE = re.compile(r"[^\s/\\\x00-\x1f\x7f]{1,255}")


def _parse_params(workflow: str, reader: _Reader) -> WorkflowParams:
    cls = WORKFLOW_PARAMS[workflow]
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name not in reader.table:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise reader.error(f.name, f"is missing (required by workflow {workflow!r})")
            continue
        raw = reader.raw(f.name)
        values[f.name] = _convert(reader, f.name, raw, hints[f.name], f.metadata)
    unknown = sorted(set(reader.table) - reader.seen)
    if unknown:
        known = ", ".join(f.name for f in dataclasses.fields(cls)) or "none"
        raise reader.error(
            unknown[0], f"unknown parameter for workflow {workflow!r} (known: {known})"
        )
    params: WorkflowParams = cls(**values)
    return params


def _convert(reader: _Reader, name: str, raw: Any, hint: Any, meta: Mapping[str, Any]) -> Any:
    types = set(typing.get_args(hint)) - {type(None)} if typing.get_origin(hint) else {hint}
    (kind,) = types
    value: Any
    if kind is bool:
        if not isinstance(raw, bool):
            raise reader.error(name, f"must be true or false, got {_kind(raw)}")
        value = raw
    elif kind is int:
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise reader.error(name, f"must be an integer, got {_kind(raw)}")
        value = raw
    elif kind is float:
        number = _as_float(raw)
        if number is None:
            raise reader.error(name, f"must be a number, got {_kind(raw)}")
        if not math.isfinite(number):
            raise reader.error(name, "must be finite")
        value = number
    elif kind is str:
        if not isinstance(raw, str):
            raise reader.error(name, f"must be a string, got {_kind(raw)}")
        value = raw
    else:  # pragma: no cover - a params class with a field type this parser does not know
        raise TypeError(f"unsupported parameter type {hint!r}")
    choices = meta.get("choices")
    if choices is not None and value not in choices:
        raise reader.error(name, f"must be one of {', '.join(choices)}, got {value!r}")
    check = meta.get("check")
    if check is not None and not check[0](value):
        raise reader.error(name, f"must be {check[1]}, got {value!r}")
    return value


def _check_args(value: Any, reader: _Reader, key: str) -> None:
    """Trainer arguments must be plain TOML data that can travel (no dates or times)."""
    if isinstance(value, datetime.date | datetime.time):
        raise JobError("dates and times are not supported here", path=reader.path, key=key)
    if isinstance(value, dict):
        for k, v in value.items():
            _check_args(v, reader, f"{key}.{k}")
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _check_args(v, reader, f"{key}[{i}]")


def _parse_workflow(reader: _Reader) -> WorkflowSpec:
    name = reader.string("name")
    if name not in WORKFLOW_PARAMS:
        raise reader.error(
            "name", f"unknown workflow {name!r} (known: {', '.join(WORKFLOW_PARAMS)})"
        )
    if name in _NO_ROUNDS:
        if reader.has("rounds"):
            raise reader.error("rounds", f"workflow {name!r} has no rounds")
        rounds = 1
    else:
        required_rounds = reader.integer("rounds", minimum=1, maximum=MAX_ROUNDS)
        assert required_rounds is not None
        rounds = required_rounds
    min_sites = reader.integer("min_sites", minimum=1, maximum=MAX_SITES)
    assert min_sites is not None
    sites_per_round = reader.integer(
        "sites_per_round", minimum=1, maximum=MAX_SITES, required=False
    )
    if sites_per_round is not None and min_sites > sites_per_round:
        raise reader.error(
            "min_sites", f"must be <= sites_per_round ({sites_per_round}), got {min_sites}"
        )
    grace = reader.number("grace_seconds", maximum=MAX_SECONDS) or 0.0
    wait = reader.boolean("wait_for_quorum", False)
    timeout = reader.number("round_timeout", maximum=MAX_SECONDS, positive=True)
    sampling_name = reader.string("sampling", required=False, default=Sampling.UNIFORM.value)
    try:
        sampling = Sampling(sampling_name)
    except ValueError:
        options = ", ".join(s.value for s in Sampling)
        raise reader.error("sampling", f"must be one of {options}, got {sampling_name!r}") from None
    seed = reader.integer("seed", minimum=0, maximum=2**63, required=False)
    if seed is not None and seed >= 2**63:  # said as a power of two, not as 9223372036854775808
        raise reader.error("seed", "must be < 2**63")
    params_reader = reader.table_at("params")
    params = _parse_params(name, params_reader)
    _refuse_ignored_params(params, params_reader, rounds)
    if isinstance(params, FedAvgParams) and params.aggregator == "krum":
        needed = 2 * params.byzantine + 3
        if min_sites < needed:
            raise reader.error(
                "min_sites",
                f"krum with byzantine = {params.byzantine} needs min_sites >= {needed},"
                f" got {min_sites}",
            )
    reader.refuse_unknown()
    return WorkflowSpec(
        name=name,
        rounds=rounds,
        min_sites=min_sites,
        params=params,
        sites_per_round=sites_per_round,
        grace_seconds=grace,
        wait_for_quorum=wait,
        round_timeout=timeout,
        sampling=sampling,
        seed=seed,
    )


#: Aggregator parameters, with the one aggregator that reads each.
_AGGREGATOR_PARAMS: Final[Mapping[str, str]] = MappingProxyType(
    {"trim_ratio": "trimmed_mean", "byzantine": "krum"}
)


def _refuse_ignored_params(params: WorkflowParams, reader: _Reader, rounds: int) -> None:
    """Refuse parameters that were given but would do nothing: a job that says ``trim_ratio``
    without the trimmed mean, or an ``evaluate_every`` past its last round, never does what its
    author expects, and nobody would be told."""
    if isinstance(params, FedAvgParams):
        for key, aggregator in _AGGREGATOR_PARAMS.items():
            if reader.has(key) and params.aggregator != aggregator:
                default = "" if reader.has("aggregator") else " (the default)"
                raise reader.error(
                    key,
                    f'is only read by aggregator = "{aggregator}", and this job\'s aggregator is'
                    f" {params.aggregator!r}{default}: remove {key} or set aggregator ="
                    f' "{aggregator}"',
                )
    if isinstance(params, TrainingParams) and params.evaluate_every > rounds:
        raise reader.error(
            "evaluate_every",
            f"must be <= rounds ({rounds}), got {params.evaluate_every}: the global model would"
            " never be evaluated (0 means no evaluation; cross_site_eval evaluates after the last"
            " round)",
        )


def _parse_trainer(reader: _Reader) -> TrainerSpec:
    spec = reader.string("spec")
    if not _SPEC.fullmatch(spec):
        raise reader.error("spec", f"must be 'package.module:object', got {spec!r}")
    args = reader.table_at("args")
    for key, value in args.table.items():
        if not key.isidentifier():
            raise args.error(
                key, "must be a Python identifier (it is passed as a keyword argument)"
            )
        _check_args(value, args, args.key(key))
    reader.refuse_unknown()
    return TrainerSpec(spec, MappingProxyType(copy.deepcopy(dict(args.table))))


def _parse_targets(reader: _Reader) -> tuple[str, ...]:
    if not reader.has("sites"):
        reader.refuse_unknown()
        return ()
    sites = reader.raw("sites")
    if not isinstance(sites, list):
        raise reader.error("sites", f"must be an array of site names, got {_kind(sites)}")
    if len(sites) > MAX_SITES:
        raise reader.error("sites", f"must name at most {MAX_SITES} sites, got {len(sites)}")
    seen: set[str] = set()
    for i, site in enumerate(sites):
        key = f"sites[{i}]"
        if not isinstance(site, str):
            raise reader.error(key, f"must be a site name, got {_kind(site)}")
        if not _SITE.fullmatch(site):
            raise reader.error(key, f"is not a valid site name: {site!r}")
        if site in seen:
            raise reader.error(key, f"site {site!r} is listed twice")
        seen.add(site)
    reader.refuse_unknown()
    return tuple(sites)


def parse_job(data: Mapping[str, Any], *, path: Path | str | None = None) -> JobSpec:
    """Validate a parsed ``job.toml``. Raises :class:`~flrt.errors.JobError` naming ``path``, the
    dotted key and the reason."""
    top = _Reader(data, path, "")
    name = top.string("name")
    if not name.strip() or len(name) > 200 or any(ord(c) < 32 or ord(c) == 127 for c in name):
        raise top.error("name", "must be 1 to 200 printable characters")
    workflow = _parse_workflow(top.table_at("workflow", required=True))
    trainer = _parse_trainer(top.table_at("trainer", required=True))
    targets = _parse_targets(top.table_at("targets"))
    if targets:
        for field_name, value in (
            ("sites_per_round", workflow.sites_per_round),
            ("min_sites", workflow.min_sites),
        ):
            if value is not None and value > len(targets):
                raise JobError(
                    f"must be <= the {len(targets)} target sites, got {value}",
                    path=path,
                    key=f"workflow.{field_name}",
                )
    filters: list[FilterSpec] = []
    if top.has("filters"):
        raw = top.raw("filters")
        if not isinstance(raw, list):
            raise top.error(
                "filters", f"must be an array of tables ([[filters]]), got {_kind(raw)}"
            )
        for i, table in enumerate(raw):
            try:
                filters.append(parse_filter_spec(table, path=path, key=f"filters[{i}]"))
            except ConfigError as exc:
                raise JobError(exc.reason, path=path, key=exc.key) from None
    top.refuse_unknown()
    return JobSpec(name, workflow, trainer, targets, tuple(filters))


def loads_job(text: str, *, path: Path | str | None = None) -> JobSpec:
    """Parse and validate ``job.toml`` text. Raises :class:`~flrt.errors.JobError` (also for a text
    of more than :data:`MAX_JOB_FILE_BYTES`)."""
    size = len(text.encode("utf-8", "replace"))
    if size > MAX_JOB_FILE_BYTES:
        raise too_large(size, path=path)
    try:
        data = tomllib.loads(text.removeprefix("\ufeff"))  # the byte-order mark some editors add
    except tomllib.TOMLDecodeError as exc:
        raise JobError(f"not valid TOML: {exc}", path=path) from None
    return parse_job(data, path=path)


def too_large(size: int, *, path: Path | str | None = None) -> JobError:
    """The error for a job file of ``size`` bytes, past :data:`MAX_JOB_FILE_BYTES`."""
    return JobError(
        f"is {size:,} bytes, more than a job file may be ({MAX_JOB_FILE_BYTES:,} bytes):"
        " a job names its data (a data_key the sites map to files), it does not carry it",
        path=path,
    )


def load_job(path: str | os.PathLike[str]) -> JobSpec:
    """Read, parse and validate a ``job.toml`` file. Raises :class:`~flrt.errors.JobError` (and
    :class:`OSError` when the file cannot be read)."""
    source = Path(path)
    data = source.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise JobError(f"not UTF-8: {exc}", path=source) from None
    return loads_job(text, path=source)


# ----------------------------------------------------------------------------- life cycle


class JobStatus(enum.Enum):
    SUBMITTED = "submitted"
    RUNNING = "running"
    FINISHED = "finished"
    FAILED = "failed"
    ABORTED = "aborted"

    @property
    def terminal(self) -> bool:
        return not JOB_TRANSITIONS[self]


#: Allowed transitions. A server that restarts keeps a running job running (it resumes).
JOB_TRANSITIONS: Final[Mapping[JobStatus, frozenset[JobStatus]]] = MappingProxyType(
    {
        JobStatus.SUBMITTED: frozenset({JobStatus.RUNNING, JobStatus.FAILED, JobStatus.ABORTED}),
        JobStatus.RUNNING: frozenset({JobStatus.FINISHED, JobStatus.FAILED, JobStatus.ABORTED}),
        JobStatus.FINISHED: frozenset(),
        JobStatus.FAILED: frozenset(),
        JobStatus.ABORTED: frozenset(),
    }
)


@dataclass(frozen=True, slots=True)
class JobRecord:
    """A job's state: its status, when it was submitted and last changed, and (once terminal) why."""

    job_id: str
    name: str
    status: JobStatus
    submitted_at: float
    updated_at: float
    reason: str | None = None

    @classmethod
    def submitted(cls, job_id: str, name: str, *, now: float) -> JobRecord:
        return cls(job_id, name, JobStatus.SUBMITTED, now, now)

    def advance(self, status: JobStatus, *, now: float, reason: str | None = None) -> JobRecord:
        """This record moved to ``status``. A terminal status needs a ``reason``.

        Raises :class:`~flrt.errors.JobStateError` for a transition :data:`JOB_TRANSITIONS` forbids,
        and :class:`ValueError` for a terminal status without a reason.
        """
        if status not in JOB_TRANSITIONS[self.status]:
            raise JobStateError(self.job_id, current=self.status.value, requested=status.value)
        if status.terminal and not (reason and reason.strip()):
            raise ValueError(f"moving job {self.job_id} to {status.value} needs a reason")
        return dataclasses.replace(self, status=status, updated_at=now, reason=reason)

    def to_dict(self) -> dict[str, Any]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "status": self.status.value,
            "submitted_at": self.submitted_at,
            "updated_at": self.updated_at,
            "reason": self.reason,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobRecord:
        return cls(
            str(data["job_id"]),
            str(data["name"]),
            JobStatus(data["status"]),
            float(data["submitted_at"]),
            float(data["updated_at"]),
            None if data.get("reason") is None else str(data["reason"]),
        )


# ----------------------------------------------------------------------------- ids

_CROCKFORD = "0123456789abcdefghjkmnpqrstvwxyz"
_JOB_ID = re.compile(r"\d{8}t\d{6}\d{3}z-[0-9a-hjkmnp-tv-z]{10}")


def new_job_id(*, now: float, entropy: bytes | None = None) -> str:
    """A job id such as ``20261122t165302123z-7m3k9q2x4a``: the UTC creation time to the
    millisecond, then 50 random bits in lower-case Crockford base32.

    Ids sort by creation time (ids made in the same millisecond sort randomly), contain only
    ``[0-9a-z-]`` and are safe as directory names on every platform. ``entropy`` (at least 7
    bytes) makes it deterministic, for tests.
    """
    stamp = datetime.datetime.fromtimestamp(now, tz=datetime.UTC)
    raw = entropy if entropy is not None else os.urandom(7)
    if len(raw) < 7:
        raise ValueError("entropy must be at least 7 bytes")
    bits = int.from_bytes(raw[:7], "big") >> 6  # 50 bits
    suffix = "".join(_CROCKFORD[(bits >> (5 * i)) & 31] for i in reversed(range(10)))
    return f"{stamp:%Y%m%dt%H%M%S}{stamp.microsecond // 1000:03d}z-{suffix}"


def is_job_id(value: str) -> bool:
    """Whether ``value`` has the form of :func:`new_job_id` (check ids from the outside before using
    them as a path)."""
    return _JOB_ID.fullmatch(value) is not None
