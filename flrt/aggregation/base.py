"""The aggregator interface: how a round's updates become the next global model.

Theory of operation
-------------------
An aggregator lives for one round at a time::

    begin(global_weights)
        open(site, num_samples=..., kind=..., layout=...)     # the update was announced
        accept(site, name, piece, offset=...)                 # ...as its arrays arrive, in any order
      | staging_for(site) ... mark_filled(site)               # ...or straight into its staging
        commit(site)                                          # verified and accepted by the quorum
      | discard(site)                                         # failed, late, or refused
      | add(site, result)                                     # a whole verified result at once
    finish() -> Weights          (or finish_delta() -> the mean update)

An aggregator may be used for many rounds (``begin`` again): it then keeps its buffers (staging, the
running sum) from one round to the next instead of asking the operating system for fresh memory,
whose first touch is the slow part of a round on a virtual machine.

**What "discard leaves no trace" means here.** Pieces of an update are *staged* (in an
:class:`~flrt.aggregation.store.UpdateStore`, so staging spills to disk beyond its budget) and only
folded into the aggregate by :meth:`Aggregator.commit`, which the workflow calls once the bus has
verified the whole update (its digest) *and* the round's quorum has accepted it. A discarded update,
or one still open when the round finishes, was therefore never folded, and the aggregate is bit for
bit what it would have been without it. A committed update cannot be removed (subtracting it again
would not be exact in floating point, and the quorum never takes back what it accepted). Staging
holds only the updates *in flight*, which the bus bounds; :meth:`Aggregator.add` folds a complete
result with no staging copy at all.

**Receiving in place.** Instead of handing pieces to :meth:`Aggregator.accept` (one copy each),
a receiver may ask for the site's staging arrays (:meth:`Aggregator.staging_for`), have the
transport write the update straight into them, and say when every element is written
(:meth:`Aggregator.mark_filled`). Until then the arrays are *lent*: if the update is discarded
meanwhile (late, failed), its staging is dropped, never kept for another update, since bytes may
still land in it.

**Folding off the event loop.** :meth:`Aggregator.commit` is :meth:`Aggregator.prepare_commit`
(checks and bookkeeping), :meth:`PendingUpdate.fold` (the arithmetic, which reads only the update's
own arrays and the global model and writes only the aggregate) and :meth:`Aggregator.settle`. When
:attr:`Aggregator.fold_in_thread` is true, a caller on an event loop runs the fold in a worker thread
(numpy releases the GIL) while it keeps calling ``open``, ``accept`` and ``discard`` for other sites;
it must not call ``commit``, ``add``, ``prepare_*`` or ``finish`` until the fold is settled.

**Kinds.** A :class:`~flrt.tasks.TrainResult` holds either the full new model
(:attr:`~flrt.tasks.UpdateKind.FULL`) or its difference to the global model
(:attr:`~flrt.tasks.UpdateKind.DIFF`). Aggregators work on differences (``full - global``), and
:meth:`Aggregator.finish` adds the aggregated difference to the global model and casts each array
back to the model's dtype (integers are rounded).

**Precision.** A running sum is kept in :func:`accumulation_dtype` of its variable: the model's own
dtype when it is a float of 32 bits or more (float32 sums for a float32 model, float64 for float64),
float32 for float16, float64 for integers and booleans. This is what NVFlare and Flower do; a
float64 sum of a float32 model would make the server's largest buffer twice the model for digits
the model cannot hold. Each update's weighted difference is computed in the sum's dtype too, a
slice at a time (widening a float32 slice to float64 and back cost more than the whole fold):
``w_i * (x_i - g)`` is rounded at most twice, once for the difference (exact when ``x_i`` and ``g``
are within a factor of two of each other, as a model and its update usually are) and once for the
product, and again as it is added. So for k folded float32 updates each element of the mean is
within about ``(k + 2) * 2**-24 * sum(w_i * |d_i|) / sum(w_i)`` of the exact mean of the
differences ``d_i`` (a relative error of order ``k * 6e-8``, when the differences do not cancel),
before the mean is divided out and added to the model in float32 too (two more roundings, the
last of them the new model's own). Float64 models are summed in float64.
:meth:`Aggregator.finish_delta` returns the mean difference in the sums' dtype.

**Missing variables.** An update may leave variables out (a site's ``exclude_variables`` filter):
each variable is aggregated over the updates that carry it, and a variable no update carries keeps
its global value.

**Capabilities.** :attr:`Aggregator.requires` names the operations an aggregator performs on update
values. Plaintext updates allow all of them; encrypted updates (homomorphic encryption) allow only
:attr:`Operation.ADD`, and :func:`check_supported` refuses an aggregator that needs more, before a
round starts. :class:`~flrt.aggregation.secure.SumOnlyAggregator` is the sum-only path.
"""

