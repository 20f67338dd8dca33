"""Studies end to end: the server and three sites as separate processes over real mutual TLS,
operated through the admin API; nodes killed and restarted mid-job."""

from __future__ import annotations

import json
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from flrt.aggregation import cast_like
from flrt.examples.logreg import centralised_weights
from flrt.examples.noise import make_model
from flrt.model import load_weights
from tests.e2e._cluster import Cluster

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

LOGREG_ARGS: dict[str, Any] = {
    "learning_rate": 2.0,
    "local_steps": 1,
    "full_batch": True,
    "num_sites": 3,
    "split": "skewed",
    "alpha": 0.5,
    "seed": 3,
}


def logreg_job(rounds: int, *, delay: float = 0.0) -> str:
    if delay:
        trainer = f'spec = "tests.e2e._trainers:SlowLogisticRegression"\n[trainer.args]\ndelay_seconds = {delay}'
    else:
        trainer = 'spec = "flrt.examples.logreg:LogisticRegressionTrainer"\n[trainer.args]'
    return f"""\
name = "logreg"
[workflow]
name = "fedavg"
rounds = {rounds}
sites_per_round = 3
min_sites = 3
[trainer]
{trainer}
learning_rate = 2.0
local_steps = 1
full_batch = true
num_sites = 3
split = "skewed"
alpha = 0.5
seed = 3
"""


def behaviour_job(rounds: int, min_sites: int, grace: float, extra: str) -> str:
    return f"""\
name = "behaviour"
[workflow]
name = "fedavg"
rounds = {rounds}
sites_per_round = 3
min_sites = {min_sites}
grace_seconds = {grace}
seed = 5
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 0.05
{extra}
"""


def assert_centralised(model: dict[str, Any], rounds: int) -> None:
    expected = centralised_weights(LOGREG_ARGS, rounds=rounds)
    assert set(model) == set(expected)
    for name, value in expected.items():
        np.testing.assert_allclose(model[name], value, rtol=0, atol=1e-6)


async def test_fedavg_equals_centralised_gradient_descent(cluster: Cluster, tmp_path: Path) -> None:
    cluster.start()
    with anyio.fail_after(60):
        async with cluster.admin() as admin:
            job_id = await admin.submit(cluster.job_dir("logreg", logreg_job(6)))
            job = await admin.wait(job_id)
            assert job["status"] == "finished", job
            out = await admin.download(job_id, tmp_path / "out")
    assert_centralised(load_weights(out / "model.safetensors"), rounds=6)


async def test_a_site_killed_mid_round_and_restarted_rejoins(cluster: Cluster) -> None:
    cluster.start()
    job = behaviour_job(10, min_sites=2, grace=30.0, extra="delay_seconds = 0.4")
    with anyio.fail_after(90):
        async with cluster.admin() as admin:
            job_id = await admin.submit(cluster.job_dir("dropout", job))
            async for view in admin.watch(job_id):
                if view["round"] >= 1:  # round 2 is under way: every site trains for 0.4 s
                    break
            cluster.kill("site-3")
            cluster.start_site("site-3")
            result = await admin.wait(job_id)
            rounds = (await admin.job(job_id))["rounds"]
    assert result["status"] == "finished", result
    killed = next(i for i, r in enumerate(rounds) if "site-3" in r["failed"])
    assert rounds[killed]["accepted"] == ["site-1", "site-2"]
    assert rounds[killed]["seconds"] < 10  # not the 30 s grace: the dropout failed at once
    assert any("site-3" in r["accepted"] for r in rounds[killed + 1 :]), rounds


def noise_reference(rounds: int, seed: int, sites: tuple[str, ...]) -> dict[str, Any]:
    """What FedAvg of the noise trainer reaches when only ``sites`` count (equal weights)."""
    weights = make_model(0.05, num_arrays=4, seed=0)
    for r in range(1, rounds + 1):
        total = {k: np.zeros(v.shape) for k, v in weights.items()}
        for site in sites:
            rng = np.random.default_rng([seed, r, zlib.crc32(site.encode()), 1])
            for name, array in weights.items():
                noise = rng.standard_normal(array.shape, dtype=np.float32) * np.float32(0.01)
                update = (array + noise).astype(array.dtype)
                total[name] += update.astype(np.float64) - array
        weights = {
            k: cast_like(v.astype(np.float64) + total[k] / len(sites), v.dtype)
            for k, v in weights.items()
        }
    return weights


