"""``flrt demo``: a whole study on this machine, over real mutual TLS, from provisioning to results.

What it does, as Lead IT, three hospitals and a lead researcher would:

1. provisions a project into ``<workspace>/project``: a server, three sites of two organisations
   (``hospital-a`` and ``hospital-b`` of North Health, ``hospital-c`` of South Clinic) and a
   project admin, each with a signed startup kit; the server listens on a free port of 127.0.0.1;
2. starts the server and the three sites as separate processes (``flrt server start`` and
   ``flrt site start``, logging JSON lines to ``<workspace>/<node>/logs/``);
3. submits, with the admin kit, FedAvg of a logistic regression on the Wisconsin breast-cancer data
   shipped with flrt (each hospital holds a skewed third of the patients), then, if PyTorch is
   installed, FedProx of a small MLP; follows each round as it completes;
4. prints each job's per-round metrics and its cross-site validation matrix (every hospital's
   held-out patients against every hospital's model and the global one), downloads the models to
   ``<workspace>/results/<job>/``, and stops every process cleanly.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from flrt._report import cross_site_table, failures_table, rounds_table
from flrt.admin import AdminClient
from security.project import parse_project
from security.provision import KITS_DIR, provision

__all__ = ["ADMIN", "SITES", "run_demo"]

ADMIN = "lead@demo.example"
SITES = {"hospital-a": "North Health", "hospital-b": "North Health", "hospital-c": "South Clinic"}

_LOGREG = """\
name = "breast-cancer-logreg"
[workflow]
name = "fedavg"
rounds = 20
sites_per_round = 3
min_sites = 2
grace_seconds = 2.0
seed = 7
[workflow.params]
evaluate_every = 5
cross_site_eval = true
[trainer]
spec = "flrt.examples.logreg:LogisticRegressionTrainer"
[trainer.args]
learning_rate = 2.0
local_steps = 1
full_batch = true
num_sites = 3
split = "skewed"
alpha = 0.5
seed = 0
"""

_MLP = """\
name = "breast-cancer-mlp"
[workflow]
name = "fedprox"
rounds = 15
sites_per_round = 3
min_sites = 2
grace_seconds = 5.0
seed = 7
[workflow.params]
mu = 0.01
evaluate_every = 5
cross_site_eval = true
[trainer]
spec = "flrt.examples.mlp:MLPTrainer"
[trainer.args]
hidden = 16
learning_rate = 0.5
local_steps = 20
batch_size = 32
num_sites = 3
split = "skewed"
alpha = 0.5
seed = 0
"""


def _project(port: int) -> str:
    sites = "".join(
        f'\n[[sites]]\nname = "{name}"\norganisation = "{org}"\n' for name, org in SITES.items()
    )
    return (
        textwrap.dedent(
            f"""\
        [project]
        name = "flrt-demo"
        description = "Breast-cancer diagnosis across three hospitals"
        [[organisations]]
        name = "North Health"
        [[organisations]]
        name = "South Clinic"
        [server]
        organisation = "North Health"
        hosts = ["localhost", "127.0.0.1"]
        port = {port}
        [[admins]]
        name = "{ADMIN}"
        organisation = "North Health"
        role = "project_admin"
        """
        )
        + sites
    )


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class _Nodes:
    """The server and site processes of the demo."""

    workspace: Path
    kits: Path
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def start(self, name: str, kind: str) -> None:
        out = (self.workspace / f"{name}.out").open("wb")
        args = [sys.executable, "-m", "flrt", kind, "start", str(self.kits / name)]
        args += ["--workspace", str(self.workspace / name), "--quiet"]
        if kind == "server":
            args += ["--host", "127.0.0.1", "--site-wait", "60"]
        self.procs[name] = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, env={**os.environ}
        )

    def stop(self) -> dict[str, int]:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        codes: dict[str, int] = {}
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        return codes


async def _run_job(
    admin: AdminClient, folder: Path, results: Path, say: Callable[[str], None]
) -> bool:
    job_id = await admin.submit(folder)
    say(f"\nsubmitted {folder.name}: job {job_id}")
    shown = 0
    async for job in admin.watch(job_id):
        if job["round"] > shown and job["status"] == "running":
            shown = job["round"]
            say(f"  round {shown}/{job['rounds']} done")
        if job["status"] in ("finished", "failed", "aborted"):
            say(f"  {job['status']}: {job['reason']}")
            break
    detail = await admin.job(job_id)
    if detail["rounds"]:
        say("")
        say(rounds_table(detail["rounds"]))
    if detail.get("failures"):
        say("")
        say(failures_table(detail["failures"]))
    cross = detail.get("cross_site")
    if cross:
        say("\ncross-site validation: each row a hospital's held-out patients, each column a model")
        for metric in ("accuracy", "auc"):
            say("")
            say(cross_site_table(cross, metric))
        say("(- : not defined, e.g. AUC when a hospital's held-out patients are all one class)")
    if detail["job"]["status"] == "finished":
        target = await admin.download(job_id, results / folder.name)
        say(f"\nmodel and metrics of {folder.name} in {target}")
        return True
    return False


def _prepare(workspace: Path, jobs: dict[str, str]) -> tuple[Path, int]:
    """Provision the project and write the job folders; returns the absolute workspace and the
    server's port."""
    workspace = workspace.absolute()
    if workspace.exists() and any(workspace.iterdir()):
        raise FileExistsError(f"{workspace} is not empty: give the demo a new or empty folder")
    workspace.mkdir(parents=True, exist_ok=True)
    port = _free_port()
    text = _project(port)
    provision(parse_project(text), workspace / "project", project_text=text.encode())
    for name, job in jobs.items():
        (workspace / "jobs" / name).mkdir(parents=True)
        (workspace / "jobs" / name / "job.toml").write_text(job)
    return workspace, port


async def run_demo(
    workspace: Path, *, mlp: bool | None = None, say: Callable[[str], None] = print
) -> int:
    """Run the demo study in ``workspace`` (a new or empty folder); returns an exit code.

    ``mlp`` adds the PyTorch job (default: if PyTorch is installed). Raises
    :class:`FileExistsError` if ``workspace`` is not empty.
    """
    jobs = {"logreg": _LOGREG}
    if mlp if mlp is not None else importlib.util.find_spec("torch") is not None:
        jobs["mlp"] = _MLP
    workspace, port = await anyio.to_thread.run_sync(_prepare, workspace, jobs)
    kits = workspace / "project" / KITS_DIR
    say(f"provisioned project flrt-demo in {workspace / 'project'}: server on 127.0.0.1:{port}")
    nodes = _Nodes(workspace, kits)
    ok = True
    try:
        nodes.start("server", "server")
        for site in SITES:
            nodes.start(site, "site")
        say(f"started the server and {', '.join(SITES)} (logs in {workspace}/<node>/logs/)")
        async with AdminClient(kits / ADMIN, timeout=60, connect_timeout=60) as admin:
            with anyio.fail_after(120):
                while True:  # the job would wait for its sites too; this says so first
                    status = await admin.status()
                    if all(s["connected"] for s in status["sites"]):
                        break
                    await anyio.sleep(0.2)
            say("all three hospitals connected over mutual TLS")
            for name in jobs:
                folder = workspace / "jobs" / name
                ok = await _run_job(admin, folder, workspace / "results", say) and ok
    finally:
        codes = await anyio.to_thread.run_sync(nodes.stop)
    stopped = ", ".join(f"{n} ({'ok' if c == 0 else f'exit {c}'})" for n, c in codes.items())
    say(f"\nstopped {stopped}")
    return 0 if ok and all(c == 0 for c in codes.values()) else 1
