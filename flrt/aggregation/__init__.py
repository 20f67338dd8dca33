"""Aggregation: turning a round's updates into the next global model.

- :class:`Aggregator` (:mod:`.base`): the round protocol (``begin``, ``open``/``accept``/``commit``
  or ``add``, ``discard``, ``finish``) shared by every aggregator, with staging so that a discarded
  update leaves no trace.
- Streaming: :class:`WeightedMean` (FedAvg), constant memory in the number of sites.
- Robust, keeping every update in bounded memory (spilling to disk): :class:`CoordinateMedian`,
  :class:`TrimmedMean`, :class:`Krum`.
- Sum-only, for encrypted updates: :class:`SumOnlyAggregator`.
- Server optimizers: :class:`ServerSGD`, :class:`FedAdam`, :class:`FedYogi`, :class:`FedAdagrad`;
  the SCAFFOLD server step: :func:`scaffold_server_step`.
"""

from __future__ import annotations

from .base import (
    ENCRYPTED,
    PLAINTEXT,
    Aggregator,
    ArraySpec,
    Memory,
    Operation,
    PendingUpdate,
    Weighting,
    accumulation_dtype,
    apply_delta,
    cast_like,
    check_supported,
    layout_of,
)
from .mean import WeightedMean
from .optimizers import FedAdagrad, FedAdam, FedYogi, ServerOptimizer, ServerSGD, make_optimizer
from .registry import AGGREGATORS, make_aggregator
from .robust import CoordinateMedian, Krum, RetainingAggregator, TrimmedMean
from .scaffold import control_for_sites, initial_control, scaffold_server_step
from .secure import EncryptedSum, Summable, SumOnlyAggregator
from .store import DEFAULT_BUDGET_BYTES, UpdateStore, mapped_zeros, prefault

__all__ = [
    "AGGREGATORS",
    "DEFAULT_BUDGET_BYTES",
    "ENCRYPTED",
    "PLAINTEXT",
    "Aggregator",
    "ArraySpec",
    "CoordinateMedian",
    "EncryptedSum",
    "FedAdagrad",
    "FedAdam",
    "FedYogi",
    "Krum",
    "Memory",
    "Operation",
    "PendingUpdate",
    "RetainingAggregator",
    "ServerOptimizer",
    "ServerSGD",
    "SumOnlyAggregator",
    "Summable",
    "TrimmedMean",
    "UpdateStore",
    "WeightedMean",
    "Weighting",
    "accumulation_dtype",
    "apply_delta",
    "cast_like",
    "check_supported",
    "control_for_sites",
    "initial_control",
    "layout_of",
    "make_aggregator",
    "make_optimizer",
    "mapped_zeros",
    "prefault",
    "scaffold_server_step",
]