from __future__ import annotations

import abc
import enum
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import numpy.typing as npt

from flrt.errors import AggregationError, AggregatorStateError, UpdateError
from flrt.model import all_finite
from flrt.tasks import TrainResult, UpdateKind, Weights

from .store import UpdateStore, mapped_zeros

__all__ = [
    "ENCRYPTED",
    "PLAINTEXT",
    "Aggregator",
    "ArraySpec",
    "Memory",
    "Operation",
    "PendingUpdate",
    "Weighting",
    "accumulation_dtype",
    "apply_delta",
    "cast_like",
    "check_supported",
    "layout_of",
]

_R = TypeVar("_R")

#: An aggregated difference: float64, or the sums' dtype (see "Precision" above).
FloatArray = npt.NDArray[np.floating[Any]]

#: Elements folded at a time: small enough that the slice's temporaries stay in the CPU's cache.
FOLD_ELEMENTS = 1 << 16

#: The default staging budget of an aggregator: 64 MiB in memory, then disk.
DEFAULT_STAGING_BYTES = 64 * 1024 * 1024


class Operation(enum.Enum):
    """What an aggregator does with update values."""

    #: Add updates together (and divide the sum by a plaintext total).
    ADD = "add"
    #: Multiply an update by a plaintext weight.
    SCALE = "scale"
    #: Compare coordinates across updates (median, trimmed mean).
    ORDER = "order"
    #: Measure distances between updates (Krum).
    DISTANCE = "distance"


#: What plaintext updates allow: everything.
PLAINTEXT: frozenset[Operation] = frozenset(Operation)
#: What encrypted (additively homomorphic) updates allow: sums only.
ENCRYPTED: frozenset[Operation] = frozenset({Operation.ADD})


class Memory(enum.Enum):
    """How an aggregator's memory grows with the number of sites in a round."""

    #: Folds each update in as it is committed: one running sum (see :func:`accumulation_dtype`)
    #: plus the updates in flight.
    CONSTANT = "constant"
    #: Keeps every committed update until :meth:`Aggregator.finish` (in a store that spills to disk).
    PER_UPDATE = "per_update"


class Weighting(enum.Enum):
    """How much each update counts."""

    #: By the site's ``num_samples`` (FedAvg).
    SAMPLES = "samples"
    #: Every update counts once.
    UNIFORM = "uniform"


@dataclass(frozen=True, slots=True)
class ArraySpec:
    """An announced array: its shape and dtype."""

    shape: tuple[int, ...]
    dtype: np.dtype[Any]

    @property
    def size(self) -> int:
        return math.prod(self.shape)  # np.prod costs microseconds, and this is asked per piece


def layout_of(weights: Mapping[str, npt.NDArray[Any]]) -> dict[str, ArraySpec]:
    """The layout (shape and dtype per name) of a set of arrays."""
    return {name: ArraySpec(tuple(a.shape), a.dtype) for name, a in weights.items()}


def check_supported(
    aggregator: Aggregator | type[Aggregator], supported: frozenset[Operation]
) -> None:
    """Raise :class:`~flrt.errors.AggregationError` if ``aggregator`` needs an operation that the
    updates do not allow (for example a median over encrypted updates)."""
    cls = aggregator if isinstance(aggregator, type) else type(aggregator)
    missing = cls.requires - supported
    if missing:
        names = ", ".join(sorted(op.value for op in missing))
        raise AggregationError(f"{cls.__name__} needs {names}, which these updates do not allow")


