"""The bus: a node of named actors with bounded mailboxes, linked to peer nodes over mutual TLS.

Theory of operation
-------------------

A :class:`Node` is an async context manager that owns a task group. Actors registered on it are
addressed as ``node/actor``; each has a bounded mailbox and one task that handles its messages in
order. A full mailbox makes the sender wait (a local sender directly, a remote one through the
session's message window); nothing is ever dropped silently.

- :meth:`Node.tell` sends one way; :meth:`Node.ask` waits for the reply within a deadline;
  :meth:`Node.ask_stream` yields streamed reply items. Any of them may carry a dict of numpy arrays,
  which travels as a streamed object.
- An actor that raises is reported to the node's ``on_actor_error`` callback (and to the asker as a
  :class:`~transport.errors.RemoteActorError`); the actor and the bus keep running.
- :meth:`Node.serve` listens for peers; :meth:`Node.connect` dials one and keeps the link up,
  reconnecting with backoff and resuming the session. Only clients ever open connections.

The server learns who a peer is from its certificate: ``authenticate(der) -> name`` is the caller's
policy (the bus itself knows no PKI), and anything it raises refuses the connection with a reason.
"""

from __future__ import annotations

import dataclasses
import itertools
import socket
import ssl
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import numpy.typing as npt
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from transport._link import Link
from transport._log import get_logger
from transport._sslsocket import accept_socket, listen_socket
from transport.errors import (
    AskTimeoutError,
    ConnectionBrokenError,
    ConnectionClosedError,
    HandshakeError,
    HandshakeFailure,
    LocalProtocolError,
    RemoteActorError,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
    UnknownActorError,
)
from transport.objects import DEFAULT_KEEP_IDLE, IncomingObject, LocalObject, RegionPool
from transport.protocol.objects import OutgoingObject
from transport.protocol.session import HelloReader, Role, SessionConfig, refuse_frame
from transport.tls import (
    accept_tls,
    dial_tls,
    handshake_error,
    peer_certificate,
    prepare_client_context,
    prepare_server_context,
)

__all__ = [
    "Actor",
    "Arrays",
    "Authenticator",
    "Message",
    "Node",
    "OutgoingObject",
    "Reply",
    "SessionPolicy",
]

log = get_logger("transport")

#: Seconds a stopping node waits for what it was told to send to be written, and then again for
#: its CLOSE frames to reach connected peers.
CLOSE_GRACE = 1.0

#: Arrays to send: a dict, or an :class:`OutgoingObject` prepared once to send to many peers (its
#: digest is then computed once for all of them).
Arrays = Mapping[str, npt.NDArray[Any]] | OutgoingObject


def _outgoing(arrays: Arrays | None) -> OutgoingObject | None:
    if arrays is None or isinstance(arrays, OutgoingObject):
        return arrays
    return OutgoingObject(arrays)


def _local(arrays: Arrays | None) -> LocalObject | None:
    if arrays is None:
        return None
    return LocalObject(arrays.arrays if isinstance(arrays, OutgoingObject) else arrays)


ObjectHandle = IncomingObject | LocalObject


@dataclass(frozen=True, slots=True)
class Message:
    """What an actor receives. ``sender`` is the address of the node it came from (this node for
    local sends): send to it to reach that session. ``identity`` is who the sender is: the same
    name, but for a peer that holds several sessions at once (see :meth:`Node.serve`), whose
    address is ``identity#n``. Authorize on ``identity``, answer to ``sender``."""

    sender: str
    actor: str
    body: Any
    object: ObjectHandle | None = None
    kind: Literal["tell", "ask", "stream"] = "tell"
    identity: str = ""

    def __post_init__(self) -> None:
        if not self.identity:
            object.__setattr__(self, "identity", self.sender)


@dataclass(frozen=True, slots=True)
class Reply:
    """A reply (or a streamed reply item) with an optional object."""

    body: Any = None
    arrays: Arrays | None = None
    object: ObjectHandle | None = field(default=None, compare=False)


#: An actor: an async handler. Its return value answers an ``ask`` (a :class:`Reply`, or any
#: msgpack-able body); for ``ask_stream`` it returns an async iterator of replies.
Actor = Callable[[Message], Awaitable[Any]]

