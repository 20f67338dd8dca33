"""What the server tells an admin about a job's rounds, from its ``metrics.jsonl`` events: the
rounds table, and why sites failed, in training, evaluation and cross-site rounds alike."""

from __future__ import annotations

from typing import Any

from flrt._admin_service import AdminService, round_table, site_failures


def _reason(text: str, error_id: str) -> str:
    return f"{text} (error id {error_id}; details in the site's log)"


def _round(
    round_: int, kind: str, failed: dict[str, str], *, model: str | None = None
) -> dict[str, Any]:
    return {
        "event": "round_completed",
        "round": round_,
        "kind": kind,
        "model": model if model is not None or kind == "train" else "global",
        "accepted": ["site-1"],
        "cancelled": [],
        "failed": failed,
        "seconds": 0.1,
    }


BROKEN = "RuntimeError: the data of site-2 cannot be read"
NO_LABELS = "RuntimeError: site-2 cannot evaluate"


def test_a_sites_failures_are_grouped_by_reason_with_their_rounds_and_last_error_id() -> None:
    events = [
        _round(1, "train", {"site-2": _reason(BROKEN, "00000001")}),
        _round(2, "train", {"site-2": _reason(BROKEN, "00000002")}),
        _round(3, "train", {"site-2": "disconnected"}),
        _round(5, "train", {"site-2": _reason(BROKEN, "00000005")}),
    ]
    assert site_failures(events, 5) == [
        {
            "site": "site-2",
            "task": "train",
            "reason": BROKEN,
            "error_id": "00000005",
            "rounds": [1, 2, 5],
        },
        {
            "site": "site-2",
            "task": "train",
            "reason": "disconnected",
            "error_id": None,
            "rounds": [3],
        },
    ]


def test_evaluation_and_cross_site_failures_are_kept_though_the_rounds_table_drops_them() -> None:
    events = [
        _round(1, "train", {}),
        _round(1, "evaluate", {"site-2": _reason(NO_LABELS, "0000000a")}),
        _round(2, "train", {}),
        _round(2, "evaluate", {"site-2": _reason(NO_LABELS, "0000000b")}),
        # Cross-site evaluation, after the last round: the sites' models, then each model in turn.
        _round(3, "train", {"site-2": _reason(BROKEN, "0000000c")}),
        _round(3, "evaluate", {"site-2": _reason(NO_LABELS, "0000000d")}),
        _round(3, "evaluate", {"site-2": _reason(NO_LABELS, "0000000e")}, model="site-1"),
        {"event": "cross_site", "round": 3},
    ]
    assert [r["round"] for r in round_table(events, 2)] == [1, 2]
    assert [r["failed"] for r in round_table(events, 2)] == [{}, {}]
    assert [
        (f["task"], f["reason"], f["rounds"], f["error_id"]) for f in site_failures(events, 2)
    ] == [
        ("evaluate", NO_LABELS, [1, 2], "0000000b"),
        ("cross-site", BROKEN, [3], "0000000c"),
        ("cross-site", NO_LABELS, [3], "0000000e"),
    ]


def test_a_cross_site_eval_job_names_its_rounds_cross_site() -> None:
    """The ``cross_site_eval`` workflow has one round, which is not past its ``rounds``."""
    events = [
        _round(1, "train", {"site-2": _reason(BROKEN, "0000000c")}),
        _round(1, "evaluate", {"site-2": _reason(NO_LABELS, "0000000d")}),
        {"event": "cross_site", "round": 1},
    ]
    assert [(f["task"], f["rounds"]) for f in site_failures(events, 1)] == [
        ("cross-site", [1]),
        ("cross-site", [1]),
    ]


def test_sites_are_in_natural_order_then_tasks_then_first_round() -> None:
    events = [
        _round(1, "evaluate", {"site-10": "x", "site-2": "x"}),
        _round(2, "train", {"site-10": "y", "site-2": "x"}),
        _round(3, "train", {"site-10": "x"}),
    ]
    assert [(f["site"], f["task"], f["reason"]) for f in site_failures(events, 3)] == [
        ("site-2", "train", "x"),
        ("site-2", "evaluate", "x"),
        ("site-10", "train", "y"),
        ("site-10", "train", "x"),
        ("site-10", "evaluate", "x"),
    ]


def test_an_aborted_round_counts_if_it_names_its_failed_sites() -> None:
    aborted = {
        "event": "round_aborted",
        "round": 1,
        "kind": "train",
        "model": None,
        "reason": "quorum unreachable: ...",
        "outcomes": {"site-2": "failed"},
    }
    assert site_failures([aborted], 3) == []  # the reasons are in the job's reason only
    named = {**aborted, "failed": {"site-2": _reason(BROKEN, "0000000f")}}
    assert [(f["site"], f["rounds"], f["error_id"]) for f in site_failures([named], 3)] == [
        ("site-2", [1], "0000000f")
    ]


def test_a_reason_that_only_mentions_an_error_id_keeps_it() -> None:
    text = "ValueError: (error id 1234abcd; details in the site's log) is not a column"
    events = [_round(1, "train", {"site-1": text})]
    assert [(f["reason"], f["error_id"]) for f in site_failures(events, 1)] == [(text, None)]


class _StoppedCore:
    """A server core that has stopped: its task group takes no work, and any use of it fails."""

    stopping = True

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"a stopped core was asked for {name}")


def test_a_stopping_server_tells_watching_admins_nothing() -> None:
    # publish() used to start a task in the core's closed task group: RuntimeError at the stop.
    service = AdminService(_StoppedCore())  # type: ignore[arg-type]
    service._watchers["job-1"] = {"lead@example.org#1"}
    service.publish("job-1")
