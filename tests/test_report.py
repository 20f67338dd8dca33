"""The console's tables: a round's missing sites are listed, a few at most; why sites failed."""

from __future__ import annotations

import re

from flrt._report import cross_site_table, failures_table, rounds_table, sites_table


def _round(failed: list[str], cancelled: list[str]) -> dict[str, object]:
    return {
        "round": 1,
        "accepted": ["site-a"],
        "failed": {name: "it raised" for name in failed},
        "cancelled": cancelled,
        "seconds": 0.5,
        "train": {"loss": 0.25},
    }


def test_a_rounds_missing_sites_are_named() -> None:
    table = rounds_table([_round(["site-c"], ["site-b"]), _round([], [])])
    rows = table.splitlines()[2:]
    assert rows[0].split()[:3] == ["1", "1", "site-b,site-c"]
    assert rows[1].split()[:3] == ["1", "1", "-"]


def test_a_thousand_missing_sites_are_counted_not_listed() -> None:
    late = [f"site-{i:04d}" for i in range(1000)]
    table = rounds_table([_round(late[:10], late[10:])])
    row = table.splitlines()[2]
    assert "site-0000,site-0001,site-0002 +997 more" in row
    assert "site-0003" not in row
    assert len(row) < 120


# Text order would be site-1, site-10, site-100, site-2: people number sites, so do the tables.
NAMES = ["site-100", "site-2", "site-10", "site-1"]
NATURAL = ["site-1", "site-2", "site-10", "site-100"]


def test_the_cross_site_table_lists_sites_in_natural_order() -> None:
    cross = {
        "models": ["global", *sorted(NAMES)],  # as stored: text order
        "evaluators": sorted(NAMES),
        "results": [
            [e, m, {"accuracy": 0.5 + NATURAL.index(e) / 10}, 1]
            for e in NAMES
            for m in ["global", *NAMES]
        ],
    }
    lines = cross_site_table(cross, "accuracy").splitlines()
    assert lines[0].split()[4:] == ["global", *NATURAL]
    assert [line.split()[0] for line in lines[2:]] == NATURAL
    assert lines[3].split()[1:] == ["0.6000"] * 5  # site-2's row kept its own cells


def test_a_rounds_missing_sites_are_in_natural_order() -> None:
    row = rounds_table([_round(["site-10", "site-2"], ["site-1"])]).splitlines()[2]
    assert row.split()[2] == "site-1,site-2,site-10"


def test_the_sites_table_lists_sites_in_natural_order() -> None:
    lines = sites_table({"name": name, "connected": True} for name in NAMES).splitlines()
    assert [line.split()[0] for line in lines[2:]] == NATURAL


def _failure(site: str, rounds: list[int], **fields: object) -> dict[str, object]:
    return {
        "site": site,
        "task": "train",
        "reason": "RuntimeError: the data cannot be read",
        "rounds": rounds,
        "error_id": "1f0c9a3e",
        **fields,
    }


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line)


def test_no_failures_print_nothing() -> None:
    assert failures_table([]) == ""


def test_a_failure_shows_its_site_task_round_runs_last_error_id_and_reason() -> None:
    lines = failures_table(
        [
            _failure("site-2", [2, 3, 4, 5, 7]),
            _failure("site-2", [3], task="evaluate", reason="disconnected", error_id=None),
        ]
    ).splitlines()
    assert lines[0] == (  # where an error id's details are
        "why sites failed (each error id's full error and traceback are in that site's log):"
    )
    assert lines[1].split()[:5] == ["site", "task", "rounds", "last", "error"]
    assert _cells(lines[3]) == [
        "site-2",
        "train",
        "2-5, 7",
        "1f0c9a3e",
        "RuntimeError: the data cannot be read",
    ]
    assert _cells(lines[4]) == ["site-2", "evaluate", "3", "-", "disconnected"]
    assert len(lines) == 5


def test_past_ten_failures_the_rest_are_counted() -> None:
    lines = failures_table([_failure(f"site-{i}", [1]) for i in range(1, 14)]).splitlines()
    assert [line.split()[0] for line in lines[3:-1]] == [f"site-{i}" for i in range(1, 11)]
    assert lines[-1] == "+3 more"


def test_a_site_failing_every_other_round_of_a_thousand_is_one_short_line() -> None:
    [row] = failures_table([_failure("site-1", list(range(1, 1000, 2)))]).splitlines()[3:]
    assert "1, 3, 5, ... 999 (500 rounds)" in row
    assert len(row) < 120


def test_a_long_reason_of_many_lines_is_one_bounded_line() -> None:
    reason = "ValueError: bad\nrow\t\t" + "x" * 5000
    [row] = failures_table([_failure("site-1", [1], reason=reason)]).splitlines()[3:]
    assert "ValueError: bad row x" in row
    assert row.endswith("...")
    assert len(row) < 300
