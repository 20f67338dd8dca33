"""A small project for the node tests: a server, three sites of two organisations, and one admin
in each admin role, provisioned into a folder."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from security.project import parse_project
from security.provision import KITS_DIR, provision

SITES = ("site-1", "site-2", "site-3")
ADMIN = "lead-it@example.org"  # project_admin
LEAD = "researcher@example.org"  # lead
OTHER_LEAD = "fellow@example.org"  # lead
ORG_ADMIN = "it@hospital-a.example"  # org_admin
MEMBER = "viewer@hospital-b.example"  # member


def project_text(port: int, *, admin_port: int | None = None, sites: int = 3) -> str:
    lines = [
        "[project]",
        'name = "node-tests"',
        "[[organisations]]",
        'name = "Lead Hospital"',
        "[[organisations]]",
        'name = "Hospital A"',
        "[[organisations]]",
        'name = "Hospital B"',
        "[server]",
        'organisation = "Lead Hospital"',
        'hosts = ["localhost", "127.0.0.1"]',
        f"port = {port}",
    ]
    if admin_port is not None:
        lines.append(f"admin_port = {admin_port}")
    for i in range(1, sites + 1):
        org = "Hospital A" if i % 2 else "Hospital B"
        lines += ["[[sites]]", f'name = "site-{i}"', f'organisation = "{org}"']
    for name, org, role in (
        (ADMIN, "Lead Hospital", "project_admin"),
        (LEAD, "Lead Hospital", "lead"),
        (OTHER_LEAD, "Hospital B", "lead"),
        (ORG_ADMIN, "Hospital A", "org_admin"),
        (MEMBER, "Hospital B", "member"),
    ):
        lines += ["[[admins]]", f'name = "{name}"', f'organisation = "{org}"', f'role = "{role}"']
    return "\n".join(lines) + "\n"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def provision_project(
    workspace: Path, *, port: int = 8443, admin_port: int | None = None, sites: int = 3
) -> Path:
    """Provision the project into ``workspace``; returns the folder of the kits."""
    text = project_text(port, admin_port=admin_port, sites=sites)
    provision(parse_project(text), workspace, project_text=text.encode())
    return workspace / KITS_DIR


def site_failure(reason: str) -> str:
    """A pattern for a site's failure ``reason`` as the server keeps it: the site's text and the
    id of the site's log entry that has the details (group 1)."""
    return re.escape(reason) + r" \(error id ([0-9a-f]+); details in the site's log\)"
