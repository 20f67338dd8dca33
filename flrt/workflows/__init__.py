"""Workflows: how a job's rounds are run over a controller.

- :mod:`.quorum`: one round's quorum as a sans-IO state machine (stragglers, dropouts, grace).
- :mod:`.sampling`: which sites a round asks, and their reliability history.
"""

from __future__ import annotations

from .quorum import (
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
from .sampling import Sampling, SiteHistory, choose_sites, round_rng

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
    "Sampling",
    "SiteHistory",
    "SiteOutcome",
    "SitesNeeded",
    "choose_sites",
    "round_rng",
]
