"""Benchmark: ``flrt provision`` for a project with many sites.

Writes a project of one server, N sites in ten organisations and one admin per admin role, runs
``python -m flrt provision`` on it in a fresh process (so import time counts, as it does for Lead
IT), and measures the wall time and the size of each kit folder. With ``--seal`` the kits are also
sealed (Argon2id at its default cost), and the sealed files' median size is reported too.
Ends with one JSON line:

    {"bench": "provision", "participants": ..., "seconds": ..., "kit_kib_median": ...}

Usage: python bench/provision.py [--sites N] [--seal]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench._util import emit

ADMIN_ROLES = ("project_admin", "org_admin", "lead", "member")


def project_text(sites: int) -> str:
    organisations = [f"Hospital {i:02d}" for i in range(10)]
    lines = ['[project]\nname = "bench"\n']
    lines += [f'[[organisations]]\nname = "{org}"\n' for org in organisations]
    lines.append(
        '[server]\norganisation = "Hospital 00"\n'
        'hosts = ["fl.example.org", "fl.internal", "10.0.0.5"]\nport = 8443\nadmin_port = 8444\n'
    )
    lines += [
        f'[[sites]]\nname = "site-{i:03d}"\norganisation = "{organisations[i % 10]}"\n'
        for i in range(sites)
    ]
    lines += [
        f'[[admins]]\nname = "{role}@example.org"\norganisation = "Hospital 00"\nrole = "{role}"\n'
        for role in ADMIN_ROLES
    ]
    return "\n".join(lines)


def folder_kib(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sites", type=int, default=100)
    parser.add_argument("--seal", action="store_true", help="also seal every kit")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="flrt-bench-provision-") as tmp:
        root = Path(tmp)
        project = root / "project.toml"
        project.write_text(project_text(args.sites))
        command = [sys.executable, "-m", "flrt", "provision", str(project), "-o", str(root / "ws")]
        if args.seal:
            (root / "password").write_text("bench password, not secret\n")
            command += ["--seal", "--password-file", str(root / "password")]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        seconds = time.perf_counter() - started
        kits = sorted((root / "ws" / "kits").iterdir())
        figures: dict[str, Any] = {
            "bench": "provision",
            "participants": len(kits),
            "seconds": round(seconds, 3),
            "kit_kib_median": round(statistics.median(folder_kib(k) for k in kits), 2),
        }
        if args.seal:
            sealed = [p.stat().st_size / 1024 for p in (root / "ws" / "sealed").iterdir()]
            figures["sealed_kib_median"] = round(statistics.median(sealed), 2)
    emit(figures)


if __name__ == "__main__":
    main()
