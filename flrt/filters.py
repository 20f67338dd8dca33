"""Filters between a site's trainer and the wire: task data before training, results after.

Theory of operation
-------------------
A site runs every task through a :class:`FilterChain`: :meth:`FilterChain.filter_task` on the task
that arrived (before the trainer sees it), and :meth:`FilterChain.filter_result` on the trainer's
result (before it leaves the site). The chain holds two lists:

- the site's **mandatory** filters, from the site's own privacy policy: they run first, in both
  directions, for every job, whatever the job asks; a job cannot remove, reorder or skip them;
- the **job's** filters (``[[filters]]`` in ``job.toml``), after them.

Running the site's filters first on results means a job's filter only ever sees what the site's
policy let through (and a job's encryption filter, last, encrypts what the policy produced).

Filters are configured as TOML tables, ``{type = "exclude_variables", names = ["head.weight"]}``;
:data:`FILTERS` maps each ``type`` to a factory that validates the other keys. An unknown type, an
unknown key or a bad value is a :class:`~flrt.errors.ConfigError` naming the file and the key.

:class:`ExcludeVariables` keeps named (or pattern-matched) variables on the site: they are dropped
from results (and from result extras such as the SCAFFOLD control delta), so the server aggregates
each variable over the sites that sent it and never sees these. When a later task brings the global
model, the site's own last values of those variables are put back into it before training
(``restore_local``, the default), so the variables keep training locally (as in FedBN) instead of
being reset to the never-updated global value every round. A name or pattern that matches no
variable of a job's model (a typo, a model that changed) is logged once per job and filter as
``filter.unmatched``, naming where the filter is configured and whether it is mandatory: the
variable it meant leaves the site, so somebody must hear of it, but the task goes on.
"""

from __future__ import annotations

import abc
import copy
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar, TypeAlias

import numpy as np

from flrt.errors import ConfigError
from flrt.logs import module_logger
from flrt.tasks import EvalResult, EvalTask, TrainResult, TrainTask, UpdateKind, Weights

__all__ = [
    "FILTERS",
    "ExcludeVariables",
    "Filter",
    "FilterChain",
    "FilterContext",
    "FilterFactory",
    "FilterSpec",
    "Result",
    "Task",
    "build_filter",
    "build_filters",
    "parse_filter_spec",
    "register_filter",
]

Task: TypeAlias = TrainTask | EvalTask
Result: TypeAlias = TrainResult | EvalResult

log = module_logger("flrt.filters")

#: Where a :class:`FilterChain` says its filters are configured.
_MANDATORY_SOURCE = "local/privacy.toml"
_JOB_SOURCE = "job.toml"


@dataclass(frozen=True, slots=True)
class FilterContext:
    """Where a filter runs: the site, the job and the round.

    A :class:`FilterChain` also tells each filter whether it is one of the site's ``mandatory``
    filters and its ``source``, where it is configured (``local/privacy.toml result_filters[0]``,
    ``job.toml filters[1]``), for what it logs.
    """

    site: str
    job_id: str
    round: int
    mandatory: bool = False
    source: str = ""


class Filter(abc.ABC):
    """A task-data and/or task-result filter. Both hooks default to passing their input through."""

    #: The ``type`` that configures this filter in TOML.
    type_name: ClassVar[str]

    def filter_task(self, task: Task, context: FilterContext) -> Task:
        """The task the trainer will see."""
        return task

    def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
        """The result that will leave the site; ``task`` is the task as the trainer saw it."""
        return result


