"""Ctrl-C at the very start or the very end of an ``flrt`` process: one line, never a stack trace.

An operator who presses Ctrl-C just after starting ``flrt admin``, ``flrt server start`` or ``flrt
site start`` lands in the imports, before any command runs; one who presses it as the command ends
lands in the interpreter's shutdown. Where exactly is a matter of microseconds, so each test puts
the signal in one place for certain rather than at a random time: a wrapper runs ``flrt`` as
``python -m flrt`` does, but stops the import of one module (or the shutdown) until the signal
comes. A SIGINT sent at a random moment after spawn proves less: it may land in the interpreter's
own start-up (``site`` and the ``.pth`` files of an editable install, ``runpy``), which prints its
own traceback before any line of flrt has run, whatever flrt does.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from flrt.cli import main
from tests._interrupt import interruptible
from tests.nodes._project import free_port, provision_project
from transport.errors import ConnectionClosedError

#: Runs ``flrt`` as ``python -m flrt`` does, but the import of one module stops (announced on
#: stdout) until a signal comes: Ctrl-C lands while the command line is still importing.
SLOW_IMPORT = """
import runpy, sys, time

SLOW = sys.argv[1]

class SlowImport:
    def find_spec(self, name, path=None, target=None):
        if name == SLOW:
            print("importing", name, flush=True)
            time.sleep(60)
        return None

sys.meta_path.insert(0, SlowImport())
sys.argv = ["flrt", *sys.argv[2:]]
runpy.run_module("flrt", run_name="__main__", alter_sys=True)
"""

#: Runs ``flrt`` as ``python -m flrt`` does, but the interpreter's shutdown, once the command is
#: over, stops (announced on stdout) until a signal comes.
SLOW_EXIT = """
import atexit, runpy, sys, time

def slow_exit():
    print("exiting", flush=True)
    time.sleep(60)

atexit.register(slow_exit)
sys.argv = ["flrt", *sys.argv[1:]]
runpy.run_module("flrt", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_project(tmp_path_factory.mktemp("project") / "ws", port=free_port())


def command(kits: Path, workspace: Path, name: str) -> list[str]:
    """The arguments of ``flrt`` for command ``name``, with nothing listening where it dials."""
    nobody = f"127.0.0.1:{free_port()}"
    if name == "admin":
        return ["admin", str(kits / "lead-it@example.org"), "--server", nobody, "jobs"]
    if name == "server":
        return ["server", "start", str(kits / "server"), "--workspace", str(workspace)]
    return [
        "site",
        "start",
        str(kits / "site-1"),
        "--workspace",
        str(workspace),
        "--server",
        nobody,
    ]


def stopped_by_ctrl_c(argv: list[str], announced: str) -> subprocess.CompletedProcess[str]:
    """Run ``argv``; once it prints ``announced``, send it SIGINT; its outcome."""
    proc = interruptible(argv)
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline() == announced, proc.communicate(timeout=30)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return subprocess.CompletedProcess(argv, proc.returncode, out, err)


def one_line(stderr: str) -> str:
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return lines[0]


#: Where an import can stop: (command, module).
IMPORTS = [
    pytest.param("admin", "flrt.cli._kit", id="admin: another command's arguments"),
    *(
        pytest.param(name, "flrt.cli", id=f"{name}: the command line")
        for name in ("admin", "server", "site")
    ),
    *(
        pytest.param(name, "argparse", id=f"{name}: the parser")
        for name in ("admin", "server", "site")
    ),
    pytest.param("admin", "security.kit", id="admin: the commands' modules"),
    pytest.param("admin", "flrt.cli._admin_run", id="admin: the admin client"),
    pytest.param("server", "flrt.server", id="server: the server node"),
    pytest.param("site", "flrt.site", id="site: the site node"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("name", "module"), IMPORTS)
def test_ctrl_c_while_importing_is_one_line(
    kits: Path, tmp_path: Path, name: str, module: str
) -> None:
    argv = [sys.executable, "-c", SLOW_IMPORT, module, *command(kits, tmp_path / "ws", name)]
    result = stopped_by_ctrl_c(argv, f"importing {module}\n")
    assert result.returncode == 130, result.stderr
    assert one_line(result.stderr) == "flrt: interrupted"


@pytest.mark.timeout(60)
def test_ctrl_c_once_the_command_is_over_ends_the_process_quietly(tmp_path: Path) -> None:
    """The command has said what it had to; Ctrl-C during the shutdown ends the process as the
    signal does by default (a shell shows 130), not with a stack trace from what it interrupted."""
    argv = [sys.executable, "-c", SLOW_EXIT, "admin", str(tmp_path / "no-kit"), "jobs"]
    result = stopped_by_ctrl_c(argv, "exiting\n")
    assert result.returncode == -signal.SIGINT, result.stderr
    assert one_line(result.stderr).startswith(f"flrt: error: kit {tmp_path / 'no-kit'}")


def test_ctrl_c_in_a_group_with_what_it_cut_short_is_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A node's task group hands Ctrl-C over together with what it interrupted in another task."""

    def interrupted(args: object) -> int:
        raise BaseExceptionGroup("node", [KeyboardInterrupt(), ConnectionClosedError("closed")])

    monkeypatch.setattr("flrt.cli._kit._verify", interrupted)
    assert main(["kit", "verify", "/opt/flrt/hospital-a"]) == 130
    assert capsys.readouterr().err == "flrt: interrupted\n"
