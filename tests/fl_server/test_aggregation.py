"""Aggregators: FedAvg against a naive weighted mean (within the error bound of float32 sums for a
float32 model, tightly for a float64 one), order independence, discards that leave no trace, robust
rules against naive numpy, bounded memory that goes back to the system, the sum-only path."""

from __future__ import annotations

import itertools
import mmap
import os
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.aggregation import (
    ENCRYPTED,
    PLAINTEXT,
    CoordinateMedian,
    Krum,
    SumOnlyAggregator,
    TrimmedMean,
    UpdateStore,
    WeightedMean,
    Weighting,
    accumulation_dtype,
    check_supported,
    layout_of,
    make_aggregator,
    mapped_zeros,
    prefault,
)
from flrt.aggregation.base import Aggregator, ArraySpec, FloatArray
from flrt.aggregation.store import MAPPED_BYTES
from flrt.errors import AggregationError, AggregatorStateError, UpdateError
from flrt.tasks import TrainResult, UpdateKind, Weights

SHAPES = {"w": (3, 4), "b": (4,), "s": ()}


def _global(seed: int = 0) -> Weights:
    rng = np.random.default_rng(seed)
    return {name: rng.normal(size=shape).astype(np.float32) for name, shape in SHAPES.items()}


values = st.floats(-100, 100, allow_nan=False, width=32)


@st.composite
def updates(
    draw: st.DrawFn, min_sites: int = 1, max_sites: int = 6
) -> list[tuple[str, Weights, int]]:
    n = draw(st.integers(min_sites, max_sites))
    out = []
    for i in range(n):
        weights = {
            name: np.array(
                draw(st.lists(values, min_size=int(np.prod(shape)), max_size=int(np.prod(shape)))),
                dtype=np.float32,
            ).reshape(shape)
            for name, shape in SHAPES.items()
        }
        out.append((f"site-{i}", weights, draw(st.integers(1, 1000))))
    return out


def _naive_mean(items: list[tuple[str, Weights, int]]) -> dict[str, npt.NDArray[np.float64]]:
    total = sum(n for _, _, n in items)
    out: dict[str, npt.NDArray[np.float64]] = {}
    for name in SHAPES:
        acc = np.zeros(SHAPES[name], dtype=np.float64)
        for _, w, n in items:
            acc = acc + w[name].astype(np.float64) * n
        out[name] = acc / total
    return out


#: The unit roundoff of float32.
U32 = 2.0**-24


def _float32_error(items: list[tuple[str, Weights, int]], g: Weights) -> dict[str, FloatArray]:
    """Per element, what float32 sums may be off by in the mean difference (see "Precision" in
    flrt.aggregation.base): ``(k + 2) * 2**-24 * sum(n_i * |w_i - g|) / sum(n_i)``, with a margin
    of 1 %."""
    total = sum(n for _, _, n in items)
    out: dict[str, FloatArray] = {}
    for name in SHAPES:
        spread = sum(n * np.abs(w[name].astype(np.float64) - g[name]) for _, w, n in items)
        out[name] = 1.01 * (len(items) + 2) * U32 * np.asarray(spread) / total
    return out


def _fedavg(items: list[tuple[str, Weights, int]], g: Weights) -> WeightedMean:
    agg = WeightedMean()
    agg.begin(g)
    for site, weights, n in items:
        agg.add(site, TrainResult(weights=weights, num_samples=n))
    return agg


def _stream(agg: Aggregator, site: str, result: TrainResult, rng: np.random.Generator) -> None:
    """Feed a result piece by piece, arrays and pieces in a random order, as the bus would."""
    agg.open(
        site, num_samples=result.num_samples, kind=result.kind, layout=layout_of(result.weights)
    )
    pieces = []
    for name, array in result.weights.items():
        flat = array.reshape(-1)
        cuts = sorted(set(rng.integers(0, flat.size + 1, size=3).tolist()) | {0, flat.size})
        pieces += [(name, flat[a:b], a) for a, b in itertools.pairwise(cuts)]
    for i in rng.permutation(len(pieces)):
        name, data, offset = pieces[i]
        agg.accept(site, name, data, offset=offset)
    agg.commit(site)


# ---------------------------------------------------------------------------------- FedAvg


