"""Federated evaluation of the global model, and cross-site evaluation.

- :func:`evaluate_global`: every candidate site evaluates the global model; the per-site metrics
  and their sample-weighted mean are reported. A failed evaluation round (no quorum) is reported and
  yields no metrics, but does not stop training.
- :func:`cross_site_eval`: every site evaluates every site's model and the global model. Each
  site's model is collected first (one local training pass from the global model, a
  :class:`~flrt.tasks.TrainTask` whose params say ``cross_site_eval = True``), kept in an
  :class:`~flrt.aggregation.UpdateStore` (so memory stays bounded), then each model in turn is sent
  to every site as an :class:`~flrt.tasks.EvalTask` naming its owner. A cell that could not be
  filled (the site failed, was late, or the round had no quorum) is recorded with its reason.

Note that cross-site evaluation shows each site's model to the other sites; a site's privacy
policy may forbid that, in which case it fails the task and its column is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from flrt.aggregation import UpdateStore, cast_like
from flrt.errors import UpdateError
from flrt.tasks import EvalResult, EvalTask, Metrics, TrainResult, TrainTask, UpdateKind, Weights

from .controller import Controller, CrossSiteEvaluated, MetricsReported, ResultArrived
from .quorum import SiteOutcome
from .rounds import PURPOSE_EVALUATE, RoundOutcome, RoundPolicy, run_round
from .sampling import SiteHistory
from .state import CrossSiteResults

__all__ = ["GLOBAL_MODEL", "cross_site_eval", "evaluate_global", "weighted_metrics"]

#: The name of the global model's column in cross-site results.
GLOBAL_MODEL = "global"


def weighted_metrics(results: Iterable[tuple[Metrics, int]]) -> tuple[Metrics, int]:
    """The sample-weighted mean of each metric over the results that report it, and the total
    number of samples. Results with no samples count equally when no result has any."""
    items = list(results)
    total = sum(n for _, n in items)
    sums: dict[str, float] = {}
    weights: dict[str, float] = {}
    for metrics, n in items:
        w = float(n) if total > 0 else 1.0
        for key, value in metrics.items():
            sums[key] = sums.get(key, 0.0) + w * float(value)
            weights[key] = weights.get(key, 0.0) + w
    return {k: sums[k] / weights[k] for k in sorted(sums) if weights[k] > 0}, total


def _eval_result(site: str, reply: ResultArrived) -> EvalResult:
    if not isinstance(reply.result, EvalResult):
        raise UpdateError("expected an evaluation result", site=site)
    return reply.result


async def evaluate_global(
    controller: Controller,
    *,
    job_id: str,
    round: int,
    weights: Weights,
    candidates: Iterable[str] | None,
    policy: RoundPolicy,
    seed: int,
    history: Mapping[str, SiteHistory],
) -> tuple[Metrics, RoundOutcome]:
    """Evaluate ``weights`` on the candidate sites; returns the weighted metrics (empty if the round
    had no quorum) and the round's outcome."""
    results: dict[str, EvalResult] = {}

    def on_result(site: str, reply: ResultArrived) -> None:
        results[site] = _eval_result(site, reply)

    outcome = await run_round(
        controller,
        EvalTask(job_id=job_id, round=round, weights=weights, model=GLOBAL_MODEL),
        candidates=candidates,
        policy=policy,
        seed=seed,
        history=history,
        on_result=on_result,
        purpose=PURPOSE_EVALUATE,
        raise_on_failure=False,
    )
    if outcome.reason is not None:
        return {}, outcome
    for site in sorted(results):
        r = results[site]
        controller.report(MetricsReported(round, "evaluate", site, dict(r.metrics), r.num_samples))
    metrics, total = weighted_metrics((r.metrics, r.num_samples) for r in results.values())
    controller.report(MetricsReported(round, "evaluate", None, metrics, total))
    return metrics, outcome