#: The server's admission policy: peer certificate (DER) -> peer node name. Raise to refuse.
Authenticator = Callable[[bytes], str]

#: Which admitted peers may hold several sessions at once (an operator's console in two
#: terminals, say): peer name -> True. Each of their sessions then has an address of its own,
#: ``name#n``. Any other peer holds one session: a second is refused while the first is connected
#: (two processes with the same identity would otherwise take the session from each other for
#: ever), and replaces it once it is not.
SessionPolicy = Callable[[str], bool]


def _one_session(peer: str) -> bool:
    return False


@dataclass(slots=True)
class _Mailbox:
    send: MemoryObjectSendStream[Message | tuple[Message, _ReplyTo]]
    receive: MemoryObjectReceiveStream[Message | tuple[Message, _ReplyTo]]


@dataclass(frozen=True, slots=True)
class _ReplyTo:
    link: Link | None  # None: the asker is on this node
    call_id: int


class _End:
    """Marks the end of a streamed reply."""


class _Pending:
    """An outstanding ask on this node: its replies arrive here, in order."""

    __slots__ = ("_arrived", "_items", "link")

    def __init__(self) -> None:
        self._items: deque[Reply | TransportError | _End] = deque()
        self._arrived = anyio.Event()
        self.link: Link | None = None  # the link the request went out on (None: local)

    def put(self, item: Reply | TransportError | _End) -> None:
        self._items.append(item)
        self._arrived.set()

    async def get(self) -> Reply | TransportError | _End:
        while not self._items:
            await self._arrived.wait()
            self._arrived = anyio.Event()
        return self._items.popleft()


def _with_node_defaults(config: SessionConfig) -> SessionConfig:
    """Fill in what a node decides when the configuration leaves it open (None): an object the
    application has not started taking may send one chunk (an actor that makes objects wait, like
    a server folding updates one at a time, then holds a chunk of each rather than a whole
    window)."""
    if config.first_object_window is None:
        config = dataclasses.replace(config, first_object_window=config.chunk_size)
    return config