def accumulation_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype in which a variable of ``dtype`` is summed (see "Precision" in the module
    docstring): a float of at least 32 bits is its own, a smaller float gives float32, anything
    else float64."""
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return dtype if dtype.itemsize >= 4 else np.dtype(np.float32)
    return np.dtype(np.float64)


def cast_like(values: npt.NDArray[np.floating[Any]], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """Floating-point values converted to a model's dtype: floats are rounded to nearest, integers
    to the nearest integer (clipped to the type's range), booleans by ``> 0.5``."""
    dtype = np.dtype(dtype)
    values = np.asarray(values)  # arithmetic on 0-d arrays gives numpy scalars
    if dtype.kind in "fc":
        return np.asarray(values.astype(dtype))
    if dtype.kind == "b":
        return np.asarray(values > 0.5)
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return np.asarray(np.clip(np.rint(values), info.min, info.max).astype(dtype))
    raise TypeError(f"cannot cast aggregated values to {dtype}")


def _cast_into(out: npt.NDArray[Any], values: FloatArray) -> None:
    """Write floating ``values`` into ``out`` as :func:`cast_like` would convert them."""
    kind = out.dtype.kind
    if kind in "fc":
        out[...] = values  # rounds to nearest, as astype does
    elif kind == "b":
        np.greater(values, 0.5, out=out)
    elif kind in "iu":
        info = np.iinfo(out.dtype)
        np.rint(values, out=values)
        np.clip(values, info.min, info.max, out=values)
        out[...] = values
    else:
        raise TypeError(f"cannot cast aggregated values to {out.dtype}")


def new_model_into(
    global_weights: Weights,
    delta: Callable[[str, int, int, FloatArray], bool],
    allocate: Callable[[tuple[int, ...], np.dtype[Any]], npt.NDArray[Any]] | None = None,
    *,
    in_sum_dtype: bool = False,
) -> Weights:
    """The global model plus an aggregated difference, in the model's dtypes, built chunk by chunk.

    ``delta(name, lo, hi, out)`` writes the difference of elements ``[lo, hi)`` of ``name`` into
    ``out`` and returns ``True``, or returns ``False`` if the variable has none (it is then
    returned as it is, the same array object). ``out`` is float64, or with ``in_sum_dtype`` the
    variable's :func:`accumulation_dtype` (a float32 model is then built in float32: one more
    rounding of the difference, of order ``2**-24`` of it, and no widening of the model).
    ``allocate(shape, dtype)`` gives the new arrays (:func:`~flrt.aggregation.store.mapped_zeros`
    by default: a large one goes back to the operating system when it is dropped). Only one chunk
    of temporaries per dtype is ever held.
    """
    largest = max((array.size for array in global_weights.values()), default=0)
    scratch: dict[np.dtype[Any], FloatArray] = {}
    out: Weights = {}
    for name, array in global_weights.items():
        flat = array.reshape(-1)
        dtype = accumulation_dtype(array.dtype) if in_sum_dtype else np.dtype(np.float64)
        if dtype not in scratch:
            scratch[dtype] = np.empty(min(FOLD_ELEMENTS, largest), dtype=dtype)
        result: npt.NDArray[Any] | None = None
        for lo in range(0, max(flat.size, 1), FOLD_ELEMENTS):
            hi = min(lo + FOLD_ELEMENTS, flat.size)
            piece = scratch[dtype][: hi - lo]
            if not delta(name, lo, hi, piece):
                break
            if result is None:
                shape = tuple(array.shape)
                result = (
                    mapped_zeros(shape, array.dtype)
                    if allocate is None
                    else allocate(shape, array.dtype)
                )
            piece += flat[lo:hi]
            _cast_into(result.reshape(-1)[lo:hi], piece)
        out[name] = array if result is None else result
    return out


def apply_delta(global_weights: Weights, delta: Mapping[str, FloatArray]) -> Weights:
    """The global model plus an aggregated difference, in the model's dtypes.

    Variables without a difference are returned as they are (the same array objects).
    """

    def piece(name: str, lo: int, hi: int, out: FloatArray) -> bool:
        d = delta.get(name)
        if d is None:
            return False
        out[...] = d.reshape(-1)[lo:hi]
        return True

    return new_model_into(global_weights, piece)


def _numeric(dtype: np.dtype[Any]) -> bool:
    return dtype.kind in "biuf"


class _Phase(enum.Enum):
    IDLE = "idle"
    COLLECTING = "collecting"
    FINISHED = "finished"


class _Status(enum.Enum):
    OPEN = "open"
    FOLDING = "folding"
    COMMITTED = "committed"
    DISCARDED = "discarded"


class PendingUpdate:
    """A checked update on its way into the aggregate: call :meth:`fold` (in a worker thread if
    :attr:`Aggregator.fold_in_thread`), then :meth:`Aggregator.settle` (always, even if ``fold``
    raised or never ran)."""

    __slots__ = ("_aggregator", "arrays", "folded", "kept", "kind", "owned", "site", "weight")

    def __init__(
        self,
        aggregator: Aggregator,
        site: str,
        weight: float,
        kind: UpdateKind,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        owned: bool,
    ) -> None:
        self._aggregator = aggregator
        self.site = site
        self.weight = weight
        self.kind = kind
        self.arrays = arrays
        self.owned = owned
        self.folded = False
        self.kept = False

    def fold(self) -> None:
        """Fold the update into the aggregate. Raises :class:`~flrt.errors.UpdateError` if it
        holds a NaN or an infinity; nothing is folded then."""
        if self.folded:
            raise AggregatorStateError(f"the update of {self.site!r} is folded already")
        agg = self._aggregator
        agg._check_finite(self.site, self.arrays)
        self.kept = agg._take(self.site, self.weight, self.kind, self.arrays, owned=self.owned)
        self.folded = True


@dataclass(slots=True)
class _Staged:
    num_samples: int
    kind: UpdateKind
    layout: dict[str, ArraySpec]
    filled: dict[str, int]
    #: The staging arrays are handed out (:meth:`Aggregator.staging_for`) and not yet filled.
    lent: bool = False


class Aggregator(abc.ABC):
    """Turns one round's updates into the next global model. See the module docstring.

    ``weighting`` says how much each update counts (aggregators that ignore weights say so);
    ``staging_budget_bytes`` and ``spill_dir`` bound the memory of updates in flight (and, for
    :attr:`Memory.PER_UPDATE` aggregators, of committed updates).

    Subclasses implement :meth:`_begin`, :meth:`_take` and :meth:`_finish`.
    """

    #: The operations this aggregator performs on update values.
    requires: ClassVar[frozenset[Operation]]
    #: How its memory grows with the number of sites.
    memory: ClassVar[Memory]
    #: Whether :meth:`PendingUpdate.fold` may run in a worker thread while other sites' updates
    #: are opened, accepted and discarded (its ``_take`` touches only the aggregate).
    fold_in_thread: ClassVar[bool] = False

    def __init__(
        self,
        *,
        weighting: Weighting = Weighting.SAMPLES,
        staging_budget_bytes: int = DEFAULT_STAGING_BYTES,
        spill_dir: Path | None = None,
    ) -> None:
        self.weighting = weighting
        self._store = UpdateStore(staging_budget_bytes, spill_dir, reuse=True)
        self._phase = _Phase.IDLE
        self._global: Weights = {}
        self._status: dict[str, _Status] = {}
        self._staged: dict[str, _Staged] = {}
        self._new_buffers: list[npt.NDArray[Any]] = []
        #: Called whenever a site's staged update stops holding memory (folded, discarded, or the
        #: round over): a receiver that admits updates within a memory budget waits for it.
        self.on_release: Callable[[], None] | None = None

    # ------------------------------------------------------------------------------ public API

    @property
    def global_weights(self) -> Weights:
        """The global model of the current round."""
        return self._global

    def staging(self, site: str) -> bool:
        """True while ``site``'s update holds staging memory (received, not yet folded in or
        dropped); never once the round is over or the aggregator closed."""
        if self._phase is not _Phase.COLLECTING:
            return False
        return self._status.get(site) in (_Status.OPEN, _Status.FOLDING)

    def _released(self) -> None:
        if self.on_release is not None:
            self.on_release()

    @property
    def committed(self) -> tuple[str, ...]:
        """The sites whose updates are in the aggregate, sorted."""
        return tuple(sorted(s for s, st in self._status.items() if st is _Status.COMMITTED))

    @property
    def store(self) -> UpdateStore:
        """Where staged (and, for robust aggregators, committed) updates are kept."""
        return self._store

    def begin(self, global_weights: Weights) -> None:
        """Start a round on ``global_weights`` (any earlier round is forgotten)."""
        for name, array in global_weights.items():
            if not isinstance(array, np.ndarray) or not _numeric(array.dtype):
                raise TypeError(f"global weight {name!r} is not a numeric numpy array")
        self._store.clear()
        self._global = dict(global_weights)
        self._status.clear()
        self._staged.clear()
        self._released()
        self._phase = _Phase.COLLECTING
        self._new_buffers = self._store.reserve((a.shape, a.dtype) for a in self._global.values())
        self._begin()

    def new_buffers(self) -> list[npt.NDArray[Any]]:
        """The staging buffers :meth:`begin` set aside for this round that were never written yet
        (once): pass them to :func:`~flrt.aggregation.store.prefault` in a worker thread while the
        round starts, so that receiving the first update does not pay for fresh memory."""
        fresh, self._new_buffers = self._new_buffers, []
        return fresh

    def open(
        self,
        site: str,
        *,
        num_samples: int,
        kind: UpdateKind = UpdateKind.FULL,
        layout: Mapping[str, ArraySpec],
    ) -> None:
        """A site's update was announced: ``layout`` names its arrays with their shapes and dtypes.

        Raises :class:`~flrt.errors.UpdateError` if the layout does not fit the global model, and
        :class:`~flrt.errors.AggregatorStateError` outside a round or if the site is already open or
        committed.
        """
        self._require_collecting("open")
        status = self._status.get(site)
        if status in (_Status.OPEN, _Status.FOLDING, _Status.COMMITTED):
            raise AggregatorStateError(f"site {site!r} already has an update in this round")
        checked = self._check_layout(site, layout, num_samples)
        self._staged[site] = _Staged(num_samples, kind, checked, dict.fromkeys(checked, 0))
        self._status[site] = _Status.OPEN

    def accept(self, site: str, name: str, data: npt.NDArray[Any], *, offset: int = 0) -> None:
        """Stage a piece of array ``name``: ``data`` holds its elements from flat index ``offset``
        (a whole array is a piece at offset 0). The piece is copied.

        Pieces for a discarded site are ignored (the bus may still be delivering them). Raises
        :class:`~flrt.errors.UpdateError` for an unannounced array, a dtype that differs from the
        announcement or a piece past the end, and :class:`~flrt.errors.AggregatorStateError` if the
        site was never opened or is already committed.
        """
        self._require_collecting("accept")
        status = self._status.get(site)
        if status is _Status.DISCARDED:
            return
        if status is not _Status.OPEN:
            raise AggregatorStateError(f"site {site!r} has no open update")
        staged = self._staged[site]
        spec = staged.layout.get(name)
        if spec is None:
            raise UpdateError("array was not announced", site=site, variable=name)
        if data.dtype != spec.dtype:
            raise UpdateError(
                f"piece has dtype {data.dtype}, announced {spec.dtype}", site=site, variable=name
            )
        flat = data.reshape(-1)
        if offset < 0 or offset + flat.size > spec.size:
            raise UpdateError(
                f"piece [{offset}, {offset + flat.size}) is outside the array's {spec.size} elements",
                site=site,
                variable=name,
            )
        key = (site, name)
        if key not in self._store:
            self._store.allocate(key, spec.shape, spec.dtype, zeroed=False)
        target = self._store.get(key).reshape(-1)
        target[offset : offset + flat.size] = flat
        staged.filled[name] += flat.size

    def staging_for(self, site: str) -> dict[str, npt.NDArray[Any]]:
        """The staging arrays of ``site``'s open update, one per announced variable (shaped and
        typed as announced; their values are undefined), for a receiver to write the whole update
        into. Call :meth:`mark_filled` once every element is written; until then they are lent
        (see "Receiving in place" in the module docstring). Pieces already accepted are kept.

        Raises :class:`~flrt.errors.AggregatorStateError` if the site has no open update (or its
        staging was handed out already); :class:`OSError` if a spill file cannot be created.
        """
        self._require_collecting("staging_for")
        if self._status.get(site) is not _Status.OPEN:
            raise AggregatorStateError(f"site {site!r} has no open update")
        staged = self._staged[site]
        if staged.lent:
            raise AggregatorStateError(f"the staging of {site!r} was handed out already")
        staged.lent = True
        arrays: dict[str, npt.NDArray[Any]] = {}
        for name, spec in staged.layout.items():
            key = (site, name)
            if key not in self._store:
                self._store.allocate(key, spec.shape, spec.dtype, zeroed=False)
            arrays[name] = self._store.lend(key)
        return arrays

    def mark_filled(self, site: str) -> None:
        """Every element of the arrays :meth:`staging_for` handed out for ``site`` is written, and
        nothing writes them any more: the update may be committed. Ignored for a discarded site.

        Raises :class:`~flrt.errors.AggregatorStateError` if the site's staging was not handed out
        or the site is not open.
        """
        self._require_collecting("mark_filled")
        status = self._status.get(site)
        if status is _Status.DISCARDED:
            return
        staged = self._staged.get(site)
        if status is not _Status.OPEN or staged is None or not staged.lent:
            raise AggregatorStateError(f"site {site!r} has no staging handed out")
        staged.lent = False
        for name, spec in staged.layout.items():
            staged.filled[name] = spec.size
            self._store.returned((site, name))

    def commit(self, site: str) -> None:
        """Fold a completely received, verified and accepted update into the aggregate.

        Raises :class:`~flrt.errors.UpdateError` if an announced array is incomplete (or got more
        elements than it has) or holds a non-finite value (the update is then discarded), and
        :class:`~flrt.errors.AggregatorStateError` if the site has no open update.
        """
        pending = self.prepare_commit(site)
        try:
            pending.fold()
        finally:
            self.settle(pending)

    def prepare_commit(self, site: str) -> PendingUpdate:
        """The checks of :meth:`commit`: returns the update, ready to fold (then :meth:`settle` it).

        Raises like :meth:`commit` (an incomplete update is discarded).
        """
        self._require_collecting("commit")
        if self._status.get(site) is not _Status.OPEN:
            raise AggregatorStateError(f"site {site!r} has no open update to commit")
        staged = self._staged[site]
        for name, spec in staged.layout.items():
            if staged.filled[name] != spec.size:
                self.discard(site)  # it can never be committed; free its staging now
                raise UpdateError(
                    f"received {staged.filled[name]} of {spec.size} elements",
                    site=site,
                    variable=name,
                )
        arrays = {name: self._store.get((site, name)) for name in staged.layout}
        self._status[site] = _Status.FOLDING
        weight = self._weight(staged.num_samples)
        return PendingUpdate(self, site, weight, staged.kind, arrays, owned=True)

    def add(self, site: str, result: TrainResult) -> None:
        """Fold a whole, verified and accepted result (``open`` + ``accept`` + ``commit`` without a
        staging copy). Raises like :meth:`open` and :meth:`commit`."""
        pending = self.prepare_add(site, result)
        try:
            pending.fold()
        finally:
            self.settle(pending)

    def prepare_add(self, site: str, result: TrainResult) -> PendingUpdate:
        """The checks of :meth:`add`: returns the result, ready to fold (then :meth:`settle` it)."""
        self._require_collecting("add")
        status = self._status.get(site)
        if status in (_Status.OPEN, _Status.FOLDING, _Status.COMMITTED):
            raise AggregatorStateError(f"site {site!r} already has an update in this round")
        self._check_layout(site, layout_of(result.weights), result.num_samples)
        self._status[site] = _Status.FOLDING
        weight = self._weight(result.num_samples)
        return PendingUpdate(self, site, weight, result.kind, dict(result.weights), owned=False)

    def settle(self, pending: PendingUpdate) -> None:
        """Record a folded update as committed, or discard one whose fold failed or never ran.

        Raises :class:`~flrt.errors.AggregatorStateError` if it is not this aggregator's pending
        update.
        """
        site = pending.site
        if pending._aggregator is not self or self._status.get(site) is not _Status.FOLDING:
            raise AggregatorStateError(f"site {site!r} has no update being folded")
        staged = self._staged.pop(site, None)
        if staged is not None and not pending.kept:  # kept: the aggregator holds it until finish
            for name in staged.layout:
                self._store.delete((site, name))
        self._status[site] = _Status.COMMITTED if pending.folded else _Status.DISCARDED
        self._released()

    def discard(self, site: str) -> None:
        """Drop a site's update: staged pieces are freed and later pieces ignored. Discarding a site
        that sent nothing is allowed (it is then ignored for the rest of the round).

        Raises :class:`~flrt.errors.AggregatorStateError` if the update was already committed.
        """
        self._require_collecting("discard")
        status = self._status.get(site)
        if status is _Status.COMMITTED or status is _Status.FOLDING:
            raise AggregatorStateError(f"site {site!r} is committed and cannot be discarded")
        if status is _Status.OPEN:
            for name in self._staged.pop(site).layout:
                self._store.delete((site, name))
        self._status[site] = _Status.DISCARDED
        self._released()

    def finish_delta(self) -> dict[str, FloatArray]:
        """End the round and return the aggregated difference to the global model for every
        variable some committed update carries, in float64 or in the dtype of the running sums
        (:func:`accumulation_dtype`; see "Precision" in the module docstring). Updates still open
        are discarded.

        Raises :class:`~flrt.errors.AggregationError` if no update was committed or their total
        weight is zero, and :class:`~flrt.errors.AggregatorStateError` outside a round or while an
        update is being folded.
        """
        return self._end(self._finish)

    def finish(self) -> Weights:
        """End the round and return the new global model, in the model's dtypes.

        Raises like :meth:`finish_delta`.
        """
        return self._end(self._finish_model)

    def _end(self, result: Callable[[], _R]) -> _R:
        self._require_collecting("finish")
        if any(status is _Status.FOLDING for status in self._status.values()):
            raise AggregatorStateError("finish() called while an update is being folded")
        for site, status in list(self._status.items()):
            if status is _Status.OPEN:
                self.discard(site)
        if not self.committed:
            self._phase = _Phase.FINISHED
            self._store.clear()
            self._released()
            raise AggregationError("no update was committed in this round")
        try:
            return result()
        finally:
            self._phase = _Phase.FINISHED
            self._store.clear()
            self._released()

    def close(self) -> None:
        """Free everything, including spill files."""
        self._store.close()
        self._phase = _Phase.IDLE
        self._released()

    # ------------------------------------------------------------------------------ subclasses

    @abc.abstractmethod
    def _begin(self) -> None:
        """Reset per-round state; :attr:`global_weights` is set."""

    @abc.abstractmethod
    def _take(
        self,
        site: str,
        weight: float,
        kind: UpdateKind,
        arrays: dict[str, npt.NDArray[Any]],
        *,
        owned: bool,
    ) -> bool:
        """Fold (or keep) one checked update. ``owned`` arrays live in :attr:`store` under
        ``(site, name)``; return ``True`` to keep them there, ``False`` to have them freed."""

    @abc.abstractmethod
    def _finish(self) -> dict[str, FloatArray]:
        """The aggregated difference for every variable some committed update carries."""

    def _finish_model(self) -> Weights:
        """The new global model (by default the global model plus :meth:`_finish`)."""
        return apply_delta(self._global, self._finish())

    # ------------------------------------------------------------------------------ helpers

    def _weight(self, num_samples: int) -> float:
        return float(num_samples) if self.weighting is Weighting.SAMPLES else 1.0

    def _delta_piece(
        self, name: str, array: npt.NDArray[Any], kind: UpdateKind, lo: int, hi: int
    ) -> npt.NDArray[np.float64]:
        """Elements ``[lo, hi)`` of an update's difference to the global model, as a new float64
        array."""
        piece = array.reshape(-1)[lo:hi].astype(np.float64)
        if kind is UpdateKind.FULL:
            piece -= self._global[name].reshape(-1)[lo:hi]
        return piece

    def _require_collecting(self, what: str) -> None:
        if self._phase is not _Phase.COLLECTING:
            raise AggregatorStateError(
                f"{what}() called with no round in progress ({self._phase.value})"
            )

    def _check_layout(
        self, site: str, layout: Mapping[str, ArraySpec], num_samples: int
    ) -> dict[str, ArraySpec]:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 0:
            raise UpdateError(
                f"num_samples must be an integer >= 0, got {num_samples!r}", site=site
            )
        checked: dict[str, ArraySpec] = {}
        for name, spec in layout.items():
            reference = self._global.get(name)
            if reference is None:
                raise UpdateError("the global model has no such variable", site=site, variable=name)
            shape = tuple(int(n) for n in spec.shape)
            if shape != reference.shape:
                raise UpdateError(
                    f"shape {shape} differs from the global model's {reference.shape}",
                    site=site,
                    variable=name,
                )
            dtype = np.dtype(spec.dtype)
            if not _numeric(dtype):
                raise UpdateError(f"dtype {dtype} is not numeric", site=site, variable=name)
            checked[name] = ArraySpec(shape, dtype)
        return checked

    @staticmethod
    def _check_finite(site: str, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        for name, array in arrays.items():
            if not all_finite(array):
                raise UpdateError("holds a NaN or an infinity", site=site, variable=name)