@settings(max_examples=60, deadline=None)
@given(updates())
def test_fedavg_equals_the_naive_weighted_mean(items: list[tuple[str, Weights, int]]) -> None:
    g = _global()
    agg = _fedavg(items, g)
    result = agg.finish()
    naive = _naive_mean(items)
    error = _float32_error(items, g)
    for name in SHAPES:
        assert result[name].dtype == np.float32
        assert result[name].shape == SHAPES[name]
        # The sums' error, then the new model's own rounding to float32.
        allowed = error[name] + 1.01 * U32 * np.abs(naive[name])
        assert (np.abs(result[name] - naive[name]) <= allowed).all()


@settings(max_examples=60, deadline=None)
@given(updates())
def test_fedavg_of_a_float64_model_is_exact_to_float64_precision(
    items: list[tuple[str, Weights, int]],
) -> None:
    g = {name: a.astype(np.float64) for name, a in _global().items()}
    # Values that float32 cannot hold: float32 sums would be off by far more than 1e-12.
    as64 = [
        (site, {k: np.asarray(v.astype(np.float64) + 1e-9) for k, v in w.items()}, n)
        for site, w, n in items
    ]
    result = _fedavg(as64, g).finish()
    naive = _naive_mean(as64)
    for name in SHAPES:
        assert result[name].dtype == np.float64
        np.testing.assert_allclose(result[name], naive[name], rtol=1e-12, atol=1e-12)


def test_sums_are_kept_in_the_models_floating_dtype() -> None:
    assert accumulation_dtype(np.dtype(np.float32)) == np.float32
    assert accumulation_dtype(np.dtype(np.float64)) == np.float64
    assert accumulation_dtype(np.dtype(np.float16)) == np.float32
    assert accumulation_dtype(np.dtype(np.int64)) == np.float64
    assert accumulation_dtype(np.dtype(np.bool_)) == np.float64
    g: Weights = {
        "f32": np.zeros(3, np.float32),
        "f64": np.zeros(3, np.float64),
        "f16": np.zeros(3, np.float16),
        "i8": np.zeros(3, np.int8),
    }
    agg = WeightedMean()
    agg.begin(g)
    agg.add("a", TrainResult(weights={k: np.ones(3, v.dtype) for k, v in g.items()}, num_samples=1))
    agg.add(
        "b", TrainResult(weights={k: np.zeros(3, v.dtype) for k, v in g.items()}, num_samples=2)
    )
    delta = agg.finish_delta()
    assert {k: v.dtype for k, v in delta.items()} == {
        "f32": np.float32,
        "f64": np.float64,
        "f16": np.float32,
        "i8": np.float64,
    }
    assert np.array_equal(delta["f64"], np.full(3, 1 / 3))
    assert np.array_equal(delta["f32"], np.full(3, np.float32(1) / np.float32(3)))
    # A float64 model keeps what float32 sums would lose: 1 + 2**-30 is 1 in float32.
    tiny = 2.0**-30
    agg.begin({"x": np.zeros(1, np.float64)})
    agg.add("a", TrainResult(weights={"x": np.array([1.0 + tiny])}, num_samples=1))
    agg.add("b", TrainResult(weights={"x": np.array([1.0 + tiny])}, num_samples=1))
    assert agg.finish()["x"][0] == 1.0 + tiny


@settings(max_examples=40, deadline=None)
@given(updates(min_sites=2), st.randoms(use_true_random=False))
def test_fedavg_does_not_depend_on_the_order_of_arrival(
    items: list[tuple[str, Weights, int]], random: Any
) -> None:
    g = _global()
    shuffled = list(items)
    random.shuffle(shuffled)
    a = _fedavg(items, g).finish_delta()
    b = _fedavg(shuffled, g).finish_delta()
    error = _float32_error(items, g)  # float32 sums: each order is within it of the exact mean
    for name in SHAPES:
        assert (np.abs(a[name] - b[name]) <= 2 * error[name]).all()


