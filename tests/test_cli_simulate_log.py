"""``flrt simulate`` of a job whose trainer fails: the error ids it prints can be looked up, with
or without ``--workspace``, whether the job failed or finished without the failing site."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAILING = """\
name = "failing"
[workflow]
name = "fedavg"
rounds = 1
min_sites = 1
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 0.01
fail = true
"""


def simulate(tmp_path: Path, job_toml: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``flrt simulate`` of the job ``job_toml`` at two sites, in ``tmp_path`` (its TMPDIR too)."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(job_toml)
    return subprocess.run(
        [sys.executable, "-m", "flrt", "simulate", str(job), "--sites", "2", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workspace", [False, True], ids=["temporary", "given"])
def test_each_error_id_of_a_failed_simulation_is_in_the_log_it_names(
    tmp_path: Path, workspace: bool
) -> None:
    extra = ["--workspace", str(tmp_path / "ws")] if workspace else []
    result = simulate(tmp_path, FAILING, *extra)
    assert result.returncode == 1, result.stderr
    ids = re.findall(r"error id ([0-9a-f]+)", result.stdout)
    assert len(ids) == 2, result.stdout
    named = re.search(r"error id's details: (\S+)$", result.stdout, re.MULTILINE)
    assert named is not None, result.stdout
    log = Path(named.group(1))
    if workspace:
        assert log == tmp_path / "ws" / "logs" / "simulation.jsonl"
    else:  # a temporary folder of its own, the results' one
        assert log.parent.parent.parent == tmp_path
    logged = {json.loads(line).get("error_id") for line in log.read_text().splitlines()}
    assert set(ids) <= logged


#: Finishes without site-2, which fails every training and evaluation task (grace: a round waits for
#: every answer, so no site is cancelled before it fails).
SOME_FAIL = """\
name = "some-fail"
[workflow]
name = "fedavg"
rounds = 3
min_sites = 1
grace_seconds = 60.0
[workflow.params]
evaluate_every = 1
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 0.01
failing_sites = ["site-2"]
failing_evaluation_sites = ["site-2"]
"""


@pytest.mark.timeout(120)
def test_a_finished_simulation_says_why_a_site_failed_and_where_its_details_are(
    tmp_path: Path,
) -> None:
    result = simulate(tmp_path, SOME_FAIL)
    assert result.returncode == 0, result.stderr
    out = result.stdout
    rows = {
        tuple(re.split(r"\s{2,}", line)[:2]): re.split(r"\s{2,}", line)[2:]
        for line in out.splitlines()
        if line.startswith("site-")
    }
    [trained_id] = re.findall(r"[0-9a-f]{8}", rows["site-2", "train"][1])
    assert rows["site-2", "train"] == [
        "1-3",
        trained_id,
        "RuntimeError: the data of site-2 cannot be read",
    ]
    [evaluated_id] = re.findall(r"[0-9a-f]{8}", rows["site-2", "evaluate"][1])
    assert rows["site-2", "evaluate"] == [
        "1-3",
        evaluated_id,
        "RuntimeError: site-2 cannot evaluate: its labels are missing",
    ]
    assert len(rows) == 2, out
    named = re.search(r"error id's details: (\S+)$", out, re.MULTILINE)
    assert named is not None, out
    logged = {
        json.loads(line).get("error_id") for line in Path(named.group(1)).read_text().splitlines()
    }
    assert {trained_id, evaluated_id} <= logged