class Node:
    """A bus node: actors, links to peers, and the tasks that run them."""

    def __init__(
        self,
        name: str,
        *,
        config: SessionConfig | None = None,
        on_actor_error: Callable[[str, BaseException], None] | None = None,
        on_peer_lost: Callable[[str, TransportError | None], None] | None = None,
        session_ttl: float = 600.0,
        keep_idle_receive_bytes: int = DEFAULT_KEEP_IDLE,
    ) -> None:
        if not name or "/" in name:
            raise LocalProtocolError(f"bad node name {name!r}")
        self.name = name
        self.config = _with_node_defaults(config or SessionConfig())
        self.on_actor_error = on_actor_error
        #: Called when a peer's session ends for good: closed (``None``), refused or expired. A
        #: :class:`ResumeRefusedError` lists the messages the peer never received.
        self.on_peer_lost = on_peer_lost
        self.session_ttl = session_ttl
        #: Memory of large received objects, handed out again once their arrays are gone: up to
        #: ``keep_idle_receive_bytes`` stay mapped while idle (a site receives a model of the same
        #: size every round, and fresh pages are slow to fault in).
        self.regions = RegionPool(keep_idle_receive_bytes)
        self._actors: dict[str, _Mailbox] = {}
        self._links: dict[str, Link] = {}
        self._pending: dict[int, _Pending] = {}
        self._ids = itertools.count(1)
        self._addresses = itertools.count(1)  # of the sessions of peers that may hold several
        self._tg: anyio.abc.TaskGroup | None = None
        self._peers_changed = anyio.Event()
        self._incident = anyio.Event()
        #: Connections turned away before a session existed, each with its reason.
        self.refusals: list[str] = []
        #: Sessions ended by an error (protocol violation, expiry), as ``peer: reason``.
        self.link_errors: list[str] = []

    # -- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Self:
        """Start the node. Raises :class:`LocalProtocolError` if it is running already: a second
        task group over the first would leave the first one's tasks running for ever."""
        if self._tg is not None:
            raise LocalProtocolError(
                f"node {self.name!r} is running already: use one 'async with' at a time"
            )
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        links = list(self._links.values())
        with anyio.CancelScope(shield=True):
            # What was told before the stop is written first (a result a site sends as it
            # stops), then each connected peer hears the CLOSE, so that it knows the session is
            # over instead of trying to resume it. A peer that does not read (or grant credit)
            # holds either step up for CLOSE_GRACE at most.
            with anyio.move_on_after(CLOSE_GRACE):
                for link in links:
                    await link.wait_sent()
            for link in links:
                link.close("node stopping")
            with anyio.move_on_after(CLOSE_GRACE):
                for link in links:
                    await link.wait_disconnected()
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            for mailbox in self._actors.values():  # their actors' tasks are over
                mailbox.send.close()
            self._actors.clear()

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise LocalProtocolError("the node is not running (use 'async with node')")
        return self._tg

    # -- actors --------------------------------------------------------------------------------

    def register(self, name: str, actor: Actor, *, mailbox_size: int = 64) -> None:
        """Add an actor ``name`` with a mailbox of ``mailbox_size`` messages."""
        if not name or "/" in name:
            raise LocalProtocolError(f"bad actor name {name!r}")
        if name in self._actors:
            raise LocalProtocolError(f"actor {name!r} already registered")
        send, receive = anyio.create_memory_object_stream[Message | tuple[Message, _ReplyTo]](
            mailbox_size
        )
        self._actors[name] = _Mailbox(send, receive)
        self.task_group.start_soon(self._run_actor, name, actor, receive)

    async def _run_actor(
        self,
        name: str,
        actor: Actor,
        receive: anyio.abc.ObjectReceiveStream[Message | tuple[Message, _ReplyTo]],
    ) -> None:
        async with receive:
            async for item in receive:
                message, reply_to = item if isinstance(item, tuple) else (item, None)
                try:
                    result = await actor(message)
                    if reply_to is not None:
                        await self._answer(message, reply_to, result)
                except Exception as exc:
                    address = f"{self.name}/{name}"
                    log.warning(
                        "actor.failed",
                        actor=address,
                        error_type=type(exc).__name__,
                        detail=str(exc),
                    )
                    if self.on_actor_error is not None:
                        self.on_actor_error(address, exc)
                    if reply_to is not None:
                        await self._send_reply(
                            reply_to,
                            {"t": "err", "et": type(exc).__name__, "ed": str(exc), "a": address},
                        )

    async def _answer(self, message: Message, reply_to: _ReplyTo, result: Any) -> None:
        if message.kind == "stream":
            async for item in result:
                await self._send_reply(reply_to, {"t": "item"}, item)
            await self._send_reply(reply_to, {"t": "end"})
        else:
            await self._send_reply(reply_to, {"t": "reply"}, result)

    async def _send_reply(
        self, reply_to: _ReplyTo, envelope: dict[str, Any], result: Any = None
    ) -> None:
        reply = result if isinstance(result, Reply) else Reply(body=result)
        envelope = envelope | {"i": reply_to.call_id, "b": reply.body}
        if reply_to.link is None:
            self._on_reply(envelope, _local(reply.arrays))
            return
        if reply_to.link.closed:
            return  # the asker is gone; its ask has already failed
        await reply_to.link.send(envelope, _outgoing(reply.arrays))

    # -- addressing ----------------------------------------------------------------------------

    def _split(self, address: str) -> tuple[str, str]:
        node, sep, actor = address.partition("/")
        if not sep or not node or not actor or "/" in actor:
            raise LocalProtocolError(f"bad address {address!r} (expected node/actor)")
        return node, actor

    def _link_to(self, node: str) -> Link:
        link = self._links.get(node)
        if link is None or link.closed:
            raise ConnectionClosedError(f"no link to node {node!r}")
        return link

    # -- sending -------------------------------------------------------------------------------

    async def tell(self, address: str, body: Any = None, *, arrays: Arrays | None = None) -> None:
        """Send ``body`` (and ``arrays``) one way to ``node/actor``; waits while the mailbox is full."""
        node, actor = self._split(address)
        if node == self.name:
            obj = _local(arrays)
            await self._local_mailbox(actor).send.send(Message(self.name, actor, body, obj))
            return
        outgoing = _outgoing(arrays)
        await self._link_to(node).send({"t": "tell", "a": actor, "b": body}, outgoing)

    async def ask(
        self, address: str, body: Any = None, *, arrays: Arrays | None = None, timeout: float
    ) -> Reply:
        """Send a request and wait up to ``timeout`` seconds for the reply.

        Raises :class:`AskTimeoutError`, :class:`UnknownActorError`, :class:`RemoteActorError`, or
        :class:`ConnectionClosedError` if the link ends first.
        """
        call_id, pending = self._open_call()
        try:
            with anyio.fail_after(timeout):
                await self._send_call(address, "ask", call_id, body, arrays)
                item = await pending.get()
        except TimeoutError:
            raise AskTimeoutError(address, timeout) from None
        finally:
            self._pending.pop(call_id, None)
        if isinstance(item, TransportError):
            raise item
        if isinstance(item, _End):
            raise RemoteProtocolError(f"{address} answered an ask with a stream")
        return item

    async def ask_stream(
        self, address: str, body: Any = None, *, arrays: Arrays | None = None, timeout: float
    ) -> AsyncIterator[Reply]:
        """Send a request whose actor streams replies; yield them. ``timeout`` bounds each wait."""
        call_id, pending = self._open_call()
        try:
            with anyio.fail_after(timeout):
                await self._send_call(address, "stream", call_id, body, arrays)
            while True:
                try:
                    with anyio.fail_after(timeout):
                        item = await pending.get()
                except TimeoutError:
                    raise AskTimeoutError(address, timeout) from None
                if isinstance(item, TransportError):
                    raise item
                if isinstance(item, _End):
                    return
                yield item
        finally:
            self._pending.pop(call_id, None)

    def _open_call(self) -> tuple[int, _Pending]:
        call_id = next(self._ids)
        pending = _Pending()
        self._pending[call_id] = pending
        return call_id, pending

    async def _send_call(
        self,
        address: str,
        kind: Literal["ask", "stream"],
        call_id: int,
        body: Any,
        arrays: Arrays | None,
    ) -> None:
        node, actor = self._split(address)
        if node == self.name:
            obj = _local(arrays)
            mailbox = self._actors.get(actor)
            if mailbox is None:
                raise UnknownActorError(address)
            await mailbox.send.send(
                (Message(self.name, actor, body, obj, kind), _ReplyTo(None, call_id))
            )
            return
        outgoing = _outgoing(arrays)
        link = self._link_to(node)
        self._pending[call_id].link = link
        await link.send({"t": kind, "a": actor, "b": body, "i": call_id}, outgoing)

    def _local_mailbox(self, actor: str) -> _Mailbox:
        mailbox = self._actors.get(actor)
        if mailbox is None:
            raise UnknownActorError(f"{self.name}/{actor}")
        return mailbox

    # -- receiving -----------------------------------------------------------------------------

    async def _deliver(
        self, link: Link, envelope: dict[str, Any], obj: IncomingObject | None
    ) -> None:
        kind = envelope["t"]
        if kind in ("reply", "item", "end", "err"):
            self._on_reply(envelope, obj)
            return
        actor = envelope.get("a")
        if kind not in ("tell", "ask", "stream") or not isinstance(actor, str):
            link.kill(RemoteProtocolError(f"bad message envelope of type {kind!r}"))
            return
        mailbox = self._actors.get(actor)
        call_id = envelope.get("i")
        if mailbox is None:
            address = f"{self.name}/{actor}"
            log.warning("actor.unknown", actor=address, sender=link.peer, kind=kind)
            if kind != "tell" and isinstance(call_id, int):
                await link.send({"t": "err", "i": call_id, "et": "UnknownActor", "a": address})
            return
        message = Message(link.peer, actor, envelope.get("b"), obj, kind, link.identity)
        if kind == "tell":
            await mailbox.send.send(message)
        elif isinstance(call_id, int):
            await mailbox.send.send((message, _ReplyTo(link, call_id)))

    def _try_deliver(
        self, link: Link, envelope: dict[str, Any], obj: IncomingObject | None
    ) -> bool:
        """Deliver without waiting if that is possible; False leaves it to :meth:`_deliver`."""
        kind = envelope["t"]
        if kind in ("reply", "item", "end", "err"):
            self._on_reply(envelope, obj)
            return True
        actor = envelope.get("a")
        mailbox = self._actors.get(actor) if isinstance(actor, str) else None
        if mailbox is None or kind not in ("tell", "ask", "stream"):
            return False  # the slow path reports it
        message = Message(link.peer, str(actor), envelope.get("b"), obj, kind, link.identity)
        call_id = envelope.get("i")
        try:
            if kind == "tell":
                mailbox.send.send_nowait(message)
            elif isinstance(call_id, int):
                mailbox.send.send_nowait((message, _ReplyTo(link, call_id)))
            else:
                return False
        except anyio.WouldBlock:
            return False
        return True

    def _on_reply(self, envelope: dict[str, Any], obj: ObjectHandle | None) -> None:
        pending = self._pending.get(envelope.get("i", -1))
        if pending is None:
            return  # the asker gave up (timeout); the reply is late and has no taker
        kind = envelope["t"]
        if kind == "err":
            address = str(envelope.get("a", "?"))
            if envelope.get("et") == "UnknownActor":
                error: TransportError = UnknownActorError(address)
            else:
                error = RemoteActorError(
                    address, str(envelope.get("et")), str(envelope.get("ed", ""))
                )
            pending.put(error)
        elif kind == "end":
            pending.put(_End())
        else:
            pending.put(Reply(body=envelope.get("b"), object=obj))

    async def wait_incident(self) -> None:
        """Wait until the next refusal or link error is recorded."""
        await self._incident.wait()

    def _record(self, where: list[str], entry: str) -> None:
        where.append(entry)
        self._incident.set()
        self._incident = anyio.Event()

    def _on_link_closed(self, link: Link, error: TransportError | None) -> None:
        if error is not None:
            if not link.error_raised:  # the caller of connect() reports its own failure
                log.warning("link.failed", node=self.name, peer=link.peer, reason=str(error))
            self._record(self.link_errors, f"{link.peer}: {error}")
        elif link.closed_by_peer is not None and link.session.role is Role.CLIENT:
            # (For the sessions a node serves, its peer.disconnected line gives the reason.)
            log.info(
                "link.closed_by_peer", node=self.name, peer=link.peer, reason=link.closed_by_peer
            )
        for pending in self._pending.values():
            if pending.link is link:
                pending.put(
                    error or ConnectionClosedError(f"link to {link.peer} closed before the reply")
                )
        if self._links.get(link.peer) is link:
            del self._links[link.peer]
        if self.on_peer_lost is not None:
            self.on_peer_lost(link.peer, error)
        self._notify_peers()

    def _notify_peers(self) -> None:
        self._peers_changed.set()
        self._peers_changed = anyio.Event()

    # -- peers ---------------------------------------------------------------------------------

    @property
    def peers(self) -> dict[str, bool]:
        """Peer node name -> connected right now."""
        return {name: link.connected for name, link in self._links.items()}

    def link(self, peer: str) -> Link:
        """The link to ``peer``. Raises :class:`ConnectionClosedError` if there is none."""
        return self._link_to(peer)

    async def wait_peer(self, peer: str, *, connected: bool = True) -> None:
        """Wait until ``peer`` is connected (or, with ``connected=False``, not connected)."""
        while True:
            # Take the events before looking at the state, so no change slips in between.
            peers_changed = self._peers_changed
            link = self._links.get(peer)
            link_changed = link.state_event() if link is not None else None
            if (link is not None and link.connected) == connected:
                return
            if link_changed is None:
                await peers_changed.wait()
                continue
            async with anyio.create_task_group() as tg:

                async def first(event: anyio.Event) -> None:
                    await event.wait()
                    tg.cancel_scope.cancel()

                tg.start_soon(first, link_changed)
                tg.start_soon(first, peers_changed)

    def _new_link(self, peer: str, role: Role, *, identity: str | None = None) -> Link:
        link = Link(
            peer,
            role,
            self.config,
            self._deliver,
            self._try_deliver,
            self._on_link_closed,
            self.regions,
        )
        if identity is not None:
            link.identity = identity
        self._links[peer] = link
        self.task_group.start_soon(link.run_deliverer)
        self._notify_peers()
        return link

    # -- server side ---------------------------------------------------------------------------

    async def serve(
        self,
        context: ssl.SSLContext,
        authenticate: Authenticator,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        many_sessions: SessionPolicy = _one_session,
    ) -> int:
        """Listen on ``host:port`` for peers; returns the bound port. Runs in the node's tasks.

        ``authenticate`` names the peer from its certificate; ``many_sessions`` says which peers
        may hold several sessions at once (see :data:`SessionPolicy`; by default none).
        """
        prepare_server_context(context)
        try:
            listener = listen_socket(host, port)
        except OSError as exc:
            raise ConnectionBrokenError(
                f"cannot listen on {host}:{port}: {exc.strerror or exc}"
            ) from None
        bound: int = listener.getsockname()[1]

        async def accept_forever() -> None:
            try:
                while True:
                    raw = await accept_socket(listener)
                    self.task_group.start_soon(
                        self._accept, raw, context, authenticate, many_sessions
                    )
            finally:
                anyio.notify_closing(listener)
                listener.close()

        self.task_group.start_soon(accept_forever)
        log.info("node.listening", node=self.name, host=host, port=bound)
        return bound

    async def _accept(
        self,
        raw: socket.socket,
        context: ssl.SSLContext,
        authenticate: Authenticator,
        many_sessions: SessionPolicy,
    ) -> None:
        try:
            remote: Any = raw.getpeername()
        except OSError:
            remote = "?"
        peer = "?"
        stream: anyio.abc.ByteStream | None = None
        try:
            stream = await accept_tls(raw, context, self.config.handshake_timeout)
            try:
                peer = authenticate(peer_certificate(stream))
            except TransportError:
                raise
            except Exception as exc:
                await _send_refusal(stream, b"".join(refuse_frame(str(exc), "identity")))
                raise HandshakeError(
                    f"peer refused: {exc}", kind=HandshakeFailure.IDENTITY_REFUSED
                ) from None
            await self._serve_session(
                stream, peer, peer_certificate(stream), many=many_sessions(peer)
            )
        except TransportError as exc:
            self._record(self.refusals, f"{remote}: {exc}")
            log.warning(
                "peer.refused", node=self.name, peer=peer, remote=str(remote), reason=str(exc)
            )
            if stream is not None:
                await _close_quietly(stream)

    async def serve_stream(self, stream: anyio.abc.ByteStream, *, peer: str) -> None:
        """Serve one session over ``stream``, a connection the caller already trusts to come from
        ``peer`` (an in-memory stream in a simulation, say: no TLS, no authentication here).

        Runs until the connection ends. A peer that never says HELLO, or names a session that
        cannot be resumed, is refused as over TLS: recorded in :attr:`refusals` and logged.
        """
        try:
            await self._serve_session(stream, peer, None)
        except TransportError as exc:
            self._record(self.refusals, f"{peer}: {exc}")
            log.warning("peer.refused", node=self.name, peer=peer, reason=str(exc))
        finally:
            await _close_quietly(stream)

    async def _serve_session(
        self,
        stream: anyio.abc.ByteStream,
        peer: str,
        certificate: bytes | None,
        *,
        many: bool = False,
    ) -> None:
        """Read HELLO, open or resume ``peer``'s session, and run it until the connection ends.

        ``many``: ``peer`` may hold several sessions at once, each at its own address.
        """
        hello, leftover = await self._read_hello(stream)
        if hello.session_id is not None:
            link = self._resumable(peer, hello.session_id)
            if link is None:
                reason = "unknown or expired session"
                await _send_refusal(stream, b"".join(refuse_frame(reason, "resume")))
                raise HandshakeError(
                    f"{peer}: cannot resume: {reason}", kind=HandshakeFailure.RESUME_REFUSED
                )
            await link.drop_connection()  # a half-open old connection gives way
        elif many:
            link = self._new_link(f"{peer}#{next(self._addresses)}", Role.SERVER, identity=peer)
        else:
            link = self._links.get(peer)
            if link is not None and link.connected:
                # A live peer is heard from at least every heartbeat interval; a connection
                # silent for longer is presumed half-open (the peer's host went away without a
                # word, and the peer has restarted): the new session replaces it now rather
                # than after the liveness timeout.
                silent = link.session.silent_for(anyio.current_time())
                if silent < link.session.presumed_dead_after:
                    reason = (
                        f"{peer} is connected already, in another session (another process with"
                        f" the same identity?), last heard from {silent:.1f} s ago; a new session"
                        " is admitted once that connection ends or falls silent"
                    )
                    await _send_refusal(stream, b"".join(refuse_frame(reason, "duplicate")))
                    raise HandshakeError(reason, kind=HandshakeFailure.DUPLICATE)
                log.info(
                    "peer.replaced",
                    node=self.name,
                    peer=peer,
                    reason=f"the old connection was silent for {silent:.1f} s",
                )
            if link is not None:
                link.kill(ConnectionClosedError(f"{peer} opened a new session"))
            link = self._new_link(peer, Role.SERVER)
        link.peer_certificate = certificate
        link.session.accept(hello, anyio.current_time())
        log.info(
            "peer.connected",
            node=self.name,
            peer=link.peer,
            resumed=hello.session_id is not None,
        )
        await link.run_connection(stream, leftover)
        log.info(
            "peer.disconnected",
            node=self.name,
            peer=link.peer,
            error=_describe(link),
            **({"closed_by_peer": link.closed_by_peer} if link.closed_by_peer else {}),
        )
        if not link.closed:
            self.task_group.start_soon(self._expire, link, link.connections)

    def _resumable(self, peer: str, session_id: bytes) -> Link | None:
        """``peer``'s open session ``session_id``, if there is one."""
        link = self._links.get(peer)
        if link is None or link.session.session_id != session_id:
            link = next(
                (
                    other
                    for other in self._links.values()
                    if other.identity == peer and other.session.session_id == session_id
                ),
                None,
            )
        if link is None or link.closed or link.identity != peer:
            return None
        return link

    async def _read_hello(self, stream: anyio.abc.ByteStream) -> tuple[Any, bytes]:
        reader = HelloReader(self.config, anyio.current_time())
        try:
            with anyio.fail_after(self.config.handshake_timeout):
                while True:
                    data = await stream.receive(65536)
                    hello = reader.receive_data(data)
                    if hello is not None:
                        return hello, reader.take_buffered()
        except TimeoutError:
            raise HandshakeError(
                f"no HELLO within {self.config.handshake_timeout:g} s",
                kind=HandshakeFailure.TRANSIENT,
            ) from None
        except RemoteProtocolError as exc:
            await _send_refusal(stream, b"".join(refuse_frame(str(exc), "protocol")))
            raise
        except (anyio.EndOfStream, anyio.BrokenResourceError, OSError):
            raise HandshakeError(
                "connection closed before HELLO", kind=HandshakeFailure.TRANSIENT
            ) from None
        except Exception as exc:  # ssl errors
            raise handshake_error(
                f"connection failed before HELLO: {type(exc).__name__}", exc
            ) from None

    async def _expire(self, link: Link, generation: int) -> None:
        """Forget a disconnected server-side session that is not resumed within the TTL."""
        await anyio.sleep(self.session_ttl)
        if not link.closed and not link.connected and link.connections == generation:
            link.kill(ConnectionClosedError(f"session of {link.peer} expired"))

    # -- client side ---------------------------------------------------------------------------

    async def connect(
        self,
        host: str,
        port: int,
        context: ssl.SSLContext,
        *,
        server_hostname: str,
        peer: str = "server",
        backoff: tuple[float, float] = (0.1, 5.0),
        first_attempt_timeout: float | None = None,
    ) -> Link:
        """Dial a server and keep the link up (reconnect with backoff, resume the session).

        Returns once the first session is open. Raises :class:`HandshakeError` (or
        :class:`ConnectionBrokenError`) if the first attempt fails, so that a wrong certificate or
        address is reported at once rather than retried forever.
        """
        prepare_client_context(context)
        if peer in self._links and not self._links[peer].closed:
            raise LocalProtocolError(f"already linked to {peer!r}")
        link = self._new_link(peer, Role.CLIENT)
        timeout = first_attempt_timeout or self.config.handshake_timeout * 2
        try:
            with anyio.fail_after(timeout):
                await self._dial_once(link, host, port, context, server_hostname, first=True)
        except TimeoutError:
            link.kill(
                HandshakeError("session not opened in time", kind=HandshakeFailure.TRANSIENT),
                raised=True,
            )
            raise HandshakeError(
                f"no session with {host}:{port} within {timeout:g} s",
                kind=HandshakeFailure.TRANSIENT,
            ) from None
        except TransportError as exc:
            link.kill(exc, raised=True)
            raise
        self.task_group.start_soon(
            self._keep_connected, link, host, port, context, server_hostname, backoff
        )
        return link

    async def _dial_once(
        self,
        link: Link,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_hostname: str,
        *,
        first: bool,
    ) -> None:
        """Connect, handshake, send HELLO; start the connection; return once the session is open."""
        stream = await dial_tls(host, port, context, server_hostname, self.config.handshake_timeout)
        link.peer_certificate = peer_certificate(stream)
        await self._open_session(link, stream)
        if not first:
            log.info("link.resumed", node=self.name, peer=link.peer)

    async def open_stream(self, stream: anyio.abc.ByteStream, *, peer: str = "server") -> Link:
        """Open a session with ``peer`` over ``stream``, a connection the caller already trusts (an
        in-memory stream in a simulation: no TLS here). There is no reconnection: when the stream
        ends, the link waits, disconnected. Returns once the session is open; raises
        :class:`HandshakeError` if it is refused.
        """
        if peer in self._links and not self._links[peer].closed:
            raise LocalProtocolError(f"already linked to {peer!r}")
        link = self._new_link(peer, Role.CLIENT)
        try:
            await self._open_session(link, stream)
        except TransportError as exc:
            link.kill(exc, raised=True)
            raise
        return link

    async def _open_session(self, link: Link, stream: anyio.abc.ByteStream) -> None:
        """Send HELLO over ``stream``, run the connection in the node's tasks, and return once the
        session is open."""
        link.session.connect(anyio.current_time())
        done = anyio.Event()

        async def run() -> None:
            try:
                await link.run_connection(stream)
            finally:
                done.set()

        self.task_group.start_soon(run)
        while not link.connected or link.session.state.value != "open":
            if done.is_set() or link.closed:
                break
            await link.wait_changed()
        if link.closed and link.close_error is not None:
            raise link.close_error
        if link.session.state.value != "open":
            raise handshake_error(
                f"the server ended the connection before the session opened ({link.last_error});"
                " it may have refused this node's certificate: the server's log says why",
                link.last_error,
            )

    async def _keep_connected(
        self,
        link: Link,
        host: str,
        port: int,
        context: ssl.SSLContext,
        server_hostname: str,
        backoff: tuple[float, float],
    ) -> None:
        delay = backoff[0]
        while True:
            while link.connected and not link.closed:
                await link.wait_changed()
            if _is_closed(link):
                return
            try:
                await self._dial_once(link, host, port, context, server_hostname, first=False)
                delay = backoff[0]
            except ResumeRefusedError:
                return
            except TransportError as exc:
                log.info("link.retry", node=self.name, peer=link.peer, error=str(exc), delay=delay)
                await anyio.sleep(delay)
                delay = min(delay * 2, backoff[1])


def _is_closed(link: Link) -> bool:
    return link.closed


def _describe(link: Link) -> str | None:
    error = link.last_error
    return str(error) if error is not None else None


async def _send_refusal(stream: anyio.abc.ByteStream, data: bytes) -> None:
    """Tell a peer why it is turned away, then let it read that before the connection closes.

    Closing a socket with unread bytes in it (the peer's HELLO) sends a reset, and a reset makes
    the peer's kernel drop what it had not read yet: the refusal itself. So after sending, read and
    discard until the peer hangs up (it does once it has read the refusal), for at most a second.
    """
    with anyio.move_on_after(1):
        try:
            await stream.send(data)
            while True:
                await stream.receive()
        except Exception:  # the peer hung up or broke: either way it is gone
            pass


async def _close_quietly(stream: anyio.abc.ByteStream) -> None:
    try:
        with anyio.move_on_after(1):
            await stream.aclose()
    except Exception:  # closing a broken stream may raise anything; it is gone either way
        pass
