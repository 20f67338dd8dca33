"""Plain-text tables for people: jobs, sites, rounds and the cross-site validation matrix.

Site names are listed in natural order (``site-2`` before ``site-10``), as people number them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = ["cross_site_table", "jobs_table", "rounds_table", "sites_table"]


#: The global model's column (flrt.workflows.evaluation.GLOBAL_MODEL), first; the sites' after it.
_GLOBAL = "global"

_DIGITS = re.compile(r"(\d+)")


def _natural(name: str) -> tuple[tuple[str | int, ...], str]:
    """A sort key that compares runs of digits as numbers: ``site-2`` < ``site-10`` < ``site-100``.
    (Split on digit runs, text and numbers alternate, so the parts always compare alike; the
    name itself breaks ties such as ``site-01`` and ``site-1``.)"""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _naturally(names: Iterable[str]) -> list[str]:
    return sorted(names, key=_natural)


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    cells = [list(header), *[list(r) for r in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    lines = [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in cells
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(stamp: Any) -> str:
    if not isinstance(stamp, int | float):
        return "-"
    return dt.datetime.fromtimestamp(stamp, tz=dt.UTC).strftime("%Y-%m-%d %H:%M:%S")


#: From this magnitude on, a number is shown in scientific notation: a diverging model's loss of
#: 1e300 in fixed notation is a line of three hundred digits.
_FIXED_BELOW = 1e9


def _number(value: Any) -> str:
    if not isinstance(value, int | float):
        return "-"
    return f"{value:.4f}" if abs(value) < _FIXED_BELOW else f"{value:.4g}"


def jobs_table(jobs: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for job in jobs:
        progress = f"{job.get('round', 0)}/{job.get('rounds') or '?'}"
        note = job.get("reason") or job.get("detail") or ""
        rows.append(
            [
                job["job_id"],
                str(job["name"]),
                str(job["status"]),
                progress,
                str(job.get("submitted_by", "")),
                str(note),
            ]
        )
    return _table(["job", "name", "status", "round", "submitted by", "reason"], rows)


def sites_table(sites: Iterable[Mapping[str, Any]]) -> str:
    rows = []
    for site in sorted(sites, key=lambda s: _natural(str(s["name"]))):
        history = site.get("history", {})
        rows.append(
            [
                str(site["name"]),
                str(site.get("organisation", "")),
                "yes" if site.get("connected") else "no",
                _when(site.get("last_seen")),
                f"{history.get('on_time', 0)}/{history.get('late', 0)}/{history.get('failed', 0)}",
            ]
        )
    return _table(
        ["site", "organisation", "connected", "last seen (UTC)", "on time/late/failed"], rows
    )


def rounds_table(rounds: Iterable[Mapping[str, Any]]) -> str:
    """One line per training round: who answered, time, mean train loss and evaluation metrics."""
    rows = list(rounds)
    metric_names = sorted({k for r in rows for k in r.get("evaluate", {})})
    header = ["round", "accepted", "failed/late", "seconds", "train loss", *metric_names]
    lines = []
    for r in rows:
        missing = _naturally([*r.get("failed", {}), *r.get("cancelled", [])])
        lines.append(
            [
                str(r["round"]),
                str(len(r.get("accepted", []))),
                _names(missing),
                _number(r.get("seconds")),
                _number(r.get("train", {}).get("loss")),
                *(_number(r.get("evaluate", {}).get(m)) for m in metric_names),
            ]
        )
    return _table(header, lines)


#: How many site names a cell lists before it says how many more there are.
_NAMES_SHOWN = 3


def _names(names: list[str]) -> str:
    """``names`` joined by commas, the first few only (a round of a thousand simulated sites must
    not print a line of a thousand names): ``a,b,c +997 more``; ``-`` for none."""
    if not names:
        return "-"
    shown = ",".join(names[:_NAMES_SHOWN])
    return shown if len(names) <= _NAMES_SHOWN else f"{shown} +{len(names) - _NAMES_SHOWN} more"


def cross_site_table(cross: Mapping[str, Any], metric: str) -> str:
    """Rows: the site that evaluated; columns: whose model (``global`` first); sites in natural
    order."""
    models = list(cross.get("models", []))
    models = [m for m in models if m == _GLOBAL] + _naturally(m for m in models if m != _GLOBAL)
    cells: dict[tuple[str, str], float] = {}
    for evaluator, model, metrics, _n in cross.get("results", []):
        if metric in metrics:
            cells[(evaluator, model)] = metrics[metric]
    rows = [
        [evaluator, *(_number(cells.get((evaluator, m))) for m in models)]
        for evaluator in _naturally(cross.get("evaluators", []))
    ]
    return _table([f"{metric}: site \\ model", *models], rows)
