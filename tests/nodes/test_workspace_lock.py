"""One node per workspace: a second server (or a site) started on a workspace that a node holds is
refused in one line naming the workspace and the holder's PID, before it reads or writes anything
there; the lock ends with its holder, however that ends."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from flrt._workspace import LOCK_FILE, WorkspaceInUseError, lock_workspace
from flrt.errors import ConfigError
from flrt.server import ServerNode
from flrt.site import SiteNode

ROOT = Path(__file__).resolve().parents[2]
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}

HOLD = """\
import sys
from pathlib import Path
from flrt._workspace import lock_workspace
lock = lock_workspace(Path(sys.argv[1]))
print("locked", flush=True)
sys.stdin.read()
"""


@pytest.fixture
def holder(tmp_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process that holds ``tmp_path / "ws"`` until its stdin closes."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "ws")],
        env=ENV,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == "locked\n"
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


def test_a_workspace_is_one_nodes_at_a_time(tmp_path: Path) -> None:
    workspace = tmp_path / "new" / "ws"
    with lock_workspace(workspace) as lock:
        assert (workspace / LOCK_FILE).read_text() == f"{os.getpid()}\n"
        with pytest.raises(WorkspaceInUseError) as refused:
            lock_workspace(workspace)
    assert not lock.held
    error = refused.value
    assert isinstance(error, ConfigError)
    assert (error.workspace, error.pid) == (workspace, os.getpid())
    assert str(error) == (
        f"the workspace {workspace} is in use by another flrt node of this process"
        f" (PID {os.getpid()}): stop it, or give this node another workspace"
    )
    lock_workspace(workspace).release()  # released: the next node takes it


@pytest.mark.parametrize("ends", ["stops", "is killed"])
def test_a_workspace_held_by_another_process_names_it_until_it_ends(
    tmp_path: Path, holder: subprocess.Popen[str], ends: str
) -> None:
    workspace = tmp_path / "ws"
    with pytest.raises(WorkspaceInUseError) as refused:
        lock_workspace(workspace)
    assert refused.value.pid == holder.pid
    assert f"in use by another flrt node (PID {holder.pid})" in str(refused.value)
    if ends == "stops":
        assert holder.stdin is not None
        holder.stdin.close()
    else:
        holder.send_signal(signal.SIGKILL)  # no stale lock after a crash
    holder.wait(timeout=30)
    lock_workspace(workspace).release()


def test_a_lock_file_without_a_pid_still_refuses(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    with lock_workspace(workspace):
        (workspace / LOCK_FILE).write_text("")  # its holder could not write it (a full disk)
        with pytest.raises(WorkspaceInUseError) as refused:
            lock_workspace(workspace)
    assert refused.value.pid is None
    assert "is in use by another flrt node: stop it" in str(refused.value)


@pytest.mark.anyio
async def test_a_second_server_on_a_workspace_is_refused_before_it_reads_anything(
    kits: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "server"
    async with ServerNode(kits / "server", workspace, host="127.0.0.1", port=0):
        # A submission the first server is writing: a second one's job store would remove it.
        staging = workspace / "jobs" / ".new-20261123t000000000z-0000000000.tmp"
        staging.mkdir()
        with capture_logs() as logs, pytest.raises(WorkspaceInUseError) as refused:
            async with ServerNode(kits / "server", workspace, host="127.0.0.1", port=0):
                pass
        assert refused.value.pid == os.getpid()
        assert staging.is_dir()
        assert [e["event"] for e in logs] == []  # not started, not stopped, no job resumed
    async with ServerNode(kits / "server", workspace, host="127.0.0.1", port=0):
        pass  # the first one stopped: its workspace is free


@pytest.mark.anyio
async def test_a_second_site_on_a_workspace_is_refused_an_embedded_one_too(
    kits: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "site"
    nowhere = ("127.0.0.1", 9)  # no server needed: the refusal comes first
    async with SiteNode(kits / "site-1", workspace, server=nowhere):
        with pytest.raises(WorkspaceInUseError) as refused:
            async with SiteNode(kits / "site-2", workspace, server=nowhere):
                pass
        assert refused.value.pid == os.getpid()
        assert str(workspace) in str(refused.value)
    async with SiteNode(kits / "site-2", workspace, server=nowhere):
        pass  # the first one stopped: its workspace is free


# ----------------------------------------------------------------------------- the command line


def flrt(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flrt", *map(str, args)],
        cwd=cwd,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=30,  # a second server that is not refused runs until killed
        check=False,
    )


def test_flrt_server_start_on_a_workspace_in_use_is_one_line_naming_the_holder(
    kits: Path, tmp_path: Path
) -> None:
    workspace = tmp_path / "srv"
    server = [sys.executable, "-m", "flrt", "server", "start", str(kits / "server")]
    options = ["--workspace", str(workspace), "--host", "127.0.0.1", "--port", "0", "--quiet"]
    first = subprocess.Popen(
        [*server, *options],
        cwd=tmp_path,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert first.stdout is not None
        assert "listening" in first.stdout.readline()
        log = (workspace / "logs" / "server.jsonl").read_text()
        commands: list[list[str | Path]] = [
            ["server", "start", kits / "server", *options],
            ["site", "start", kits / "site-1", "--workspace", workspace, "--quiet"],
        ]
        for command in commands:
            second = flrt(*command, cwd=tmp_path)
            assert second.returncode == 1, second.stderr
            assert second.stderr.splitlines() == [
                f"flrt: error: the workspace {workspace} is in use by another flrt node"
                f" (PID {first.pid}): stop it, or give this node another workspace"
            ]
        assert (workspace / "logs" / "server.jsonl").read_text() == log  # nothing written
        first.send_signal(signal.SIGINT)
        _, err = first.communicate(timeout=30)
        assert first.returncode == 0, err
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
