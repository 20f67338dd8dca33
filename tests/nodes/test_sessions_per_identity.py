"""One process per site, as many consoles per admin as the admin likes (real TLS, in-process).

Before, a second process with a site's kit took the session from the first, which then took it
back, for ever; two consoles of one admin did the same to each other command by command.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flrt.site import SiteNode
from tests.nodes._federation import federation, poll_until
from tests.nodes._project import ADMIN, free_port, provision_project

pytestmark = pytest.mark.anyio


@pytest.fixture(scope="module")
def kits(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return provision_project(tmp_path_factory.mktemp("sessions") / "ws", port=free_port())


async def test_a_second_process_with_a_sites_kit_is_refused_and_says_why(
    kits: Path, tmp_path: Path
) -> None:
    async with federation(kits, tmp_path, sites=("site-1",)) as fed:
        twin = SiteNode(kits / "site-1", tmp_path / "twin", server=fed.address, backoff=(0.05, 0.2))
        async with twin:
            await poll_until(lambda: len(twin.connect_errors) >= 2)
        assert all("connected already" in error for error in twin.connect_errors)
        assert "another process with the same identity" in twin.connect_errors[0]
        # The first process kept its one session throughout, and still works.
        assert fed.server.node.link("site-1").connections == 1
        assert fed.server.core.registry.is_connected("site-1")
        sites = {site["name"]: site for site in (await fed.admin.status())["sites"]}
        assert sites["site-1"]["connected"] is True


async def test_two_consoles_of_one_admin_each_keep_their_session(
    kits: Path, tmp_path: Path
) -> None:
    async with federation(kits, tmp_path, sites=()) as fed:
        async with fed.admin_client(ADMIN) as second:
            for _ in range(5):
                assert await fed.admin.jobs() == []
                assert await second.jobs() == []
            sessions = [peer for peer in fed.server.node.peers if peer.startswith(f"{ADMIN}#")]
            assert len(sessions) == 2
            assert all(fed.server.node.link(peer).connections == 1 for peer in sessions)
        assert not [error for error in fed.server.node.link_errors if "new session" in error]
