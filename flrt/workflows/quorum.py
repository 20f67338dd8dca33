"""One round's quorum: which results count, when to aggregate, when to give up. Sans-IO.

Theory of operation
-------------------
A round asks ``asked`` sites (possibly more than it needs) and needs ``min_sites`` answers. Time is
an input: every method takes ``now``, and :meth:`QuorumRound.get_timer` says when the round next needs
:meth:`QuorumRound.handle_timer`. Inputs queue :data:`Decision`\\ s, which the workflow drains with
:meth:`QuorumRound.decisions` and acts on (fold an accepted result, drop a discarded one, ask more
sites, cancel stragglers).

- **Collecting.** Results from asked sites are accepted as they arrive. A site that fails or
  disconnects is counted out.
- **Grace.** Once ``min_sites`` have answered, the others get ``grace_seconds`` counted from that
  moment; the round closes when the grace period has passed, or as soon as every asked site has
  answered or failed (with ``grace_seconds = 0``, as soon as the quorum is reached).
- **Closed.** The accepted results are aggregated; sites still outstanding are cancelled, and a
  result arriving after this (or for another round) is discarded, never mixed in.
- **Unreachable quorum.** When the answers plus the outstanding sites can no longer make
  ``min_sites``, the round fails with a reason naming who answered and who failed, unless the job
  says ``wait_for_quorum``: then it waits, asking the workflow for more sites
  (:class:`SitesNeeded`); a failed site that is asked again counts as outstanding again.
- **Round timeout.** With ``round_timeout``, a round that has not closed ``round_timeout`` seconds
  after it started closes if it has its quorum, and fails otherwise.

Before acting on any input, the machine first applies the passage of time up to ``now``: a result
that arrives at or after the grace deadline is late even if :meth:`~QuorumRound.handle_timer` was not
called in between.

States and their allowed transitions are :data:`TRANSITIONS`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from dataclasses import dataclass

from flrt.errors import QuorumError

__all__ = [
    "TRANSITIONS",
    "Decision",
    "DiscardReason",
    "QuorumRound",
    "ResultAccepted",
    "ResultDiscarded",
    "RoundClosed",
    "RoundFailed",
    "RoundState",
    "SiteOutcome",
    "SitesNeeded",
]


class RoundState(enum.Enum):
    #: Fewer than ``min_sites`` answered; the quorum can still be reached with the sites asked.
    COLLECTING = "collecting"
    #: ``min_sites`` answered; the others have until the grace deadline.
    GRACE = "grace"
    #: The quorum cannot be reached with the sites asked; waiting for more (``wait_for_quorum``).
    WAITING = "waiting"
    #: Terminal: the accepted results are to be aggregated.
    CLOSED = "closed"
    #: Terminal: the round failed.
    FAILED = "failed"


#: Allowed transitions; every state may also stay where it is.
TRANSITIONS: dict[RoundState, frozenset[RoundState]] = {
    RoundState.COLLECTING: frozenset(
        {RoundState.GRACE, RoundState.WAITING, RoundState.CLOSED, RoundState.FAILED}
    ),
    RoundState.GRACE: frozenset({RoundState.CLOSED}),
    RoundState.WAITING: frozenset(
        {RoundState.COLLECTING, RoundState.GRACE, RoundState.CLOSED, RoundState.FAILED}
    ),
    RoundState.CLOSED: frozenset(),
    RoundState.FAILED: frozenset(),
}

_TERMINAL = frozenset({RoundState.CLOSED, RoundState.FAILED})


class DiscardReason(enum.Enum):
    #: The round had closed (or failed) when the result arrived.
    LATE = "late"
    #: The result is for another round.
    OTHER_ROUND = "other_round"
    #: The site was not asked in this round.
    NOT_ASKED = "not_asked"
    #: The site had already answered.
    DUPLICATE = "duplicate"


class SiteOutcome(enum.Enum):
    """How an asked site did in a round, for its reliability history."""

    ON_TIME = "on_time"
    LATE = "late"
    FAILED = "failed"
    #: Still working when the round gave up because the others failed: neither on time nor late
    #: (a site's history does not count it).
    CANCELLED = "cancelled"


class _Site(enum.Enum):
    OUTSTANDING = "outstanding"
    ANSWERED = "answered"
    FAILED = "failed"
    CANCELLED = "cancelled"
    ABANDONED = "abandoned"  # outstanding when the quorum became unreachable


@dataclass(frozen=True, slots=True)
class ResultAccepted:
    """Fold this site's result into the aggregate."""

    site: str


@dataclass(frozen=True, slots=True)
class ResultDiscarded:
    """Drop this result (for round ``round``); it must not reach the aggregate."""

    site: str
    round: int
    reason: DiscardReason


@dataclass(frozen=True, slots=True)
class SitesNeeded:
    """The quorum is unreachable with the sites asked: ask ``count`` more (``wait_for_quorum``)."""

    count: int