@dataclass(frozen=True, slots=True)
class FilterSpec:
    """A validated filter configuration: its ``type`` and the rest of its keys."""

    type: str
    args: Mapping[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return {"type": self.type, **copy.deepcopy(dict(self.args))}


#: Builds a filter from its configuration (without ``type``); raises ConfigError with ``key`` set
#: to the offending key, relative to the filter's table.
FilterFactory: TypeAlias = Callable[[Mapping[str, Any]], Filter]

#: The registry: filter type -> factory.
FILTERS: dict[str, FilterFactory] = {}


def register_filter(type_name: str, factory: FilterFactory, *, replace: bool = False) -> None:
    """Make ``type_name`` configurable. Raises :class:`ValueError` if it is taken (unless
    ``replace``)."""
    if type_name in FILTERS and not replace:
        raise ValueError(f"filter type {type_name!r} is already registered")
    FILTERS[type_name] = factory


def _join(prefix: str, key: str | None) -> str:
    if key is None:
        return prefix
    return f"{prefix}{key}" if key.startswith("[") else f"{prefix}.{key}"


def _build(
    table: Mapping[str, Any], path: Path | str | None, key: str, type_key: str = "type"
) -> tuple[str, Filter]:
    if not isinstance(table, Mapping):
        raise ConfigError(f"must be a table, got {type(table).__name__}", path=path, key=key)
    kind = table.get(type_key)
    if kind is None:
        raise ConfigError("is missing", path=path, key=f"{key}.{type_key}")
    if not isinstance(kind, str):
        raise ConfigError("must be a string", path=path, key=f"{key}.{type_key}")
    factory = FILTERS.get(kind)
    if factory is None:
        known = ", ".join(sorted(FILTERS)) or "none"
        raise ConfigError(
            f"unknown filter {type_key} {kind!r} (known: {known})",
            path=path,
            key=f"{key}.{type_key}",
        )
    args = {k: v for k, v in table.items() if k != type_key}
    try:
        return kind, factory(args)
    except ConfigError as exc:
        raise ConfigError(exc.reason, path=path, key=_join(key, exc.key)) from None


def parse_filter_spec(
    table: Mapping[str, Any],
    *,
    path: Path | str | None = None,
    key: str = "filters",
    type_key: str = "type",
) -> FilterSpec:
    """Validate one filter's configuration (by building it once) and return it as a spec.

    ``type_key`` is the key that names the filter in ``table`` (``kind`` in a site's
    ``privacy.toml``), so an error names the key the file used. Raises
    :class:`~flrt.errors.ConfigError` naming ``path`` and the dotted key under ``key``.
    """
    kind, _ = _build(table, path, key, type_key)
    args = {k: copy.deepcopy(v) for k, v in table.items() if k != type_key}
    return FilterSpec(kind, MappingProxyType(args))


def build_filter(
    spec: FilterSpec | Mapping[str, Any], *, path: Path | str | None = None, key: str = "filters"
) -> Filter:
    """A new filter from a spec or a TOML table. Raises :class:`~flrt.errors.ConfigError`."""
    table = spec.to_dict() if isinstance(spec, FilterSpec) else spec
    return _build(table, path, key)[1]


def build_filters(
    specs: Iterable[FilterSpec | Mapping[str, Any]],
    *,
    path: Path | str | None = None,
    key: str = "filters",
) -> list[Filter]:
    """New filters, in order, from specs or TOML tables (keys ``key[0]``, ``key[1]``...)."""
    return [build_filter(s, path=path, key=f"{key}[{i}]") for i, s in enumerate(specs)]


class FilterChain:
    """The site's mandatory filters, then the job's, in both directions."""

    def __init__(self, mandatory: Sequence[Filter] = (), job: Sequence[Filter] = ()) -> None:
        self.mandatory = tuple(mandatory)
        self.job = tuple(job)

    @property
    def filters(self) -> tuple[Filter, ...]:
        """Every filter, in the order they run."""
        return self.mandatory + self.job

    def _placed(self, context: FilterContext) -> Iterator[tuple[Filter, FilterContext]]:
        """Every filter, in order, with ``context`` saying where it is configured."""
        for i, f in enumerate(self.mandatory):
            where = f"{_MANDATORY_SOURCE} result_filters[{i}]"
            yield f, replace(context, mandatory=True, source=where)
        for i, f in enumerate(self.job):
            yield f, replace(context, mandatory=False, source=f"{_JOB_SOURCE} filters[{i}]")

    def filter_task(self, task: Task, context: FilterContext) -> Task:
        for f, placed in self._placed(context):
            task = f.filter_task(task, placed)
        return task

    def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
        for f, placed in self._placed(context):
            result = f.filter_result(result, task, placed)
        return result


# ---------------------------------------------------------------------------- exclude_variables


def _strings(args: Mapping[str, Any], key: str) -> list[str]:
    value = args.get(key, [])
    if not isinstance(value, list):
        raise ConfigError("must be a list of strings", key=key)
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ConfigError("must be a non-empty string", key=f"{key}[{i}]")
    return list(value)


class ExcludeVariables(Filter):
    """Keep variables on the site: drop them from results, restore the site's own values into later
    tasks (see the module docstring).

    ``names`` match exactly; ``patterns`` are regular expressions that must match a whole name.
    """

    type_name: ClassVar[str] = "exclude_variables"

    def __init__(
        self,
        names: Iterable[str] = (),
        patterns: Iterable[str] = (),
        *,
        restore_local: bool = True,
    ) -> None:
        self.names = frozenset(names)
        self.patterns = tuple(re.compile(p) for p in patterns)
        if not self.names and not self.patterns:
            raise ValueError("exclude_variables needs names or patterns")
        self.restore_local = restore_local
        self._local: dict[str, Weights] = {}  # job id -> the site's own values
        self._checked: set[str] = set()  # job ids whose variables were checked against the names

    @classmethod
    def from_config(cls, args: Mapping[str, Any]) -> ExcludeVariables:
        """Build from a TOML table: ``names``, ``patterns`` (lists of strings), ``restore_local``."""
        unknown = sorted(set(args) - {"names", "patterns", "restore_local"})
        if unknown:
            raise ConfigError("unknown key", key=unknown[0])
        names = _strings(args, "names")
        patterns = _strings(args, "patterns")
        for i, pattern in enumerate(patterns):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ConfigError(
                    f"not a regular expression: {exc}", key=f"patterns[{i}]"
                ) from None
        if not names and not patterns:
            raise ConfigError(
                "exclude_variables needs at least one of names or patterns", key="names"
            )
        restore = args.get("restore_local", True)
        if not isinstance(restore, bool):
            raise ConfigError("must be true or false", key="restore_local")
        return cls(names, patterns, restore_local=restore)

    def excludes(self, name: str) -> bool:
        """Whether variable ``name`` stays on the site."""
        return name in self.names or any(p.fullmatch(name) for p in self.patterns)

    def unmatched(self, variables: Iterable[str]) -> tuple[list[str], list[str]]:
        """The names, and the patterns, that match none of ``variables`` (each sorted)."""
        variables = set(variables)
        names = sorted(self.names - variables)
        patterns = sorted(
            p.pattern for p in self.patterns if not any(p.fullmatch(v) for v in variables)
        )
        return names, patterns

    def _check(self, result: TrainResult, task: Task, context: FilterContext) -> None:
        """Log, once per job, the names and patterns that match no variable of its model."""
        if context.job_id in self._checked:
            return
        self._checked.add(context.job_id)
        variables = {*task.weights, *result.weights}
        for arrays in result.extras.values():
            variables.update(arrays)
        names, patterns = self.unmatched(variables)
        if not names and not patterns:
            return
        where = context.source or self.type_name
        log.warning(
            "filter.unmatched",
            site=context.site,
            job=context.job_id,
            filter=where,
            kind=self.type_name,
            mandatory=context.mandatory,
            names=names,
            patterns=patterns,
            hint=(
                f"these match none of the {len(variables)} variables of this job's model, so"
                " whatever they were meant to keep on this site is sent: compare them with the"
                f" trainer's variable names and fix {where}"
            ),
        )

    def filter_task(self, task: Task, context: FilterContext) -> Task:
        local = self._local.get(context.job_id)
        if not self.restore_local or not local:
            return task
        weights = dict(task.weights)
        for name, value in local.items():
            if name in weights and weights[name].shape == value.shape:
                weights[name] = value.astype(weights[name].dtype, copy=True)
        return replace(task, weights=weights)

    def filter_result(self, result: Result, task: Task, context: FilterContext) -> Result:
        if not isinstance(result, TrainResult):
            return result
        self._check(result, task, context)
        kept: Weights = {}
        dropped: Weights = {}
        for name, array in result.weights.items():
            (dropped if self.excludes(name) else kept)[name] = array
        if self.restore_local and dropped:
            local = self._local.setdefault(context.job_id, {})
            for name, array in dropped.items():
                if result.kind is UpdateKind.DIFF and name in task.weights:
                    local[name] = np.asarray(task.weights[name] + array)
                else:
                    local[name] = array.copy()
        extras = {
            group: {n: a for n, a in arrays.items() if not self.excludes(n)}
            for group, arrays in result.extras.items()
        }
        return replace(result, weights=kept, extras=extras)


def _exclude_variables(args: Mapping[str, Any]) -> Filter:
    return ExcludeVariables.from_config(args)


register_filter(ExcludeVariables.type_name, _exclude_variables)