def _site_model(site: str, result: TrainResult, weights: Weights, store: UpdateStore) -> None:
    """Keep a site's model (full, in the global model's dtypes) in ``store`` under ``(site, name)``;
    variables it did not send are filled from the global model when read."""
    for name, value in result.weights.items():
        reference = weights.get(name)
        if reference is None:
            raise UpdateError("the global model has no such variable", site=site, variable=name)
        if value.shape != reference.shape:
            raise UpdateError(
                f"shape {value.shape} differs from {reference.shape}", site=site, variable=name
            )
        if result.kind is UpdateKind.DIFF:
            value = cast_like(reference.astype(np.float64) + value, reference.dtype)
        store.put((site, name), np.asarray(value, dtype=reference.dtype))


def _model_of(site: str, weights: Weights, store: UpdateStore) -> Weights:
    return {
        name: store.get((site, name)) if (site, name) in store else array
        for name, array in weights.items()
    }


async def cross_site_eval(
    controller: Controller,
    *,
    job_id: str,
    round: int,
    weights: Weights,
    candidates: Iterable[str] | None,
    policy: RoundPolicy,
    seed: int,
    history: Mapping[str, SiteHistory],
    include_global: bool = True,
    site_models: Mapping[str, Weights] | None = None,
    task_params: Mapping[str, Any] | None = None,
    memory_budget_bytes: int = 256 * 1024 * 1024,
) -> CrossSiteResults:
    """Every candidate site evaluates every site's model (collected now unless ``site_models`` are
    given) and, with ``include_global``, ``weights``. All tasks carry round ``round``.

    Never raises for a missing site or a round without quorum: the cells that could be filled are
    kept (cross-site results are per cell, not an aggregate), the others are in ``missing``.
    """
    pool = None if candidates is None else frozenset(candidates)
    store = UpdateStore(memory_budget_bytes)
    missing: dict[tuple[str, str], str] = {}
    try:
        owners: list[str] = []
        if site_models is None:

            def on_model(site: str, reply: ResultArrived) -> None:
                if not isinstance(reply.result, TrainResult):
                    raise UpdateError("expected a train result", site=site)
                _site_model(site, reply.result, weights, store)
                owners.append(site)

            await run_round(
                controller,
                TrainTask(
                    job_id=job_id,
                    round=round,
                    weights=weights,
                    params={**(task_params or {}), "cross_site_eval": True},
                ),
                candidates=pool,
                policy=policy,
                seed=seed,
                history=history,
                on_result=on_model,
                purpose=PURPOSE_EVALUATE,
                raise_on_failure=False,
            )
            owners.sort()
        else:
            for site, site_weights in sorted(site_models.items()):
                _site_model(
                    site, TrainResult(weights=dict(site_weights), num_samples=0), weights, store
                )
                owners.append(site)
        columns = ([GLOBAL_MODEL] if include_global else []) + owners
        results: dict[tuple[str, str], EvalResult] = {}
        evaluators: set[str] = set()
        for model in columns:
            got: dict[str, EvalResult] = {}

            def on_result(
                site: str, reply: ResultArrived, got: dict[str, EvalResult] = got
            ) -> None:
                got[site] = _eval_result(site, reply)

            outcome = await run_round(
                controller,
                EvalTask(
                    job_id=job_id,
                    round=round,
                    weights=weights if model == GLOBAL_MODEL else _model_of(model, weights, store),
                    model=model,
                ),
                candidates=pool,
                policy=policy,
                seed=seed,
                history=history,
                on_result=on_result,
                purpose=PURPOSE_EVALUATE,
                raise_on_failure=False,
            )
            for site, reason in outcome.failed.items():
                missing[(site, model)] = f"failed: {reason}"
            for site in outcome.cancelled:
                missing[(site, model)] = "late: cancelled after the grace period"
            for site, how in outcome.outcomes.items():
                if how is SiteOutcome.CANCELLED:
                    missing[(site, model)] = f"cancelled: {outcome.reason}"
            results.update({(site, model): r for site, r in got.items()})
            evaluators |= set(outcome.outcomes)
        cross = CrossSiteResults(
            round=round,
            models=tuple(columns),
            evaluators=tuple(sorted(evaluators)),
            results=results,
            missing=missing,
        )
        controller.report(CrossSiteEvaluated(cross))
        return cross
    finally:
        store.close()
