"""A site's update written straight into the aggregator's staging (``staging_for`` and
``mark_filled``), as the server's receiver does: the same aggregate as ``accept``, nothing left of
a discarded update, lent staging never handed out again, and staging in memory-mapped files."""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from flrt.aggregation import CoordinateMedian, Krum, TrimmedMean, WeightedMean, layout_of
from flrt.aggregation.base import Aggregator
from flrt.errors import AggregatorStateError, UpdateError
from flrt.tasks import TrainResult, UpdateKind, Weights

SHAPES = {"w": (30, 40), "b": (40,), "s": ()}


def model(seed: int) -> Weights:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


SITES = {f"site-{i}": (model(i + 1), 10 * (i + 1)) for i in range(5)}


def by_accept(agg: Aggregator, site: str, weights: Weights, n: int) -> None:
    agg.open(site, num_samples=n, kind=UpdateKind.FULL, layout=layout_of(weights))
    for name, array in weights.items():
        flat = array.reshape(-1)
        for lo in range(0, max(flat.size, 1), 333):
            agg.accept(site, name, flat[lo : lo + 333], offset=lo)
    agg.commit(site)


def in_place(agg: Aggregator, site: str, weights: Weights, n: int) -> dict[str, Any]:
    agg.open(site, num_samples=n, kind=UpdateKind.FULL, layout=layout_of(weights))
    staging = agg.staging_for(site)
    assert set(staging) == set(weights)
    for name, array in weights.items():
        assert staging[name].shape == array.shape
        assert staging[name].dtype == array.dtype
        assert staging[name].flags.c_contiguous
        assert staging[name].flags.writeable
        staging[name][...] = array
    agg.mark_filled(site)
    agg.commit(site)
    return staging


AGGREGATORS: list[Callable[..., Aggregator]] = [
    WeightedMean,
    lambda **kw: CoordinateMedian(memory_budget_bytes=kw.get("staging_budget_bytes", 1 << 20)),
    lambda **kw: TrimmedMean(
        trim_ratio=0.25, memory_budget_bytes=kw.get("staging_budget_bytes", 1 << 20)
    ),
    lambda **kw: Krum(byzantine=1, memory_budget_bytes=kw.get("staging_budget_bytes", 1 << 20)),
]


@pytest.mark.parametrize("make", AGGREGATORS, ids=["fedavg", "median", "trimmed", "krum"])
@pytest.mark.parametrize("budget", [1 << 20, 0], ids=["memory", "spilled"])
def test_staging_filled_in_place_folds_like_accepted_pieces_bit_for_bit(
    make: Callable[..., Aggregator], budget: int
) -> None:
    g = model(0)
    results = []
    for fill in (by_accept, in_place):
        agg = make(staging_budget_bytes=budget)
        agg.begin(g)
        for site, (weights, n) in SITES.items():
            fill(agg, site, weights, n)
        if budget == 0:
            assert agg.store.memory_bytes == 0
        results.append(agg.finish())
        agg.close()
    accepted, placed = results
    for name in SHAPES:
        np.testing.assert_array_equal(placed[name], accepted[name])


def test_staging_spilled_to_disk_is_handed_out_as_memory_mapped_files(tmp_path: Path) -> None:
    agg = WeightedMean(staging_budget_bytes=0, spill_dir=tmp_path)
    agg.begin(model(0))
    weights, n = SITES["site-0"]
    agg.open("site-0", num_samples=n, layout=layout_of(weights))
    staging = agg.staging_for("site-0")
    assert all(isinstance(a, np.memmap) for a in staging.values() if a.nbytes)
    assert agg.store.disk_bytes == sum(a.nbytes for a in weights.values())
    for name, array in weights.items():
        staging[name][...] = array
    agg.mark_filled("site-0")
    agg.commit("site-0")
    assert agg.store.disk_bytes == 0
    np.testing.assert_allclose(agg.finish()["w"], weights["w"], rtol=0, atol=1e-6)
    agg.close()