@settings(max_examples=40, deadline=None)
@given(updates(), updates(max_sites=1), st.integers(0, 2**32 - 1), st.booleans())
def test_a_discarded_update_leaves_no_trace(
    items: list[tuple[str, Weights, int]],
    extra: list[tuple[str, Weights, int]],
    seed: int,
    left_open: bool,
) -> None:
    g = _global()
    rng = np.random.default_rng(seed)
    baseline = _fedavg(items, g).finish_delta()

    agg = WeightedMean()
    agg.begin(g)
    _, late_weights, late_n = extra[0]
    agg.open("late", num_samples=late_n, layout=layout_of(late_weights))
    agg.accept("late", "w", late_weights["w"])  # part of it arrives before the others
    for site, weights, n in items:
        agg.add(site, TrainResult(weights=weights, num_samples=n))
    if not left_open:
        agg.discard("late")
        agg.accept("late", "b", late_weights["b"])  # still streaming: ignored
    assert agg.committed == tuple(sorted(s for s, _, _ in items))
    delta = agg.finish_delta()  # an update still open is dropped by finish
    assert delta.keys() == baseline.keys()
    for name in SHAPES:
        assert np.array_equal(delta[name], baseline[name])
    _ = rng


@settings(max_examples=30, deadline=None)
@given(updates(), st.integers(0, 2**32 - 1))
def test_streaming_pieces_equal_whole_results_bit_for_bit(
    items: list[tuple[str, Weights, int]], seed: int
) -> None:
    g = _global()
    rng = np.random.default_rng(seed)
    whole = _fedavg(items, g).finish()
    streamed = WeightedMean(staging_budget_bytes=64)  # most staging goes to disk
    streamed.begin(g)
    for site, weights, n in items:
        _stream(streamed, site, TrainResult(weights=weights, num_samples=n), rng)
    result = streamed.finish()
    for name in SHAPES:
        assert np.array_equal(result[name], whole[name])
    streamed.close()


@settings(max_examples=30, deadline=None)
@given(updates())
def test_diff_and_full_updates_aggregate_alike(items: list[tuple[str, Weights, int]]) -> None:
    g = _global()
    full = _fedavg(items, g).finish_delta()
    agg = WeightedMean()
    agg.begin(g)
    for i, (site, weights, n) in enumerate(items):
        if i % 2:
            diff = {k: np.asarray(v.astype(np.float64) - g[k]) for k, v in weights.items()}
            agg.add(site, TrainResult(weights=diff, num_samples=n, kind=UpdateKind.DIFF))
        else:
            agg.add(site, TrainResult(weights=weights, num_samples=n))
    mixed = agg.finish_delta()
    for name in SHAPES:
        np.testing.assert_allclose(mixed[name], full[name], rtol=1e-12, atol=1e-9)


def test_uniform_weighting_ignores_sample_counts() -> None:
    g = {"x": np.zeros(2, dtype=np.float64)}
    agg = WeightedMean(weighting=Weighting.UNIFORM)
    agg.begin(g)
    agg.add("a", TrainResult(weights={"x": np.array([1.0, 1.0])}, num_samples=1))
    agg.add("b", TrainResult(weights={"x": np.array([3.0, 5.0])}, num_samples=1000))
    assert np.array_equal(agg.finish()["x"], [2.0, 3.0])


def test_missing_variables_are_averaged_over_the_updates_that_carry_them() -> None:
    g = {"shared": np.zeros(2, dtype=np.float32), "head": np.ones(2, dtype=np.float32)}
    agg = WeightedMean()
    agg.begin(g)
    agg.add("a", TrainResult(weights={"shared": np.full(2, 2.0, np.float32)}, num_samples=1))
    agg.add(
        "b",
        TrainResult(
            weights={"shared": np.full(2, 5.0, np.float32), "head": np.full(2, 3.0, np.float32)},
            num_samples=2,
        ),
    )
    out = agg.finish()
    assert np.array_equal(out["shared"], [4.0, 4.0])
    assert np.array_equal(out["head"], [3.0, 3.0])  # only b carried it

    agg.begin(g)
    agg.add("a", TrainResult(weights={"shared": np.full(2, 2.0, np.float32)}, num_samples=1))
    out = agg.finish()
    assert out["head"] is g["head"]  # nobody carried it: the global value, untouched


