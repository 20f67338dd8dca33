"""A whole federation in one process over real mutual TLS: jobs, stragglers, dropouts, failures,
refusals and authorization, on both AnyIO backends."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from flrt.admin import AdminClient
from flrt.errors import AdminError
from flrt.examples.logreg import centralised_weights
from flrt.model import load_weights
from tests.nodes._federation import Federation, federation, poll_until
from tests.nodes._project import LEAD, MEMBER, ORG_ADMIN, OTHER_LEAD, SITES, site_failure

pytestmark = pytest.mark.anyio

LOGREG_ARGS: dict[str, Any] = {
    "learning_rate": 2.0,
    "local_steps": 1,
    "full_batch": True,
    "num_sites": 3,
    "split": "iid",
    "seed": 0,
}

LOGREG = """\
name = "logreg"
[workflow]
name = "fedavg"
rounds = 4
sites_per_round = 3
min_sites = 3
[workflow.params]
evaluate_every = 2
cross_site_eval = true
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
[trainer.args]
learning_rate = 2.0
local_steps = 1
full_batch = true
num_sites = 3
split = "iid"
seed = 0
"""


def behaviour_job(
    *,
    rounds: int,
    min_sites: int,
    grace: float = 0.0,
    extra: str = "",
    size_mib: float = 0.01,
) -> str:
    return f"""\
