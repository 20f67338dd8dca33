"""The site node: dials the server, runs the tasks it sends through the site's trainer, and applies
the site's own privacy filters first, always.

Theory of operation
-------------------
:class:`SiteNode` is an async context manager that any AnyIO program (trio or asyncio) can run::

    async with SiteNode("kits/hospital-a", workspace, data={"breast_cancer": csv}) as site:
        await anyio.sleep_forever()

On entry it verifies its startup kit, reads ``local/privacy.toml`` and ``local/data.toml`` (see
:mod:`flrt._site_config`; a policy it cannot read stops it from starting) and dials the server. The
site only ever dials out. It keeps the connection forever: the bus reconnects and resumes the
session after a break; when the server has lost the session (it restarted), the resume is refused
and the site opens a new session, backing off while the server is unreachable.

Inside is a :class:`SiteCore` (the simulator runs it over in-memory links). Its ``site`` actor takes
the server's messages and never blocks: each task runs in its own task, which

1. collects the task's arrays (the global model) from the bus;
2. loads the job's trainer the first time (``load_trainer(spec, args)`` in a worker thread) and
   keeps it for the job's later tasks, with the job's filter chain: the site's mandatory filters
   first, then the job's;
3. runs ``filter_task``, the trainer's ``train`` or ``evaluate``, and ``filter_result`` in a worker
   thread, one task of a job at a time. The trainer gets a :class:`~flrt.trainer.SiteContext` whose
   ``abort()`` turns true when the server cancels the task or aborts the job;
4. sends the result (its arrays streamed by the bus) or, if the task could not be received, the
   job refused (a filter the site's policy requires) or the trainer or a filter raised, a
   ``failed`` message with the reason. A cancelled task's result is never sent: the site tells the
   server it withheld it.

Data locations come only from the site's configuration: a job can name a key, never a path. The
site hands them to trainers as absolute paths, and its workspace too.

What a site says about its errors
---------------------------------
A failure reason goes to the server and to every admin, so it never shows where the site keeps
its files (paths can name users, hosts, studies, even patients). Every reason a site sends (from
:meth:`SiteCore._tell_failure`, the only place that builds one) is the error's type and message with
each path replaced by ``<path>`` (absolute, ``./``-relative, or leading to a data file, and any
file an ``OSError`` names), then an error id: ``FileNotFoundError: [Errno 2] No such
file or directory: '<path>' (error id 1f0c9a3e; details in the site's log)``. The site logs
``task.failed`` (or ``task.not_received``) with the same ``error_id``, the full ``reason`` and the
traceback (``exception`` in the JSON line), so its operator finds what an admin quotes. See
:mod:`flrt._redact_paths`.
"""

from __future__ import annotations

import threading
import zlib
from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self

import anyio
import anyio.abc
import anyio.to_thread
import numpy as np

from flrt import _workspace
from flrt._groups import close_unwrapped
from flrt._protocol import (
    RESULTS_ACTOR,
    SITE_ACTOR,
    ResultMessage,
    TaskMessage,
    check_version,
    failure_body,
)
from flrt._redact_paths import describe_failure, redact_paths
from flrt._site_config import (
    DATA_FILE,
    PRIVACY_FILE,
    SitePolicy,
    load_data_locations,
    load_policy,
)
from flrt.errors import ConfigError, NodeProtocolError, TrainingAbortedError
from flrt.filters import FilterChain, FilterContext, Result, Task, build_filters
from flrt.logs import module_logger
from flrt.tasks import TrainTask
from flrt.trainer import CheckedTrainer, SiteContext, load_trainer
from security.errors import KitError
from security.kit import LOCAL_DIR, Kit, load_kit
from security.pki import Role
from security.tls import client_ssl_context_from_kit
from transport.bus import Message, Node
from transport.errors import ConnectionClosedError, ResumeRefusedError, TransportError
from transport.objects import IncomingObject, LocalObject
from transport.protocol.session import SessionConfig

