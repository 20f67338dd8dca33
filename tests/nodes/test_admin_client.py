"""What an operator meets when the admin client cannot do its work: a server that is down or slow
to come back, a certificate that will never be accepted, a kit that is not an admin's or was
changed, a job folder that is not there, a job id the server does not know, and Ctrl-C.

The client keeps dialling for as long as it was told (``connect_timeout``, ``--command-timeout``,
``wait --timeout``), not for a fixed time, and stops at the first failure that dialling again
cannot mend. The command line says each problem in one line and exits non-zero, with no traceback.

Time bounds are generous on purpose (a loaded 2-core machine): they tell "follows the 1 or 2 s the
operator asked for" from "the 30 s the client used to take whatever it was told".
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, cast

import anyio
import anyio.abc
import anyio.lowlevel
import numpy as np
import pytest

from flrt import _admin_service
from flrt.admin import AdminClient, ServerUnreachableError, _write_download, read_job
from flrt.cli import main
from flrt.cli._admin_run import _download
from flrt.errors import AdminError, JobError
from flrt.server import ServerNode
from security.kit import load_kit
from security.pki import Role
from security.provision import revoke
from security.tls import server_ssl_context_from_kit
from tests._interrupt import interruptible, piped
from tests.nodes._project import ADMIN, LEAD, MEMBER, free_port, provision_project
from transport.bus import Node
from transport.errors import (
    CertificateProblem,
    ConnectionBrokenError,
    HandshakeError,
    HandshakeFailure,
    TransportError,
)

ROOT = Path(__file__).resolve().parents[2]

#: Far above what a failure that is not retried takes, far below the budget it must not spend.
FAST = 15.0


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project whose kits dial a port nobody listens on, with the lead's kit revoked."""
    workspace = tmp_path_factory.mktemp("admin") / "ws"
    kits = provision_project(workspace, port=free_port())
    revoke(workspace, LEAD)
    return kits


