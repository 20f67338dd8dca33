"""The job folders in examples/ name trainers that load, with arguments they accept."""

from __future__ import annotations

import importlib
import tomllib
from pathlib import Path
from typing import Any

import pytest

from flrt.trainer import load_trainer

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
JOBS = sorted(EXAMPLES.glob("*/job.toml"))


def test_the_documented_examples_exist() -> None:
    assert [job.parent.name for job in JOBS] == ["benchmark", "logreg", "mlp"]
    readme = (EXAMPLES / "README.md").read_text(encoding="utf-8")
    assert all(f"`{job.parent.name}/`" in readme for job in JOBS)


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.parent.name)
def test_the_trainer_loads_with_the_jobs_arguments(path: Path) -> None:
    job: dict[str, Any] = tomllib.loads(path.read_text(encoding="utf-8"))
    if job["trainer"]["spec"].startswith("flrt.examples.mlp:"):
        pytest.importorskip("torch")
    trainer = load_trainer(job["trainer"]["spec"], job["trainer"].get("args", {}))
    assert trainer.has_initial_weights
    args = job["trainer"].get("args", {})
    if "num_sites" in args:  # every simulated part is held by a site that is asked
        assert job["workflow"]["sites_per_round"] == args["num_sites"]


@pytest.mark.parametrize("path", JOBS, ids=lambda p: p.parent.name)
def test_the_job_file_is_valid(path: Path) -> None:
    try:
        job_module = importlib.import_module("flrt.job")
    except ImportError:  # pragma: no cover - the job schema lives in flrt.job
        pytest.skip("flrt.job is not available")
    spec = job_module.load_job(path)
    assert spec.trainer.spec.startswith("flrt.examples.")
