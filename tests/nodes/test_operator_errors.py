"""What the nodes do when the machine or the site's configuration lets them down: a full disk on the
server, a trainer that cannot build round 0's model, a site's ``local/`` folder it may not read, a
data location that is not there, a kit from another project. Each is named for what it is; none
takes the server down with it, and nothing already stored is lost."""

from __future__ import annotations

import errno
import json
import os
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from contextlib import AsyncExitStack
from pathlib import Path

import anyio
import anyio.abc
import numpy as np
import pytest
from structlog.testing import capture_logs

from flrt._durable import atomic_write, fsync_directory
from flrt.admin import AdminClient
from flrt.checkpoint import Checkpoint, CheckpointWriter, checkpoint_rounds
from flrt.errors import AdminError, ConfigError
from flrt.examples.noise import NoiseTrainer
from flrt.job import JobStatus, loads_job
from flrt.jobstore import JobEntry, JobStore
from flrt.server import ServerCore, ServerNode
from flrt.simulator import simulate
from flrt.site import SiteNode
from flrt.tasks import Weights
from security.project import parse_project
from security.provision import provision
from tests.nodes._federation import federation, poll_until
from tests.nodes._project import ADMIN, free_port, project_text
from transport.errors import ConnectionBrokenError

pytestmark = pytest.mark.anyio

NOISE = """\
name = "noise"
[workflow]
name = "fedavg"
rounds = 3
min_sites = 2
[trainer]
spec = "{spec}"
[trainer.args]
size_mib = 0.01
"""


class InitialWeightsFail(NoiseTrainer):
    """A trainer whose round 0's model needs a file the server does not have."""

    def initial_weights(self) -> Weights:
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "/models/pretrained.pt")


def job(tmp_path: Path, spec: str = "flrt.examples.noise:NoiseTrainer") -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.toml").write_text(NOISE.format(spec=spec))
    return folder


#: The noise job on site-1 and site-2 (its quorum: a round needs both).
NOISE_ON_TWO_SITES = (
    NOISE.format(spec="flrt.examples.noise:NoiseTrainer")
    + '[targets]\nsites = ["site-1", "site-2"]\n'
)


def no_space(*_args: object) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device")


class DiskFillingAt:
    """The server's disk fills up as round ``fills_at``'s checkpoint is saved: that save and every
    later one fail with ENOSPC while ``full`` (a test sets it back to False to free space)."""

    def __init__(self, fills_at: int, monkeypatch: pytest.MonkeyPatch) -> None:
        self.full = False
        self._fills_at: int | None = fills_at
        real_save = CheckpointWriter.save

        def save(writer: CheckpointWriter, checkpoint: Checkpoint) -> Path:
            if checkpoint.round == self._fills_at:
                self.full, self._fills_at = True, None
            if self.full:
                raise no_space()
            return real_save(writer, checkpoint)

        monkeypatch.setattr(CheckpointWriter, "save", save)


class InitialWeightsOfObjects(NoiseTrainer):
    """A trainer whose round 0's model holds Python objects, which no model file can."""

    def initial_weights(self) -> Weights:
        return {"w": np.array([{}, 1], dtype=object)}


@pytest.mark.parametrize(
    ("trainer", "reason"),
    [
        (
            "InitialWeightsFail",
            "initial_weights() raised FileNotFoundError: [Errno 2] No such file or directory:"
            " '/models/pretrained.pt'",
        ),
        (
            "InitialWeightsOfObjects",
            "initial_weights() returned weights 'w' of dtype object, which a model cannot hold"
            " (booleans, integers, floats and complex numbers of up to 64 bits per part)",
        ),
    ],
)
async def test_a_trainer_that_cannot_build_round_0_fails_the_job_naming_the_trainer(
    tmp_path: Path, trainer: str, reason: str
) -> None:
    spec = f"{__name__}:{trainer}"
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path, spec), sites=2, workspace=tmp_path / "ws")
    assert result.status == "failed"
    assert result.reason == f"trainer {spec}: {reason}"


async def test_downloading_a_job_that_failed_before_its_first_round_says_it_has_no_model(
    kits: Path, tmp_path: Path
) -> None:
    text = NOISE.format(spec=f"{__name__}:InitialWeightsFail")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=["site-1", "site-2"]) as fed:
            job_id = await fed.admin.submit(fed.job_dir("noise", text))
            done = await fed.admin.wait(job_id, timeout=30)
            assert done["status"] == "failed"
            with pytest.raises(AdminError) as refused:
                await fed.admin.download(job_id, tmp_path / "results")
    assert refused.value.code == "bad_state"
    assert refused.value.reason.startswith(
        f"job {job_id} failed before completing a round: it has no model (trainer "
    ), refused.value.reason
    assert "yet" not in refused.value.reason


