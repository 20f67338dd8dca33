"""Workflows: how a job's rounds run over a controller.

- :mod:`.controller`: the :class:`Controller` protocol a workflow runs on (what a network
  controller must implement), replies and the events a workflow reports.
- :mod:`.quorum`: one round's quorum as a sans-IO state machine (stragglers, dropouts, grace).
- :mod:`.sampling`: which sites a round asks, and their reliability history.
- :mod:`.rounds`: :func:`run_round`, the loop between a quorum and a controller.
- :mod:`.training`: ``fedavg``, ``fedprox``, ``scaffold``, ``fedopt``.
- :mod:`.evaluation`: per-round federated evaluation and cross-site evaluation.
- :mod:`.run`: workflows by name.
- :mod:`.state`: the state a workflow checkpoints after every round.
- :mod:`.local`: :class:`LocalController`, in-process sites on a virtual clock.
"""

from __future__ import annotations

from .controller import (
    Controller,
    CrossSiteEvaluated,
    MetricsReported,
    Reply,
    ResultArrived,
    RoundAborted,
    RoundCompleted,
    RoundStarted,
    Scatter,
    SiteFailed,
    SiteJoined,
    UpdateDiscarded,
    UpdateSink,
    Workflow,
    WorkflowEvent,
    event_fields,
)
from .evaluation import GLOBAL_MODEL, cross_site_eval, evaluate_global, weighted_metrics
from .local import LocalController, LocalSite
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
from .rounds import RoundOutcome, RoundPolicy, run_round
from .run import WORKFLOWS, cross_site_evaluation, run_workflow
from .sampling import Sampling, SiteHistory, choose_sites, round_rng
from .state import CrossSiteResults, RoundSummary, WorkflowState
from .training import TRAINING_WORKFLOWS, fedavg, fedopt, fedprox, job_seed, scaffold, train

__all__ = [
    "GLOBAL_MODEL",
    "TRAINING_WORKFLOWS",
    "TRANSITIONS",
    "WORKFLOWS",
    "Controller",
    "CrossSiteEvaluated",
    "CrossSiteResults",
    "Decision",
    "DiscardReason",
    "LocalController",
    "LocalSite",
    "MetricsReported",
    "QuorumRound",
    "Reply",
    "ResultAccepted",
    "ResultArrived",
    "ResultDiscarded",
    "RoundAborted",
    "RoundClosed",
    "RoundCompleted",
    "RoundFailed",
    "RoundOutcome",
    "RoundPolicy",
    "RoundStarted",
    "RoundState",
    "RoundSummary",
    "Sampling",
    "Scatter",
    "SiteFailed",
    "SiteHistory",
    "SiteJoined",
    "SiteOutcome",
    "SitesNeeded",
    "UpdateDiscarded",
    "UpdateSink",
    "Workflow",
    "WorkflowEvent",
    "WorkflowState",
    "choose_sites",
    "cross_site_eval",
    "cross_site_evaluation",
    "evaluate_global",
    "event_fields",
    "fedavg",
    "fedopt",
    "fedprox",
    "job_seed",
    "round_rng",
    "run_round",
    "run_workflow",
    "scaffold",
    "train",
    "weighted_metrics",
]
