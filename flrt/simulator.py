"""The simulator: a whole study in one process, the real server and site actors over in-memory links.

Theory of operation
-------------------
:func:`simulate` runs exactly what a deployment runs (a :class:`~flrt.server.ServerCore` with its
registry, jobs, network controller and workflows; one :class:`~flrt.site.SiteCore` per site with its
trainer, filters and worker threads; the bus's nodes, sessions, flow control and streamed objects)
but links the nodes with in-memory byte streams instead of TCP and TLS. Nothing is mocked: a task
still travels as a bus message with a streamed object, results still stream into the aggregator,
stragglers are still cancelled on the clock. What is skipped is what a simulation does not need:
sockets, the TLS handshake and encryption, certificates and admission (simulated sites are
``site-1`` .. ``site-N`` of organisation ``simulation``).

Why memory streams rather than loopback: the bus's public API listens and dials only over TLS, and
one process holding a hundred TLS connections spends its time encrypting. A bus link runs over any
AnyIO byte stream, so :func:`_attach` opens the session over a :func:`memory_pipe` with
:meth:`~transport.bus.Node.serve_stream` and :meth:`~transport.bus.Node.open_stream`, the same
session code that :meth:`~transport.bus.Node.serve` and :meth:`~transport.bus.Node.connect` run
over TLS.

A hundred sites run on a 2-core machine: each is a handful of tasks and, while it trains, one
worker thread.
"""

from __future__ import annotations

import functools
import tempfile
from collections.abc import Mapping, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream

from flrt._admin_service import round_table, site_failures
from flrt._groups import only_exception
from flrt._site_config import SitePolicy
from flrt.errors import JobError
from flrt.jobstore import JobEntry
from flrt.server import ServerCore
from flrt.site import SiteCore
from flrt.tasks import Weights
from security.pki import Identity, Role
from transport.bus import Node
from transport.protocol.session import SessionConfig

__all__ = ["SimulationResult", "memory_pipe", "simulate"]

SERVER = "server"
ORGANISATION = "simulation"
_ADMIN = Identity("simulator", ORGANISATION, Role.PROJECT_ADMIN)


class _MemoryByteStream(anyio.abc.ByteStream):
    """One end of an in-memory byte pipe (the bytes are copied once, on send)."""

    def __init__(
        self, send: MemoryObjectSendStream[bytes], receive: MemoryObjectReceiveStream[bytes]
    ) -> None:
        self._send = send
        self._receive = receive
        self._pending = memoryview(b"")

    async def receive(self, max_bytes: int = 65536) -> bytes:
        if not self._pending:
            self._pending = memoryview(await self._receive.receive())
        data = bytes(self._pending[:max_bytes])
        self._pending = self._pending[max_bytes:]
        return data

    async def send(self, item: bytes) -> None:
        await self._send.send(bytes(item))

    async def send_eof(self) -> None:
        await self._send.aclose()

    async def aclose(self) -> None:
        await self._send.aclose()
        await self._receive.aclose()


def memory_pipe(buffer: int = 64) -> tuple[anyio.abc.ByteStream, anyio.abc.ByteStream]:
    """Two connected in-memory byte streams; each end holds at most ``buffer`` unread writes."""
    a_send, b_receive = anyio.create_memory_object_stream[bytes](buffer)
    b_send, a_receive = anyio.create_memory_object_stream[bytes](buffer)
    return _MemoryByteStream(a_send, a_receive), _MemoryByteStream(b_send, b_receive)


async def _attach(server: Node, site: Node) -> None:
    """Open a session between ``site`` (the client) and ``server`` over a memory pipe."""
    server_end, site_end = memory_pipe()
    server.task_group.start_soon(functools.partial(server.serve_stream, server_end, peer=site.name))
    await site.open_stream(site_end, peer=SERVER)


@dataclass(frozen=True, slots=True)
class SimulationResult:
    """How a simulated job ended, with its rounds, cross-site results, final model, and why sites
    failed (:func:`~flrt._admin_service.site_failures`: training, evaluation and cross-site
    rounds alike; empty if none did)."""

    job_id: str
    status: str
    reason: str | None
    workspace: Path
    rounds: list[dict[str, Any]]
    cross_site: dict[str, Any] | None
    weights: Weights | None
    failures: list[dict[str, Any]] = field(default_factory=list)


