"""What the server does with results it did not ask for, and what a site's own policy does to
every result it sends."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from flrt._protocol import ResultMessage, TaskMessage, failure_body, join_arrays
from flrt.model import load_weights
from flrt.tasks import TrainResult
from security.kit import load_kit
from security.tls import client_ssl_context_from_kit
from tests.nodes._federation import federation
from transport.bus import Message, Node

pytestmark = pytest.mark.anyio

LATE_COPIES = 5  # 5 x the 8 MiB object window > the 32 MiB connection window

BIG_JOB = """\
name = "late"
[workflow]
name = "fedavg"
rounds = 2
sites_per_round = 3
min_sites = 2
grace_seconds = 20.0
seed = 1
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 24.0
"""


async def test_a_late_result_is_drained_and_discarded_and_the_link_keeps_working(
    kits: Path, tmp_path: Path
) -> None:
    """A site fails round 1, then sends 24 MiB results for it during round 2, each three times the
    bus's object window, together more than its connection window: the server must read and drop
    them, or the site's link would stall and its round-2 answer would never arrive within the 20 s
    grace."""
    tasks: list[tuple[TaskMessage, dict[str, Any]]] = []
    arrived = anyio.Event()

    async def on_task(message: Message) -> None:
        task = TaskMessage.from_body(message.body)
        assert message.object is not None
        tasks.append((task, await message.object.arrays()))
        arrived.set()

    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=("site-1", "site-2")) as fed:
            kit = load_kit(kits / "site-3")
            async with Node("site-3") as fake:
                fake.register("site", on_task)
                await fake.connect(
                    "127.0.0.1",
                    fed.server.port,
                    client_ssl_context_from_kit(kit),
                    server_hostname="localhost",
                )
                await fed.wait_connected(["site-3"])
                job_id = await fed.admin.submit(fed.job_dir("late", BIG_JOB))
                while len(tasks) < 1:
                    await arrived.wait()
                    arrived = anyio.Event()
                first, _ = tasks[0]
                await fake.tell("server/results", failure_body("failed", first.tid, first, "busy"))
                while len(tasks) < 2:
                    await arrived.wait()
                    arrived = anyio.Event()
                for task, arrays in [tasks[0]] * LATE_COPIES + [tasks[1]]:
                    result = TrainResult(
                        weights={k.removeprefix("w/"): v for k, v in arrays.items()},
                        num_samples=1,
                    )
                    body, payload = ResultMessage.of(task.tid, task, result)
                    await fake.tell("server/results", body.to_body(), arrays=payload)
                job = await fed.admin.wait(job_id, timeout=40)
                rounds = (await fed.admin.job(job_id))["rounds"]
                events = fed.server.core.store.metrics(job_id)
                fake.task_group.cancel_scope.cancel()
    assert job["status"] == "finished"
    assert rounds[0]["failed"] == {"site-3": "busy"}
    assert rounds[1]["accepted"] == ["site-1", "site-2", "site-3"]
    late = [e for e in events if e["event"] == "update_discarded"]
    assert [(e["site"], e["round"], e["reason"]) for e in late] == [
        ("site-3", 1, "late: the round had closed")
    ] * LATE_COPIES


def site_kit(kits: Path, tmp_path: Path, name: str, privacy: str) -> Path:
    kit = tmp_path / "kits" / name
    shutil.copytree(kits / name, kit)
    (kit / "local" / "privacy.toml").write_text(privacy)
    return kit


LOGREG = """\
name = "logreg"
[workflow]
name = "fedavg"
rounds = 2
sites_per_round = 3
min_sites = 2
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
[trainer.args]
learning_rate = 2.0
num_sites = 3
"""


async def test_a_sites_mandatory_filters_apply_to_every_job(kits: Path, tmp_path: Path) -> None:
    privacy = 'format = 1\n[[result_filters]]\nkind = "exclude_variables"\nnames = ["bias"]\n'
    strict = 'format = 1\nrequired_job_filters = ["exclude_variables"]\n'
    local = tmp_path / "kits"
    local.mkdir()
    for name in ("server", "lead-it@example.org"):
        (local / name).symlink_to(kits / name)
    site_kit(kits, tmp_path, "site-1", privacy)
    site_kit(kits, tmp_path, "site-2", privacy)
    site_kit(kits, tmp_path, "site-3", strict)
    with anyio.fail_after(60):
        async with federation(local, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("logreg", LOGREG))
            job = await fed.admin.wait(job_id, timeout=40)
            rounds = (await fed.admin.job(job_id))["rounds"]
            out = await fed.admin.download(job_id, tmp_path / "out")
    assert job["status"] == "finished"
    for r in rounds:
        assert r["accepted"] == ["site-1", "site-2"]
        assert "requires the job to declare the filters exclude_variables" in r["failed"]["site-3"]
    model = load_weights(out / "model.safetensors")
    np.testing.assert_array_equal(model["bias"], np.zeros(1))  # never left a site
    assert np.abs(model["weight"]).sum() > 0
    assert set(join_arrays(model, {})) == {"w/bias", "w/weight"}
