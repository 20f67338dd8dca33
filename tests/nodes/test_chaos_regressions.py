"""What chaos runs (servers and sites killed and stopped at random moments) found, one test each."""

from __future__ import annotations

import json
import shutil
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.lowlevel
import numpy as np
import pytest
from structlog.testing import capture_logs

from flrt._protocol import PROTOCOL_VERSION, RESULTS_ACTOR
from flrt.jobstore import JobStore
from flrt.network import NetworkController, TaskTable
from flrt.registry import SiteRegistry
from flrt.server import ServerCore
from flrt.simulator import _attach, simulate
from flrt.site import SiteCore, SiteNode
from flrt.tasks import TrainTask
from flrt.workflows import SiteFailed
from tests.nodes._federation import federation
from transport.bus import Message, Node
from transport.testing.proxy import FaultProxy

pytestmark = pytest.mark.anyio


async def test_what_reaches_a_stopping_server_is_let_go_quietly(tmp_path: Path) -> None:
    """A server stopped (SIGTERM) mid-round: its node closes after the server's core, so it may
    still hand the core a site's answer or an admin's submission while the core stops, and after
    its task group is gone. The answer is ignored (not reported late: the round did not close, it
    runs again at the next start) and the stored job is left for the next start; neither fails
    the actor (it raised RuntimeError: no task group to drain or run in)."""
    body = {"v": PROTOCOL_VERSION, "op": "result", "tid": "0a1b2c3d-7", "job": "j", "round": 2}
    job_id = "20261123t064033045z-p9m5cqgsb3"
    async with Node("server") as node:
        core = ServerCore(node, tmp_path, sites={"site-1": "org"}, identity_of=lambda _: None)

        async def hand_in_as_the_server_stops() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await core._on_result(Message("site-1", RESULTS_ACTOR, body))

        with capture_logs() as logs:
            async with core:
                core.task_group.start_soon(hand_in_as_the_server_stops)
                await anyio.lowlevel.checkpoint()
            await core._on_result(Message("site-1", RESULTS_ACTOR, body))  # the node still runs
            core.start_job(job_id)
    events = [e for e in logs if e["event"].startswith(("result.", "job."))]
    assert [e["event"] for e in events] == ["result.ignored", "result.ignored", "job.not_started"]
    assert all(e["reason"] == "the server is stopping" for e in events)
    assert core.jobs == {}


NOISE_JOB = """\
name = "restarted"
[workflow]
name = "fedavg"
rounds = 3
sites_per_round = 2
min_sites = 2
seed = 3
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 0.01
"""


async def test_a_job_started_again_says_so_in_its_metrics(tmp_path: Path) -> None:
    """A server killed after round 3 completed but before its checkpoint was written runs round 3
    again when it restarts, so ``metrics.jsonl`` holds two ``round_completed`` events for it.
    Each start of the job's workflow is recorded (``job_started``, with the round it starts
    after), so a reader knows which of them the job kept."""
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.toml").write_text(NOISE_JOB)
    workspace = tmp_path / "ws"
    with anyio.fail_after(30):
        first = await simulate(tmp_path / "job", sites=2, workspace=workspace)
    assert first.status == "finished"
    folder = workspace / "server" / "jobs" / first.job_id
    # What the killed server left: round 3 reported, its checkpoint not written, still running.
    shutil.rmtree(folder / "checkpoints" / "round-000003")
    record = json.loads((folder / "record.json").read_text())
    (folder / "record.json").write_text(json.dumps({**record, "status": "running"}))

    with anyio.fail_after(30):
        async with AsyncExitStack() as stack:  # the server starts again, and its sites dial in
            server = await stack.enter_async_context(Node("server"))
            core = await stack.enter_async_context(
                ServerCore(
                    server,
                    workspace / "server",
                    sites={"site-1": "sim", "site-2": "sim"},
                    identity_of=lambda _: None,
                    site_wait=0.0,
                )
            )
            server.on_peer_lost = core.peer_lost
            for name in ("site-1", "site-2"):
                node = await stack.enter_async_context(Node(name))
                await stack.enter_async_context(SiteCore(node, name, workspace / name))
                await _attach(server, node)
            final = await core.wait_job(first.job_id)
            events = core.store.metrics(first.job_id)
    assert final.record.status.value == "finished"
    told = [(e["event"], e["round"]) for e in events if e["event"] != "metrics"]
    completed = [t for t in told if t[0] in ("job_started", "round_completed")]
    assert completed == [
        ("job_started", 0),
        ("round_completed", 1),
        ("round_completed", 2),
        ("round_completed", 3),
        ("job_started", 2),
        ("round_completed", 3),
    ]