async def test_a_straggler_is_cut_off_at_quorum_plus_grace(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.start()
    extra = 'slow_sites = ["site-3"]\nsleep_seconds = 3.0\nignore_abort = true'
    with anyio.fail_after(60):
        async with cluster.admin() as admin:
            job_id = await admin.submit(
                cluster.job_dir("straggler", behaviour_job(3, 2, 0.3, extra))
            )
            assert (await admin.wait(job_id))["status"] == "finished"
            rounds = (await admin.job(job_id))["rounds"]
            metrics: list[dict[str, Any]] = []

            async def discarded() -> list[dict[str, Any]]:
                out = await admin.download(job_id, tmp_path / "out")
                lines = (out / "metrics.jsonl").read_text().splitlines()
                return [e for e in map(_json, lines) if e["event"] == "update_discarded"]

            with anyio.fail_after(15):
                for _ in range(1000):  # polled: the withheld notice follows the job's end
                    metrics = await discarded()
                    if metrics:
                        break
                    await anyio.sleep(0.1)
    for r in rounds:
        assert r["accepted"] == ["site-1", "site-2"]
        assert r["cancelled"] == ["site-3"]
        assert 0.3 <= r["seconds"] < 2.5  # quorum plus grace, not the straggler's 3 s
    assert metrics[0]["site"] == "site-3"
    assert "withheld" in metrics[0]["reason"]
    model = load_weights(tmp_path / "out" / "model.safetensors")
    reference = noise_reference(3, 5, ("site-1", "site-2"))
    for name, value in reference.items():
        np.testing.assert_allclose(model[name], value, rtol=0, atol=1e-6)


def _json(line: str) -> dict[str, Any]:
    value: dict[str, Any] = json.loads(line)
    return value


async def restart_server_mid_job(
    cluster: Cluster,
    out: Path,
    name: str,
    while_down: Callable[[str], None] = lambda job_id: None,
) -> list[int]:
    """Run an 8-round job, kill the server after round 3, call ``while_down(job_id)``, start the
    server again and wait for the job to finish; the job's results go to ``out``. Returns the
    rounds reported completed, in order."""
    cluster.start()
    with anyio.fail_after(120):
        async with cluster.admin() as admin:
            job_id = await admin.submit(cluster.job_dir(name, logreg_job(8, delay=0.3)))
            async for view in admin.watch(job_id):
                if view["round"] >= 3:
                    break
            cluster.kill("server")
            while_down(job_id)
            cluster.start_server()
            job = await admin.wait(job_id)  # the client opens a new session and watches again
            assert job["status"] == "finished", job
            await admin.download(job_id, out)
    assert_centralised(load_weights(out / "model.safetensors"), rounds=8)
    return [
        e["round"]
        for e in map(_json, (out / "metrics.jsonl").read_text().splitlines())
        if e["event"] == "round_completed"
    ]


async def test_a_server_killed_mid_job_resumes_to_the_same_model(
    cluster: Cluster, tmp_path: Path
) -> None:
    completed = await restart_server_mid_job(cluster, tmp_path / "out", "restart")
    resumed = [e for e in cluster.log("server") if e["event"] == "job.resumed"]
    assert resumed
    assert resumed[0]["round"] >= 3
    assert sorted(set(completed)) == list(range(1, 9))
    assert len(completed) == len(set(completed))  # no completed round was run twice


async def test_a_corrupt_newest_checkpoint_resumes_from_the_one_before(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Killed, then its newest checkpoint damaged on disk: the restarted server says which one it
    passed over, runs that round again, and ends with the uninterrupted run's model."""
    damaged: list[Path] = []

    def damage_newest_checkpoint(job_id: str) -> None:
        checkpoints = cluster.root / "server" / "jobs" / job_id / "checkpoints"
        newest = sorted(checkpoints.glob("round-*"))[-1]
        model = newest / "model.safetensors"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))
        damaged.append(newest)

    completed = await restart_server_mid_job(
        cluster, tmp_path / "out", "corrupt", damage_newest_checkpoint
    )
    [newest] = damaged
    log = cluster.log("server")
    [skipped] = [e for e in log if e["event"] == "checkpoint.skipped"]
    assert newest.name in skipped["reason"]
    assert "does not match its digest" in skipped["reason"]
    [resumed] = [e for e in log if e["event"] == "job.resumed"]
    assert resumed["round"] == int(newest.name.removeprefix("round-")) - 1
    assert sorted(set(completed)) == list(range(1, 9))
