"""A project on this machine: provisioned kits, and the server and sites as separate processes
(``python -m flrt ... start``) over real mutual TLS on 127.0.0.1."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

from flrt.admin import AdminClient
from tests.nodes._project import ADMIN, SITES, free_port, provision_project

ROOT = Path(__file__).resolve().parents[2]


class Cluster:
    """Kits in ``root/ws/kits``; each node's workspace in ``root/<name>``."""

    def __init__(self, root: Path, *, sites: int = 3) -> None:
        self.root = root
        self.port = free_port()
        self.kits = provision_project(root / "ws", port=self.port, sites=sites)
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, *args: str) -> subprocess.Popen[bytes]:
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        log = (self.root / f"{name}.out").open("ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "flrt", *args, "--quiet"],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        self.procs[name] = proc
        return proc

    def start_server(self, *, site_wait: float = 15.0) -> None:
        self._start(
            "server",
            "server",
            "start",
            str(self.kits / "server"),
            "--workspace",
            str(self.root / "server"),
            "--host",
            "127.0.0.1",
            "--site-wait",
            str(site_wait),
        )

    def start_site(self, name: str) -> None:
        self._start(
            name, "site", "start", str(self.kits / name), "--workspace", str(self.root / name)
        )

    def start(self, sites: tuple[str, ...] = SITES) -> None:
        self.start_server()
        for name in sites:
            self.start_site(name)

    def kill(self, name: str) -> None:
        """SIGKILL: the process gets no chance to say goodbye."""
        proc = self.procs.pop(name)
        proc.kill()
        proc.wait(timeout=10)

    def stop(self) -> dict[str, int]:
        """SIGTERM every process and wait for it; returns the exit codes."""
        codes = {}
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for name, proc in self.procs.items():
            try:
                codes[name] = proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                codes[name] = proc.wait()
        self.procs.clear()
        return codes

    def admin(self, name: str = ADMIN) -> AdminClient:
        return AdminClient(self.kits / name, timeout=30, connect_timeout=30)

    def job_dir(self, name: str, text: str) -> Path:
        folder = self.root / "jobs-src" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.toml").write_text(textwrap.dedent(text))
        return folder

    def log(self, name: str) -> list[dict[str, Any]]:
        """The JSON lines a node logged."""
        kind = "server" if name == "server" else "site"
        path = self.root / name / "logs" / f"{kind}.jsonl"
        events = []
        for line in path.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except ValueError:
                continue
        return events

    def output(self, name: str) -> str:
        return (self.root / f"{name}.out").read_text(errors="replace")