def site_names(count: int) -> list[str]:
    return [f"site-{i}" for i in range(1, count + 1)]


async def simulate(
    job: Path | str,
    *,
    sites: int | Sequence[str] = 2,
    workspace: Path | str | None = None,
    data: Mapping[str, Path] | None = None,
    policy: SitePolicy | None = None,
    session_config: SessionConfig | None = None,
) -> SimulationResult:
    """Run the job in ``job`` (a folder with ``job.toml``, or the file) on simulated sites.

    ``sites`` is a number (sites ``site-1`` .. ``site-N``) or the names; ``workspace`` keeps the
    server's job folder and each site's scratch folder (a new temporary folder by default);
    ``data`` and ``policy`` are every site's data locations and privacy policy.

    Raises :class:`~flrt.errors.JobError` if ``job`` cannot be read, and
    :class:`~flrt.errors.AdminError` if the job is refused, as a server would refuse it.
    """
    path = await anyio.to_thread.run_sync(_job_file, Path(job))
    text = await anyio.to_thread.run_sync(_read_job, path)
    names = site_names(sites) if isinstance(sites, int) else list(sites)
    root = Path(workspace) if workspace is not None else Path(tempfile.mkdtemp(prefix="flrt-sim-"))
    try:
        return await _run(text, str(path), names, root, data, policy, session_config)
    except BaseExceptionGroup as group:
        error = only_exception(group)  # the nodes' task groups wrap what the job raised
        if error is group:
            raise
        raise error from None


async def _run(
    text: str,
    source: str,
    names: list[str],
    root: Path,
    data: Mapping[str, Path] | None,
    policy: SitePolicy | None,
    session_config: SessionConfig | None,
) -> SimulationResult:
    identities = {name: Identity(name, ORGANISATION, Role.SITE) for name in names}
    async with AsyncExitStack() as stack:
        server_node = await stack.enter_async_context(Node(SERVER, config=session_config))
        core = await stack.enter_async_context(
            ServerCore(
                server_node,
                root / "server",
                sites=dict.fromkeys(names, ORGANISATION),
                identity_of=identities.get,
                site_wait=0.0,
            )
        )
        server_node.on_peer_lost = core.peer_lost
        for name in names:
            node = await stack.enter_async_context(Node(name, config=session_config))
            await stack.enter_async_context(
                SiteCore(node, name, root / name, data=data, policy=policy)
            )
            await _attach(server_node, node)
        while core.registry.available() != frozenset(names):
            await core.registry.wait_changed()
        entry = await core.admin.submit(_ADMIN, text, source)
        final = await core.wait_job(entry.record.job_id)
        return await anyio.to_thread.run_sync(_result, core, final, root)
    raise AssertionError("unreachable")  # pragma: no cover - mypy cannot see the stack returns


def _job_file(path: Path) -> Path:
    return path / "job.toml" if path.is_dir() else path


def _read_job(path: Path) -> str:
    """The text of ``job.toml``. Raises :class:`~flrt.errors.JobError` if it cannot be read."""
    try:
        return path.read_bytes().decode("utf-8")
    except FileNotFoundError:
        folder = path.parent if path.name == "job.toml" else path
        what = "no job.toml in" if folder.is_dir() else "no such job folder or file:"
        raise JobError(f"{what} {folder}") from None
    except OSError as exc:
        raise JobError(f"cannot be read: {exc.strerror or exc}", path=path) from None
    except UnicodeDecodeError as exc:
        raise JobError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", path=path) from None


def _result(core: ServerCore, entry: JobEntry, root: Path) -> SimulationResult:
    job_id = entry.record.job_id
    state = core.store.latest_state(job_id)
    rounds = core.store.spec(job_id).workflow.rounds
    events = core.store.metrics(job_id)
    status, reason = entry.record.status.value, entry.record.reason
    if job_id in core.interrupted:  # its stored state is older than what it did
        status, reason = "interrupted", core.interrupted[job_id]
    return SimulationResult(
        job_id=job_id,
        status=status,
        reason=reason,
        workspace=root,
        rounds=round_table(events, rounds),
        cross_site=core.store.cross_site(job_id),
        weights=None if state is None else dict(state.weights),
        failures=site_failures(events, rounds),
    )