def test_integer_variables_are_rounded_back_to_their_dtype() -> None:
    g = {"count": np.array([10], dtype=np.int64), "flag": np.array([False])}
    agg = WeightedMean()
    agg.begin(g)
    agg.add(
        "a",
        TrainResult(
            weights={"count": np.array([13], np.int64), "flag": np.array([True])}, num_samples=3
        ),
    )
    agg.add(
        "b",
        TrainResult(
            weights={"count": np.array([20], np.int64), "flag": np.array([False])}, num_samples=1
        ),
    )
    out = agg.finish()
    assert out["count"].dtype == np.int64
    assert out["count"][0] == 15  # 14.75 rounds to 15
    assert out["flag"].dtype == np.bool_
    assert bool(out["flag"][0])


def test_zero_sample_sites_contribute_nothing_and_all_zero_is_refused() -> None:
    g = {"x": np.zeros(1)}
    agg = WeightedMean()
    agg.begin(g)
    agg.add("a", TrainResult(weights={"x": np.array([4.0])}, num_samples=2))
    agg.add("empty", TrainResult(weights={"x": np.array([100.0])}, num_samples=0))
    assert agg.finish()["x"][0] == 4.0
    agg.begin(g)
    agg.add("empty", TrainResult(weights={"x": np.array([100.0])}, num_samples=0))
    with pytest.raises(AggregationError, match="total weight of zero"):
        agg.finish()


# ---------------------------------------------------------------------------------- misuse and bad updates


def _begun() -> WeightedMean:
    agg = WeightedMean()
    agg.begin({"w": np.zeros((2, 2), np.float32)})
    return agg


def test_bad_updates_are_refused_naming_site_and_variable() -> None:
    agg = _begun()
    with pytest.raises(UpdateError) as info:
        agg.add("a", TrainResult(weights={"nope": np.zeros(1)}, num_samples=1))
    assert (info.value.site, info.value.variable) == ("a", "nope")
    with pytest.raises(UpdateError, match="shape"):
        agg.add("a", TrainResult(weights={"w": np.zeros(3, np.float32)}, num_samples=1))
    with pytest.raises(UpdateError, match="NaN"):
        agg.add("a", TrainResult(weights={"w": np.full((2, 2), np.nan, np.float32)}, num_samples=1))
    with pytest.raises(UpdateError, match="not numeric"):
        agg.add("a", TrainResult(weights={"w": np.full((2, 2), "x")}, num_samples=1))

    agg.open("b", num_samples=1, layout=layout_of({"w": np.zeros((2, 2), np.float32)}))
    with pytest.raises(UpdateError, match="dtype"):
        agg.accept("b", "w", np.zeros(2, np.float64))
    with pytest.raises(UpdateError, match="outside"):
        agg.accept("b", "w", np.zeros(2, np.float32), offset=3)
    with pytest.raises(UpdateError, match="not announced"):
        agg.accept("b", "v", np.zeros(2, np.float32))
    agg.accept("b", "w", np.zeros(3, np.float32))
    with pytest.raises(UpdateError, match="3 of 4"):
        agg.commit("b")
    agg.accept(
        "b", "w", np.zeros(1, np.float32), offset=3
    )  # discarded by the failed commit: ignored
    assert agg.committed == ()
    assert len(agg.store) == 0


def test_calls_out_of_order_are_refused() -> None:
    agg = WeightedMean()
    with pytest.raises(AggregatorStateError):
        agg.add("a", TrainResult(weights={}, num_samples=1))
    agg = _begun()
    with pytest.raises(AggregatorStateError):
        agg.accept("a", "w", np.zeros(4, np.float32))
    with pytest.raises(AggregatorStateError):
        agg.commit("a")
    agg.add("a", TrainResult(weights={"w": np.ones((2, 2), np.float32)}, num_samples=1))
    with pytest.raises(AggregatorStateError):
        agg.add("a", TrainResult(weights={"w": np.ones((2, 2), np.float32)}, num_samples=1))
    with pytest.raises(AggregatorStateError):
        agg.open("a", num_samples=1, layout={})
    with pytest.raises(AggregatorStateError, match="cannot be discarded"):
        agg.discard("a")
    agg.discard("never-sent")  # allowed: a site that failed before sending anything
    agg.finish()
    with pytest.raises(AggregatorStateError):
        agg.finish()
    agg.begin({"w": np.zeros((2, 2), np.float32)})
    with pytest.raises(AggregationError, match="no update"):
        agg.finish()


