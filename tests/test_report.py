"""The console's tables: a round's missing sites are listed, a few at most."""

from __future__ import annotations

from flrt._report import cross_site_table, rounds_table, sites_table


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
