"""A client and a server session under a hostile but realistic network, as a Hypothesis state machine.

The network is TCP with faults: on one connection bytes arrive in order, exactly once, split
anywhere; a cut loses whatever is in flight and both sides are told; the client then dials again
and the server reads its HELLO and resumes the session. Neither side can see a frame twice on one
connection, but after a resumption a frame that already arrived on an earlier connection may turn
up again (a stale segment, a confused middlebox): the machine replays such frames, of the kinds
that are meant to be idempotent (MESSAGE, CHUNK of an object still open, ACK, per-object CREDIT,
HEARTBEAT). Connection-level CREDIT is not replayed: it counts bytes of one connection only.

The applications send messages (some with small objects) whenever their send window is open,
take messages and consume object bytes at their own pace, and the clock moves by less than the
liveness timeout per step (a run of silent steps may still time the connection out: the harness
then drops it, as a driver would).

Checked after every step: each side's application has seen exactly the messages the other sent,
in order and once (the harness asserts the order on every event), object bytes are a byte-exact
prefix of what was sent and arrive contiguously (a resumed object continues at the receiver's
offset: nothing re-delivered, nothing skipped), no session has failed, and no object holds more
than one window of unconsumed bytes. At teardown everything still in flight is pumped through
and every message and object must have arrived whole, with its digest verified.
"""

from __future__ import annotations

import dataclasses
import itertools
from typing import Any

import numpy as np
import numpy.typing as npt
from hypothesis import HealthCheck, Phase, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from tests.transport.sansio import SMALL, Pair, Side, WireFrame
from transport.errors import HandshakeError, PeerTimeoutError
from transport.protocol.frames import FrameKind
from transport.protocol.session import SessionState

SIDES = st.sampled_from(["client", "server"])
DTYPES = ["uint8", "int16", "float32", "float64", "bool", "complex64"]


@st.composite
def objects(draw: st.DrawFn) -> dict[str, npt.NDArray[Any]]:
    """Up to three arrays, together at most a few hundred bytes (a few chunks, about a window)."""
    arrays: dict[str, npt.NDArray[Any]] = {}
    for i in range(draw(st.integers(0, 3))):
        dtype = np.dtype(draw(st.sampled_from(DTYPES)))
        count = draw(st.integers(0, 60))
        raw = np.random.default_rng(draw(st.integers(0, 2**16))).integers(
            0, 256, count * dtype.itemsize, dtype=np.uint8
        )
        array = (raw % 2).astype(bool) if dtype.kind == "b" else raw.view(dtype)
        if count == 1 and draw(st.booleans()):
            array = array.reshape(())
        arrays[f"a{i}"] = array
    return arrays


def replayable(frame: WireFrame) -> bool:
    if frame.kind is FrameKind.CREDIT:
        return "s" in frame.header
    return frame.kind in (FrameKind.MESSAGE, FrameKind.CHUNK, FrameKind.ACK, FrameKind.HEARTBEAT)


