"""What hospital IT sees when the machine or the input is wrong: one line naming the problem on
stderr, exit code 1 (2 for a bad argument), no stack trace, and nothing written where it should not
be. The commands run as a user runs them, in a child process."""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import anyio
import pytest

from flrt.cli import main
from flrt.cli._admin_run import _status
from tests.nodes._project import ADMIN, provision_project

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_project(tmp_path_factory.mktemp("project") / "ws")


def flrt(*args: str | Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "flrt", *map(str, args)],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 or code == 2, result.stderr  # argparse prints its usage first
    assert lines[-1].startswith("flrt"), result.stderr
    return lines[-1]


# ----------------------------------------------------------------------------- nodes


@pytest.mark.parametrize("command", ["server", "site"])
def test_a_workspace_that_cannot_be_written_is_named(
    kits: Path, tmp_path: Path, command: str
) -> None:
    kit = kits / ("server" if command == "server" else "site-1")
    not_a_folder = tmp_path / "notes.txt"
    not_a_folder.write_text("a file where the workspace should be")
    result = flrt(command, "start", kit, "--workspace", not_a_folder, "--quiet", cwd=tmp_path)
    line = one_line_error(result)
    assert f"the workspace {not_a_folder} cannot be written" in line


def test_a_sealed_kit_given_as_the_kit_folder_is_named_and_nothing_is_written(
    kits: Path, tmp_path: Path
) -> None:
    archive = tmp_path / "site-1.flrtkit"
    archive.write_bytes(b"FLRTKIT\x00 pretend sealed bytes")
    result = flrt("site", "start", archive, "--quiet", cwd=tmp_path)
    assert "is a file, not a kit folder" in one_line_error(result)
    assert archive.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-1.flrtkit"]


@pytest.mark.parametrize("command", ["server", "site"])
def test_a_kit_folder_that_does_not_exist_is_named_and_not_created(
    tmp_path: Path, command: str
) -> None:
    result = flrt(command, "start", tmp_path / "kits" / "hospital-a", "--quiet", cwd=tmp_path)
    assert "hospital-a: does not exist" in one_line_error(result)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("command", "kit", "says"),
    [
        ("site", ADMIN, "a project_admin kit cannot run a site: start it from the site's own kit"),
        ("site", "server", "a server kit cannot run a site: start it from the site's own kit"),
        ("server", "site-1", "a site kit cannot run the server: start it from the server's kit"),
    ],
)
def test_a_kit_of_another_role_is_refused_before_anything_is_written(
    kits: Path, tmp_path: Path, command: str, kit: str, says: str
) -> None:
    copy = tmp_path / "kit"
    shutil.copytree(kits / kit, copy)
    before = sorted(p.relative_to(copy) for p in copy.rglob("*"))
    result = flrt(command, "start", copy, "--quiet", cwd=tmp_path)  # the workspace: the kit
    assert says in one_line_error(result)
    assert sorted(p.relative_to(copy) for p in copy.rglob("*")) == before  # no logs/, no lock
    result = flrt(command, "start", copy, "--workspace", tmp_path / "ws", "--quiet", cwd=tmp_path)
    assert says in one_line_error(result)
    assert not (tmp_path / "ws").exists()


@pytest.mark.parametrize(
    ("option", "value", "says"),
    [
        ("--port", "70000", "expected a port from 0 to 65535"),
        ("--port", "-5", "expected a port from 0 to 65535"),
        ("--max-jobs", "0", "must be at least 1"),
        ("--site-wait", "-1", "must be at least 0"),
    ],
)
def test_server_options_out_of_range_are_refused_before_it_starts(
    kits: Path, tmp_path: Path, option: str, value: str, says: str
) -> None:
    result = flrt(
        "server",
        "start",
        kits / "server",
        "--workspace",
        tmp_path / "srv",
        option,
        value,
        cwd=tmp_path,
    )
    line = one_line_error(result, code=2)
    assert option in line
    assert says in line
    assert not (tmp_path / "srv").exists()


def test_a_log_file_that_cannot_be_written_costs_one_warning_not_a_trace_per_line(
    kits: Path, tmp_path: Path
) -> None:
    if not Path("/dev/full").exists():
        pytest.skip("needs /dev/full (a device that is always full)")
    logs = tmp_path / "srv" / "logs"
    logs.mkdir(parents=True)
    (logs / "server.jsonl").symlink_to("/dev/full")  # every write: No space left on device
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "flrt",
            "server",
            "start",
            str(kits / "server"),
            "--workspace",
            str(tmp_path / "srv"),
            "--host",
            "127.0.0.1",
            "--port",
            "0",
            "--quiet",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert "listening" in proc.stdout.readline()
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert "Logging error" not in err
    assert "Traceback" not in err
    warnings = [line for line in err.splitlines() if line.startswith("flrt: warning: ")]
    assert len(warnings) == 1, err
    assert "No space left on device" in warnings[0]


# ----------------------------------------------------------------------------- simulate


@pytest.mark.parametrize(
    ("make", "says"),
    [
        (lambda job: None, "no such job folder or file"),
        (lambda job: job.mkdir(), "no job.toml in"),
        (lambda job: (job / "job.toml").mkdir(parents=True), "cannot be read: Is a directory"),
        (
            lambda job: (job.mkdir(), (job / "job.toml").write_bytes(b'name = "\xff\xfe"\n')),
            "not UTF-8 text",
        ),
    ],
    ids=["missing", "no-job-toml", "job-toml-is-a-folder", "not-utf8"],
)
def test_simulate_names_a_job_folder_it_cannot_read(
    tmp_path: Path, make: object, says: str
) -> None:
    job = tmp_path / "my-job"
    make(job)  # type: ignore[operator]
    result = flrt("simulate", job, "--sites", "2", cwd=tmp_path)
    assert says in one_line_error(result)


# ----------------------------------------------------------------------------- the last resort


def test_an_os_error_no_command_translated_is_one_line_naming_the_file(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def refused(args: argparse.Namespace) -> int:
        raise PermissionError(13, "Permission denied", "/opt/flrt/hospital-a/startup")

    monkeypatch.setattr("flrt.cli._kit._verify", refused)
    assert main(["kit", "verify", "/opt/flrt/hospital-a"]) == 1
    err = capsys.readouterr().err
    assert err == "flrt: error: /opt/flrt/hospital-a/startup: Permission denied\n"


def test_output_cut_short_by_a_pager_or_head_is_not_an_error_message(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def cut_short(args: argparse.Namespace) -> int:  # `flrt kit verify KIT | head -1`
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr("flrt.cli._kit._verify", cut_short)
    assert main(["kit", "verify", "/opt/flrt/hospital-a"]) == 1
    assert capsys.readouterr().err == ""


def test_status_names_each_interrupted_job_and_why(capsys: pytest.CaptureFixture[str]) -> None:
    class Admin:
        async def status(self) -> dict[str, object]:
            return {
                "server": "server",
                "jobs": {"finished": 1, "interrupted": 1},
                "interrupted": {"job-7": "its state cannot be saved: No space left on device"},
                "sites": [],
            }

    code = anyio.run(_status, Admin(), argparse.Namespace(json=False))  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert code == 0
    assert "jobs 1 finished, 1 interrupted" in out
    assert (
        "job job-7 interrupted: its state cannot be saved: No space left on device;"
        " it resumes when the server restarts"
    ) in out
