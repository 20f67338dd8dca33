"""The server's receive budget (``memory_budget_mb``): an update holds its share until the
workflow has folded it in, so updates are never staged two at a time when one fills it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import anyio
import pytest

from flrt.aggregation.base import Aggregator
from flrt.simulator import simulate

pytestmark = pytest.mark.anyio

JOB = """\
name = "budget"
[workflow]
name = "fedavg"
rounds = 3
sites_per_round = 4
min_sites = 4
[workflow.params]
memory_budget_mb = 2
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 2
"""


async def test_one_model_of_budget_stages_one_update_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    staged_at_open: list[int] = []
    real_open = Aggregator.open

    def counting_open(self: Aggregator, site: str, **kwargs: Any) -> None:
        real_open(self, site, **kwargs)
        staged_at_open.append(sum(self.staging(s) for s in self._status))

    monkeypatch.setattr(Aggregator, "open", counting_open)
    await _simulate_job(tmp_path)
    assert len(staged_at_open) == 12  # 4 sites, 3 rounds: every update was staged
    assert max(staged_at_open) == 1, staged_at_open


async def test_updates_are_received_straight_into_the_aggregators_staging(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every update lands in the staging the aggregator hands out, whole: no piece is copied in
    through ``accept``, and every staging handed out is filled before it is committed."""
    handed_out: list[str] = []
    filled: list[str] = []
    accepted: list[str] = []
    real_staging_for = Aggregator.staging_for
    real_mark_filled = Aggregator.mark_filled
    real_accept = Aggregator.accept

    def staging_for(self: Aggregator, site: str) -> Any:
        handed_out.append(site)
        return real_staging_for(self, site)

    def mark_filled(self: Aggregator, site: str) -> None:
        filled.append(site)
        real_mark_filled(self, site)

    def accept(self: Aggregator, site: str, *args: Any, **kwargs: Any) -> None:
        accepted.append(site)
        real_accept(self, site, *args, **kwargs)

    monkeypatch.setattr(Aggregator, "staging_for", staging_for)
    monkeypatch.setattr(Aggregator, "mark_filled", mark_filled)
    monkeypatch.setattr(Aggregator, "accept", accept)
    await _simulate_job(tmp_path)
    assert len(handed_out) == 12
    assert sorted(filled) == sorted(handed_out)
    assert accepted == []


async def _simulate_job(tmp_path: Path) -> None:
    """Run JOB in the simulator on 4 sites; it must finish."""
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.toml").write_text(JOB)
    with anyio.fail_after(60):
        result = await simulate(folder, sites=4, workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
