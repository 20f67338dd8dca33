"""The simulator: the real actors and workflows over in-memory links, a hundred sites at once."""

from __future__ import annotations

import re
from pathlib import Path

import anyio
import numpy as np
import pytest

from flrt.cli import main
from flrt.errors import AdminError
from flrt.examples.logreg import centralised_weights
from flrt.job import loads_job
from flrt.simulator import memory_pipe, simulate
from flrt.trainer import SiteContext, load_trainer
from flrt.workflows import LocalController, LocalSite, RoundCompleted, run_workflow

from ._path_errors import UPSTREAM

pytestmark = pytest.mark.anyio

LOGREG = """\
name = "logreg"
[workflow]
name = "fedavg"
rounds = 5
sites_per_round = 4
min_sites = 4
[workflow.params]
cross_site_eval = true
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
[trainer.args]
learning_rate = 2.0
num_sites = 4
split = "skewed"
"""

HUNDRED = """\
name = "hundred"
[workflow]
name = "fedavg"
rounds = 2
sites_per_round = 100
min_sites = 95
grace_seconds = 2.0
[workflow.params]
evaluate_every = 2
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 0.05
"""


PATH_ERRORS = """\
name = "path-errors"
[workflow]
name = "fedavg"
rounds = 1
sites_per_round = 2
min_sites = 1
grace_seconds = 60.0
[trainer]
spec = "tests.nodes._path_errors:PathErrorTrainer"
[trainer.args]
failing_sites = ["site-2"]
size_mib = 0.01
"""


def job(tmp_path: Path, text: str) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.toml").write_text(text)
    return folder


async def test_memory_pipes_carry_bytes_both_ways() -> None:
    a, b = memory_pipe()
    with anyio.fail_after(5):
        await a.send(b"x" * 100_000)
        got = b""
        while len(got) < 100_000:
            got += await b.receive(65536)
        await b.send(b"back")
        assert await a.receive() == b"back"
        await a.send_eof()
        with pytest.raises(anyio.EndOfStream):
            await b.receive()
    assert got == b"x" * 100_000


async def test_a_simulated_study_equals_centralised_gradient_descent(tmp_path: Path) -> None:
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path, LOGREG), sites=4, workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
    assert result.weights is not None
    expected = centralised_weights(
        {"learning_rate": 2.0, "num_sites": 4, "split": "skewed"}, rounds=5
    )
    for name, value in expected.items():
        np.testing.assert_allclose(result.weights[name], value, rtol=0, atol=1e-6)
    assert [r["round"] for r in result.rounds] == [1, 2, 3, 4, 5]
    assert result.cross_site is not None
    assert len(result.cross_site["results"]) == 4 * 5


async def test_a_hundred_sites(tmp_path: Path) -> None:
    with anyio.fail_after(90):
        result = await simulate(job(tmp_path, HUNDRED), sites=100, workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
    assert [len(r["accepted"]) for r in result.rounds] == [100, 100]
    assert "rms" in result.rounds[1]["evaluate"]


async def test_a_refused_job_is_refused_as_a_server_would(tmp_path: Path) -> None:
    with anyio.fail_after(30), pytest.raises(AdminError) as caught:
        await simulate(job(tmp_path, LOGREG.replace("min_sites = 4", "min_sites = 9")), sites=4)
    assert caught.value.key == "workflow.min_sites"


def test_the_command_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    two = LOGREG.replace("= 4", "= 2")
    folder = job(tmp_path, two)
    code = main(["simulate", str(folder), "--sites", "2", "--workspace", str(tmp_path / "ws")])
    out = capsys.readouterr().out
    assert code == 0
    assert "completed 5 rounds" in out
    assert "accuracy: site \\ model" in out
    assert (tmp_path / "ws" / "model.safetensors").is_file()


@pytest.mark.parametrize(
    "workflow",
    [
        'name = "scaffold"\nrounds = 3\nmin_sites = 2\n[workflow.params]\nserver_lr = 1.0',
        'name = "fedopt"\nrounds = 3\nmin_sites = 2\n[workflow.params]\noptimizer = "fedadam"',
        'name = "fedprox"\nrounds = 3\nmin_sites = 2\n[workflow.params]\nmu = 0.1',
        'name = "cross_site_eval"\nmin_sites = 2',
    ],
)
async def test_every_workflow_runs_over_the_bus(tmp_path: Path, workflow: str) -> None:
    """SCAFFOLD's control variates travel back as array groups next to the streamed update."""
    text = (
        f'name = "w"\n[workflow]\n{workflow}\n[trainer]\n'
        'spec = "flrt.examples.logreg:LogisticRegressionTrainer"\n'
        "[trainer.args]\nnum_sites = 2\nlearning_rate = 1.0\n"
    )
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path, text), sites=2)
    assert result.status == "finished", result.reason
    assert result.weights is not None
    assert all(np.isfinite(v).all() for v in result.weights.values())


async def test_a_failing_trainer_reads_the_same_from_a_site_and_in_process(tmp_path: Path) -> None:
    """The simulator's sites are real sites: the server gets the error with its paths redacted and
    an error id. The in-process controller reports the same text, with an id into its own log."""
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path, PATH_ERRORS), sites=2, workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
    sent = result.rounds[0]["failed"]["site-2"]
    match = re.fullmatch(r"(.*) \(error id [0-9a-f]{8}; details in the site's log\)", sent)
    assert match is not None, sent
    assert match[1] == UPSTREAM

    spec = loads_job(PATH_ERRORS)
    trainers = {n: load_trainer(spec.trainer.spec, spec.trainer.args) for n in ("site-1", "site-2")}
    ctl = LocalController(
        {
            n: LocalSite.from_trainer(t, SiteContext.create(n, scratch=tmp_path / "local" / n))
            for n, t in trainers.items()
        }
    )
    with anyio.fail_after(30):
        await run_workflow(
            ctl, spec, job_id="local", initial_weights=trainers["site-1"].initial_weights()
        )
    [completed] = [e for e in ctl.events if isinstance(e, RoundCompleted)]
    assert list(completed.failed) == ["site-2"]
    local = re.fullmatch(
        r"(.*) \(error id [0-9a-f]{8}; details in the simulation's log\)",
        completed.failed["site-2"],
    )
    assert local is not None, completed.failed
    assert local[1] == UPSTREAM