def test_a_discarded_site_may_answer_again_after_being_reasked() -> None:
    agg = _begun()
    agg.discard("a")
    agg.add("a", TrainResult(weights={"w": np.ones((2, 2), np.float32)}, num_samples=1))
    assert agg.committed == ("a",)


def test_staging_is_reported_and_every_release_is_announced() -> None:
    """What the server's receive budget relies on: staging(site) is true from open until the
    update is folded in or dropped, and on_release fires each time staging is freed."""
    releases: list[str] = []
    agg = _begun()
    agg.on_release = lambda: releases.append("released")
    layout = {"w": ArraySpec((2, 2), np.dtype(np.float32))}
    for site in ("a", "b", "c"):
        agg.open(site, num_samples=1, layout=layout)
        agg.accept(site, "w", np.ones(4, np.float32))
        assert agg.staging(site)
    pending = agg.prepare_commit("a")
    assert agg.staging("a")  # being folded: its staging is still in use
    pending.fold()
    agg.settle(pending)
    assert not agg.staging("a")
    assert releases == ["released"]
    agg.discard("b")
    assert not agg.staging("b")
    assert len(releases) == 2
    agg.finish()  # "c" is still open: dropped with the round
    assert not agg.staging("c")
    assert len(releases) >= 3
    agg.begin({"w": np.zeros((2, 2), np.float32)})
    agg.open("d", num_samples=1, layout=layout)
    count = len(releases)
    agg.close()  # an aborted job: nothing stays staged
    assert not agg.staging("d")
    assert len(releases) > count


# ---------------------------------------------------------------------------------- robust


@settings(max_examples=40, deadline=None)
@given(updates(), st.booleans())
def test_median_equals_numpy_median(items: list[tuple[str, Weights, int]], spill: bool) -> None:
    g = _global()
    agg = CoordinateMedian(memory_budget_bytes=0 if spill else 1 << 20, working_bytes=64)
    agg.begin(g)
    for site, weights, n in items:
        agg.add(site, TrainResult(weights=weights, num_samples=n))
    if spill:
        assert agg.store.disk_bytes > 0
        assert agg.store.memory_bytes == 0
    delta = agg.finish_delta()
    for name in SHAPES:
        stack = np.stack([w[name].astype(np.float64) - g[name] for _, w, _ in items])
        np.testing.assert_allclose(delta[name], np.median(stack, axis=0), rtol=0, atol=1e-12)
    assert len(agg.store) == 0
    assert agg.store.disk_bytes == 0
    agg.close()


@settings(max_examples=40, deadline=None)
@given(updates(), st.sampled_from([0.0, 0.1, 0.25, 0.49]), st.randoms(use_true_random=False))
def test_trimmed_mean_equals_the_naive_trimmed_mean_in_any_order(
    items: list[tuple[str, Weights, int]], trim: float, random: Any
) -> None:
    g = _global()

    def run(order: list[tuple[str, Weights, int]]) -> dict[str, FloatArray]:
        agg = TrimmedMean(trim_ratio=trim, memory_budget_bytes=100, working_bytes=40)
        agg.begin(g)
        for site, weights, n in order:
            agg.add(site, TrainResult(weights=weights, num_samples=n))
        return agg.finish_delta()

    shuffled = list(items)
    random.shuffle(shuffled)
    a, b = run(items), run(shuffled)
    n, k = len(items), int(np.floor(trim * len(items)))
    for name in SHAPES:
        stack = np.sort(
            np.stack([w[name].astype(np.float64) - g[name] for _, w, _ in items]), axis=0
        )
        np.testing.assert_allclose(a[name], stack[k : n - k].mean(axis=0), rtol=1e-12, atol=1e-12)
        assert np.array_equal(a[name], b[name])  # robust rules combine in site order: exact


def test_median_resists_an_outlier_that_fedavg_does_not() -> None:
    g = {"x": np.zeros(3)}
    good = [np.array([1.0, 1.1, 0.9]) + i * 0.01 for i in range(4)]
    for agg, expect_close in ((CoordinateMedian(), True), (WeightedMean(), False)):
        agg.begin(g)
        for i, x in enumerate(good):
            agg.add(f"s{i}", TrainResult(weights={"x": x}, num_samples=1))
        agg.add("evil", TrainResult(weights={"x": np.full(3, 1e6)}, num_samples=1))
        out = agg.finish()["x"]
        assert (np.abs(out - 1.0) < 0.2).all() == expect_close


