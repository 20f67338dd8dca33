"""Refusals end to end, through the command line: a bad job file, an unknown trainer, a trainer
that raises at one site, and nodes that refuse to start from a tampered kit."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from tests.e2e._cluster import ROOT, Cluster
from tests.nodes._project import ADMIN, site_failure

pytestmark = [pytest.mark.anyio, pytest.mark.slow]

GOOD = """\
name = "noise"
[workflow]
name = "fedavg"
rounds = 2
sites_per_round = 3
min_sites = 2
seed = 1
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 0.01
"""


def flrt(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flrt", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


async def test_jobs_refused_at_submission_and_a_trainer_that_raises(cluster: Cluster) -> None:
    cluster.start()
    kit = str(cluster.kits / ADMIN)
    bad_file = cluster.job_dir("bad", GOOD.replace("rounds = 2", 'rounds = "two"'))
    unknown = cluster.job_dir("unknown", GOOD.replace("tests.nodes._trainers", "hospital.models"))
    raising = cluster.job_dir("raising", GOOD + 'failing_sites = ["site-2"]\ndelay_seconds = 0.3\n')
    refused = await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "submit", str(bad_file)))
    assert refused.returncode == 1
    assert "workflow.rounds: must be an integer, got a string" in refused.stderr
    missing = await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "submit", str(unknown)))
    assert missing.returncode == 1
    assert "trainer.spec" in missing.stderr
    assert "no module named 'hospital.models'" in missing.stderr
    submitted = await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "submit", str(raising)))
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    waited = await anyio.to_thread.run_sync(
        lambda: flrt("admin", kit, "wait", job_id, "--timeout", "40")
    )
    assert waited.returncode == 0, waited.stdout + waited.stderr
    detail = await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "--json", "job", job_id))
    rounds = json.loads(detail.stdout)["rounds"]
    [failed] = json.loads(detail.stdout)["failures"]
    shown = await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "job", job_id))
    reason = "RuntimeError: the data of site-2 cannot be read"
    error_ids = set()
    for r in rounds:
        assert r["accepted"] == ["site-1", "site-3"]
        assert list(r["failed"]) == ["site-2"]
        found = re.fullmatch(site_failure(reason), r["failed"]["site-2"])
        assert found, r["failed"]
        error_ids.add(found.group(1))
    jobs = json.loads(
        (await anyio.to_thread.run_sync(lambda: flrt("admin", kit, "--json", "jobs"))).stdout
    )
    assert [j["job_id"] for j in jobs] == [job_id]  # the refused jobs were never stored
    failures = [e for e in cluster.log("site-2") if e["event"] == "task.failed"]
    assert failures
    assert failures[0]["reason"] == reason
    assert error_ids <= {e["error_id"] for e in failures}  # the admin's id finds the site's entry
    # Said once, not per round: the reason, the rounds, the last error id.
    last = re.fullmatch(site_failure(reason), rounds[-1]["failed"]["site-2"])
    assert last is not None
    assert failed == {
        "site": "site-2",
        "task": "train",
        "reason": reason,
        "rounds": [1, 2],
        "error_id": last.group(1),
    }
    row = next(line for line in shown.stdout.splitlines() if line.startswith("site-2 "))
    assert re.split(r"\s{2,}", row) == ["site-2", "train", "1-2", last.group(1), reason]


@pytest.mark.parametrize("node", ["server", "site-1"])
def test_a_node_refuses_to_start_from_a_tampered_kit(tmp_path: Path, node: str) -> None:
    cluster = Cluster(tmp_path)
    node_toml = cluster.kits / node / "startup" / "node.toml"
    node_toml.write_text(node_toml.read_text().replace("port = ", "port = 1"))
    kind = "server" if node == "server" else "site"
    result = flrt(kind, "start", str(cluster.kits / node), "--workspace", str(tmp_path / node))
    assert result.returncode == 1
    assert "startup/node.toml" in result.stderr
    assert "changed" in result.stderr
