"""flrt as a library inside someone else's program: the nodes and the admin client are async
context managers that an AnyIO program (trio or asyncio) runs in its own task group, and a misuse
of one of them must fail with a clear error that leaves the program's tasks as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest

from flrt.admin import AdminClient
from flrt.errors import ConfigError
from flrt.server import ServerNode
from flrt.site import SiteNode
from tests.nodes._project import ADMIN
from transport.bus import Node

pytestmark = pytest.mark.anyio


@asynccontextmanager
async def server(kits: Path, workspace: Path) -> AsyncIterator[ServerNode]:
    async with ServerNode(kits / "server", workspace, host="127.0.0.1", port=0) as node:
        yield node


async def test_an_admin_client_entered_twice_is_refused_and_keeps_working(
    kits: Path, tmp_path: Path
) -> None:
    # Entering it again used to open a second node over the first: the first node's task group
    # was never exited, leaving the outer exit to fail and trio's nursery stack corrupted.
    async with server(kits, tmp_path / "server") as node:
        admin = AdminClient(kits / ADMIN, server=("127.0.0.1", node.port), connect_timeout=10)
        with anyio.fail_after(20):
            async with admin:
                with pytest.raises(RuntimeError, match="open already"):
                    async with admin:
                        pass  # pragma: no cover - not reached
                assert await admin.jobs() == []
            assert not admin.connected
            async with admin:  # and it can be opened again once closed
                assert await admin.jobs() == []


async def test_a_site_entered_twice_is_refused_and_keeps_running(
    kits: Path, tmp_path: Path
) -> None:
    async with server(kits, tmp_path / "server") as node:
        site = SiteNode(kits / "site-1", tmp_path / "site-1", server=("127.0.0.1", node.port))
        with anyio.fail_after(20):
            async with site:
                await site.wait_connected()
                with pytest.raises(RuntimeError, match="open already"):
                    async with site:
                        pass  # pragma: no cover - not reached
                assert site.connected
            async with site:  # and it can be opened again once closed
                await site.wait_connected()


async def test_a_stopping_site_does_not_dial_the_server_again(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server's end of the session is closed by the site's stop; the site used to take that
    for a lost session and dial once more while stopping (the server logged a refusal)."""
    dials = 0
    dial = Node.connect

    async def counted(self: Node, *args: Any, **kwargs: Any) -> Any:
        nonlocal dials
        dials += 1
        return await dial(self, *args, **kwargs)

    monkeypatch.setattr(Node, "connect", counted)
    async with server(kits, tmp_path / "server") as node:
        with anyio.fail_after(20):
            site = SiteNode(kits / "site-1", tmp_path / "site-1", server=("127.0.0.1", node.port))
            async with site:
                await site.wait_connected()
        assert dials == 1  # a dial made while stopping counts when it starts, before the exit ends


async def test_a_workspace_that_cannot_be_made_is_a_config_error_naming_it(
    kits: Path, tmp_path: Path
) -> None:
    taken = tmp_path / "taken"
    taken.write_text("a file where the workspace should be")
    with pytest.raises(ConfigError) as refused:
        async with SiteNode(kits / "site-1", taken / "ws"):
            pass  # pragma: no cover - not reached
    assert refused.value.path == taken / "ws"
    assert "cannot be the site's workspace" in str(refused.value)


async def test_a_server_entered_twice_is_refused_and_keeps_serving(
    kits: Path, tmp_path: Path
) -> None:
    node = ServerNode(kits / "server", tmp_path / "server", host="127.0.0.1", port=0)
    with anyio.fail_after(20):
        async with node:
            with pytest.raises(RuntimeError, match="open already"):
                async with node:
                    pass  # pragma: no cover - not reached
            async with AdminClient(kits / ADMIN, server=("127.0.0.1", node.port)) as admin:
                assert await admin.jobs() == []
