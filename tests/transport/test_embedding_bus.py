"""The bus as an embedding program uses it (the README's "The bus, for embedding developers"): a
mistake in what the program hands the bus is refused at once, as a
:class:`~transport.errors.LocalProtocolError`, and costs the session nothing."""

from __future__ import annotations

from typing import Any

import anyio
import numpy as np
import pytest

from tests.transport.conftest import Pki, server_and_site
from transport.bus import Message
from transport.errors import LocalProtocolError

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
