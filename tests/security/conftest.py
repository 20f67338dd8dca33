"""Shared PKI fixtures: one project CA and one stranger CA per test session (key generation is cheap,
but signing the same participants once keeps the suite fast)."""

from __future__ import annotations

import pytest

from security.pki import CertificateAuthority, Credential, Identity, Role, create_ca

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