async def test_a_checkpoint_the_disk_cannot_hold_is_named_as_such_not_as_an_internal_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = CheckpointWriter.save

    def save(writer: CheckpointWriter, checkpoint: Checkpoint) -> Path:
        if checkpoint.round == 2:
            raise no_space()
        return real_save(writer, checkpoint)

    monkeypatch.setattr(CheckpointWriter, "save", save)
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path), sites=2, workspace=tmp_path / "ws")
    assert result.status == "interrupted"
    assert result.reason == "its state cannot be saved: No space left on device"


async def test_a_checkpoint_the_disk_cannot_hold_interrupts_the_job_until_the_next_start(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFillingAt(2, monkeypatch)  # as round 2 is saved; the record still fits
    sites = ["site-1", "site-2"]
    text = NOISE_ON_TWO_SITES
    reason = "its state cannot be saved: No space left on device"
    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=sites) as fed:
            job_id = await fed.admin.submit(fed.job_dir("noise", text))
            core = fed.server.core
            await poll_until(lambda: job_id in core.interrupted and job_id not in core.jobs)
            # The admin console says why it stopped, and that it is not over.
            (view,) = [j for j in await fed.admin.jobs() if j["job_id"] == job_id]
            assert view["status"] == "running"
            assert view["reason"] is None
            assert view["detail"] == f"interrupted ({reason}); it resumes when the server restarts"
            assert view["round"] == 1
            status = await fed.admin.status()
            assert status["jobs"] == {"interrupted": 1}
            assert status["interrupted"] == {job_id: reason}
            assert status["running"] == []
            # Nothing stored is lost: the record still says running, round 1's checkpoint loads.
            assert core.store.entry(job_id).record.status is JobStatus.RUNNING
            assert checkpoint_rounds(core.store.checkpoints(job_id)) == [1]
            state = core.store.latest_state(job_id)
            assert state is not None
            assert state.round == 1
        disk.full = False  # Lead IT frees some space and restarts the server
        with capture_logs() as logs:
            async with federation(kits, tmp_path, sites=sites) as fed:
                result = await fed.admin.wait(job_id, timeout=50)
    assert result["status"] == "finished", result
    assert result["round"] == 3
    resumed = [e for e in logs if e["event"] == "job.resumed"]
    assert resumed == [{"event": "job.resumed", "job": job_id, "round": 1, "log_level": "info"}]


async def test_a_disk_too_full_for_the_job_record_stops_that_job_not_the_server(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    disk = DiskFillingAt(2, monkeypatch)  # as round 2 is saved
    real_store_save = JobStore.save

    def store_save(store: JobStore, entry: JobEntry) -> None:
        if disk.full:
            raise no_space()
        real_store_save(store, entry)

    monkeypatch.setattr(JobStore, "save", store_save)
    sites = ["site-1", "site-2"]
    text = NOISE_ON_TWO_SITES
    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=sites) as fed:
            job_id = await fed.admin.submit(fed.job_dir("noise", text))
            core = fed.server.core
            await poll_until(lambda: job_id in core.interrupted and job_id not in core.jobs)
            # The server still answers, and says what happened to the job.
            (view,) = [j for j in await fed.admin.jobs() if j["job_id"] == job_id]
            assert view["status"] == "running"
            assert view["detail"] == (
                "interrupted (its state cannot be saved: No space left on device); it resumes"
                " when the server restarts"
            )
            # What was stored before the disk filled up is as it was.
            assert core.store.entry(job_id).record.status is JobStatus.RUNNING
            assert checkpoint_rounds(core.store.checkpoints(job_id)) == [1]
        disk.full = False  # Lead IT frees some space and restarts the server
        async with federation(kits, tmp_path, sites=sites) as fed:
            result = await fed.admin.wait(job_id, timeout=50)
    assert result["status"] == "finished", result
    assert result["round"] == 3