def test_krum_selects_an_honest_update_and_needs_enough_updates() -> None:
    g = {"x": np.zeros(4), "y": np.zeros(2)}
    rng = np.random.default_rng(1)
    agg = Krum(byzantine=1, working_bytes=128)
    agg.begin(g)
    for i in range(5):
        agg.add(
            f"s{i}",
            TrainResult(
                weights={"x": 1 + 0.01 * rng.normal(size=4), "y": np.ones(2)}, num_samples=1
            ),
        )
    agg.add("evil", TrainResult(weights={"x": np.full(4, -50.0), "y": np.ones(2)}, num_samples=1))
    out = agg.finish()
    assert agg.selected
    assert "evil" not in agg.selected
    assert np.allclose(out["x"], 1.0, atol=0.05)

    agg = Krum(byzantine=1)
    agg.begin(g)
    for i in range(4):
        agg.add(f"s{i}", TrainResult(weights={"x": np.ones(4)}, num_samples=1))
    with pytest.raises(AggregationError, match="at least 5"):
        agg.finish()


def test_multi_krum_averages_the_best() -> None:
    g = {"x": np.zeros(1)}
    agg = Krum(byzantine=0, select=2)
    agg.begin(g)
    for site, v in (("a", 1.0), ("b", 1.3), ("c", 1.1), ("d", 9.0)):
        agg.add(site, TrainResult(weights={"x": np.array([v])}, num_samples=1))
    out = agg.finish_delta()
    assert agg.selected == ("a", "c")
    assert out["x"][0] == pytest.approx(1.05)


def test_robust_parameters_are_checked() -> None:
    with pytest.raises(ValueError, match="trim_ratio"):
        TrimmedMean(trim_ratio=0.5)
    with pytest.raises(ValueError, match="byzantine"):
        Krum(byzantine=-1)
    with pytest.raises(ValueError, match="select"):
        Krum(select=0)
    with pytest.raises(ValueError, match="working_bytes"):
        CoordinateMedian(working_bytes=0)
    with pytest.raises(ValueError, match="unknown aggregator"):
        make_aggregator("mode", memory_budget_bytes=1)
    for name in ("weighted_mean", "uniform_mean", "median", "trimmed_mean", "krum"):
        assert isinstance(make_aggregator(name, memory_budget_bytes=1), Aggregator)


@settings(max_examples=20, deadline=None)
@given(updates(), updates(), st.integers(0, 2**32 - 1))
def test_an_aggregator_reused_for_another_round_equals_a_fresh_one_bit_for_bit(
    first: list[tuple[str, Weights, int]], second: list[tuple[str, Weights, int]], seed: int
) -> None:
    rng = np.random.default_rng(seed)
    reused = WeightedMean(staging_budget_bytes=1 << 20)
    for items, g in ((first, _global(0)), (second, _global(1))):
        reused.begin(g)
        for site, weights, n in items:
            _stream(reused, site, TrainResult(weights=weights, num_samples=n), rng)
        model = reused.finish()
        fresh = _fedavg(items, g).finish()
        for name in SHAPES:
            assert model[name].dtype == g[name].dtype
            assert np.array_equal(model[name], fresh[name])
    reused.close()
    assert reused.store.free_bytes == 0


def test_a_fold_in_progress_lets_other_sites_stream_and_refuses_what_would_race() -> None:
    g = {"x": np.zeros(4, dtype=np.float32)}
    agg = WeightedMean()
    assert agg.fold_in_thread
    agg.begin(g)
    for site in ("a", "b"):
        agg.open(site, num_samples=1, layout=layout_of(g))
    agg.accept("a", "x", np.full(4, 2.0, dtype=np.float32))
    pending = agg.prepare_commit("a")
    # While "a" is folded (in a worker thread, in a real round), "b" keeps streaming...
    agg.accept("b", "x", np.full(4, 4.0, dtype=np.float32))
    # ...but nothing may touch "a" or end the round.
    for call in (
        lambda: agg.discard("a"),
        lambda: agg.commit("a"),
        lambda: agg.accept("a", "x", np.zeros(4, dtype=np.float32)),
        agg.finish,
    ):
        with pytest.raises(AggregatorStateError):
            call()
    pending.fold()
    agg.settle(pending)
    agg.commit("b")
    assert agg.committed == ("a", "b")
    assert np.array_equal(agg.finish()["x"], [3.0, 3.0, 3.0, 3.0])


