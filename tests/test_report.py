"""The console's tables: a round's missing sites are listed, a few at most."""

from __future__ import annotations

from flrt._report import rounds_table


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