__all__ = ["SiteCore", "SiteNode", "SitePolicy"]

log = module_logger("flrt.site")

SERVER = "server"


@dataclass(slots=True)
class _Job:
    """A job as this site knows it: its trainer and filter chain, loaded once."""

    key: tuple[str, str]
    trainer: CheckedTrainer
    chain: FilterChain
    lock: anyio.Lock = field(default_factory=anyio.Lock)
    running: dict[str, threading.Event] = field(default_factory=dict)


class SiteCore:
    """A site's ``site`` actor and task runner on a bus node that the caller runs and links.

    ``name`` is the site's name (from its certificate), ``workspace`` holds ``jobs/<id>/`` scratch
    folders, ``data`` the site's data locations, ``policy`` its privacy policy, ``server`` the peer
    name the server is linked under.
    """

    def __init__(
        self,
        node: Node,
        name: str,
        workspace: Path,
        *,
        data: Mapping[str, Path] | None = None,
        policy: SitePolicy | None = None,
        server: str = SERVER,
    ) -> None:
        self.node = node
        self.name = name
        # Absolute, so that an error naming one of them names it as a path the site redacts.
        self.workspace = workspace.absolute()
        self.data = {key: Path(location).absolute() for key, location in (data or {}).items()}
        self.policy = policy or SitePolicy()
        self.server = server
        self._jobs: dict[str, _Job] = {}
        self._loading: dict[str, anyio.Lock] = {}
        self._aborts: dict[str, threading.Event] = {}  # tid -> abort flag, every task in flight
        self._tg: anyio.abc.TaskGroup | None = None
        self.log = log.bind(site=name)
        #: Tasks that finished (sent, failed or withheld), for tests and the console.
        self.completed = 0
        self._task_arrived = anyio.Event()

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self.node.register(SITE_ACTOR, self._on_message, mailbox_size=1024)
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        for flag in self._aborts.values():
            flag.set()
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None

    @property
    def busy(self) -> bool:
        """Whether a task is in flight here."""
        return bool(self._aborts)

    async def wait_busy(self) -> None:
        """Wait until a task is in flight (for tests and the console)."""
        while not self._aborts:
            await self._task_arrived.wait()

    # ------------------------------------------------------------------ the actor

    async def _on_message(self, message: Message) -> None:
        if message.sender != self.server:
            self.log.warning("message.refused", peer=message.sender, reason="not the server")
            return
        try:
            body = check_version(message.body, message.sender)
            op = body.get("op")
            if op == "task":
                task = TaskMessage.from_body(body, message.sender)
                self._aborts[task.tid] = threading.Event()
                self._task_arrived.set()
                self._task_arrived = anyio.Event()
                assert self._tg is not None
                self._tg.start_soon(self._run, task, message.object)
            elif op == "cancel":
                flag = self._aborts.get(str(body.get("tid")))
                if flag is not None:
                    self.log.info("task.cancel", tid=body.get("tid"))
                    flag.set()
            elif op in ("abort", "end"):
                job_id = str(body.get("job"))
                self._loading.pop(job_id, None)
                job = self._jobs.pop(job_id, None)
                if job is not None:
                    for flag in job.running.values():
                        flag.set()
                    self.log.info("job." + ("aborted" if op == "abort" else "ended"), job=job_id)
            else:
                raise NodeProtocolError(f"unknown operation {str(op)[:40]!r}", peer=message.sender)
        except NodeProtocolError as exc:
            self.log.warning("message.malformed", reason=exc.reason)

    # ------------------------------------------------------------------ tasks

    async def _run(self, task: TaskMessage, obj: IncomingObject | LocalObject | None) -> None:
        abort = self._aborts[task.tid]
        log = self.log.bind(job=task.job_id, round=task.round, task=task.kind, tid=task.tid)
        try:
            arrays = {} if obj is None else await obj.arrays()
            job = await self._job(task)
            job.running[task.tid] = abort
            try:
                async with job.lock:  # one task of a job at a time: a trainer is not reentrant
                    if abort.is_set():
                        log.info("task.cancelled_before_start")
                        return
                    result = await anyio.to_thread.run_sync(
                        self._compute, job, task, task.task(arrays), abort, abandon_on_cancel=True
                    )
            finally:
                job.running.pop(task.tid, None)
        except TrainingAbortedError:
            log.info("task.aborted")
            return
        except (ConnectionClosedError, ResumeRefusedError) as exc:
            # The server stopped or restarted while the model came: it will ask again.
            log.info("task.not_received", reason=str(exc))
            return
        except (TransportError, NodeProtocolError) as exc:
            await self._fail(log, task, exc, event="task.not_received", context="task not received")
            return
        except Exception as exc:  # the trainer's or a filter's failure is the site's answer
            await self._fail(log, task, exc, event="task.failed")
            return
        finally:
            self._aborts.pop(task.tid, None)
            self.completed += 1
        if abort.is_set():
            log.info("task.withheld", reason="cancelled by the server while training")
            await self._tell_failure("withheld", task, "cancelled while training")
            return
        message, result_arrays = ResultMessage.of(task.tid, task, result)
        log.info("task.done", samples=result.num_samples)
        await self._send(message.to_body(), result_arrays)

    async def _fail(
        self,
        log: Any,
        task: TaskMessage,
        exc: BaseException,
        *,
        event: str,
        context: str | None = None,
    ) -> None:
        """Log ``exc`` in full under a new error id, and tell the server the task failed: the
        error's type and message, paths redacted, with that id."""
        failure = describe_failure(exc, context=context)
        log.warning(event, error_id=failure.error_id, reason=failure.reason, exc_info=exc)
        await self._tell_failure("failed", task, failure.upstream)

    async def _tell_failure(
        self, op: Literal["failed", "withheld"], task: TaskMessage, reason: str
    ) -> None:
        """Every reason this site sends upstream passes here: no path leaves the site."""
        await self._send(failure_body(op, task.tid, task, redact_paths(reason)))

    async def _send(self, body: dict[str, Any], arrays: Mapping[str, Any] | None = None) -> None:
        try:
            await self.node.tell(f"{self.server}/{RESULTS_ACTOR}", body, arrays=arrays)
        except TransportError as exc:
            self.log.warning("result.not_sent", tid=body.get("tid"), reason=str(exc))

    async def _job(self, task: TaskMessage) -> _Job:
        """The job's trainer and filters, loaded on its first task (in a worker thread)."""
        key = (task.trainer_spec, repr(sorted(task.trainer_args.items())))
        lock = self._loading.setdefault(task.job_id, anyio.Lock())
        async with lock:
            job = self._jobs.get(task.job_id)
            if job is not None and job.key == key:
                return job
            missing = self.policy.missing_job_filters(list(task.filters))
            if missing:
                raise ConfigError(
                    f"this site's privacy policy requires the job to declare the filters"
                    f" {', '.join(missing)}",
                    key="required_job_filters",
                )
            trainer = await anyio.to_thread.run_sync(
                load_trainer, task.trainer_spec, task.trainer_args
            )
            chain = FilterChain(self.policy.mandatory_filters(), build_filters(task.filters))
            job = _Job(key, trainer, chain)
            self._jobs[task.job_id] = job
            self.log.info("job.loaded", job=task.job_id, trainer=task.trainer_spec)
            return job

    def _compute(
        self, job: _Job, message: TaskMessage, task: Task, abort: threading.Event
    ) -> Result:
        """Filters, trainer, filters (runs in a worker thread)."""
        filters = FilterContext(site=self.name, job_id=message.job_id, round=message.round)
        seen = job.chain.filter_task(task, filters)
        scratch = self.workspace / "jobs" / message.job_id
        scratch.mkdir(parents=True, exist_ok=True)
        context = SiteContext(
            site=self.name,
            data=self.data,
            scratch=scratch,
            rng=np.random.default_rng(
                [
                    message.seed,
                    message.round,
                    zlib.crc32(self.name.encode()),
                    int(message.kind == "train"),
                ]
            ),
            abort=abort.is_set,
        )
        result: Result
        if isinstance(seen, TrainTask):
            result = job.trainer.train(seen, context)
        else:
            result = job.trainer.evaluate(seen.weights, context)
        return job.chain.filter_result(result, seen, filters)