def test_a_fold_that_fails_or_never_runs_leaves_no_trace() -> None:
    g = {"x": np.zeros(2, dtype=np.float32)}
    agg = WeightedMean()
    agg.begin(g)
    agg.add("ok", TrainResult(weights={"x": np.ones(2, dtype=np.float32)}, num_samples=1))
    agg.open("nan", num_samples=1, layout=layout_of(g))
    agg.accept("nan", "x", np.array([np.nan, 0.0], dtype=np.float32))
    pending = agg.prepare_commit("nan")
    with pytest.raises(UpdateError, match="NaN"):
        pending.fold()
    agg.settle(pending)
    never = agg.prepare_add(
        "never", TrainResult(weights={"x": np.full(2, 9, np.float32)}, num_samples=1)
    )
    agg.settle(never)  # cancelled before it was folded
    with pytest.raises(AggregatorStateError):
        agg.settle(never)
    assert agg.committed == ("ok",)
    assert np.array_equal(agg.finish()["x"], [1.0, 1.0])


# ---------------------------------------------------------------------------------- store


def test_update_store_spills_beyond_its_budget_and_cleans_up(tmp_path: Path) -> None:
    store = UpdateStore(budget_bytes=100, directory=tmp_path)
    a = store.put("a", np.arange(10, dtype=np.float64))  # 80 bytes: memory
    b = store.put("b", np.arange(10, dtype=np.float64))  # would pass 100: disk
    assert not isinstance(a, np.memmap)
    assert isinstance(b, np.memmap)
    assert (store.memory_bytes, store.disk_bytes) == (80, 80)
    files = list(tmp_path.rglob("*.npy"))
    assert len(files) == 1
    assert np.array_equal(store.get("b"), np.arange(10))
    store.delete("b")
    assert not files[0].exists()
    assert store.disk_bytes == 0
    store.put("c", np.zeros(10))
    store.close()
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(ValueError, match="budget"):
        UpdateStore(budget_bytes=-1)


def test_update_store_reuses_deleted_arrays_within_its_budget() -> None:
    store = UpdateStore(budget_bytes=190, reuse=True)
    a = store.allocate("a", (10,), np.dtype(np.float64))
    store.delete("a")
    assert (store.memory_bytes, store.free_bytes) == (0, 80)
    assert store.allocate("b", (10,), np.dtype(np.float64)) is a  # the same memory, zeroed
    assert not a.any()
    store.delete("b")
    # A new shape that would not fit beside the kept array drops it first.
    c = store.allocate("c", (15,), np.dtype(np.float64))
    assert not isinstance(c, np.memmap)
    assert (store.memory_bytes, store.free_bytes) == (120, 0)
    # reserve keeps unwritten arrays for a layout, within the budget, and take_free hands one out.
    made = store.reserve([((5,), np.dtype(np.float32)), ((100,), np.dtype(np.float64))])
    assert [m.shape for m in made] == [(5,)]  # 800 bytes would not fit
    assert store.take_free((5,), np.dtype(np.float32)) is made[0]
    assert store.take_free((5,), np.dtype(np.float32)) is None
    store.close()
    assert store.free_bytes == 0
    plain = UpdateStore(budget_bytes=200)  # without reuse, deleted arrays are let go
    plain.allocate("a", (10,), np.dtype(np.float64))
    plain.delete("a")
    assert plain.free_bytes == 0


def _root_buffer(array: npt.NDArray[Any]) -> object:
    """What holds an array's memory: None (numpy's own), or the object it exports it from."""
    while isinstance(array.base, np.ndarray):
        array = array.base
    base = array.base
    return base.obj if isinstance(base, memoryview) else base