@dataclass(frozen=True, slots=True)
class RoundClosed:
    """Aggregate ``accepted``; cancel ``cancelled`` (still outstanding). ``failed`` were counted
    out."""

    accepted: tuple[str, ...]
    cancelled: tuple[str, ...]
    failed: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class RoundFailed:
    """The round failed: ``reason`` says why; cancel ``cancelled``."""

    reason: str
    accepted: tuple[str, ...]
    cancelled: tuple[str, ...]
    failed: tuple[str, ...]


Decision = ResultAccepted | ResultDiscarded | SitesNeeded | RoundClosed | RoundFailed


class QuorumRound:
    """The quorum of round ``round``. See the module docstring.

    Raises :class:`~flrt.errors.QuorumError` for bad parameters or a site asked twice.
    """

    def __init__(
        self,
        round: int,
        asked: Iterable[str],
        *,
        min_sites: int,
        now: float,
        grace_seconds: float = 0.0,
        wait_for_quorum: bool = False,
        round_timeout: float | None = None,
    ) -> None:
        if min_sites < 1:
            raise QuorumError(f"min_sites must be >= 1, got {min_sites}")
        if not grace_seconds >= 0.0:
            raise QuorumError(f"grace_seconds must be >= 0, got {grace_seconds}")
        if round_timeout is not None and not round_timeout > 0.0:
            raise QuorumError(f"round_timeout must be > 0, got {round_timeout}")
        self.round = round
        self.min_sites = min_sites
        self.grace_seconds = grace_seconds
        self.wait_for_quorum = wait_for_quorum
        self.round_timeout = round_timeout
        self.started_at = now
        self.state = RoundState.COLLECTING
        self.reason: str | None = None
        self._quorum_at: float | None = None
        self._sites: dict[str, _Site] = {}
        self._failures: dict[str, str] = {}
        self._needed = 0
        self._decisions: list[Decision] = []
        self._add_sites(asked)
        self._evaluate(now)

    # ------------------------------------------------------------------------------ queries

    @property
    def closed(self) -> bool:
        """Whether the round is over (closed or failed)."""
        return self.state in _TERMINAL

    @property
    def asked(self) -> tuple[str, ...]:
        return tuple(sorted(self._sites))

    @property
    def accepted(self) -> tuple[str, ...]:
        return self._with(_Site.ANSWERED)

    @property
    def outstanding(self) -> tuple[str, ...]:
        return self._with(_Site.OUTSTANDING)

    @property
    def failed(self) -> dict[str, str]:
        """Failed sites with their reasons."""
        return {s: self._failures[s] for s in self._with(_Site.FAILED)}

    def outcomes(self) -> dict[str, SiteOutcome]:
        """Each asked site's outcome, once the round is over: stragglers cancelled after the grace
        period or at the round's timeout were late; sites still working when the others' failures
        made the quorum unreachable were cancelled, through no fault of theirs."""
        if not self.closed:
            raise QuorumError("the round is not over")
        kinds = {
            _Site.ANSWERED: SiteOutcome.ON_TIME,
            _Site.CANCELLED: SiteOutcome.LATE,
            _Site.ABANDONED: SiteOutcome.CANCELLED,
            _Site.FAILED: SiteOutcome.FAILED,
        }
        return {site: kinds[status] for site, status in sorted(self._sites.items())}

    @property
    def sites_needed(self) -> int:
        """How many more sites must be asked for the quorum to be reachable (0 unless waiting)."""
        return self._needed if self.state is RoundState.WAITING else 0

    def would_accept(self, site: str, round: int) -> bool:
        """Whether a result from ``site`` for ``round`` would be accepted now (call
        :meth:`handle_timer` first). Lets the workflow check and fold a result before it counts;
        if the result turns out invalid, report :meth:`site_failed` instead of
        :meth:`result_received`."""
        status = self._sites.get(site)
        return (
            round == self.round
            and not self.closed
            and status is not None
            and status is not _Site.ANSWERED
        )

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` must next be called, or ``None``."""
        if self.closed:
            return None
        deadlines = []
        if self.round_timeout is not None:
            deadlines.append(self.started_at + self.round_timeout)
        if self.state is RoundState.GRACE and self._quorum_at is not None:
            deadlines.append(self._quorum_at + self.grace_seconds)
        return min(deadlines) if deadlines else None

    def decisions(self) -> list[Decision]:
        """The decisions taken since the last call, in order."""
        out, self._decisions = self._decisions, []
        return out

    # ------------------------------------------------------------------------------ inputs

    def handle_timer(self, now: float) -> None:
        """Apply the passage of time up to ``now`` (a call before the timer is harmless)."""
        if self.closed:
            return
        if self.round_timeout is not None and now >= self.started_at + self.round_timeout:
            if len(self.accepted) >= self.min_sites:
                self._close()
            else:
                self._fail(
                    f"round timeout: {len(self.accepted)} of the {self.min_sites} sites needed "
                    f"answered within {self.round_timeout:g} s{self._failure_note()}"
                )
            return
        if (
            self.state is RoundState.GRACE
            and self._quorum_at is not None
            and now >= self._quorum_at + self.grace_seconds
        ):
            self._close()

    def result_received(self, site: str, round: int, now: float) -> None:
        """A result from ``site`` for round ``round`` arrived (and was verified) at ``now``."""
        self.handle_timer(now)
        if round != self.round:
            self._decisions.append(ResultDiscarded(site, round, DiscardReason.OTHER_ROUND))
            return
        if self.closed:
            self._decisions.append(ResultDiscarded(site, round, DiscardReason.LATE))
            return
        status = self._sites.get(site)
        if status is None:
            self._decisions.append(ResultDiscarded(site, round, DiscardReason.NOT_ASKED))
            return
        if status is _Site.ANSWERED:
            self._decisions.append(ResultDiscarded(site, round, DiscardReason.DUPLICATE))
            return
        # outstanding, or counted out earlier but its result made it after all
        self._sites[site] = _Site.ANSWERED
        self._failures.pop(site, None)
        self._decisions.append(ResultAccepted(site))
        self._evaluate(now)

    def site_failed(self, site: str, reason: str, now: float) -> None:
        """``site`` failed its task or disconnected at ``now``. Ignored unless it is outstanding."""
        self.handle_timer(now)
        if self.closed or self._sites.get(site) is not _Site.OUTSTANDING:
            return
        self._sites[site] = _Site.FAILED
        self._failures[site] = reason
        self._evaluate(now)

    def sites_asked(self, sites: Iterable[str], now: float) -> None:
        """The workflow asked more sites (typically after :class:`SitesNeeded`). A site that failed
        may be asked again.

        Raises :class:`~flrt.errors.QuorumError` after the round is over, or for a site that is
        outstanding or has answered.
        """
        self.handle_timer(now)
        if self.closed:
            raise QuorumError(f"round {self.round} is {self.state.value}: no more sites to ask")
        self._add_sites(sites)
        self._evaluate(now)

    # ------------------------------------------------------------------------------ internals

    def _with(self, status: _Site) -> tuple[str, ...]:
        return tuple(sorted(s for s, st in self._sites.items() if st is status))

    def _add_sites(self, sites: Iterable[str]) -> None:
        for site in sites:
            status = self._sites.get(site)
            if status is _Site.OUTSTANDING or status is _Site.ANSWERED:
                raise QuorumError(f"site {site!r} is already {status.value} in round {self.round}")
            self._sites[site] = _Site.OUTSTANDING
            self._failures.pop(site, None)

    def _goto(self, state: RoundState) -> None:
        if state is not self.state and state not in TRANSITIONS[self.state]:
            raise QuorumError(f"internal: {self.state.value} -> {state.value} is not allowed")
        self.state = state

    def _failure_note(self) -> str:
        failed = self.failed
        if not failed:
            return ""
        listed = ", ".join(f"{s} ({r})" for s, r in failed.items())
        return f"; failed: {listed}"

    def _evaluate(self, now: float) -> None:
        answered = len(self.accepted)
        outstanding = len(self.outstanding)
        if answered >= self.min_sites:
            if outstanding == 0:
                self._close()
            elif self.state is not RoundState.GRACE:
                self._quorum_at = now
                if self.grace_seconds == 0.0:
                    self._close()
                else:
                    self._goto(RoundState.GRACE)
            return
        missing = self.min_sites - answered - outstanding
        if missing <= 0:
            self._needed = 0
            self._goto(RoundState.COLLECTING)
            return
        if not self.wait_for_quorum:
            self._fail(
                f"quorum unreachable: {answered} answered and {outstanding} outstanding of the "
                f"{self.min_sites} sites needed, out of {len(self._sites)} asked"
                f"{self._failure_note()}",
                outstanding_as=_Site.ABANDONED,
            )
            return
        self._goto(RoundState.WAITING)
        if missing != self._needed:
            self._needed = missing
            self._decisions.append(SitesNeeded(missing))

    def _cancel_outstanding(self, status: _Site = _Site.CANCELLED) -> tuple[str, ...]:
        cancelled = self.outstanding
        for site in cancelled:
            self._sites[site] = status
        return cancelled

    def _close(self) -> None:
        self._goto(RoundState.CLOSED)
        cancelled = self._cancel_outstanding()
        self._decisions.append(RoundClosed(self.accepted, cancelled, tuple(self.failed)))

    def _fail(self, reason: str, *, outstanding_as: _Site = _Site.CANCELLED) -> None:
        self._goto(RoundState.FAILED)
        self.reason = reason
        cancelled = self._cancel_outstanding(outstanding_as)
        self._decisions.append(RoundFailed(reason, self.accepted, cancelled, tuple(self.failed)))
