"""The sum-only path, for updates the server can add but not read (homomorphic encryption).

The server holds no secret key, so it can neither weigh, compare nor divide an encrypted update: it
can only add. Each site therefore multiplies its update by its weight *before* encrypting it and
sends the weight in the clear; the server adds the ciphertexts variable by variable and returns the
sums with the total weight per variable (:class:`EncryptedSum`); the sites decrypt the sum and divide
by the total. The only operation used on values is ``+`` (:class:`Summable`), which is what
:data:`~flrt.aggregation.base.ENCRYPTED` allows.

As with the plaintext aggregators, values are staged until :meth:`SumOnlyAggregator.commit`, so a
discarded update is never added. No encryption scheme is implemented here.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, Protocol, TypeVar

from flrt.errors import AggregationError, AggregatorStateError, UpdateError

from .base import Memory, Operation

__all__ = ["EncryptedSum", "SumOnlyAggregator", "Summable"]


class Summable(Protocol):
    """A value that supports ``+`` with values of its own type, and nothing else we rely on."""

    def __add__(self, other: Any, /) -> Any: ...


S = TypeVar("S", bound=Summable)


@dataclass(frozen=True, slots=True)
class EncryptedSum(Generic[S]):
    """Per variable, the sum of the (pre-weighted) values and the total weight of its summands."""

    sums: Mapping[str, S]
    total_weight: Mapping[str, float]
    sites: tuple[str, ...]


class _Status(enum.Enum):
    OPEN = "open"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class SumOnlyAggregator(Generic[S]):
    """Adds opaque per-variable values; see the module docstring.

    The round protocol mirrors :class:`~flrt.aggregation.base.Aggregator`: :meth:`begin`, then per
    site :meth:`open`, :meth:`accept` per variable, :meth:`commit` or :meth:`discard` (or
    :meth:`add` for a whole update), then :meth:`finish`.
    """

    requires: ClassVar[frozenset[Operation]] = frozenset({Operation.ADD})
    memory: ClassVar[Memory] = Memory.CONSTANT

    def __init__(self) -> None:
        self._active = False
        self._sums: dict[str, S] = {}
        self._total: dict[str, float] = {}
        self._status: dict[str, _Status] = {}
        self._staged: dict[str, tuple[float, dict[str, S]]] = {}

    def begin(self) -> None:
        """Start a round (any earlier round is forgotten)."""
        self._active = True
        self._sums = {}
        self._total = {}
        self._status = {}
        self._staged = {}

    def open(self, site: str, *, weight: float) -> None:
        """A site's update was announced with its plaintext ``weight`` (by which the site has already
        multiplied its values). Raises :class:`~flrt.errors.UpdateError` for a negative weight and
        :class:`~flrt.errors.AggregatorStateError` if the site already has an update."""
        self._require_active()
        if self._status.get(site) in (_Status.OPEN, _Status.COMMITTED):
            raise AggregatorStateError(f"site {site!r} already has an update in this round")
        if not weight >= 0.0:
            raise UpdateError(f"weight must be >= 0, got {weight}", site=site)
        self._staged[site] = (weight, {})
        self._status[site] = _Status.OPEN

    def accept(self, site: str, name: str, value: S) -> None:
        """Stage one variable's value. Ignored for a discarded site."""
        self._require_active()
        status = self._status.get(site)
        if status is _Status.DISCARDED:
            return
        if status is not _Status.OPEN:
            raise AggregatorStateError(f"site {site!r} has no open update")
        values = self._staged[site][1]
        if name in values:
            raise UpdateError("variable sent twice", site=site, variable=name)
        values[name] = value

    def commit(self, site: str) -> None:
        """Add a site's staged values to the sums."""
        self._require_active()
        if self._status.get(site) is not _Status.OPEN:
            raise AggregatorStateError(f"site {site!r} has no open update to commit")
        weight, values = self._staged.pop(site)
        for name, value in values.items():
            current = self._sums.get(name)
            self._sums[name] = value if current is None else current + value
            self._total[name] = self._total.get(name, 0.0) + weight
        self._status[site] = _Status.COMMITTED

    def add(self, site: str, update: Mapping[str, S], *, weight: float) -> None:
        """``open`` + ``accept`` for every variable + ``commit``."""
        self.open(site, weight=weight)
        for name, value in update.items():
            self.accept(site, name, value)
        self.commit(site)

    def discard(self, site: str) -> None:
        """Drop a site's staged values; raises :class:`~flrt.errors.AggregatorStateError` if they
        were already added."""
        self._require_active()
        if self._status.get(site) is _Status.COMMITTED:
            raise AggregatorStateError(f"site {site!r} is committed and cannot be discarded")
        self._staged.pop(site, None)
        self._status[site] = _Status.DISCARDED

    def finish(self) -> EncryptedSum[S]:
        """End the round. Raises :class:`~flrt.errors.AggregationError` if nothing was committed."""
        self._require_active()
        self._active = False
        sites = tuple(sorted(s for s, st in self._status.items() if st is _Status.COMMITTED))
        if not sites:
            raise AggregationError("no update was committed in this round")
        return EncryptedSum(dict(self._sums), dict(self._total), sites)

    def _require_active(self) -> None:
        if not self._active:
            raise AggregatorStateError("no round in progress")
