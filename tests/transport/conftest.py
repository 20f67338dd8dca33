"""Certificates and node pairs for the bus tests: our PKI, one CA per test session."""

from __future__ import annotations

import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass

import pytest

from security.pki import CertificateAuthority, Credential, Identity, Role, create_ca
from security.pki import identity_from_certificate as _identity
from security.tls import client_ssl_context, server_ssl_context
from transport.bus import Node
from transport.protocol.session import SessionConfig


@dataclass(frozen=True)
class Pki:
    ca: CertificateAuthority
    server: Credential
    site: Credential
    other_site: Credential

    def server_context(self) -> ssl.SSLContext:
        return server_ssl_context(self.server, self.ca.cert_pem)

    def site_context(self, credential: Credential | None = None) -> ssl.SSLContext:
        return client_ssl_context(credential or self.site, self.ca.cert_pem)


@pytest.fixture(scope="session")
def pki() -> Pki:
    ca = create_ca("flrt-test-ca")
    return Pki(
        ca,
        ca.issue(Identity("server", "hub", Role.SERVER), hosts=["localhost", "127.0.0.1"]),
        ca.issue(Identity("site-1", "hospital-a", Role.SITE)),
        ca.issue(Identity("site-2", "hospital-b", Role.SITE)),
    )


def name_from_certificate(der: bytes) -> str:
    return _identity(der).name


FAST = SessionConfig(heartbeat_interval=0.2, liveness_timeout=1.0, handshake_timeout=1.0)


@asynccontextmanager
async def server_and_site(
    pki: Pki, config: SessionConfig = FAST, *, site_name: str = "site-1"
) -> AsyncIterator[tuple[Node, Node, int]]:
    """A server node listening on loopback and a site node connected to it."""
    async with Node("server", config=config) as server, Node(site_name, config=config) as site:
        port = await server.serve(pki.server_context(), name_from_certificate)
        credential = pki.site if site_name == "site-1" else pki.other_site
        await site.connect(
            "127.0.0.1", port, pki.site_context(credential), server_hostname="localhost"
        )
        yield server, site, port