def test_temporary_copies_a_killed_server_left_are_removed_at_its_next_start(
    tmp_path: Path,
) -> None:
    """A server killed while it rewrote ``registry.json`` (once a second while jobs run) or a
    job's record left a temporary copy each time, and nothing ever removed them."""
    jobs = tmp_path / "jobs"
    job = jobs / "20261123t064033045z-p9m5cqgsb3"
    job.mkdir(parents=True)
    (job / "record.json").write_text("{}")
    left = [
        tmp_path / ".registry.json.og9gi756.tmp",
        job / ".record.json.x12ae69k.tmp",
        job / ".cross_site.json.17tn387l.tmp",
    ]
    for copy in left:
        copy.write_bytes(b"{")
    kept = tmp_path / ".flrt.lock"
    kept.write_text("1\n")
    SiteRegistry({"site-1": "org"}, tmp_path / "registry.json")
    JobStore(jobs)
    assert [copy for copy in left if copy.exists()] == []
    assert kept.exists()
    assert (job / "record.json").read_text() == "{}"


EVERY_SITE_JOB = """\
name = "blip"
[workflow]
name = "fedavg"
rounds = 1
sites_per_round = 2
min_sites = 2
seed = 4
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 0.05
delay_seconds = 1.0
"""


async def test_a_connection_cut_while_a_needed_site_trains_does_not_fail_the_round(
    kits: Path, tmp_path: Path
) -> None:
    """The round needs both sites; site-2's connection (through a relay) is cut while it trains.
    Its session resumes at once and its answer arrives over it, so the round and the job finish.
    (Counted failed at once as "disconnected", the site failed the round, and the job.)"""
    with anyio.fail_after(60):
        async with (
            federation(kits, tmp_path, sites=("site-1",)) as fed,
            FaultProxy("127.0.0.1", fed.server.port) as proxy,
            SiteNode(
                kits / "site-2",
                tmp_path / "site-2",
                server=("127.0.0.1", proxy.port),
                backoff=(0.05, 0.5),
            ),
        ):
            await fed.wait_connected(["site-1", "site-2"])
            before = proxy.stats.bytes_down
            job_id = await fed.admin.submit(fed.job_dir("blip", EVERY_SITE_JOB))
            # The 50 KiB model reached site-2: it trains for a second.
            await proxy.wait_stats(lambda s: s.bytes_down > before + 50_000)
            proxy.cut_all()
            job = await fed.admin.wait(job_id)
            rounds = (await fed.admin.job(job_id))["rounds"]
    assert proxy.stats.cuts >= 1
    assert job["status"] == "finished", job
    assert [r["accepted"] for r in rounds] == [["site-1", "site-2"]]


async def test_a_round_that_starts_while_a_site_reconnects_asks_it_all_the_same(
    tmp_path: Path,
) -> None:
    """A round that starts in the few milliseconds a site's connection is down (its session
    resumes) left it out: with every site needed, the round failed at once ("quorum unreachable
    ... out of 3 asked"), and the job. The site is asked: the bus sends the task once the session
    resumes, and the round hears a resumable failure, which it waits on when it needs the site."""
    store = JobStore(tmp_path / "jobs")
    entry, spec = store.create(EVERY_SITE_JOB, submitted_by="admin", organisation="org")
    registry = SiteRegistry({"site-1": "org", "site-2": "org"})
    registry.connected("site-1")
    sent: list[tuple[str, object]] = []

    async def send(address: str, body: dict[str, object], arrays: object) -> None:
        sent.append((address, body["op"]))

    async with anyio.create_task_group() as tg:
        controller = NetworkController(
            job_id=entry.record.job_id,
            job=spec,
            entry=entry,
            store=store,
            registry=registry,
            table=TaskTable(),
            send=send,
            task_group=tg,
            reconnecting=lambda site: site == "site-2",
        )
        assert controller.available_sites() == {"site-1", "site-2"}
        with_quorum = NetworkController(
            job_id=entry.record.job_id,
            job=spec,
            entry=entry,
            store=store,
            registry=SiteRegistry({"site-1": "org", "site-2": "org", "site-3": "org"}),
            table=TaskTable(),
            send=send,
            task_group=tg,
            reconnecting=lambda site: site == "site-2",
        )
        with_quorum.registry.connected("site-1")
        with_quorum.registry.connected("site-3")
        # Enough sites are connected for the quorum: a round never waits on one that is away.
        assert with_quorum.available_sites() == {"site-1", "site-3"}
        with_quorum.close()
        task = TrainTask(entry.record.job_id, 1, {"w": np.zeros(3, np.float32)})
        async with controller.scatter(task, ["site-1", "site-2"]) as scatter:
            reply = await scatter.receive(None)
            while len(sent) < 2:
                await anyio.lowlevel.checkpoint()
        controller.close()
    assert reply == SiteFailed("site-2", "disconnected", resumable=True)
    tasks = sorted(address for address, op in sent if op == "task")
    assert tasks == ["site-1/site", "site-2/site"]