def _resident_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * mmap.PAGESIZE


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="needs Linux's /proc")
def test_a_large_mapped_array_gives_its_memory_back_as_soon_as_it_is_gone() -> None:
    size = 16 * MAPPED_BYTES
    before = _resident_bytes()
    array = mapped_zeros((size // 4,), np.dtype(np.float32))
    assert isinstance(_root_buffer(array), mmap.mmap)
    assert not array.any()
    array.fill(1.0)  # now resident
    assert _resident_bytes() - before > 0.9 * size
    view = array[::2]
    del array
    assert _resident_bytes() - before > 0.9 * size  # a view keeps the mapping
    del view
    assert _resident_bytes() - before < 0.1 * size
    small = mapped_zeros(3, np.dtype(np.float64))
    assert small.base is None
    assert small.shape == (3,)
    assert not small.any()


def test_large_staging_is_mapped_and_still_reused() -> None:
    shape, dtype = (MAPPED_BYTES // 4,), np.dtype(np.float32)
    store = UpdateStore(budget_bytes=2 * MAPPED_BYTES, reuse=True)
    a = store.allocate("a", shape, dtype, zeroed=False)
    assert isinstance(_root_buffer(a), mmap.mmap)
    a.fill(7.0)
    store.delete("a")
    assert store.free_bytes == MAPPED_BYTES
    b = store.allocate("b", shape, dtype)
    assert b is a  # the same memory...
    assert not b.any()  # ...zeroed
    (made,) = store.reserve([(shape, dtype)])
    assert isinstance(_root_buffer(made), mmap.mmap)
    store.close()


def test_prefault_keeps_values_and_accepts_any_array() -> None:
    array = np.arange(3 << 20, dtype=np.float32)
    prefault([array, array[1:7], np.empty(0, dtype=np.float64)])
    assert np.array_equal(array, np.arange(3 << 20, dtype=np.float32))


# ---------------------------------------------------------------------------------- sum-only


class Ciphertext:
    """Stands for an encrypted value: it can be added, and nothing else."""

    def __init__(self, value: float) -> None:
        self._value = value

    def __add__(self, other: Ciphertext) -> Ciphertext:
        return Ciphertext(self._value + other._value)

    def decrypt(self) -> float:
        return self._value

    def __mul__(self, other: object) -> Ciphertext:
        raise AssertionError("the server must never multiply an encrypted value")

    def __lt__(self, other: object) -> bool:
        raise AssertionError("the server must never compare encrypted values")


def test_sum_only_path_adds_pre_weighted_values_and_discards_cleanly() -> None:
    agg: SumOnlyAggregator[Ciphertext] = SumOnlyAggregator()
    agg.begin()
    data = {"a": (2.0, 10.0), "b": (4.0, 1.0)}  # value, weight
    for site, (value, weight) in data.items():
        agg.add(site, {"x": Ciphertext(value * weight)}, weight=weight)  # sites pre-weight
    agg.open("late", weight=100.0)
    agg.accept("late", "x", Ciphertext(1e9))
    agg.discard("late")
    agg.accept("late", "x", Ciphertext(1e9))  # ignored
    total = agg.finish()
    assert total.sites == ("a", "b")
    assert total.total_weight == {"x": 11.0}
    assert total.sums["x"].decrypt() / total.total_weight["x"] == pytest.approx(24.0 / 11.0)
    with pytest.raises(AggregatorStateError):
        agg.add("c", {}, weight=1.0)
    agg.begin()
    with pytest.raises(AggregationError):
        agg.finish()
    agg.begin()
    agg.add("a", {}, weight=1.0)
    with pytest.raises(AggregatorStateError):
        agg.discard("a")
    with pytest.raises(UpdateError):
        agg.open("z", weight=-1.0)
    agg.open("y", weight=1.0)
    agg.accept("y", "x", Ciphertext(1))
    with pytest.raises(UpdateError, match="twice"):
        agg.accept("y", "x", Ciphertext(1))


def test_capabilities_refuse_aggregators_that_need_more_than_sums() -> None:
    check_supported(WeightedMean, PLAINTEXT)
    check_supported(CoordinateMedian(), PLAINTEXT)
    check_supported(SumOnlyAggregator, ENCRYPTED)  # type: ignore[arg-type]
    for cls in (WeightedMean, CoordinateMedian, TrimmedMean, Krum):
        with pytest.raises(AggregationError, match="do not allow"):
            check_supported(cls, ENCRYPTED)