name = "behaviour"
[workflow]
name = "fedavg"
rounds = {rounds}
sites_per_round = 3
min_sites = {min_sites}
grace_seconds = {grace}
seed = 11
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = {size_mib}
{extra}
"""


def metrics(fed: Federation, job_id: str) -> list[dict[str, Any]]:
    return fed.server.core.store.metrics(job_id)


def completed_rounds(fed: Federation, job_id: str) -> list[dict[str, Any]]:
    return [
        e for e in metrics(fed, job_id) if e["event"] == "round_completed" and e["kind"] == "train"
    ]


async def test_fedavg_of_one_full_batch_step_equals_centralised_gradient_descent(
    kits: Path, tmp_path: Path
) -> None:
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("logreg", LOGREG))
            job = await fed.admin.wait(job_id, timeout=50)
            assert job["status"] == "finished", job
            assert job["round"] == 4
            out = await fed.admin.download(job_id, tmp_path / "out")
            detail = await fed.admin.job(job_id)
    model = load_weights(out / "model.safetensors")
    expected = centralised_weights(LOGREG_ARGS, rounds=4)
    for name, value in expected.items():
        np.testing.assert_allclose(model[name], value, rtol=0, atol=1e-6)
    assert [r["round"] for r in detail["rounds"]] == [1, 2, 3, 4]
    assert all(r["accepted"] == list(SITES) for r in detail["rounds"])
    assert "accuracy" in detail["rounds"][1]["evaluate"]
    cross = json.loads((out / "cross_site.json").read_text())
    assert cross["models"] == ["global", *SITES]
    assert cross["evaluators"] == list(SITES)
    assert len(cross["results"]) == 12
    assert cross["missing"] == []


async def test_a_straggler_is_cancelled_after_the_grace_period(kits: Path, tmp_path: Path) -> None:
    job = behaviour_job(
        rounds=3, min_sites=2, grace=0.3, extra='slow_sites = ["site-3"]\nsleep_seconds = 60.0'
    )
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("straggler", job))
            result = await fed.admin.wait(job_id, timeout=30)
            assert result["status"] == "finished", result
            rounds = completed_rounds(fed, job_id)
            history = fed.server.core.registry.get("site-3").history
    assert len(rounds) == 3
    for r in rounds:
        assert r["accepted"] == ["site-1", "site-2"]
        assert r["cancelled"] == ["site-3"]
        assert r["outcomes"]["site-3"] == "late"
        assert 0.3 <= r["seconds"] < 5.0  # quorum plus grace, never the straggler's 60 s
    assert history.late == 3


async def test_a_late_result_withheld_by_its_site_is_recorded_as_discarded(
    kits: Path, tmp_path: Path
) -> None:
    job = behaviour_job(
        rounds=2,
        min_sites=2,
        grace=0.05,
        extra='slow_sites = ["site-3"]\nsleep_seconds = 0.5\nignore_abort = true',
    )
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("withheld", job))
            assert (await fed.admin.wait(job_id, timeout=30))["status"] == "finished"
            await poll_until(
                lambda: any(e["event"] == "update_discarded" for e in metrics(fed, job_id))
            )
            discarded = [e for e in metrics(fed, job_id) if e["event"] == "update_discarded"]
    assert discarded[0]["site"] == "site-3"
    assert discarded[0]["round"] == 1
    assert "withheld" in discarded[0]["reason"]


async def test_a_site_that_stops_mid_round_fails_at_once_and_rejoins_later(
    kits: Path, tmp_path: Path
) -> None:
    job = behaviour_job(rounds=6, min_sites=2, grace=60.0, extra="delay_seconds = 0.3")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("dropout", job))
            await fed.sites["site-3"].core.wait_busy()
            await fed.stop_site("site-3")
            await fed.wait_connected(["site-3"], connected=False)
            await fed.start_site("site-3")
            result = await fed.admin.wait(job_id, timeout=40)
            rounds = completed_rounds(fed, job_id)
    assert result["status"] == "finished", result
    first = rounds[0]
    assert first["accepted"] == ["site-1", "site-2"]
    assert "site-3" in first["failed"]
    assert first["seconds"] < 30  # the dropout did not make the round wait out its 60 s grace
    assert any("site-3" in r["accepted"] for r in rounds[1:]), rounds


async def test_a_trainer_that_raises_is_a_failed_answer(kits: Path, tmp_path: Path) -> None:
    some = behaviour_job(
        rounds=2, min_sites=2, extra='failing_sites = ["site-2"]\ndelay_seconds = 0.3'
    )
    every = behaviour_job(rounds=2, min_sites=2, extra=f"failing_sites = {list(SITES)!r}")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("some-fail", some))
            assert (await fed.admin.wait(job_id, timeout=30))["status"] == "finished"
            rounds = completed_rounds(fed, job_id)
            detail = await fed.admin.job(job_id)
            failed_id = await fed.admin.submit(fed.job_dir("all-fail", every))
            failed = await fed.admin.wait(failed_id, timeout=30)
    for r in rounds:
        assert r["accepted"] == ["site-1", "site-3"]
        assert list(r["failed"]) == ["site-2"]
        failure = site_failure("RuntimeError: the data of site-2 cannot be read")
        assert re.fullmatch(failure, r["failed"]["site-2"]), r["failed"]
    # What the admin is told: the reason once, the rounds, the last error id into the site's log.
    last = re.fullmatch(failure, rounds[-1]["failed"]["site-2"])
    assert last is not None
    assert detail["failures"] == [
        {
            "site": "site-2",
            "task": "train",
            "reason": "RuntimeError: the data of site-2 cannot be read",
            "rounds": [1, 2],
            "error_id": last[1],
        }
    ]
    assert failed["status"] == "failed"
    assert "round 1 failed" in failed["reason"]
    assert "quorum unreachable" in failed["reason"]
    assert "(RuntimeError: the data of site-" in failed["reason"]


@pytest.mark.parametrize(
    ("change", "key", "words"),
    [
        (("rounds = 4", "rounds = 0"), "workflow.rounds", "must be >= 1"),
        (("min_sites = 3", "min_sites = 3\ncolour = 1"), "workflow.colour", "unknown key"),
        (("flrt.examples.logreg:", "no_such_module.trainers:"), "trainer.spec", "no module"),
        (
            (
                "flrt.examples.logreg:LogisticRegressionTrainer",
                "tests.nodes._trainers:NoInitialWeights",
            ),
            "trainer.spec",
            "initial_weights",
        ),
        (
            ("seed = 0\n", 'seed = 0\n[targets]\nsites = ["site-1", "site-2", "site-9"]\n'),
            "targets.sites[2]",
            "'site-9' is not a site of this project",
        ),
    ],
)
async def test_a_refused_job_names_the_key(
    kits: Path, tmp_path: Path, change: tuple[str, str], key: str, words: str
) -> None:
    text = LOGREG.replace(*change)
    assert text != LOGREG
    with anyio.fail_after(30):
        async with federation(kits, tmp_path, sites=()) as fed:
            with pytest.raises(AdminError) as caught:
                await fed.admin.submit(fed.job_dir("bad", text))
            assert await fed.admin.jobs() == []
    assert caught.value.code == "invalid_job"
    assert caught.value.key == key
    assert key in str(caught.value)
    assert words in str(caught.value)


async def test_roles_decide_who_may_do_what(kits: Path, tmp_path: Path) -> None:
    job = behaviour_job(rounds=50, min_sites=2, extra="delay_seconds = 0.05")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            async with fed.admin_client(MEMBER) as member:
                assert (await member.status())["sites"][0]["name"] == "site-1"
                with pytest.raises(AdminError, match="role member may not submit") as denied:
                    await member.submit(fed.job_dir("m", job))
                assert denied.value.code == "denied"
            async with fed.admin_client(LEAD) as lead:
                job_id = await lead.submit(fed.job_dir("lead", job))
            async with fed.admin_client(OTHER_LEAD) as other:
                with pytest.raises(AdminError, match="only abort its own jobs"):
                    await other.abort(job_id)
                assert [j["job_id"] for j in await other.jobs()] == [job_id]
            async with fed.admin_client(ORG_ADMIN) as org_admin:
                with pytest.raises(AdminError, match="may not download"):
                    await org_admin.download(job_id, tmp_path / "no")
            async with fed.admin_client(LEAD) as lead:
                aborted = await lead.abort(job_id)
                with pytest.raises(AdminError) as again:
                    await lead.abort(job_id)
    assert aborted["status"] == "aborted"
    assert aborted["reason"] == f"aborted by {LEAD}"
    assert again.value.code == "bad_state"


async def test_a_site_certificate_cannot_use_the_admin_console(kits: Path, tmp_path: Path) -> None:
    from security.kit import load_kit
    from security.tls import client_ssl_context_from_kit
    from transport.bus import Node

    with anyio.fail_after(30):
        async with federation(kits, tmp_path, sites=()) as fed:
            kit = load_kit(kits / "site-1")
            async with Node("site-1") as node:
                await node.connect(
                    "127.0.0.1",
                    fed.server.port,
                    client_ssl_context_from_kit(kit),
                    server_hostname="localhost",
                )
                reply = await node.ask("server/admin", {"cmd": "jobs"}, timeout=10)
    assert reply.body["ok"] is False
    assert reply.body["code"] == "denied"
    assert "site-1 is a site" in reply.body["error"]


async def test_an_unknown_admin_command_is_refused(kits: Path, tmp_path: Path) -> None:
    with anyio.fail_after(30):
        async with federation(kits, tmp_path, sites=()) as fed:
            with pytest.raises(AdminError, match="unknown command 'shutdown'") as caught:
                await fed.admin._command("shutdown")
            with pytest.raises(AdminError) as missing:
                await fed.admin.job("20261122t000000000z-0000000000")
    assert caught.value.code == "bad_request"
    assert missing.value.code == "unknown_job"


async def test_admin_client_refuses_a_site_kit(kits: Path) -> None:
    from security.errors import KitError

    with pytest.raises(KitError, match="cannot use the admin console"):
        async with AdminClient(kits / "site-1"):
            pass


async def test_several_jobs_run_at_once(kits: Path, tmp_path: Path) -> None:
    slow = behaviour_job(rounds=4, min_sites=3, extra="delay_seconds = 0.1")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            first = await fed.admin.submit(fed.job_dir("first", slow))
            second = await fed.admin.submit(fed.job_dir("second", LOGREG))
            results = [await fed.admin.wait(j, timeout=40) for j in (first, second)]
            started = {
                j: [e["time"] for e in metrics(fed, j) if e["event"] == "round_started"]
                for j in (first, second)
            }
    assert [r["status"] for r in results] == ["finished", "finished"]
    # The logistic regression ran its rounds while the slower job was still going.
    assert started[second][0] < started[first][-1]
