"""Plain-text tables for people: jobs, sites, rounds, why sites failed, and the cross-site
validation matrix.

Site names are listed in natural order (``site-2`` before ``site-10``), as people number them.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

__all__ = [
    "cross_site_table",
    "failures_table",
    "jobs_table",
    "natural_key",
    "rounds_table",
    "sites_table",
]


#: The global model's column (flrt.workflows.evaluation.GLOBAL_MODEL), first; the sites' after it.
_GLOBAL = "global"

_DIGITS = re.compile(r"(\d+)")


def natural_key(name: str) -> tuple[tuple[str | int, ...], str]:
    """A sort key that compares runs of digits as numbers: ``site-2`` < ``site-10`` < ``site-100``.
    (Split on digit runs, text and numbers alternate, so the parts always compare alike; the
    name itself breaks ties such as ``site-01`` and ``site-1``.)"""
    parts = _DIGITS.split(name)
    return tuple(int(p) if i % 2 else p for i, p in enumerate(parts)), name


def _naturally(names: Iterable[str]) -> list[str]:
    return sorted(names, key=natural_key)


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
    for site in sorted(sites, key=lambda s: natural_key(str(s["name"]))):
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


#: How many failures :func:`failures_table` lists before it says how many more there are.
FAILURES_SHOWN = 10
#: How many characters of a reason a line shows (a site may send 2,000; the log has them all).
_REASON_SHOWN = 200
#: How many runs of consecutive rounds a cell lists in full (a site that fails every other round of
#: a thousand must not print five hundred numbers).
_RANGES_SHOWN = 4

_SPACE = re.compile(r"\s+")


def failures_table(failures: Sequence[Mapping[str, Any]], limit: int = FAILURES_SHOWN) -> str:
    """Why sites failed: one line per site, task and reason (as listed by
    :func:`flrt._admin_service.site_failures`: sites in natural order), with the rounds it
    happened in (``2-5, 7``) and the last error id; the first ``limit`` lines, then ``+N more``.
    An empty string when no site failed."""
    if not failures:
        return ""
    rows = [
        [
            str(f.get("site", "?")),
            str(f.get("task", "?")),
            _ranges(f.get("rounds", [])),
            str(f.get("error_id") or "-"),
            _one_line(str(f.get("reason", ""))),
        ]
        for f in failures[:limit]
    ]
    lines = [
        "why sites failed (each error id's full error and traceback are in that site's log):",
        _table(["site", "task", "rounds", "last error id", "reason"], rows),
    ]
    if len(failures) > limit:
        lines.append(f"+{len(failures) - limit} more")
    return "\n".join(lines)


def _one_line(reason: str) -> str:
    text = _SPACE.sub(" ", reason).strip()
    return text if len(text) <= _REASON_SHOWN else text[: _REASON_SHOWN - 3] + "..."


def _ranges(rounds: Iterable[Any]) -> str:
    """Rounds as runs: ``1-3, 7``; past a few runs, the first ones, the last, and the count:
    ``1, 3, 5, ... 99 (50 rounds)``; ``-`` for none."""
    numbers = sorted({r for r in rounds if isinstance(r, int)})
    runs: list[list[int]] = []
    for n in numbers:
        if runs and n == runs[-1][1] + 1:
            runs[-1][1] = n
        else:
            runs.append([n, n])
    shown = [str(a) if a == b else f"{a}-{b}" for a, b in runs]
    if len(shown) <= _RANGES_SHOWN:
        return ", ".join(shown) or "-"
    head = ", ".join(shown[: _RANGES_SHOWN - 1])
    return f"{head}, ... {shown[-1]} ({len(numbers)} rounds)"


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
