"""The bus as an embedding program uses it (the README's "The bus, for embedding developers"): a
mistake in what the program hands the bus is refused at once, as a
:class:`~transport.errors.LocalProtocolError`, and costs the session nothing."""

from __future__ import annotations

import contextlib
import gc
import io
import warnings
from pathlib import Path
from typing import Any

import anyio
import numpy as np
import pytest

from tests.nodes._project import free_port, provision_project
from tests.transport.conftest import FAST, Pki, name_from_certificate, server_and_site
from transport.bus import Message, Node
from transport.errors import ConnectionBrokenError, LocalProtocolError

pytestmark = pytest.mark.anyio


async def echo(message: Message) -> Any:
    return message.body


@pytest.mark.parametrize(
    "arrays",
    [
        pytest.param({1: np.zeros(2)}, id="name-not-a-string"),
        pytest.param({"deep": np.zeros((1,) * 33)}, id="too-many-dimensions"),
    ],
)
async def test_arrays_the_peer_would_refuse_are_refused_locally(
    pki: Pki, arrays: dict[Any, Any]
) -> None:
    # They used to be sent: the peer read a manifest it must refuse, and ended the session.
    async with server_and_site(pki) as (server, site, _):
        server.register("echo", echo)
        with anyio.fail_after(10):
            with pytest.raises(LocalProtocolError, match="object entry"):
                await site.tell("server/echo", None, arrays=arrays)
            assert (await site.ask("server/echo", "still here", timeout=5)).body == "still here"
        assert site.link_errors == []
        assert server.link_errors == []


def readme_bus_sample() -> str:
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")
    section = readme.index("## The bus, for embedding developers")
    start = readme.index("```python\n", section) + len("```python\n")
    return readme[start : readme.index("```", start)]


async def test_the_readme_bus_sample_runs_as_written(tmp_path: Path) -> None:
    kits = provision_project(tmp_path / "ws", port=free_port())
    sample = readme_bus_sample()
    assert "/opt/flrt/server" in sample
    assert "/opt/flrt/hospital-a" in sample
    sample = sample.replace("/opt/flrt/server", str(kits / "server"))
    sample = sample.replace("/opt/flrt/hospital-a", str(kits / "site-1")).replace(
        "0.0.0.0", "127.0.0.1"
    )
    scope: dict[str, Any] = {}
    exec(compile(sample, "README.md", "exec"), scope)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed), anyio.fail_after(20):
        async with anyio.create_task_group() as tg:
            tg.start_soon(scope["hub"])
            while True:  # until the hub listens
                try:
                    await scope["site"]()
                    break
                except ConnectionBrokenError:
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
    assert "site-1 {'w': (1000, 10)}" in printed.getvalue()


@pytest.mark.parametrize(
    "body", [pytest.param({1, 2}, id="a-set"), pytest.param(2**70, id="a-huge-int")]
)
async def test_a_body_that_cannot_be_encoded_is_a_local_protocol_error(pki: Pki, body: Any) -> None:
    """Every error the bus raises is a TransportError: msgpack's own TypeError or OverflowError
    used to escape from tell and ask."""
    async with server_and_site(pki) as (server, site, _):
        server.register("echo", echo)
        with anyio.fail_after(10):
            with pytest.raises(LocalProtocolError, match="message body cannot be sent"):
                await site.tell("server/echo", body)
            assert (await site.ask("server/echo", [1, 2], timeout=5)).body == [1, 2]


async def test_a_node_entered_twice_is_refused_and_keeps_running() -> None:
    node = Node("solo")
    async with node:
        node.register("echo", echo)
        with pytest.raises(LocalProtocolError, match="running already"):
            async with node:
                pass  # pragma: no cover - never entered
        with anyio.fail_after(5):
            assert (await node.ask("solo/echo", 7, timeout=5)).body == 7


async def test_a_stopped_node_leaves_no_mailbox_open() -> None:
    """Each actor's mailbox is closed with the node (an unclosed memory stream warns when it is
    collected), and the node can be started again with new actors."""
    node = Node("solo")
    async with node:
        node.register("echo", echo)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        del node
        gc.collect()
    assert [str(w.message) for w in caught if w.category is ResourceWarning] == []
    node = Node("solo")
    async with node:
        node.register("echo", echo)  # the name is free again
        with anyio.fail_after(5):
            assert (await node.ask("solo/echo", 8, timeout=5)).body == 8


async def test_what_a_node_told_before_it_stops_is_delivered(pki: Pki) -> None:
    """A site that sends its result and stops at once: the object is written before the CLOSE
    (it used to be cut off, and the peer's actor failed on a broken object)."""
    got: list[float] = []
    arrived = anyio.Event()

    async def keep(message: Message) -> None:
        assert message.object is not None
        arrays = await message.object.arrays()
        got.append(float(arrays["w"].sum()))
        arrived.set()

    async with Node("server", config=FAST) as server:
        port = await server.serve(pki.server_context(), name_from_certificate)
        server.register("keep", keep)
        async with Node("site-1", config=FAST) as site:
            await site.connect(
                "127.0.0.1", port, pki.site_context(pki.site), server_hostname="localhost"
            )
            big = {"w": np.ones(262_144)}  # 2 MiB: many chunks
            await site.tell("server/keep", "result", arrays=big)
        with anyio.fail_after(10):
            await arrived.wait()
    assert got == [262_144.0]