async def test_a_job_record_damaged_on_disk_stops_that_job_not_the_server(
    kits: Path, tmp_path: Path
) -> None:
    """record.json edited by hand (or by a failing disk), while the job runs and before a start:
    the job goes no further, admins hear why, the file is left for the operator to mend, and once
    it is mended a restart resumes the job."""
    sites = ["site-1", "site-2"]
    slow = NOISE_ON_TWO_SITES.replace("size_mib = 0.01", "size_mib = 0.01\nsleep_seconds = 0.3")
    with anyio.fail_after(90):
        async with federation(kits, tmp_path, sites=sites) as fed:
            core = fed.server.core
            job_id = await fed.admin.submit(fed.job_dir("noise", slow))
            await poll_until(lambda: _detail(core, job_id) == "running")
            record = core.store.folder(job_id) / "record.json"
            good = record.read_bytes()
            record.write_bytes(b"{damaged")
            with capture_logs() as logs:
                # the job's next step reads its record: at the latest, at its end
                await poll_until(lambda: job_id in core.interrupted and job_id not in core.jobs)
            (logged,) = [e for e in logs if e["event"] == "job.unreadable"]
            assert str(record) in logged["reason"]
            # The server still answers, and says what happened to the job.
            status = await fed.admin.status()
            assert status["interrupted"][job_id].startswith(
                "its stored record cannot be read (not a job record: Expecting property name"
            )
            with pytest.raises(AdminError) as refused:
                await fed.admin.job(job_id)
            assert refused.value.code == "server_error"
            assert "record of job" in str(refused.value)
            assert str(tmp_path) not in str(refused.value)
            assert record.read_bytes() == b"{damaged"

        # A start with the record still damaged: the server starts, and says why the job waits.
        with capture_logs() as logs:
            async with federation(kits, tmp_path, sites=sites) as fed:
                status = await fed.admin.status()
                assert list(status["interrupted"]) == [job_id]
        assert [e["job"] for e in logs if e["event"] == "job.unreadable"] == [job_id]

        record.write_bytes(good)  # the operator mends it and restarts the server
        async with federation(kits, tmp_path, sites=sites) as fed:
            result = await fed.admin.wait(job_id, timeout=60)
    assert result["status"] == "finished", result


def _detail(core: ServerCore, job_id: str) -> str:
    """What the server says the job is doing ("" once it no longer runs here)."""
    running = core.jobs.get(job_id)
    return running.detail if running is not None else ""


async def test_a_job_waiting_for_its_sites_names_those_not_connected(
    kits: Path, tmp_path: Path
) -> None:
    """A job cannot start before ``min_sites`` of its sites are connected: its view says which
    are missing, so the lead knows which hospital to call."""
    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=["site-1"]) as fed:
            job_id = await fed.admin.submit(fed.job_dir("noise", NOISE_ON_TWO_SITES))
            core = fed.server.core
            await poll_until(lambda: _detail(core, job_id).startswith("waiting"))
            view = (await fed.admin.job(job_id))["job"]
            assert view["detail"] == (
                "waiting for sites: 1 of 2 connected (2 needed); not connected: site-2"
            )
            await fed.start_site("site-2")  # the second hospital comes online: the job runs
            result = await fed.admin.wait(job_id, timeout=50)
    assert result["status"] == "finished", result


