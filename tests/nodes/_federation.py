"""A whole federation in one process over real mutual TLS on loopback: a server, sites and an
admin client, each from its provisioned kit. Each site runs in its own task, so that a test can
stop and restart one in any order."""

from __future__ import annotations

import textwrap
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import anyio
import anyio.abc

from flrt.admin import AdminClient
from flrt.server import ServerNode
from flrt.site import SiteNode
from tests.nodes._project import ADMIN, SITES


@dataclass
class _Running:
    site: SiteNode
    stop: anyio.Event = field(default_factory=anyio.Event)
    stopped: anyio.Event = field(default_factory=anyio.Event)


@dataclass
class Federation:
    kits: Path
    root: Path
    server: ServerNode
    admin: AdminClient
    task_group: anyio.abc.TaskGroup
    _sites: dict[str, _Running] = field(default_factory=dict)

    @property
    def address(self) -> tuple[str, int]:
        return ("127.0.0.1", self.server.port)

    @property
    def sites(self) -> dict[str, SiteNode]:
        return {name: running.site for name, running in self._sites.items()}

    async def start_site(self, name: str) -> SiteNode:
        site = SiteNode(
            self.kits / name, self.root / name, server=self.address, backoff=(0.05, 0.5)
        )
        running = _Running(site)

        async def run(*, task_status: anyio.abc.TaskStatus[None]) -> None:
            try:
                async with site:
                    task_status.started()
                    await running.stop.wait()
            finally:
                running.stopped.set()

        await self.task_group.start(run)
        self._sites[name] = running
        return site

    async def stop_site(self, name: str) -> None:
        running = self._sites.pop(name)
        running.stop.set()
        await running.stopped.wait()

    async def wait_connected(self, names: Iterable[str], connected: bool = True) -> None:
        registry = self.server.core.registry
        wanted = set(names)
        while {n for n in wanted if registry.is_connected(n) == connected} != wanted:
            await registry.wait_changed()

    def job_dir(self, name: str, text: str) -> Path:
        folder = self.root / "jobs-src" / name
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "job.toml").write_text(textwrap.dedent(text))
        return folder

    def admin_client(self, name: str) -> AdminClient:
        return AdminClient(self.kits / name, server=self.address, timeout=30)


@asynccontextmanager
async def federation(
    kits: Path, root: Path, *, sites: Iterable[str] = SITES, site_wait: float = 5.0
) -> AsyncIterator[Federation]:
    async with AsyncExitStack() as stack:
        server = await stack.enter_async_context(
            ServerNode(
                kits / "server", root / "server", host="127.0.0.1", port=0, site_wait=site_wait
            )
        )
        tg = await stack.enter_async_context(anyio.create_task_group())
        admin_client = AdminClient(kits / ADMIN, server=("127.0.0.1", server.port), timeout=30)
        fed = Federation(kits, root, server, admin_client, tg)
        for name in sites:
            await fed.start_site(name)
        with anyio.fail_after(10):
            await fed.wait_connected(fed.sites)
        try:
            async with admin_client as fed.admin:
                yield fed
        finally:
            for name in list(fed.sites):
                await fed.stop_site(name)


async def poll_until(predicate: Callable[[], bool], *, timeout: float = 10.0) -> None:
    """Check ``predicate`` every 20 ms until it holds; :class:`TimeoutError` after ``timeout``.

    Only for facts no event announces (a line appended to a file by another node)."""
    with anyio.fail_after(timeout):
        while True:
            if predicate():
                return
            await anyio.sleep(0.02)
