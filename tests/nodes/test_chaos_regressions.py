"""What chaos runs (servers and sites killed and stopped at random moments) found, one test each."""

from __future__ import annotations

from pathlib import Path

import anyio
import anyio.lowlevel
import pytest
from structlog.testing import capture_logs

from flrt._protocol import PROTOCOL_VERSION, RESULTS_ACTOR
from flrt.server import ServerCore
from transport.bus import Message, Node

pytestmark = pytest.mark.anyio


async def test_what_reaches_a_stopping_server_is_let_go_quietly(tmp_path: Path) -> None:
    """A server stopped (SIGTERM) mid-round: its node closes after the server's core, so it may
    still hand the core a site's answer or an admin's submission while the core stops, and after
    its task group is gone. The answer is ignored (not reported late: the round did not close, it
    runs again at the next start) and the stored job is left for the next start; neither fails
    the actor (it raised RuntimeError: no task group to drain or run in)."""
    body = {"v": PROTOCOL_VERSION, "op": "result", "tid": "0a1b2c3d-7", "job": "j", "round": 2}
    job_id = "20261123t064033045z-p9m5cqgsb3"
    async with Node("server") as node:
        core = ServerCore(node, tmp_path, sites={"site-1": "org"}, identity_of=lambda _: None)

        async def hand_in_as_the_server_stops() -> None:
            try:
                await anyio.sleep_forever()
            finally:
                with anyio.CancelScope(shield=True):
                    await core._on_result(Message("site-1", RESULTS_ACTOR, body))

        with capture_logs() as logs:
            async with core:
                core.task_group.start_soon(hand_in_as_the_server_stops)
                await anyio.lowlevel.checkpoint()
            await core._on_result(Message("site-1", RESULTS_ACTOR, body))  # the node still runs
            core.start_job(job_id)
    events = [e for e in logs if e["event"].startswith(("result.", "job."))]
    assert [e["event"] for e in events] == ["result.ignored", "result.ignored", "job.not_started"]
    assert all(e["reason"] == "the server is stopping" for e in events)
    assert core.jobs == {}