class FlakyNetwork(RuleBasedStateMachine):
    config = SMALL

    def __init__(self) -> None:
        super().__init__()
        self.pair = Pair(self.config, auto_consume=False, auto_deliver=False)
        self.pair.open()
        self.serial = itertools.count()

    @initialize(client_object=objects(), server_object=objects())
    def objects_in_flight(
        self, client_object: dict[str, npt.NDArray[Any]], server_object: dict[str, npt.NDArray[Any]]
    ) -> None:
        """Every run starts with an object on its way in each direction."""
        self.pair.send("client", b"client object", client_object)
        self.pair.send("server", b"server object", server_object)

    # -- the applications ----------------------------------------------------------------------------

    @rule(side=SIDES, size=st.integers(0, 30), arrays=st.none() | objects())
    def send(self, side: Side, size: int, arrays: dict[str, npt.NDArray[Any]] | None) -> None:
        session = self.pair.endpoint(side).session
        if not session.send_window_open:
            return  # a real sender waits here
        body = f"{side} {next(self.serial)} ".encode() + bytes(size)
        self.pair.send(side, body, arrays)

    @rule(side=SIDES, pick=st.integers(0, 1000), amount=st.integers(1, 300))
    def consume(self, side: Side, pick: int, amount: int) -> None:
        ep = self.pair.endpoint(side)
        holding = [seq for seq, inc in ep.objects.items() if inc.open and inc.buffered]
        if holding:
            seq = holding[pick % len(holding)]
            ep.consume(seq, min(amount, ep.objects[seq].buffered))

    @rule(side=SIDES, pick=st.integers(0, 1000))
    def take_messages(self, side: Side, pick: int) -> None:
        ep = self.pair.endpoint(side)
        if ep.messages and ep.delivered < ep.messages[-1].seq:
            ep.deliver_messages(ep.delivered + 1 + pick % (ep.messages[-1].seq - ep.delivered))

    # -- the network ---------------------------------------------------------------------------------

    @rule(
        to=SIDES,
        n=st.none() | st.integers(1, 500),
        max_chunk_bytes=st.sampled_from([None, 1, 64, 1000]),
    )
    def transmit(self, to: Side, n: int | None, max_chunk_bytes: int | None) -> None:
        """The peer of ``to`` writes (a little chunk data, or more), then ``n`` bytes arrive."""
        self.pair.flush("server" if to == "client" else "client", max_chunk_bytes)
        self.pair.deliver(to, n)

    @rule(rounds=st.integers(1, 4))
    def settle(self, rounds: int) -> None:
        """The network works for a while: the client redials if it must, and everything written
        is read, back and forth."""
        if not self.pair.connected:
            self.pair.connect()
        for _ in range(rounds):
            self.pair.flush()
            self.pair.deliver("server")
            self.pair.deliver("client")

    @precondition(lambda self: self.pair.connected)
    @rule()
    def cut(self) -> None:
        for ep in (self.pair.client, self.pair.server):
            if any(0 < len(i.data) < i.manifest.total for i in ep.objects.values()):
                event("cut in the middle of an object")
        self.pair.cut()

    @precondition(lambda self: not self.pair.connected)
    @rule()
    def reconnect(self) -> None:
        self.pair.connect()

    @precondition(lambda self: self.pair.connected)
    @rule(to=SIDES, pick=st.integers(0, 10_000))
    def replay(self, to: Side, pick: int) -> None:
        """A frame that ``to`` already took on an earlier connection turns up again."""
        receiver = self.pair.endpoint(to)
        wire = self.pair.wire_to(to)
        if receiver.state is not SessionState.OPEN or not wire.at_boundary:
            return  # only between frames, and not before the handshake is through
        if to == "server" and self.pair.reader is not None:
            return

        def harmless(frame: WireFrame) -> bool:
            if not replayable(frame):
                return False
            if frame.kind is FrameKind.CHUNK:  # of an object the receiver still has open
                inc = receiver.objects.get(frame.header["s"])
                return inc is not None and inc.open
            return True

        candidates = [f for f in wire.delivered_before if harmless(f)]
        if candidates:
            frame = candidates[pick % len(candidates)]
            event(f"replayed {frame.kind.name}")
            self.pair.feed(to, frame.raw)

    @rule(dt=st.floats(0.01, 1.0) | st.floats(1.0, 0.9 * SMALL.liveness_timeout))
    def tick(self, dt: float) -> None:
        self.pair.advance(dt)

    # -- what must always hold ---------------------------------------------------------------------

    @invariant()
    def received_is_a_prefix_of_sent(self) -> None:
        self.pair.assert_consistent()

    @invariant()
    def nothing_failed(self) -> None:
        for ep in (self.pair.client, self.pair.server):
            assert ep.ended == [], ep.ended
            assert ep.state is not SessionState.CLOSED
            for failed in ep.failures:  # only the clock may drop a connection
                assert isinstance(failed.error, PeerTimeoutError | HandshakeError), failed

    @invariant()
    def memory_is_bounded_by_the_windows(self) -> None:
        for ep in (self.pair.client, self.pair.server):
            for inc in ep.objects.values():
                assert inc.buffered <= SMALL.object_window
            # Across any number of cuts, not only within one connection.
            assert ep.session.buffered_object_bytes <= SMALL.connection_window
            assert ep.session.buffered_object_bytes == sum(
                inc.buffered for inc in ep.objects.values() if inc.open
            )

    @invariant()
    def a_cut_costs_at_most_one_window_per_object(self) -> None:
        self.pair.assert_resend_bounded()

    def teardown(self) -> None:
        pair = self.pair
        resumed = sum(o.resumed for o in pair.client.opened)
        event("resumed " + ("never" if not resumed else "once" if resumed == 1 else "2+ times"))
        received = len(pair.client.messages) + len(pair.server.messages)
        event("messages received before teardown: " + ("<5" if received < 5 else "5+"))
        done = sum(
            inc.completed for ep in (pair.client, pair.server) for inc in ep.objects.values()
        )
        event("objects completed before teardown: " + ("none" if not done else "some"))
        pair.client.catch_up()
        pair.server.catch_up()
        if not pair.connected:
            pair.connect()
        pair.settle()
        assert pair.client.state is SessionState.OPEN
        assert pair.server.state is SessionState.OPEN
        pair.assert_all_delivered()
        for ep in (pair.client, pair.server):
            assert ep.session.undelivered == ()
            assert ep.session.unacked_bytes == 0
            assert ep.session.buffered_object_bytes == 0
            assert not ep.session.has_pending_chunks
        self.a_cut_costs_at_most_one_window_per_object()


FlakyNetwork.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    phases=[Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink],
)
test_flaky_network = FlakyNetwork.TestCase


class FlakyNetworkFirstWindow(FlakyNetwork):
    """The same with a node's setting: an object not yet taken may send only one chunk."""

    config = dataclasses.replace(SMALL, first_object_window=SMALL.chunk_size)


FlakyNetworkFirstWindow.TestCase.settings = settings(
    FlakyNetwork.TestCase.settings, max_examples=60
)
test_flaky_network_first_window = FlakyNetworkFirstWindow.TestCase