def test_a_discarded_update_frees_its_staging_and_it_is_never_reused() -> None:
    g = model(0)
    agg = WeightedMean(staging_budget_bytes=1 << 20)
    agg.begin(g)
    released: list[int] = []
    agg.on_release = lambda: released.append(1)
    weights, n = SITES["site-0"]
    agg.open("late", num_samples=n, layout=layout_of(weights))
    lent = agg.staging_for("late")
    assert agg.staging("late")
    agg.discard("late")  # mid-transfer: the transport may still be writing these arrays
    assert not agg.staging("late")
    assert released == [1]
    assert agg.store.memory_bytes == 0
    assert agg.store.free_bytes == 0  # not kept for the next update
    agg.mark_filled("late")  # the receiver finishing afterwards is ignored
    staging = in_place(agg, "site-0", weights, n)
    assert not any(np.shares_memory(staging[k], lent[j]) for k in staging for j in lent)
    lent["w"][...] = np.inf  # a late write lands in memory nobody else uses
    np.testing.assert_allclose(agg.finish()["w"], weights["w"], rtol=0, atol=1e-6)
    agg.close()


def test_filled_staging_is_reused_by_the_next_update() -> None:
    agg = WeightedMean(staging_budget_bytes=1 << 20)
    agg.begin(model(0))
    first = in_place(agg, "site-0", *SITES["site-0"])
    second = in_place(agg, "site-1", *SITES["site-1"])
    assert np.shares_memory(first["w"], second["w"])
    agg.close()


def test_staging_handed_out_but_never_filled_cannot_be_committed() -> None:
    agg = WeightedMean(staging_budget_bytes=1 << 20)
    agg.begin(model(0))
    weights, n = SITES["site-0"]
    agg.open("site-0", num_samples=n, layout=layout_of(weights))
    agg.staging_for("site-0")
    with pytest.raises(UpdateError, match="received 0 of"):
        agg.commit("site-0")
    assert not agg.staging("site-0")
    assert agg.store.free_bytes == 0  # discarded while lent: let go
    agg.close()


def test_staging_calls_out_of_order_are_refused() -> None:
    agg = WeightedMean()
    weights, n = SITES["site-0"]
    with pytest.raises(AggregatorStateError):
        agg.staging_for("site-0")  # no round
    agg.begin(model(0))
    with pytest.raises(AggregatorStateError):
        agg.staging_for("site-0")  # never opened
    agg.open("site-0", num_samples=n, layout=layout_of(weights))
    with pytest.raises(AggregatorStateError):
        agg.mark_filled("site-0")  # nothing handed out
    agg.staging_for("site-0")
    with pytest.raises(AggregatorStateError):
        agg.staging_for("site-0")  # twice
    agg.close()


def test_an_update_may_mix_accepted_pieces_and_staging() -> None:
    g = model(0)
    weights, n = SITES["site-0"]
    agg = WeightedMean()
    agg.begin(g)
    agg.open("site-0", num_samples=n, layout=layout_of(weights))
    agg.accept("site-0", "b", weights["b"])
    staging = agg.staging_for("site-0")
    np.testing.assert_array_equal(staging["b"], weights["b"])  # what was accepted is kept
    for name, array in weights.items():
        staging[name][...] = array
    agg.mark_filled("site-0")
    agg.commit("site-0")
    result = agg.finish()
    for name in SHAPES:
        np.testing.assert_allclose(result[name], weights[name], rtol=0, atol=1e-6)
    agg.close()


def test_add_and_in_place_agree_over_many_rounds() -> None:
    g = model(0)
    agg, ref = WeightedMean(), WeightedMean()
    for _ in range(3):
        agg.begin(g)
        ref.begin(g)
        for site, (weights, n) in itertools.islice(SITES.items(), 3):
            in_place(agg, site, weights, n)
            ref.add(site, TrainResult(weights=weights, num_samples=n))
        new: dict[str, npt.NDArray[Any]] = agg.finish()
        expected = ref.finish()
        for name in SHAPES:
            np.testing.assert_array_equal(new[name], expected[name])
        g = new
    agg.close()
    ref.close()
