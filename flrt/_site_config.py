"""A site's own configuration in its kit's ``local/`` folder: privacy policy and data locations.

``local/privacy.toml`` (written by ``flrt provision``, edited by the site's IT)::

    format = 1
    required_job_filters = ["exclude_variables"]   # refuse jobs that do not declare these
    [[result_filters]]                             # applied first, to every task and result
    kind = "exclude_variables"                     # ("type" is accepted too)
    names = ["classifier.bias"]

``local/data.toml`` (optional): named data locations a trainer asks for with
``context.data_path(key)``; a relative path is relative to ``local/``::

    format = 1
    [data]
    breast_cancer = "/data/wdbc.csv"

Every key is checked; a wrong one is a :class:`~flrt.errors.ConfigError` naming the file and the
key, raised when the site starts (a site never runs with a policy it could not read). Either file
may be absent; one that is there but is not a regular file (a folder, a link to nothing, a pipe) is a
``ConfigError`` too, never read as absent: a site with no data locations, or with no privacy policy,
because somebody unpacked ``data.toml`` as a folder is a site that runs wrong without saying so.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flrt.errors import ConfigError
from flrt.filters import FILTERS, Filter, FilterSpec, build_filters, parse_filter_spec

__all__ = ["SitePolicy", "load_data_locations", "load_policy"]

PRIVACY_FILE = "privacy.toml"
DATA_FILE = "data.toml"


@dataclass(frozen=True, slots=True)
class SitePolicy:
    """The site's privacy policy: filters it always applies, and filters a job must declare."""

    result_filters: tuple[FilterSpec, ...] = ()
    required_job_filters: tuple[str, ...] = ()

    def mandatory_filters(self) -> list[Filter]:
        """Fresh instances of the site's mandatory filters (one set per job)."""
        return build_filters(self.result_filters, key="result_filters")

    def missing_job_filters(self, job_filters: list[Mapping[str, Any]]) -> list[str]:
        """The required filter kinds that ``job_filters`` do not declare."""
        declared = {f.get("type") for f in job_filters}
        return [kind for kind in self.required_job_filters if kind not in declared]


def _present(path: Path) -> bool:
    """Whether ``path`` is a file to read: ``False`` when nothing is there. Raises
    :class:`~flrt.errors.ConfigError` for something there that is not a regular file, and
    :class:`OSError` when its folder cannot be searched."""
    if path.is_file():
        return True
    if path.is_dir():
        raise ConfigError("is a folder, not a file", path=path)
    if path.is_symlink() and not path.exists():
        raise ConfigError("is a link to nothing (its target does not exist)", path=path)
    if path.exists():
        raise ConfigError("is not a regular file", path=path)
    return False


def _read(path: Path) -> dict[str, Any]:
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot be read: {exc.strerror or exc}", path=path) from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"not valid TOML: {exc}", path=path) from None


def _format(doc: Mapping[str, Any], path: Path) -> None:
    if doc.get("format") != 1:
        raise ConfigError(
            f"unsupported format {doc.get('format')!r} (expected 1)", path=path, key="format"
        )


def load_policy(path: Path) -> SitePolicy:
    """Read ``privacy.toml``. A missing file is an empty policy. Raises
    :class:`~flrt.errors.ConfigError` naming the key, or the file if it is not a regular file."""
    if not _present(path):
        return SitePolicy()
    doc = _read(path)
    _format(doc, path)
    unknown = sorted(set(doc) - {"format", "required_job_filters", "result_filters"})
    if unknown:
        raise ConfigError("unknown key", path=path, key=unknown[0])
    required = doc.get("required_job_filters", [])
    if not isinstance(required, list) or not all(isinstance(r, str) for r in required):
        raise ConfigError("must be a list of filter kinds", path=path, key="required_job_filters")
    for i, kind in enumerate(required):
        if kind not in FILTERS:
            known = ", ".join(sorted(FILTERS))
            raise ConfigError(
                f"unknown filter kind {kind!r} (known: {known})",
                path=path,
                key=f"required_job_filters[{i}]",
            )
    tables = doc.get("result_filters", [])
    if not isinstance(tables, list):
        raise ConfigError(
            "must be an array of tables ([[result_filters]])", path=path, key="result_filters"
        )
    specs = []
    for i, table in enumerate(tables):
        key = f"result_filters[{i}]"
        if not isinstance(table, dict):
            raise ConfigError("must be a table", path=path, key=key)
        if "kind" in table and "type" in table:
            raise ConfigError("give kind or type, not both", path=path, key=f"{key}.kind")
        # Errors name the key the file used: ``kind`` (the documented one) unless it said ``type``.
        type_key = "type" if "type" in table else "kind"
        specs.append(parse_filter_spec(table, path=path, key=key, type_key=type_key))
    return SitePolicy(tuple(specs), tuple(required))


def load_data_locations(path: Path) -> dict[str, Path]:
    """Read ``data.toml``: key -> path (relative paths are relative to its folder). A missing file
    names no locations. Raises :class:`~flrt.errors.ConfigError` naming the key, or the file if it is
    not a regular file."""
    if not _present(path):
        return {}
    doc = _read(path)
    _format(doc, path)
    unknown = sorted(set(doc) - {"format", "data"})
    if unknown:
        raise ConfigError("unknown key", path=path, key=unknown[0])
    table = doc.get("data", {})
    if not isinstance(table, dict):
        raise ConfigError("must be a table", path=path, key="data")
    locations: dict[str, Path] = {}
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise ConfigError("must be a path", path=path, key=f"data.{key}")
        location = Path(value).expanduser()
        locations[key] = location if location.is_absolute() else path.parent / location
    return locations