@pytest.fixture(scope="module")
def stranger(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The project admin's kit of another project: same names, another CA."""
    return provision_project(tmp_path_factory.mktemp("other") / "ws") / ADMIN


@asynccontextmanager
async def server(kits: Path, workspace: Path, port: int = 0) -> AsyncIterator[ServerNode]:
    async with ServerNode(kits / "server", workspace, host="127.0.0.1", port=port) as node:
        yield node


def flrt(*args: str, timeout: float = 60) -> tuple[subprocess.CompletedProcess[str], float]:
    """Run ``flrt`` as an operator does; the result and how long it took."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "flrt", *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    return result, time.monotonic() - started


def one_line_error(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert lines[0].startswith("flrt: "), stderr
    return lines[0]


# ------------------------------------------------------------------ the client


@pytest.mark.anyio
async def test_an_unreachable_server_is_given_up_after_connect_timeout(kits: Path) -> None:
    port = free_port()
    started = anyio.current_time()
    with pytest.raises(ServerUnreachableError) as failed:
        async with AdminClient(kits / ADMIN, server=("127.0.0.1", port), connect_timeout=1.0):
            pass
    elapsed = anyio.current_time() - started
    assert 0.9 < elapsed < FAST
    error = failed.value
    assert not error.final
    assert error.attempts >= 2  # it did retry within the budget
    assert list(error.reasons) == [f"127.0.0.1:{port}"]
    assert str(error).startswith(f"cannot reach the server at 127.0.0.1:{port}: tried for ")


@pytest.mark.anyio
async def test_a_server_that_comes_up_within_the_budget_is_reached(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    port = free_port()
    refused = anyio.Event()
    dial = Node.connect

    async def counted(self: Node, *args: Any, **kwargs: Any) -> Any:
        try:
            return await dial(self, *args, **kwargs)
        except TransportError:
            refused.set()
            raise

    monkeypatch.setattr(Node, "connect", counted)
    async with anyio.create_task_group() as tg:
        reached = anyio.Event()

        async def admin() -> None:
            async with AdminClient(
                kits / ADMIN, server=("127.0.0.1", port), connect_timeout=60
            ) as client:
                assert await client.jobs() == []
            reached.set()

        with anyio.fail_after(60):
            tg.start_soon(admin)
            await refused.wait()  # the client's first dial found nobody
            async with server(kits, tmp_path / "server", port):
                await reached.wait()


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("who", "says"),
    [
        ("another project's admin", "certificate verification failed"),
        ("revoked lead", "refused (revoked)"),
    ],
)
async def test_a_certificate_failure_is_not_retried(
    kits: Path, stranger: Path, tmp_path: Path, who: str, says: str
) -> None:
    kit = stranger if who == "another project's admin" else kits / LEAD
    async with server(kits, tmp_path / "server") as node:
        started = anyio.current_time()
        with pytest.raises(ServerUnreachableError) as failed:
            async with AdminClient(kit, server=("127.0.0.1", node.port), connect_timeout=60):
                pass
        elapsed = anyio.current_time() - started
        refusals = list(node.node.refusals)
    assert elapsed < FAST
    assert failed.value.final
    assert failed.value.attempts == 1
    assert says in str(failed.value)
    assert f"127.0.0.1:{node.port}" in str(failed.value)
    assert len(refusals) <= 1, refusals  # the server saw one dial, not one every 2 s


#: A text that holds every mark the client once looked for in a failure's text.
MISLEADING = (
    "certificate verification failed: self-signed certificate in certificate chain;"
    " tlsv1 alert unknown ca; peer refused (revoked); does not speak flrt/1; wrong version number"
)


async def dial_failing_with(
    kits: Path, monkeypatch: pytest.MonkeyPatch, error: HandshakeError, connect_timeout: float
) -> ServerUnreachableError:
    """What the client raises when every dial fails with ``error``."""

    async def refused(self: Node, *args: Any, **kwargs: Any) -> Any:
        await anyio.lowlevel.checkpoint()
        raise error

    monkeypatch.setattr(Node, "connect", refused)
    address = ("127.0.0.1", free_port())
    with pytest.raises(ServerUnreachableError) as failed:
        async with AdminClient(kits / ADMIN, server=address, connect_timeout=connect_timeout):
            pass
    return failed.value


@pytest.mark.anyio
@pytest.mark.parametrize("kind", [HandshakeFailure.TRANSIENT, HandshakeFailure.UNKNOWN])
async def test_a_failure_of_a_retryable_kind_is_retried_whatever_its_text(
    kits: Path, monkeypatch: pytest.MonkeyPatch, kind: HandshakeFailure
) -> None:
    error = HandshakeError(MISLEADING, kind=kind)
    started = anyio.current_time()
    unreachable = await dial_failing_with(kits, monkeypatch, error, connect_timeout=1.0)
    assert anyio.current_time() - started > 0.9  # it used its budget
    assert not unreachable.final
    assert unreachable.attempts >= 2
    assert "is this kit from the server's project?" not in str(unreachable)


@pytest.mark.anyio
@pytest.mark.parametrize(
    ("kind", "certificate", "alert", "foreign"),
    [
        (HandshakeFailure.PEER_CERTIFICATE, CertificateProblem.FOREIGN_CA, None, True),
        (HandshakeFailure.PEER_CERTIFICATE, CertificateProblem.EXPIRED, None, False),
        (HandshakeFailure.TLS_ALERT, None, "unknown_ca", True),
        (HandshakeFailure.TLS_ALERT, None, "certificate_revoked", False),
        (HandshakeFailure.IDENTITY_REFUSED, None, None, False),
        (HandshakeFailure.NOT_FLRT, None, None, False),
    ],
)
async def test_a_failure_of_a_final_kind_ends_the_dialling_whatever_its_text(
    kits: Path,
    monkeypatch: pytest.MonkeyPatch,
    kind: HandshakeFailure,
    certificate: CertificateProblem | None,
    alert: str | None,
    foreign: bool,
) -> None:
    """The kind alone decides "final" and "from another project?": a bland text, or one that
    looks like a foreign CA while the certificate has only expired, changes nothing."""
    text = "the server said no" if not foreign else "nothing about CAs here"
    if certificate is CertificateProblem.EXPIRED:
        text = MISLEADING
    error = HandshakeError(text, kind=kind, certificate=certificate, alert=alert)
    unreachable = await dial_failing_with(kits, monkeypatch, error, connect_timeout=60)
    assert unreachable.final
    assert unreachable.attempts == 1
    assert unreachable.foreign_ca is foreign
    assert ("is this kit from the server's project?" in str(unreachable)) is foreign


#: A job that waits for three sites; none comes, so it is never over unless aborted.
WAITING_JOB = """\
name = "waiting"
[workflow]
name = "fedavg"
rounds = 1
sites_per_round = 3
min_sites = 3
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
"""


@asynccontextmanager
async def not_ready_server(kits: Path, port: int) -> AsyncIterator[Node]:
    """The server's address answered by a node with the server's certificate that is not ready: it
    closes every connection at once, as a server still starting might. (The stopped server's
    CLOSE ended the client's old session.) A client sees transient failures, never a final one."""

    def authenticate(der: bytes) -> str:
        raise ConnectionBrokenError("not ready")  # closed without a word: try again later

    context = server_ssl_context_from_kit(load_kit(kits / "server"))
    async with Node("server") as node:
        await node.serve(context, authenticate, host="127.0.0.1", port=port)
        yield node


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_a_wait_outlives_a_server_away_longer_than_the_connect_budget(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``connect_timeout`` bounds reaching the server for a command; a wait that has begun dials a
    lost server again for as long as it waits. The server stops, its address ends the client's
    session and then turns every dial away for twice the budget, then the server is back: the
    wait ends with the job's outcome, not with :class:`ServerUnreachableError`."""
    budget = 1.0
    port = free_port()
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(WAITING_JOB)
    away_since: float | None = None
    away_long = anyio.Event()  # the client has failed to open a session for twice its budget
    dial = Node.connect

    async def watched_dial(self: Node, *args: Any, **kwargs: Any) -> Any:
        nonlocal away_since
        try:
            return await dial(self, *args, **kwargs)
        except TransportError:
            now = anyio.current_time()
            away_since = now if away_since is None else away_since
            if now - away_since > 2 * budget:
                away_long.set()
            raise

    monkeypatch.setattr(Node, "connect", watched_dial)
    seen: list[str] = []
    subscribed = anyio.Event()

    def changed(view: dict[str, Any]) -> None:
        seen.append(view["status"])
        subscribed.set()

    workspace = tmp_path / "server"
    address = ("127.0.0.1", port)
    outcome: dict[str, Any] = {}
    stop, stopped = anyio.Event(), anyio.Event()

    async def first_server(*, task_status: anyio.abc.TaskStatus[None]) -> None:
        async with server(kits, workspace, port):
            task_status.started()
            await stop.wait()
        stopped.set()

    with anyio.fail_after(60):
        async with anyio.create_task_group() as servers:
            await servers.start(first_server)
            admin = AdminClient(kits / ADMIN, server=address, connect_timeout=budget)
            async with admin, anyio.create_task_group() as tg:
                job_id = await admin.submit(job)

                async def wait() -> None:
                    outcome.update(await admin.wait(job_id, timeout=50, on_change=changed))
                    waited.set()

                waited = anyio.Event()
                tg.start_soon(wait)
                await subscribed.wait()
                stop.set()
                await stopped.wait()
                async with not_ready_server(kits, port):
                    await away_long.wait()
                async with server(kits, workspace, port):
                    async with AdminClient(kits / ADMIN, server=address) as other:
                        await other.abort(job_id)
                    await waited.wait()  # the waiting client is back, and told
    assert outcome["job_id"] == job_id
    assert outcome["status"] == "aborted"
    assert seen[-1] == "aborted"


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_an_unknown_job_is_named_by_the_command_called(kits: Path, tmp_path: Path) -> None:
    async with server(kits, tmp_path / "server") as node:
        address = ("127.0.0.1", node.port)
        async with AdminClient(kits / ADMIN, server=address) as admin:
            with pytest.raises(AdminError) as waited:
                await admin.wait("no-such-job", timeout=30)
            with pytest.raises(AdminError) as watched:
                async for _ in admin.watch("no-such-job"):
                    pass
            assert await admin.jobs() == []  # a refused subscription spoils no later command
    assert (waited.value.command, waited.value.code) == ("wait", "unknown_job")
    assert str(waited.value) == "wait: no job 'no-such-job'"
    assert str(watched.value) == "watch: no job 'no-such-job'"


#: Each command of the client, called as a test calls it.
CALLS: dict[str, Callable[[AdminClient, str, Path], Awaitable[object]]] = {
    "submit": lambda admin, job_id, job: admin.submit(job),
    "jobs": lambda admin, job_id, job: admin.jobs(),
    "status": lambda admin, job_id, job: admin.status(),
    "job": lambda admin, job_id, job: admin.job(job_id),
    "abort": lambda admin, job_id, job: admin.abort(job_id),
    "download": lambda admin, job_id, job: admin.download(job_id, job / "out"),
    "wait": lambda admin, job_id, job: admin.wait(job_id, timeout=30),
    "watch": lambda admin, job_id, job: anext(aiter(admin.watch(job_id))),
}


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("own_jobs", [False, True], ids=["none", "own jobs"])
async def test_a_refusal_names_the_command_called(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, own_jobs: bool
) -> None:
    """The member's role may do nothing at all, or everything but only on its own jobs: every
    command it calls is refused, and the refusal names that command (``wait``, not the ``watch``
    it is on the wire)."""
    rights = dict.fromkeys(("view", "submit", "manage", "download"), _admin_service._OWN_JOB)
    monkeypatch.setattr(
        _admin_service, "RIGHTS", {**_admin_service.RIGHTS, Role.MEMBER: rights if own_jobs else {}}
    )
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(WAITING_JOB)
    refusals: dict[str, str] = {}
    with anyio.fail_after(60):
        async with server(kits, tmp_path / "server") as node:
            address = ("127.0.0.1", node.port)
            async with AdminClient(kits / ADMIN, server=address) as admin:
                job_id = await admin.submit(job)  # the project admin's job
            async with AdminClient(kits / MEMBER, server=address) as member:
                for command, call in CALLS.items():
                    if own_jobs and command in ("submit", "jobs", "status"):
                        continue  # not about a job: allowed
                    with pytest.raises(AdminError) as refused:
                        await call(member, job_id, job)
                    assert (refused.value.command, refused.value.code) == (command, "denied")
                    refusals[command] = str(refused.value)
    if own_jobs:
        verbs = {"job": "view", "wait": "wait for"}
        assert refusals == {
            command: f"{command}: role member may only {verbs.get(command, command)} its own"
            f" jobs; {job_id} was submitted by {ADMIN}"
            for command in ("job", "abort", "download", "wait", "watch")
        }
    else:
        assert refusals == {
            command: f"{command}: role member may not {command}" for command in CALLS
        }


def test_read_job_names_what_is_missing(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "binary.toml").write_bytes(b"\xff\xfe\x00")
    (tmp_path / "job").mkdir()
    (tmp_path / "job" / "job.toml").write_text('name = "x"\n')
    for given, reason in (
        (tmp_path / "absent", "no such job folder or file"),
        (tmp_path / "empty", "the folder has no job.toml"),
        (tmp_path / "binary.toml", "not a job file (not UTF-8 text)"),
    ):
        with pytest.raises(JobError) as refused:
            read_job(given)
        assert str(refused.value).endswith(reason)
        assert str(given) in str(refused.value)
    assert read_job(tmp_path / "job") == (tmp_path / "job" / "job.toml", 'name = "x"\n')


# ------------------------------------------------------------------ the command line


def test_the_command_timeout_bounds_reaching_the_server(kits: Path) -> None:
    port = free_port()
    address = f"127.0.0.1:{port}"
    result, elapsed = flrt(
        "admin", str(kits / ADMIN), "--server", address, "--command-timeout", "2", "jobs"
    )
    assert result.returncode == 1
    assert elapsed < FAST
    line = one_line_error(result.stderr)
    assert f"cannot reach the server at {address}: tried for 2." in line
    assert "last: " in line


def test_wait_timeout_bounds_reaching_the_server(kits: Path) -> None:
    address = f"127.0.0.1:{free_port()}"
    result, elapsed = flrt(
        "admin", str(kits / ADMIN), "--server", address, "wait", "some-job", "--timeout", "2"
    )
    assert result.returncode == 1
    assert elapsed < FAST
    assert f"cannot reach the server at {address}" in one_line_error(result.stderr)


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])  # the server's loop; the client is a process
async def test_the_command_line_says_a_certificate_failure_at_once(
    kits: Path, stranger: Path, tmp_path: Path
) -> None:
    async with server(kits, tmp_path / "server") as node:
        address = f"127.0.0.1:{node.port}"
        result, elapsed = await anyio.to_thread.run_sync(
            lambda: flrt(
                "admin", str(stranger), "--server", address, "--command-timeout", "60", "status"
            )
        )
    assert result.returncode == 1
    assert elapsed < FAST
    line = one_line_error(result.stderr)
    assert f"cannot use the server at {address}: certificate verification failed" in line
    assert "is this kit from the server's project? (not retried" in line


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])  # the server's loop; the client is a process
async def test_wait_gives_up_on_a_server_gone_at_its_own_timeout_and_says_so(
    kits: Path, tmp_path: Path
) -> None:
    """Once waiting, the command keeps dialling a server that went away until ``--timeout``, not
    ``--command-timeout``, and then says the server is gone rather than that the job runs on."""
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text(WAITING_JOB)
    async with server(kits, tmp_path / "server") as node:
        address = f"127.0.0.1:{node.port}"
        async with AdminClient(kits / ADMIN, server=("127.0.0.1", node.port)) as admin:
            job_id = await admin.submit(job)
        argv = ["--server", address, "--command-timeout", "1", "wait", job_id, "--timeout", "8"]
        proc = await anyio.to_thread.run_sync(
            lambda: piped([sys.executable, "-m", "flrt", "admin", str(kits / ADMIN), *argv])
        )
        try:
            assert proc.stdout is not None
            first = await anyio.to_thread.run_sync(proc.stdout.readline)  # it is waiting
            assert first.startswith(f"{job_id} running"), first
        except BaseException:
            proc.kill()
            raise
    gone = time.monotonic()  # the server stopped for good
    try:
        _, err = await anyio.to_thread.run_sync(lambda: proc.communicate(timeout=60))
    finally:
        proc.kill()
    waited = time.monotonic() - gone
    assert proc.returncode == 1
    assert waited > 2, waited  # not given up after --command-timeout's 1 s
    assert one_line_error(err) == (
        f"flrt: error: gave up on job {job_id} after 8 s: the server went away"
        " and has not answered since (the job may still be running there)"
    )


