"""A process imports only what its command runs.

Sites run on small machines at the hospitals, so a site process must not load the server's
modules (the job store, the workflows, the aggregators, the admin service); nor must an admin
client load the server's or the site's. Each probe runs a command through :func:`flrt.cli.main` in
a fresh interpreter, as ``python -m flrt`` does, and prints ``sys.modules`` when the command is
over: what the command imported while it ran, not only at start-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests._interrupt import piped
from tests.nodes._project import free_port, provision_project

ROOT = Path(__file__).resolve().parent.parent

PROBE = """\
import json, sys
from flrt.cli import main
code = main(sys.argv[1:])
print(json.dumps({"code": code, "modules": sorted(sys.modules)}))
"""

#: What only the server runs: its node, its job store and what it keeps there, the workflows and
#: the aggregators that drive the rounds, the admin service and the site registry.
SERVER_ONLY = (
    "flrt.server",
    "flrt.network",
    "flrt.jobstore",
    "flrt.checkpoint",
    "flrt.registry",
    "flrt._admin_service",
    "flrt.workflows",
    "flrt.aggregation",
)
#: What neither a site nor an admin client runs: the simulator and the demo, provisioning, sealing
#: kits (with tarfile and getpass), and the package metadata that only ``--version`` looks up.
NOBODY_ELSE = (
    "flrt.simulator",
    "flrt.demo",
    "security.provision",
    "security.seal",
    "flrt.cli._kit_run",
    "importlib.metadata",
    "tarfile",
    "getpass",
)


def _loaded(modules: list[str], roots: tuple[str, ...]) -> list[str]:
    return [m for m in modules if any(m == r or m.startswith(r + ".") for r in roots)]


def _popen(*args: str) -> subprocess.Popen[str]:
    return piped([sys.executable, "-c", PROBE, *args])


def _report(proc: subprocess.Popen[str]) -> tuple[int, list[str]]:
    out, err = proc.communicate(timeout=30)
    lines = out.strip().splitlines()
    assert lines, f"the probe printed nothing; stderr:\n{err}"
    report = json.loads(lines[-1])
    return int(report["code"]), list(report["modules"])


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_project(tmp_path_factory.mktemp("project") / "ws", port=free_port())


def _site_modules(kits: Path, workspace: Path, *options: str) -> list[str]:
    """What a site imported, started with ``options`` and stopped with SIGTERM while it dials a
    port where nobody listens."""
    proc = _popen(
        "site",
        "start",
        str(kits / "site-1"),
        "--workspace",
        str(workspace),
        "--server",
        f"127.0.0.1:{free_port()}",
        "--quiet",
        *options,
    )
    try:
        assert proc.stdout is not None
        started = proc.stdout.readline()  # EOF (""), not a hang, if the site fails to start
        assert started.startswith("flrt site site-1 started"), proc.communicate(timeout=30)
        proc.send_signal(signal.SIGTERM)
        code, modules = _report(proc)
    finally:
        proc.kill()
        proc.wait(timeout=30)
    assert code == 0
    return modules


@pytest.mark.timeout(60)
def test_a_running_site_imports_nothing_of_the_server(kits: Path, tmp_path: Path) -> None:
    modules = _site_modules(kits, tmp_path)
    assert "flrt.site" in modules
    assert _loaded(modules, (*SERVER_ONLY, *NOBODY_ELSE, "flrt.admin")) == []


@pytest.mark.timeout(60)
def test_a_site_on_asyncio_does_not_load_trio(kits: Path, tmp_path: Path) -> None:
    """What the README promises small machines: ``--backend asyncio`` leaves trio (and attrs, its
    dependency) unloaded, about 3.5 MiB of a site's memory."""
    modules = _site_modules(kits, tmp_path, "--backend", "asyncio")
    assert "flrt.site" in modules
    assert _loaded(modules, ("trio", "attr", "attrs", "anyio._backends._trio")) == []
    assert "trio" in _site_modules(kits, tmp_path / "on-trio")  # the probe sees it when loaded


@pytest.mark.timeout(60)
def test_an_admin_client_imports_nothing_of_the_server_or_the_site(kits: Path) -> None:
    # Nobody listens on the port: the command loads the kit, dials for a second, and gives up.
    code, modules = _report(
        _popen(
            "admin",
            str(kits / "lead-it@example.org"),
            "--server",
            f"127.0.0.1:{free_port()}",
            "--command-timeout",
            "1",
            "jobs",
        )
    )
    assert code == 1
    assert "flrt.admin" in modules
    assert _loaded(modules, (*SERVER_ONLY, *NOBODY_ELSE, "flrt.site", "flrt.trainer")) == []


@pytest.mark.timeout(60)
def test_the_server_imports_nothing_of_the_site_or_the_admin_client(tmp_path: Path) -> None:
    # Also shows that the probe sees what a command imports: the server's own modules are there.
    code, modules = _report(_popen("server", "start", str(tmp_path / "no-kit"), "--quiet"))
    assert code == 1
    assert "flrt.server" in modules
    assert _loaded(modules, ("flrt.site", "flrt.admin", *NOBODY_ELSE)) == []


def test_the_security_package_loads_its_modules_on_first_use() -> None:
    """flrt's durable writes live in security._atomic: a trainer or a simulation that imports
    flrt.model must not load every security module, and cryptography with them."""
    probe = (
        "import json, sys; import flrt.model, security;"
        " before = 'cryptography' in sys.modules;"
        " kit = security.Kit;"
        " print(json.dumps([before, 'cryptography' in sys.modules, kit.__module__,"
        " sorted(security.__all__) == sorted(security._EXPORTS)]))"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) == [False, True, "security.kit", True]
