"""The real server on loopback refuses every peer it must, and logs why: another CA, an expired or
revoked certificate, one not valid yet, a name that is not a participant, a site on the admin port and an admin on the
site port; and no node starts from a tampered kit."""

from __future__ import annotations

import datetime as dt
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import structlog.testing

from flrt.server import ServerNode
from flrt.site import SiteNode
from security.errors import KitTamperedError
from security.kit import load_kit
from security.pki import Credential, Identity, Role, create_ca
from security.provision import open_workspace, revoke
from security.tls import client_ssl_context
from tests.nodes._project import ADMIN, provision_project
from transport.bus import Node
from transport.errors import HandshakeError

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A project with a separate admin port, and site-2 revoked."""
    ws = tmp_path_factory.mktemp("admission") / "ws"
    provision_project(ws, port=8443, admin_port=8444)
    revoke(ws, "site-2")
    return ws


@asynccontextmanager
async def server(workspace: Path, tmp_path: Path) -> AsyncIterator[ServerNode]:
    async with ServerNode(
        workspace / "kits" / "server", tmp_path / "server", host="127.0.0.1", port=0, admin_port=0
    ) as node:
        yield node


def issued(workspace: Path, identity: Identity, **validity: Any) -> Credential:
    return open_workspace(workspace).ca.issue(identity, **validity)


def kit_credential(workspace: Path, name: str) -> Credential:
    return load_kit(workspace / "kits" / name).credential


async def dial(port: int, credential: Credential, ca_pem: bytes) -> str:
    """Connect as ``credential``; the reason the connection failed (it must fail)."""
    async with Node("probe") as node:
        with pytest.raises(HandshakeError) as refused:
            await node.connect(
                "127.0.0.1",
                port,
                client_ssl_context(credential, ca_pem),
                server_hostname="localhost",
                first_attempt_timeout=10,
            )
        node.task_group.cancel_scope.cancel()
    return str(refused.value)


def ca_pem(workspace: Path) -> bytes:
    return (workspace / "kits" / "server" / "startup" / "ca.pem").read_bytes()


OTHER_CA = create_ca("not the project CA")
A_WEEK_AGO = dt.datetime.now(dt.UTC) - dt.timedelta(days=7)
IN_A_WEEK = dt.datetime.now(dt.UTC) + dt.timedelta(days=7)


@pytest.mark.parametrize(
    ("who", "port_kind", "server_says"),
    [
        ("other CA", "port", "unable to get local issuer certificate"),
        ("expired", "port", "certificate has expired"),
        ("not yet valid", "port", "certificate is not yet valid"),
        ("revoked", "port", "(revoked)"),
        ("unknown name", "port", "'site-99' is not a participant"),
        ("site on the admin port", "admin_port", "role site is not accepted here"),
        ("admin on the site port", "port", "role project_admin is not accepted here"),
    ],
)
async def test_the_server_refuses_and_logs_why(
    workspace: Path, tmp_path: Path, who: str, port_kind: str, server_says: str
) -> None:
    credentials = {
        "other CA": lambda: OTHER_CA.issue(Identity("site-1", "Hospital A", Role.SITE)),
        "expired": lambda: issued(
            workspace,
            Identity("site-1", "Hospital A", Role.SITE),
            not_before=A_WEEK_AGO,
            valid_days=1,
        ),
        "not yet valid": lambda: issued(
            workspace, Identity("site-1", "Hospital A", Role.SITE), not_before=IN_A_WEEK
        ),
        "revoked": lambda: kit_credential(workspace, "site-2"),
        "unknown name": lambda: issued(workspace, Identity("site-99", "Hospital A", Role.SITE)),
        "site on the admin port": lambda: kit_credential(workspace, "site-1"),
        "admin on the site port": lambda: kit_credential(workspace, ADMIN),
    }
    credential = credentials[who]()
    with anyio.fail_after(30), structlog.testing.capture_logs() as logs:
        async with server(workspace, tmp_path) as node:
            port = node.admin_port if port_kind == "admin_port" else node.port
            assert port is not None
            await dial(port, credential, ca_pem(workspace))
            while not node.node.refusals:
                await node.node.wait_incident()
            refusals = list(node.node.refusals)
    assert any(server_says in r for r in refusals), refusals
    logged = [e for e in logs if e["event"] in ("peer.refused", "admission.refused")]
    assert any(server_says in " ".join(map(str, e.values())) for e in logged), logged


async def test_the_right_roles_are_admitted_on_each_port(workspace: Path, tmp_path: Path) -> None:
    from flrt.admin import AdminClient

    with anyio.fail_after(30):
        async with server(workspace, tmp_path) as node:
            async with SiteNode(
                workspace / "kits" / "site-1", tmp_path / "site", server=("127.0.0.1", node.port)
            ) as site:
                await site.wait_connected()
            assert node.admin_port is not None
            async with AdminClient(
                workspace / "kits" / ADMIN, server=("127.0.0.1", node.admin_port)
            ) as admin:
                status = await admin.status()
    assert [s["name"] for s in status["sites"]] == ["site-1", "site-2", "site-3"]
    assert node.refusals == []


async def test_no_node_starts_from_a_tampered_kit(workspace: Path, tmp_path: Path) -> None:
    for name, node_class in (("server", ServerNode), ("site-1", SiteNode)):
        kit = tmp_path / name
        shutil.copytree(workspace / "kits" / name, kit)
        config = kit / "startup" / "node.toml"
        config.write_text(config.read_text().replace("port = 8443", "port = 9443"))
        with pytest.raises(KitTamperedError, match=r"startup/node\.toml"):
            async with node_class(kit, tmp_path / f"{name}-ws"):
                pass