# ------------------------------------------------------------------------------- the node

#: What certificate verification says of a server certificate from another CA than the kit's.
_FOREIGN_CA = (
    "self-signed certificate in certificate chain",
    "unable to get local issuer certificate",
)


def _exists(path: Path) -> bool:
    try:
        return path.exists()
    except OSError:  # a folder on the way this user may not search: not there for the trainer
        return False


def _connect_hint(reason: str) -> str | None:
    """What an operator should check after a failed connection, when OpenSSL's words do not say."""
    if any(mark in reason for mark in _FOREIGN_CA):
        return (
            "the server's certificate is not from this kit's project CA: is this kit from the"
            " server's project, and is this the project's server?"
        )
    return None


class SiteNode:
    """A site of a project, from its startup kit (see the module docstring).

    ``workspace`` holds ``jobs/<id>/`` scratch folders (the kit's folder by default); ``data`` adds
    or overrides data locations of ``local/data.toml``; ``backoff`` is the first and the longest
    wait between attempts to reach the server; ``server`` (host, port) replaces the addresses of
    the kit (tests run servers on free ports).

    The site holds its workspace's lock while it runs (:mod:`flrt._workspace`);
    ``lock_workspace=False`` is for a caller that holds it already.

    Raises, on entry: :class:`~security.errors.KitError` (and subclasses) for a kit it cannot use,
    :class:`~flrt.errors.ConfigError` for a local policy it cannot read or a workspace it cannot
    create, :class:`~flrt.errors.WorkspaceInUseError` when another node holds the workspace, and
    :class:`RuntimeError` when it is open already. It does not wait for the server: use
    :meth:`wait_connected`.
    """

    def __init__(
        self,
        kit: Path | str,
        workspace: Path | str | None = None,
        *,
        data: Mapping[str, Path | str] | None = None,
        backoff: tuple[float, float] = (0.2, 5.0),
        session_config: SessionConfig | None = None,
        server: tuple[str, int] | None = None,
        lock_workspace: bool = True,
    ) -> None:
        self.kit_path = Path(kit)
        self.lock_workspace = lock_workspace
        self.server_address = server
        self.workspace = Path(workspace) if workspace is not None else self.kit_path
        self.data_overrides = {k: Path(v) for k, v in (data or {}).items()}
        self.backoff = backoff
        self.session_config = session_config
        self.kit: Kit | None = None
        #: Every reason a connection attempt failed, newest last (bounded).
        self.connect_errors: list[str] = []
        self._stack: AsyncExitStack | None = None
        self._node: Node | None = None
        self._core: SiteCore | None = None
        self._lost = anyio.Event()
        self._sessions = 0
        self._open = False  # from the start of __aenter__ to the end of __aexit__
        self._connecting = anyio.CancelScope()  # _stay_connected's; cancelled first on exit

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("the site is not running (use 'async with')")
        return self._node

    @property
    def core(self) -> SiteCore:
        if self._core is None:
            raise RuntimeError("the site is not running (use 'async with')")
        return self._core

    @property
    def connected(self) -> bool:
        return bool(self._node is not None and self._node.peers.get(SERVER, False))

    @property
    def sessions(self) -> int:
        """How many sessions with the server were opened (a new one after a server restart)."""
        return self._sessions

    async def wait_connected(self) -> None:
        await self.node.wait_peer(SERVER)

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError(
                "the site is open already: use one 'async with' at a time, or another SiteNode"
            )
        self._open = True
        try:
            return await self._start()
        except BaseException:
            self._open = False
            raise

    async def _start(self) -> Self:
        kit = load_kit(self.kit_path)
        if kit.identity.role is not Role.SITE:
            raise KitError(self.kit_path, f"a {kit.identity.role.value} kit cannot run a site")
        self.kit = kit
        local = self.kit_path / LOCAL_DIR
        try:
            policy = load_policy(local / PRIVACY_FILE)
            data = {**load_data_locations(local / DATA_FILE), **self.data_overrides}
        except OSError as exc:  # local/ itself cannot be searched by this user
            where = exc.filename if exc.filename is not None else local
            raise ConfigError(f"cannot be read: {exc.strerror or exc}", path=where) from None
        context = client_ssl_context_from_kit(kit)
        try:
            self.workspace.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a file in the way, a folder this user may not write
            raise ConfigError(
                f"cannot be the site's workspace: {exc.strerror or exc}", path=self.workspace
            ) from None
        self._connecting = anyio.CancelScope()
        async with AsyncExitStack() as stack:
            if self.lock_workspace:  # before anything in it is read or written
                stack.enter_context(_workspace.lock_workspace(self.workspace))
            node = await stack.enter_async_context(
                Node(kit.config.name, config=self.session_config, on_peer_lost=self._peer_lost)
            )
            self._node = node
            self._core = await stack.enter_async_context(
                SiteCore(node, kit.config.name, self.workspace, data=data, policy=policy)
            )
            node.task_group.start_soon(self._stay_connected, kit, context)
            log.info(
                "site.started",
                site=kit.config.name,
                project=kit.config.project,
                mandatory_filters=[f.type for f in policy.result_filters],
                data=sorted(data),
            )
            for key, location in sorted(data.items()):
                if not _exists(location):  # not fatal (a share mounted later), but said at once
                    log.warning("site.data_missing", key=key, path=str(location))
            self._stack = stack.pop_all()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        # Stop reconnecting first: the node's stop ends the session, which would make a dial.
        self._connecting.cancel()
        try:
            return await close_unwrapped(self._stack, exc_type, exc, tb)
        finally:
            self._stack = None
            self._node = self._core = None
            self._open = False

    def _peer_lost(self, peer: str, error: TransportError | None) -> None:
        if peer == SERVER:
            self._lost.set()

    async def _stay_connected(self, kit: Kit, context: Any) -> None:
        """Open a session with the server, and a new one whenever the old one is lost (until the
        site stops)."""
        with self._connecting:
            await self._connect_forever(kit, context)

    async def _connect_forever(self, kit: Kit, context: Any) -> None:
        node = self.node
        delay = self.backoff[0]
        addresses = [self.server_address] if self.server_address else kit.config.server_addresses
        while True:
            for host, port in addresses:
                self._lost = anyio.Event()
                try:
                    await node.connect(
                        host,
                        port,
                        context,
                        server_hostname=host,
                        peer=SERVER,
                        backoff=self.backoff,
                    )
                except TransportError as exc:
                    self.connect_errors = [*self.connect_errors[-49:], str(exc)]
                    hint = _connect_hint(str(exc))
                    log.warning(
                        "site.connect_failed",
                        host=host,
                        port=port,
                        reason=str(exc),
                        **({"hint": hint} if hint else {}),
                    )
                    continue
                self._sessions += 1
                log.info("site.connected", host=host, port=port, session=self._sessions)
                delay = self.backoff[0]
                await self._lost.wait()
                log.info("site.session_lost", host=host, port=port)
                break
            else:
                await anyio.sleep(delay)
                delay = min(delay * 2, self.backoff[1])