async def test_a_wait_on_an_interrupted_job_ends_at_once_and_says_what_resumes_it(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job the server interrupted moves no more until the server restarts: a wait that was
    following it ends when it stops, one begun after ends at once, the command line says why and
    what resumes it; and the same client, once the server has restarted, waits for the job to
    finish (the restarted server's views are not taken for older than the last one before)."""
    watching = threading.Event()  # a wait follows the job
    full = True
    real_save = CheckpointWriter.save

    def save(writer: CheckpointWriter, checkpoint: Checkpoint) -> Path:  # in a worker thread
        if checkpoint.round >= 2 and full:
            watching.wait(timeout=30)  # the disk fills up while the wait follows the job
            raise no_space()
        return real_save(writer, checkpoint)

    monkeypatch.setattr(CheckpointWriter, "save", save)
    reason = "its state cannot be saved: No space left on device"
    address = ("127.0.0.1", free_port())
    workspace = tmp_path / "server"
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    (job_dir / "job.toml").write_text(NOISE_ON_TWO_SITES)

    async def serve(
        stop: anyio.Event, stopped: anyio.Event, *, task_status: anyio.abc.TaskStatus[None]
    ) -> None:
        try:
            async with ServerNode(
                kits / "server", workspace, host=address[0], port=address[1], site_wait=5
            ):
                task_status.started()
                await stop.wait()
        finally:
            stopped.set()

    with anyio.fail_after(100):
        async with anyio.create_task_group() as servers, AsyncExitStack() as sites:
            stop, stopped = anyio.Event(), anyio.Event()
            await servers.start(serve, stop, stopped)
            for name in ("site-1", "site-2"):
                site = SiteNode(kits / name, tmp_path / name, server=address, backoff=(0.05, 0.5))
                await sites.enter_async_context(site)
            async with AdminClient(kits / ADMIN, server=address, timeout=30) as admin:
                job_id = await admin.submit(job_dir)
                following = await admin.wait(job_id, timeout=20, on_change=lambda _: watching.set())
                begun_after = await admin.wait(job_id, timeout=20)
                argv = ["--server", f"{address[0]}:{address[1]}", "wait", job_id, "--timeout", "20"]
                command_line = await anyio.to_thread.run_sync(
                    lambda: subprocess.run(
                        [sys.executable, "-m", "flrt", "admin", str(kits / ADMIN), *argv],
                        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
                        capture_output=True,
                        text=True,
                        timeout=60,
                        check=False,
                    )
                )
                full = False  # Lead IT frees some space and restarts the server
                stop.set()
                await stopped.wait()
                stop, stopped = anyio.Event(), anyio.Event()
                await servers.start(serve, stop, stopped)
                resumed = await admin.wait(job_id, timeout=50)
                stop.set()
    for job in (following, begun_after):
        assert (job["status"], job["round"], job["interrupted"]) == ("running", 1, reason), job
    assert command_line.returncode == 1, command_line.stderr
    assert command_line.stdout == f"{job_id} interrupted round 1/3\n"
    assert command_line.stderr.splitlines() == [
        f"flrt: error: job {job_id} was interrupted at round 1/3: {reason}; it resumes from its"
        " last saved round when the server restarts: mend the cause, then restart the server"
        " (flrt server start)"
    ]
    assert (resumed["status"], resumed["round"], resumed["interrupted"]) == ("finished", 3, None)


@pytest.mark.parametrize("fails", ["job.toml", "record.json", "rename", "fsync"])
def test_a_submission_the_disk_cannot_hold_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fails: str
) -> None:
    jobs = tmp_path / "jobs"
    real_replace = os.replace

    def write(path: Path, data: bytes) -> None:
        if path.name == fails:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write(path, data)

    def replace(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
        if fails == "rename" and Path(target).parent == jobs:
            raise no_space()
        real_replace(source, target)

    def fsync(path: Path) -> None:
        if fails == "fsync":  # the job's folder was renamed into place, but is not durable
            raise no_space()
        fsync_directory(path)

    monkeypatch.setattr("flrt.jobstore.atomic_write", write)
    monkeypatch.setattr("flrt.jobstore.fsync_directory", fsync)
    monkeypatch.setattr(os, "replace", replace)
    store = JobStore(jobs)
    text = NOISE.format(spec="flrt.examples.noise:NoiseTrainer")
    with pytest.raises(OSError, match="No space left on device"):
        store.create(text, submitted_by="lead", organisation="Lead")
    assert list(jobs.iterdir()) == []
    assert store.entries() == []


async def test_a_job_submitted_to_a_full_disk_is_refused_with_the_reason(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    full = True

    def write(path: Path, data: bytes) -> None:
        if full:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        atomic_write(path, data)

    def entries(store: JobStore) -> list[JobEntry]:
        raise PermissionError(errno.EACCES, "Permission denied", str(store.root))

    monkeypatch.setattr("flrt.jobstore.atomic_write", write)
    text = NOISE_ON_TWO_SITES
    with anyio.fail_after(60):
        async with federation(kits, tmp_path, sites=["site-1", "site-2"]) as fed:
            with capture_logs() as logs, pytest.raises(AdminError) as refused:
                await fed.admin.submit(fed.job_dir("noise", text))
            assert refused.value.code == "server_error"
            assert refused.value.reason == (
                "the server cannot store the job: No space left on device"
            )
            jobs = tmp_path / "server" / "jobs"
            assert list(jobs.iterdir()) == []  # nothing half-written
            (event,) = [e for e in logs if e["event"] == "job.not_stored"]
            assert event["reason"] == "No space left on device"
            assert event["file"].endswith("job.toml")  # where, for the operator, not the admin
            # Any other command the file system fails is answered as well, not an actor failure.
            with monkeypatch.context() as patched:
                patched.setattr(JobStore, "entries", entries)
                with pytest.raises(AdminError) as failed:
                    await fed.admin.jobs()
            assert failed.value.code == "server_error"
            assert failed.value.reason == (
                "the server cannot do it: its file system failed (Permission denied)"
            )
            # Space is freed: the same server takes the same job.
            full = False
            job_id = await fed.admin.submit(fed.job_dir("noise", text))
            result = await fed.admin.wait(job_id, timeout=50)
    assert result["status"] == "finished", result


@pytest.fixture
def taken_port() -> Iterator[int]:
    """A port another program listens on."""
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen()
        port: int = other.getsockname()[1]
        yield port


async def test_a_port_the_server_cannot_listen_on_is_logged_and_no_job_starts(
    kits: Path, tmp_path: Path, taken_port: int
) -> None:
    with capture_logs() as logs, pytest.raises(ConnectionBrokenError) as refused:
        async with ServerNode(
            kits / "server", tmp_path / "server", host="127.0.0.1", port=taken_port
        ):
            pass
    assert "Address already in use" in str(refused.value)
    events = [e["event"] for e in logs if e["event"].startswith("server.")]
    assert events == ["server.listen_failed", "server.stopped"]  # never 'started'
    (failed,) = [e for e in logs if e["event"] == "server.listen_failed"]
    assert failed == {
        "event": "server.listen_failed",
        "host": "127.0.0.1",
        "port": taken_port,
        "peers": "sites and admins",
        "reason": "Address already in use",
        "log_level": "error",
    }


async def test_a_server_says_it_started_once_it_listens(kits: Path, tmp_path: Path) -> None:
    with capture_logs() as logs:
        async with ServerNode(kits / "server", tmp_path / "server", host="127.0.0.1", port=0):
            pass
    events = [e["event"] for e in logs if e["event"].startswith("server.")]
    assert events == ["server.listening", "server.started", "server.stopped"]


def test_flrt_server_start_on_a_port_in_use_says_why_in_its_log(
    kits: Path, tmp_path: Path, taken_port: int
) -> None:
    workspace = tmp_path / "srv"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flrt",
            "server",
            "start",
            str(kits / "server"),
            "--workspace",
            str(workspace),
            "--host",
            "127.0.0.1",
            "--port",
            str(taken_port),
            "--quiet",
        ],
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1, result.stderr
    assert result.stderr.splitlines() == [
        f"flrt: error: cannot listen on 127.0.0.1:{taken_port}: Address already in use"
    ]
    lines = (workspace / "logs" / "server.jsonl").read_text().splitlines()
    events = [json.loads(line) for line in lines]
    assert [e["event"] for e in events] == ["server.listen_failed", "server.stopped"]
    assert events[0]["host"] == "127.0.0.1"
    assert events[0]["port"] == taken_port
    assert events[0]["reason"] == "Address already in use"
    assert events[0]["level"] == "error"


async def test_a_local_folder_the_site_may_not_read_is_a_config_error(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = Path.is_file

    def is_file(path: Path) -> bool:  # what chmod 000 local/ does to a user who is not root
        if path.parent.name == "local":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "is_file", is_file)
    kit = kits / "site-1"
    with pytest.raises(ConfigError) as caught:
        async with SiteNode(kit, tmp_path / "site", server=("127.0.0.1", 9)):
            pass
    assert (
        str(caught.value) == f"{kit / 'local' / 'privacy.toml'}: cannot be read: Permission denied"
    )


async def test_a_data_location_that_is_not_there_is_said_when_the_site_starts(
    kits: Path, tmp_path: Path
) -> None:
    missing = tmp_path / "mnt" / "wdbc.csv"
    with capture_logs() as logs:
        async with SiteNode(
            kits / "site-1",
            tmp_path / "site",
            data={"breast_cancer": missing},
            server=("127.0.0.1", 9),
        ):
            pass
    warnings = [e for e in logs if e["event"] == "site.data_missing"]
    assert warnings == [
        {
            "event": "site.data_missing",
            "key": "breast_cancer",
            "path": str(missing),
            "log_level": "warning",
        }
    ]


async def test_a_site_kit_of_another_project_is_told_to_check_the_project(
    kits: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    provision(parse_project(project_text(8443).replace("node-tests", "other-project")), other)
    async with ServerNode(kits / "server", tmp_path / "server", host="127.0.0.1", port=0) as server:
        with capture_logs() as logs:
            async with SiteNode(
                other / "kits" / "site-1",
                tmp_path / "site",
                server=("127.0.0.1", server.port),
                backoff=(0.05, 0.5),
            ) as site:
                await poll_until(lambda: bool(site.connect_errors), timeout=20)
    (failed, *_) = [e for e in logs if e["event"] == "site.connect_failed"]
    assert "certificate" in failed["reason"]
    assert failed["hint"].startswith("the server's certificate is not from this kit's project CA")


async def test_a_job_file_saved_with_a_byte_order_mark_is_read() -> None:
    text = NOISE.format(spec="flrt.examples.noise:NoiseTrainer")
    assert loads_job("\ufeff" + text).name == "noise"
