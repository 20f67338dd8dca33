"""Shared PKI fixtures: one project CA and one stranger CA per test session (key generation is cheap,
but signing the same participants once keeps the suite fast)."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from security.pki import CertificateAuthority, Credential, Identity, Role, create_ca
from security.project import parse_project
from security.provision import provision
from security.seal import KDF_ARGON2ID, KdfParams

SERVER_HOSTS = ("fl.example.org", "localhost", "127.0.0.1", "::1")


@pytest.fixture(scope="session")
def ca() -> CertificateAuthority:
    return create_ca("flrt test project CA")


@pytest.fixture(scope="session")
def other_ca() -> CertificateAuthority:
    return create_ca("flrt some other project CA")


@pytest.fixture(scope="session")
def server_credential(ca: CertificateAuthority) -> Credential:
    return ca.issue(Identity("server", "Lead Hospital", Role.SERVER), hosts=SERVER_HOSTS)


@pytest.fixture(scope="session")
def site_credential(ca: CertificateAuthority) -> Credential:
    return ca.issue(Identity("site-a", "Hospital A", Role.SITE))


@pytest.fixture(scope="session")
def admin_credential(ca: CertificateAuthority) -> Credential:
    return ca.issue(Identity("lead@example.org", "Lead Hospital", Role.PROJECT_ADMIN))


#: A small project: the server, two sites of two organisations, one admin in every admin role.
SMALL_PROJECT = """\
[project]
name = "test-project"

[[organisations]]
name = "Lead Hospital"

[[organisations]]
name = "Hospital A"

[[organisations]]
name = "Hospital B"

[server]
organisation = "Lead Hospital"
hosts = ["fl.example.org", "localhost", "127.0.0.1"]
port = 8443
admin_port = 8444

[[sites]]
name = "site-a"
organisation = "Hospital A"

[[sites]]
name = "site-b"
organisation = "Hospital B"

[[admins]]
name = "lead-it@example.org"
organisation = "Lead Hospital"
role = "project_admin"

[[admins]]
name = "it@hospital-a.example"
organisation = "Hospital A"
role = "org_admin"

[[admins]]
name = "researcher@example.org"
organisation = "Lead Hospital"
role = "lead"

[[admins]]
name = "viewer@hospital-b.example"
organisation = "Hospital B"
role = "member"
"""


def with_site(text: str, name: str, organisation: str = "Hospital A") -> str:
    """``text`` with one more site appended."""
    return text + f'\n[[sites]]\nname = "{name}"\norganisation = "{organisation}"\n'


#: Cheap password hashing for tests (the default costs about 0.25 s per kit).
FAST_KDF = KdfParams(KDF_ARGON2ID, 8 * 1024, 1, 1)


@pytest.fixture(scope="session")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A provisioned workspace of :data:`SMALL_PROJECT`; tests must copy before they change it."""
    path = tmp_path_factory.mktemp("provisioned") / "ws"
    provision(parse_project(SMALL_PROJECT), path)
    return path


@pytest.fixture
def kit_copy(workspace: Path, tmp_path: Path) -> Callable[[str], Path]:
    """Copy one kit of :func:`workspace` into this test's folder and return the copy's path."""

    def copy(name: str) -> Path:
        target = tmp_path / name
        shutil.copytree(workspace / "kits" / name, target)
        return target

    return copy
