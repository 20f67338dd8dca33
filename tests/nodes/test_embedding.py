"""flrt as a library inside someone else's program: the nodes and the admin client are async
context managers that an AnyIO program (trio or asyncio) runs in its own task group, and a misuse
of one of them must fail with a clear error that leaves the program's tasks as they were."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest

from flrt.admin import AdminClient
from flrt.server import ServerNode
from tests.nodes._project import ADMIN

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
