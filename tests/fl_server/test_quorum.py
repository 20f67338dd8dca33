"""The quorum state machine, with time passed in: every state against every input, stragglers,
dropouts, unreachable quorums, waiting; and site sampling."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.errors import QuorumError
from flrt.job import Sampling
from flrt.workflows.quorum import (
    TRANSITIONS,
    Decision,
    DiscardReason,
    QuorumRound,
    ResultAccepted,
    ResultDiscarded,
    RoundClosed,
    RoundFailed,
    RoundState,
    SiteOutcome,
    SitesNeeded,
)
from flrt.workflows.sampling import SiteHistory, choose_sites

S = RoundState

# ----------------------------------------------------------------------------- states x inputs
#
# Every set-up asks a, b, c, d in round 1 with a round timeout of 100 s, then brings the machine into
# one state; "x" is the site still outstanding in that state (cancelled in the terminal states).


def in_collecting() -> QuorumRound:
    """min 2, grace 10: a answered, d failed, b and c outstanding."""
    q = QuorumRound(1, "abcd", min_sites=2, grace_seconds=10, round_timeout=100, now=0)
    q.result_received("a", 1, now=1)
    q.site_failed("d", "disconnected", now=1.5)
    return q


def in_grace() -> QuorumRound:
    """...then b answered at 2: grace until 12, c outstanding."""
    q = in_collecting()
    q.result_received("b", 1, now=2)
    return q


def in_waiting() -> QuorumRound:
    """min 3 and wait_for_quorum: a answered, b and d failed, c outstanding."""
    q = QuorumRound(
        1, "abcd", min_sites=3, grace_seconds=10, round_timeout=100, wait_for_quorum=True, now=0
    )
    q.result_received("a", 1, now=1)
    q.site_failed("d", "disconnected", now=1.5)
    q.site_failed("b", "trainer raised", now=2)
    return q


def in_closed() -> QuorumRound:
    q = in_grace()
    q.handle_timer(12)
    return q


def in_failed() -> QuorumRound:
    """min 3, no waiting: a answered, d and b failed."""
    q = QuorumRound(1, "abcd", min_sites=3, grace_seconds=10, round_timeout=100, now=0)
    q.result_received("a", 1, now=1)
    q.site_failed("d", "disconnected", now=1.5)
    q.site_failed("b", "trainer raised", now=2)
    return q


SETUPS: dict[RoundState, Callable[[], QuorumRound]] = {
    S.COLLECTING: in_collecting,
    S.GRACE: in_grace,
    S.WAITING: in_waiting,
    S.CLOSED: in_closed,
    S.FAILED: in_failed,
}
OUTSTANDING = {S.COLLECTING: "b", S.GRACE: "c", S.WAITING: "c", S.CLOSED: "c", S.FAILED: "c"}

INPUTS: dict[str, Callable[[QuorumRound, str], None]] = {
    "result_on_time": lambda q, x: q.result_received(x, 1, now=5),
    "result_duplicate": lambda q, x: q.result_received("a", 1, now=5),
    "result_not_asked": lambda q, x: q.result_received("z", 1, now=5),
    "result_other_round": lambda q, x: q.result_received(x, 0, now=5),
    "result_from_failed": lambda q, x: q.result_received("d", 1, now=5),
    "fail_outstanding": lambda q, x: q.site_failed(x, "disconnected", now=5),
    "fail_answered": lambda q, x: q.site_failed("a", "disconnected", now=5),
    "fail_unknown": lambda q, x: q.site_failed("z", "disconnected", now=5),
    "timer_early": lambda q, x: q.handle_timer(5),
    "timer_grace": lambda q, x: q.handle_timer(12),
    "timer_timeout": lambda q, x: q.handle_timer(100),
    "ask_new_site": lambda q, x: q.sites_asked(["e"], now=5),
}

FAILED_ = RoundFailed("*", (), (), ())  # the reason and site lists are checked elsewhere


def _late(site: str) -> ResultDiscarded:
    return ResultDiscarded(site, 1, DiscardReason.LATE)


DUP = ResultDiscarded("a", 1, DiscardReason.DUPLICATE)
NOT_ASKED = ResultDiscarded("z", 1, DiscardReason.NOT_ASKED)

# (state, input) -> (next state, decisions)
EXPECTED: dict[tuple[RoundState, str], tuple[RoundState, list[Decision]]] = {
    (S.COLLECTING, "result_on_time"): (S.GRACE, [ResultAccepted("b")]),
    (S.COLLECTING, "result_duplicate"): (S.COLLECTING, [DUP]),
    (S.COLLECTING, "result_not_asked"): (S.COLLECTING, [NOT_ASKED]),
    (S.COLLECTING, "result_other_round"): (
        S.COLLECTING,
        [ResultDiscarded("b", 0, DiscardReason.OTHER_ROUND)],
    ),
    (S.COLLECTING, "result_from_failed"): (S.GRACE, [ResultAccepted("d")]),
    (S.COLLECTING, "fail_outstanding"): (S.COLLECTING, []),  # 1 answered + c outstanding = 2
    (S.COLLECTING, "fail_answered"): (S.COLLECTING, []),
    (S.COLLECTING, "fail_unknown"): (S.COLLECTING, []),
    (S.COLLECTING, "timer_early"): (S.COLLECTING, []),
    (S.COLLECTING, "timer_grace"): (S.COLLECTING, []),
    (S.COLLECTING, "timer_timeout"): (S.FAILED, [FAILED_]),
    (S.COLLECTING, "ask_new_site"): (S.COLLECTING, []),
    (S.GRACE, "result_on_time"): (
        S.CLOSED,
        [ResultAccepted("c"), RoundClosed(("a", "b", "c"), (), ("d",))],
    ),
    (S.GRACE, "result_duplicate"): (S.GRACE, [DUP]),
    (S.GRACE, "result_not_asked"): (S.GRACE, [NOT_ASKED]),
    (S.GRACE, "result_other_round"): (
        S.GRACE,
        [ResultDiscarded("c", 0, DiscardReason.OTHER_ROUND)],
    ),
    (S.GRACE, "result_from_failed"): (S.GRACE, [ResultAccepted("d")]),
    (S.GRACE, "fail_outstanding"): (S.CLOSED, [RoundClosed(("a", "b"), (), ("c", "d"))]),
    (S.GRACE, "fail_answered"): (S.GRACE, []),
    (S.GRACE, "fail_unknown"): (S.GRACE, []),
    (S.GRACE, "timer_early"): (S.GRACE, []),
    (S.GRACE, "timer_grace"): (S.CLOSED, [RoundClosed(("a", "b"), ("c",), ("d",))]),
    (S.GRACE, "timer_timeout"): (S.CLOSED, [RoundClosed(("a", "b"), ("c",), ("d",))]),
    (S.GRACE, "ask_new_site"): (S.GRACE, []),
    (S.WAITING, "result_on_time"): (S.WAITING, [ResultAccepted("c")]),  # still one short
    (S.WAITING, "result_duplicate"): (S.WAITING, [DUP]),
    (S.WAITING, "result_not_asked"): (S.WAITING, [NOT_ASKED]),
    (S.WAITING, "result_other_round"): (
        S.WAITING,
        [ResultDiscarded("c", 0, DiscardReason.OTHER_ROUND)],
    ),
    (S.WAITING, "result_from_failed"): (S.COLLECTING, [ResultAccepted("d")]),
    (S.WAITING, "fail_outstanding"): (S.WAITING, [SitesNeeded(2)]),
    (S.WAITING, "fail_answered"): (S.WAITING, []),
    (S.WAITING, "fail_unknown"): (S.WAITING, []),
    (S.WAITING, "timer_early"): (S.WAITING, []),
    (S.WAITING, "timer_grace"): (S.WAITING, []),
    (S.WAITING, "timer_timeout"): (S.FAILED, [FAILED_]),
    (S.WAITING, "ask_new_site"): (S.COLLECTING, []),
}
for _terminal in (S.CLOSED, S.FAILED):
    EXPECTED.update(
        {
            (_terminal, "result_on_time"): (_terminal, [_late("c")]),
            (_terminal, "result_duplicate"): (_terminal, [_late("a")]),
            (_terminal, "result_not_asked"): (_terminal, [_late("z")]),
            (_terminal, "result_other_round"): (
                _terminal,
                [ResultDiscarded("c", 0, DiscardReason.OTHER_ROUND)],
            ),
            (_terminal, "result_from_failed"): (_terminal, [_late("d")]),
            (_terminal, "fail_outstanding"): (_terminal, []),
            (_terminal, "fail_answered"): (_terminal, []),
            (_terminal, "fail_unknown"): (_terminal, []),
            (_terminal, "timer_early"): (_terminal, []),
            (_terminal, "timer_grace"): (_terminal, []),
            (_terminal, "timer_timeout"): (_terminal, []),
        }
    )


def _normalized(decisions: list[Decision]) -> list[Decision]:
    return [FAILED_ if isinstance(d, RoundFailed) else d for d in decisions]


def test_every_state_and_input_is_covered() -> None:
    covered = set(EXPECTED) | {(S.CLOSED, "ask_new_site"), (S.FAILED, "ask_new_site")}
    assert covered == {(s, i) for s in S for i in INPUTS}


def test_set_ups_reach_their_states() -> None:
    for state, setup in SETUPS.items():
        assert setup().state is state


def _case_key(case: tuple[RoundState, str]) -> tuple[str, str]:
    return (case[0].value, case[1])


def _state(q: QuorumRound) -> RoundState:
    """The state, read through a call so the type checker does not narrow it across inputs."""
    return q.state


CASES: list[tuple[RoundState, str]] = sorted(EXPECTED.keys(), key=_case_key)


@pytest.mark.parametrize(("state", "event"), CASES)
def test_state_by_input(state: RoundState, event: str) -> None:
    q = SETUPS[state]()
    q.decisions()
    INPUTS[event](q, OUTSTANDING[state])
    after, decisions = EXPECTED[(state, event)]
    assert q.state is after
    assert after is state or after in TRANSITIONS[state]
    got = q.decisions()
    assert _normalized(got) == decisions
    for d in got:
        if isinstance(d, RoundFailed):
            assert d.reason
            assert d.reason == q.reason
    if q.closed:
        assert q.get_timer() is None


@pytest.mark.parametrize("state", [S.CLOSED, S.FAILED])
def test_asking_sites_after_the_round_is_over_is_refused(state: RoundState) -> None:
    q = SETUPS[state]()
    with pytest.raises(QuorumError, match=state.value):
        q.sites_asked(["e"], now=5)


def test_terminal_states_have_no_way_out() -> None:
    assert TRANSITIONS[S.CLOSED] == frozenset()
    assert TRANSITIONS[S.FAILED] == frozenset()
    assert S.FAILED not in TRANSITIONS[S.GRACE]  # a reached quorum cannot be lost


# ----------------------------------------------------------------------------- scenarios


def test_straggler_after_the_grace_period_is_discarded_not_mixed_in() -> None:
    q = QuorumRound(3, ["a", "b", "c"], min_sites=2, grace_seconds=2.0, now=0)
    q.result_received("a", 3, now=1)
    q.result_received("b", 3, now=3)  # quorum at 3: grace until 5
    assert q.get_timer() == 5.0
    q.decisions()
    q.result_received("c", 3, now=5.5)  # nobody called handle_timer at 5: time is applied first
    assert q.decisions() == [
        RoundClosed(("a", "b"), ("c",), ()),
        ResultDiscarded("c", 3, DiscardReason.LATE),
    ]
    assert q.accepted == ("a", "b")
    assert q.outcomes() == {
        "a": SiteOutcome.ON_TIME,
        "b": SiteOutcome.ON_TIME,
        "c": SiteOutcome.LATE,
    }


def test_a_straggler_inside_the_grace_period_is_kept() -> None:
    q = QuorumRound(1, ["a", "b", "c"], min_sites=2, grace_seconds=2.0, now=0)
    q.result_received("a", 1, now=1)
    q.result_received("b", 1, now=3)
    q.result_received("c", 1, now=4.9)
    assert q.state is S.CLOSED
    assert q.accepted == ("a", "b", "c")


def test_grace_zero_closes_at_the_quorum_and_cancels_the_rest() -> None:
    q = QuorumRound(1, ["a", "b", "c", "d"], min_sites=2, now=0)
    q.result_received("c", 1, now=1)
    q.result_received("a", 1, now=2)
    assert q.decisions()[-1] == RoundClosed(("a", "c"), ("b", "d"), ())


def test_a_dropout_does_not_stall_a_round_that_can_still_reach_quorum() -> None:
    q = QuorumRound(1, ["a", "b", "c"], min_sites=2, grace_seconds=30, now=0)
    q.site_failed("c", "connection lost", now=1)
    q.result_received("a", 1, now=2)
    q.result_received("b", 1, now=3)  # everyone left has answered: no need to wait for grace
    assert q.state is S.CLOSED
    assert q.decisions()[-1] == RoundClosed(("a", "b"), (), ("c",))


def test_a_round_that_cannot_reach_quorum_fails_with_a_reason() -> None:
    q = QuorumRound(7, ["a", "b", "c"], min_sites=2, now=0)
    q.result_received("a", 7, now=1)
    q.site_failed("b", "connection lost", now=2)
    q.site_failed("c", "trainer raised ValueError", now=3)
    assert q.state is S.FAILED
    assert q.reason is not None
    assert "1 answered" in q.reason
    assert "b (connection lost)" in q.reason
    assert "c (trainer raised ValueError)" in q.reason


def test_too_few_sites_asked_fails_at_once_or_waits() -> None:
    q = QuorumRound(1, ["a"], min_sites=2, now=0)
    assert q.state is S.FAILED
    q = QuorumRound(1, ["a"], min_sites=2, wait_for_quorum=True, now=0)
    assert q.state is S.WAITING
    assert q.decisions() == [SitesNeeded(1)]
    assert q.get_timer() is None  # waits for sites, not for time


def test_waiting_for_quorum_recovers_when_a_site_is_asked_again() -> None:
    q = QuorumRound(1, ["a", "b"], min_sites=2, wait_for_quorum=True, round_timeout=60, now=0)
    q.result_received("a", 1, now=1)
    q.site_failed("b", "connection lost", now=2)
    assert q.decisions() == [ResultAccepted("a"), SitesNeeded(1)]
    q.sites_asked(["b"], now=30)  # b reconnected and was asked again
    assert q.state is S.COLLECTING
    q.result_received("b", 1, now=40)
    assert q.decisions() == [ResultAccepted("b"), RoundClosed(("a", "b"), (), ())]


def test_waiting_for_quorum_gives_up_at_the_round_timeout() -> None:
    q = QuorumRound(1, ["a", "b"], min_sites=2, wait_for_quorum=True, round_timeout=60, now=10)
    q.site_failed("b", "connection lost", now=11)
    assert q.get_timer() == 70
    q.handle_timer(69.9)
    assert q.state is S.WAITING
    q.handle_timer(70)
    assert _state(q) is S.FAILED
    assert q.reason is not None
    assert q.reason.startswith("round timeout")


def test_round_timeout_caps_the_grace_period() -> None:
    q = QuorumRound(1, ["a", "b", "c"], min_sites=1, grace_seconds=50, round_timeout=20, now=0)
    q.result_received("a", 1, now=10)
    assert q.get_timer() == 20
    q.handle_timer(20)
    assert q.decisions()[-1] == RoundClosed(("a",), ("b", "c"), ())


def test_bad_parameters_and_double_asks_are_refused() -> None:
    with pytest.raises(QuorumError, match="min_sites"):
        QuorumRound(1, ["a"], min_sites=0, now=0)
    with pytest.raises(QuorumError, match="grace"):
        QuorumRound(1, ["a"], min_sites=1, grace_seconds=-1, now=0)
    with pytest.raises(QuorumError, match="round_timeout"):
        QuorumRound(1, ["a"], min_sites=1, round_timeout=0, now=0)
    with pytest.raises(QuorumError, match="already"):
        QuorumRound(1, ["a", "a"], min_sites=1, now=0)
    q = QuorumRound(1, ["a", "b"], min_sites=2, now=0)
    with pytest.raises(QuorumError, match="outstanding"):
        q.sites_asked(["a"], now=1)
    with pytest.raises(QuorumError, match="not over"):
        q.outcomes()


@settings(max_examples=200, deadline=None)
@given(
    st.integers(2, 8).flatmap(
        lambda n: st.tuples(
            st.just(n),
            st.integers(1, n),
            st.lists(st.booleans(), min_size=n, max_size=n),
            st.lists(st.floats(0, 100), min_size=n, max_size=n),
            st.floats(0, 10),
        )
    )
)
def test_any_mix_of_dropouts_and_answers_closes_iff_quorum_is_reachable(
    case: tuple[int, int, list[bool], list[float], float],
) -> None:
    n, min_sites, fails, times, grace = case
    sites = [f"s{i}" for i in range(n)]
    q = QuorumRound(1, sites, min_sites=min_sites, grace_seconds=grace, now=0)
    accepted: list[str] = []
    for t, site, fail in sorted(zip(times, sites, fails, strict=True)):
        timer = q.get_timer()
        if timer is not None and timer <= t:
            q.handle_timer(timer)
        if fail:
            q.site_failed(site, "gone", now=t)
        else:
            q.result_received(site, 1, now=t)
        for d in q.decisions():
            if isinstance(d, ResultAccepted):
                assert not q.closed or d.site in q.accepted
                accepted.append(d.site)
    timer = q.get_timer()
    if timer is not None:
        q.handle_timer(timer)
    survivors = n - sum(fails)
    assert q.state is (S.CLOSED if survivors >= min_sites else S.FAILED)
    assert sorted(accepted) == list(q.accepted)  # nothing accepted twice, nothing lost
    assert len(set(accepted)) == len(accepted)
    if q.state is S.CLOSED:
        assert len(q.accepted) >= min_sites
        # the first min_sites answers, in arrival order, are always in
        order = [s for t, s, f in sorted(zip(times, sites, fails, strict=True)) if not f]
        assert set(q.accepted) >= set(order[:min_sites])


# ----------------------------------------------------------------------------- sampling


def test_sampling_is_deterministic_and_ignores_candidate_order() -> None:
    sites = [f"site-{i}" for i in range(10)]
    a = choose_sites(sites, 4, seed=7, round=3)
    assert a == choose_sites(reversed(sites), 4, seed=7, round=3)
    assert len(a) == 4
    assert list(a) == sorted(a)
    rounds = {choose_sites(sites, 4, seed=7, round=r) for r in range(20)}
    assert len(rounds) > 5  # rounds differ from each other
    assert choose_sites(sites, 20, seed=1, round=1) == tuple(sorted(sites))
    assert choose_sites(sites, 0, seed=1, round=1) == ()


def test_reliable_sampling_prefers_sites_that_answer_on_time() -> None:
    sites = ["good", "flaky"] + [f"new-{i}" for i in range(4)]
    history = {"good": SiteHistory(on_time=20), "flaky": SiteHistory(on_time=2, late=9, failed=9)}
    picks = {s: 0 for s in sites}
    for r in range(400):
        for s in choose_sites(
            sites, 2, seed=1, round=r, sampling=Sampling.RELIABLE, history=history
        ):
            picks[s] += 1
    assert picks["good"] > picks["new-0"] > picks["flaky"] > 0  # preferred, never excluded


def test_site_history_records_outcomes_and_round_trips() -> None:
    h = SiteHistory()
    assert h.reliability == 0.5
    for outcome in (SiteOutcome.ON_TIME, SiteOutcome.ON_TIME, SiteOutcome.LATE, SiteOutcome.FAILED):
        h = h.record(outcome)
    assert h == SiteHistory(on_time=2, late=1, failed=1)
    assert h.asked == 4
    assert SiteHistory.from_dict(h.to_dict()) == h
    assert replace(h, failed=0).reliability > h.reliability


def test_would_accept_predicts_result_received() -> None:
    for state, setup in SETUPS.items():
        for site in "abcdz":
            for round in (0, 1):
                q = setup()
                q.decisions()
                predicted = q.would_accept(site, round)
                q.result_received(site, round, now=q.started_at + 5)
                accepted = [d for d in q.decisions() if isinstance(d, ResultAccepted)]
                assert predicted == bool(accepted), (state, site, round)


def test_sites_needed_is_the_deficit_while_waiting() -> None:
    q = in_waiting()
    assert q.sites_needed == 1
    q.site_failed("c", "gone", now=5)
    assert q.sites_needed == 2
    q.sites_asked(["e", "f"], now=6)
    assert q.sites_needed == 0
    assert in_collecting().sites_needed == 0