@pytest.mark.anyio
@pytest.mark.parametrize("anyio_backend", ["trio"])
@pytest.mark.parametrize("command", ["abort", "wait"])
async def test_an_unknown_job_is_one_line_naming_the_command(
    kits: Path, tmp_path: Path, command: str
) -> None:
    async with server(kits, tmp_path / "server") as node:
        address = f"127.0.0.1:{node.port}"
        result, _ = await anyio.to_thread.run_sync(
            lambda: flrt("admin", str(kits / ADMIN), "--server", address, command, "no-such-job")
        )
    assert result.returncode == 1
    assert one_line_error(result.stderr) == f"flrt: error: {command}: no job 'no-such-job'"


@pytest.mark.parametrize(
    ("case", "says"),
    [
        ("site kit", "a site kit cannot use the admin console"),
        ("no kit", "does not exist"),
        ("not a kit", "not a startup kit"),
        ("tampered kit", "startup/node.toml was changed after the kit was signed"),
        ("no job folder", "no such job folder or file"),
        ("no job.toml", "the folder has no job.toml"),
    ],
)
def test_a_wrong_kit_or_job_folder_is_one_line_before_dialling(
    kits: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], case: str, says: str
) -> None:
    kit = kits / ADMIN
    job = tmp_path / "job"
    job.mkdir()
    (job / "job.toml").write_text('name = "x"\n')
    if case == "site kit":
        kit = kits / "site-1"
    elif case == "no kit":
        kit = tmp_path / "nothing"
    elif case == "not a kit":
        kit = tmp_path / "empty"
        kit.mkdir()
    elif case == "tampered kit":
        kit = tmp_path / "kit"
        shutil.copytree(kits / ADMIN, kit)
        config = kit / "startup" / "node.toml"
        config.write_text(config.read_text().replace("port = ", "port = 1"))
    elif case == "no job folder":
        job = tmp_path / "absent"
    else:
        (job / "job.toml").unlink()
    # Nobody listens at the address: had the client dialled, it would have spent its 30 s.
    argv = ["admin", str(kit), "--server", f"127.0.0.1:{free_port()}", "submit", str(job)]
    started = time.monotonic()
    code = main(argv)
    assert time.monotonic() - started < FAST
    assert code == 1
    line = one_line_error(capsys.readouterr().err)
    assert says in line


