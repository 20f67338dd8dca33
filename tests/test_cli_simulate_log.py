"""``flrt simulate`` of a job whose trainer fails: the error ids it prints can be looked up, with
or without ``--workspace``."""

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


@pytest.mark.timeout(120)
@pytest.mark.parametrize("workspace", [False, True], ids=["temporary", "given"])
def test_each_error_id_of_a_failed_simulation_is_in_the_log_it_names(
    tmp_path: Path, workspace: bool
) -> None:
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(FAILING)
    extra = ["--workspace", str(tmp_path / "ws")] if workspace else []
    result = subprocess.run(
        [sys.executable, "-m", "flrt", "simulate", str(job), "--sites", "2", *extra],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=100,
        check=False,
    )
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