class Downloaded:
    """An admin client whose download has arrived and is written where it was asked."""

    async def download(self, job_id: str, directory: Path) -> Path:
        body = {"job": {"job_id": job_id}, "round": 1, "finished": True, "rounds": []}
        weights = {"w": np.zeros(2, dtype=np.float32)}
        await anyio.to_thread.run_sync(_write_download, directory, body, weights)
        return directory


@pytest.mark.anyio
async def test_an_output_folder_that_cannot_be_written_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / "results").write_text("a file where the folder should be")
    args = argparse.Namespace(job_id="job-1", output=tmp_path / "results", json=False)
    assert await _download(cast(AdminClient, Downloaded()), args) == 1
    line = one_line_error(capsys.readouterr().err)
    assert line.startswith(f"flrt: error: cannot write {tmp_path / 'results'}")


@pytest.mark.timeout(60)
def test_ctrl_c_while_waiting_is_one_line(kits: Path) -> None:
    argv = ["admin", str(kits / ADMIN), "-v", "--server", f"127.0.0.1:{free_port()}", "wait", "x"]
    proc = interruptible([sys.executable, "-m", "flrt", *argv])
    try:
        assert proc.stderr is not None
        logged = ""
        while "admin.connect_failed" not in logged:  # it is dialling: now the operator gives up
            line = proc.stderr.readline()
            assert line, proc.communicate(timeout=30)
            logged += line
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert proc.returncode == 130
    assert "Traceback" not in err, err
    assert err.strip().splitlines()[-1] == "flrt: interrupted; the job keeps running on the server"
