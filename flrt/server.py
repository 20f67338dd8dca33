"""The server node: admits sites and admins, keeps the site registry, stores and runs jobs.

Theory of operation
-------------------
:class:`ServerNode` is an async context manager that any AnyIO program (trio or asyncio) can run::

    async with ServerNode("kits/server", workspace) as server:
        await anyio.sleep_forever()        # or run other things; leaving stops it cleanly

On entry it verifies its startup kit (a tampered or expired kit raises before anything listens),
builds the TLS context, locks its workspace (:mod:`flrt._workspace`: one node per workspace), and
serves the port of ``node.toml`` (and the admin port, if the project has one); only then does it
resume the stored jobs and log ``server.started``. A port it cannot listen on is logged
(``server.listen_failed``, with host, port and reason) before it stops. Every peer is admitted by :func:`security.admission.admit_peer` against the project CA, the
revocation list and the participant list of ``trust/``; a refusal is logged with its reason and the
peer is told why.

Inside is a :class:`ServerCore`, which the simulator also runs over in-memory links:

- **actors**: ``results`` (sites' answers, routed to the scatter that sent the task, see
  :mod:`flrt.network`) and ``admin`` (the admin console's commands, see :mod:`flrt._admin_service`);
- **registry** (:class:`~flrt.registry.SiteRegistry`): one watcher task per site follows the bus's
  view of its connection; a dropped connection fails the site's outstanding tasks at once, a
  connection makes it available to every open round;
- **jobs** (:class:`~flrt.jobstore.JobStore`): a submitted job runs in its own task (at most
  ``max_jobs`` at a time) through a :class:`~flrt.network.NetworkController`. It first waits for its
  sites (all targets, or, after ``site_wait`` seconds, at least ``min_sites``), then starts from the
  trainer's ``initial_weights()`` or resumes from its newest checkpoint. A server that stops leaves
  running jobs ``running`` on disk; the next start resumes them from their last completed round.
  A job that the server's file system fails (a full disk: its checkpoint, its record or its spilled
  updates cannot be written) stops alone in that same state, and says so
  (:attr:`ServerCore.interrupted`, the admin console's ``jobs`` and ``status``): nothing stored is
  lost, and once there is space again the next start resumes it from its last good checkpoint.
  Failing it for good instead would throw away a study for a disk that an operator can free.
"""

from __future__ import annotations

import datetime as dt
import math
import ssl
import time
from collections.abc import Callable, Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio
import anyio.abc
import anyio.to_thread

from flrt import _admin_service, _workspace
from flrt._groups import close_unwrapped, unwrapped
from flrt._protocol import ADMIN_ACTOR, PROTOCOL_VERSION, RESULTS_ACTOR, check_version
from flrt.errors import (
    FlrtError,
    JobRecordError,
    JobStateError,
    NodeProtocolError,
    TrainerError,
)
from flrt.job import JobSpec, JobStatus
from flrt.jobstore import JobEntry, JobStore, unreadable_reason
from flrt.logs import module_logger
from flrt.network import NetworkController, TaskTable, drain
from flrt.registry import SiteRegistry
from flrt.tasks import Weights
from flrt.trainer import load_trainer
from flrt.workflows import WorkflowState, run_workflow
from security.admission import admit_peer
from security.errors import AdmissionError, KitError
from security.kit import Kit, load_kit
from security.pki import ADMIN_ROLES, Identity, Role
from security.tls import server_ssl_context_from_kit
from transport.bus import Arrays, Message, Node
from transport.errors import ConnectionClosedError, TransportError
from transport.protocol.session import SessionConfig

__all__ = ["ServerCore", "ServerNode"]

log = module_logger("flrt.server")

#: Called to learn who a peer is (``None``: not known).
IdentityOf = Callable[[str], Identity | None]

#: Admins watching a job hear of its saved rounds at most this often (seconds).
PROGRESS_INTERVAL = 0.1


def initial_weights(job: JobSpec) -> Weights:
    """Round 0's model from the job's trainer (blocking: imports and builds the trainer).

    Raises :class:`~flrt.errors.TrainerLoadError`, :class:`~flrt.errors.TrainerOutputError`, or
    :class:`~flrt.errors.TrainerError` for whatever else ``initial_weights()`` raised (the job's
    code failed, not the server: an :class:`OSError` there must not pass for a full disk here).
    """
    trainer = load_trainer(job.trainer.spec, job.trainer.args)
    try:
        return trainer.initial_weights()
    except FlrtError:
        raise
    except Exception as exc:
        raise TrainerError(
            f"initial_weights() raised {type(exc).__name__}: {exc}", spec=job.trainer.spec
        ) from exc


@dataclass(slots=True)
class _RunningJob:
    scope: anyio.CancelScope
    spec: JobSpec | None = None  # read once when it starts: job.toml never changes
    controller: NetworkController | None = None
    detail: str = ""
    done: anyio.Event = field(default_factory=anyio.Event)


class ServerCore:
    """The server's actors, registry and jobs on a bus node that the caller runs and links.

    ``sites`` maps every site of the project to its organisation; ``identity_of`` names a peer's
    identity (admission fills it); ``site_wait`` is how long a starting job waits for all its sites
    before it starts with ``min_sites``; ``max_jobs`` bounds the jobs running at once.
    ``resume_on_entry=False`` leaves the stored jobs alone on entry until :meth:`resume_jobs`
    (a :class:`ServerNode` calls it once its ports are bound: a server that cannot listen must not
    have started a job first).
    """

    def __init__(
        self,
        node: Node,
        workspace: Path,
        *,
        sites: Mapping[str, str],
        identity_of: IdentityOf,
        site_wait: float = 30.0,
        max_jobs: int = 4,
        resume_on_entry: bool = True,
    ) -> None:
        self.node = node
        self.workspace = workspace
        self.resume_on_entry = resume_on_entry
        self.identity_of = identity_of
        self.site_wait = site_wait
        self.store = JobStore(workspace / "jobs")
        self.registry = SiteRegistry(sites, workspace / "registry.json")
        self.table = TaskTable()
        self.jobs: dict[str, _RunningJob] = {}
        #: Jobs stopped because their state could not be saved (a full disk), with the reason.
        self.interrupted: dict[str, str] = {}
        self.admin = _admin_service.AdminService(self)
        self._limiter = anyio.CapacityLimiter(max_jobs)
        self._tg: anyio.abc.TaskGroup | None = None
        self._progress_told: dict[str, float] = {}  # job -> when its progress was last told
        self._progress_pending: set[str] = set()  # jobs whose progress will be told shortly
        self._stopping = False  # set on exit: its task group takes no new work

    # ------------------------------------------------------------------ lifecycle

    @property
    def stopping(self) -> bool:
        """True from the start of its exit on: its task group takes no new work."""
        return self._stopping

    async def __aenter__(self) -> Self:
        self._tg = anyio.create_task_group()
        await self._tg.__aenter__()
        self.node.register(RESULTS_ACTOR, self._on_result, mailbox_size=1024)
        self.node.register(ADMIN_ACTOR, self.admin.handle, mailbox_size=256)
        for site in self.registry.sites:
            self._tg.start_soon(self._watch_site, site)
        if self.resume_on_entry:
            self.resume_jobs()
        return self

    def resume_jobs(self) -> None:
        """Start every stored job that is not over, and log ``server.started`` (on entry, unless
        made with ``resume_on_entry=False``)."""
        entries, unreadable = self.store.scan()
        for entry in entries:
            if not entry.record.status.terminal:
                self.start_job(entry.record.job_id)
        for job_id, error in unreadable.items():
            self.interrupted[job_id] = unreadable_reason(error)
            log.error("job.unreadable", job=job_id, reason=str(error), resumes="once mended")
        log.info("server.started", sites=len(self.registry.sites), workspace=str(self.workspace))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._tg is not None
        self._stopping = True
        self._tg.cancel_scope.cancel()
        try:
            return await self._tg.__aexit__(exc_type, exc, tb)
        finally:
            self._tg = None
            self.registry.flush()
            log.info("server.stopped")

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        if self._tg is None:
            raise RuntimeError("the server is not running (use 'async with')")
        return self._tg

    # ------------------------------------------------------------------ sending

    async def send(self, address: str, body: dict[str, Any], arrays: Arrays | None) -> None:
        await self.node.tell(address, body, arrays=arrays)

    async def tell_quietly(self, address: str, body: dict[str, Any]) -> bool:
        try:
            await self.node.tell(address, {"v": PROTOCOL_VERSION, **body})
        except TransportError:
            return False
        return True

    # ------------------------------------------------------------------ sites

    async def _watch_site(self, site: str) -> None:
        """Follow one site's connection (see the module docstring).

        It waits on the site's link itself (woken by every change of the link, a cheap check; the
        end of the link's session is one) and, while there is no link, for a new one.
        """
        while True:
            try:
                link = self.node.link(site)
            except ConnectionClosedError:
                link = None
            connected = link is not None and link.connected
            if connected and self.registry.connected(site):
                log.info("site.connected", site=site)
                for job in self.jobs.values():
                    if job.controller is not None:
                        job.controller.site_joined(site)
            elif not connected and self.registry.disconnected(site):
                log.info("site.disconnected", site=site)
                self._site_lost(site, "disconnected", resumable=link is not None)
            if link is None:
                await self.node.wait_peer(site)
            else:
                await link.wait_changed()

    def _reconnecting(self, site: str) -> bool:
        """Whether ``site``'s connection dropped while its session may still resume."""
        try:
            link = self.node.link(site)
        except ConnectionClosedError:
            return False
        return not link.connected

    def _site_lost(self, site: str, reason: str, *, resumable: bool = False) -> None:
        """``site``'s connection dropped (``resumable``: its session may resume: the bus keeps
        its link) or its session ended."""
        for job in self.jobs.values():
            if job.controller is not None:
                job.controller.site_lost(site, reason, resumable=resumable)

    def peer_lost(self, peer: str, error: TransportError | None) -> None:
        """The bus ended ``peer``'s session (closed, replaced, expired or refused)."""
        if peer in self.registry:
            reason = f"session ended: {error}" if error is not None else "session closed"
            if self.registry.disconnected(peer):
                log.info("site.disconnected", site=peer, reason=reason)
            self._site_lost(peer, reason)
        else:
            self.admin.forget(peer)

    # ------------------------------------------------------------------ results

    async def _on_result(self, message: Message) -> None:
        site = message.sender
        if self._stopping:
            # Its node outlives the server (it closes after it) and may still hand in a site's
            # answer: the jobs are stopped, their rounds neither closed nor failed, and each runs
            # again from its checkpoint at the next start. Not "late", and nothing to drain: the
            # session goes with the node.
            log.info("result.ignored", site=site, reason="the server is stopping")
            return
        if site not in self.registry:
            log.warning("result.refused", peer=site, reason="the peer is not a site")
            self.task_group.start_soon(drain, message.object)
            return
        self.registry.heard_from(site)
        try:
            body = check_version(message.body, site)
        except NodeProtocolError as exc:
            log.warning("result.malformed", site=site, reason=exc.reason)
            self.task_group.start_soon(drain, message.object)
            return
        op, tid = body.get("op"), body.get("tid")
        sent = self.table.get(tid)
        if sent is None or sent.site != site:
            log.info("result.unknown_task", site=site, op=op, tid=str(tid)[:40])
            self.task_group.start_soon(drain, message.object)
            return
        scatter = sent.scatter
        if op == "result":
            scatter.arrived(site, str(tid), body, message.object)
            return
        self.task_group.start_soon(drain, message.object)
        reason = str(body.get("reason", "no reason given"))[:2000]
        if op == "failed":
            scatter.failed(site, str(tid), reason)
        elif op == "withheld":
            scatter.withheld(site, reason)
        else:
            log.warning("result.unknown_op", site=site, op=str(op)[:40])

    # ------------------------------------------------------------------ jobs

    def start_job(self, job_id: str) -> None:
        """Run a stored job (in the background) unless it runs already, or the server is stopping
        (the job is stored: the next start runs it)."""
        if self._stopping:
            log.info("job.not_started", job=job_id, reason="the server is stopping")
            return
        if job_id not in self.jobs:
            self.interrupted.pop(job_id, None)
            self.jobs[job_id] = _RunningJob(anyio.CancelScope())
            self.task_group.start_soon(self._run_job, job_id)

    async def wait_job(self, job_id: str) -> JobEntry:
        """Wait until ``job_id`` is no longer running here; returns its entry."""
        running = self.jobs.get(job_id)
        if running is not None:
            await running.done.wait()
        return self.store.entry(job_id)

    def job_detail(self, job_id: str) -> tuple[str, int | None]:
        """What a job is doing now, and the last round it completed (``None``: not running)."""
        running = self.jobs.get(job_id)
        if running is None:
            if job_id in self.interrupted:
                why = self.interrupted[job_id]
                return f"interrupted ({why}); it resumes when the server restarts", None
            return "", None
        rounds = running.controller.rounds_done if running.controller is not None else None
        return running.detail, rounds

    def job_spec(self, job_id: str) -> JobSpec:
        """The job as submitted: a running job's from memory (its views are built every round),
        another's read from its stored job file. Raises :class:`~flrt.errors.JobError`."""
        running = self.jobs.get(job_id)
        if running is not None and running.spec is not None:
            return running.spec
        return self.store.spec(job_id)

    def _advance(self, job_id: str, status: JobStatus, reason: str | None = None) -> JobEntry:
        entry = self.store.entry(job_id)
        record = entry.record.advance(status, now=time.time(), reason=reason)
        entry = JobEntry(record, entry.submitted_by, entry.organisation)
        self.store.save(entry)
        level = "info" if status is not JobStatus.FAILED else "warning"
        getattr(log, level)("job." + status.value, job=job_id, reason=reason)
        self.admin.publish(job_id)
        return entry

    async def _run_job(self, job_id: str) -> None:
        running = self.jobs[job_id]
        try:
            with running.scope:
                running.detail = "queued"
                async with self._limiter:
                    await self._run_workflow(job_id, running)
        except OSError as exc:
            # Its checkpoint or its record could not be written (a full disk): what is stored
            # stays as it was, so the job resumes at the next start from its last good checkpoint;
            # the server and its other jobs go on.
            reason = f"its state cannot be saved: {exc.strerror or exc}"
            self.interrupted[job_id] = reason
            log.error(
                "job.interrupted",
                job=job_id,
                reason=reason,
                file=exc.filename,
                resumes="when the server restarts",
            )
        except JobRecordError as exc:
            # Its record was damaged on disk (by hand, or by the disk): left as it is for the
            # operator, and the job goes no further; the server and its other jobs go on.
            self.interrupted[job_id] = unreadable_reason(exc)
            log.error("job.unreadable", job=job_id, reason=str(exc), resumes="once mended")
        finally:
            if running.controller is not None:
                running.controller.close()
            self.registry.flush()  # the job's last rounds' outcomes
            del self.jobs[job_id]
            self._progress_told.pop(job_id, None)
            running.done.set()
        if job_id in self.interrupted:
            self.admin.publish(job_id)  # its watchers hear why it stopped

    async def _run_workflow(self, job_id: str, running: _RunningJob) -> None:
        entry = self.store.entry(job_id)
        if entry.record.status.terminal:
            return
        try:
            spec = self.store.spec(job_id)
        except FlrtError as exc:
            self._end(job_id, JobStatus.FAILED, f"the stored job cannot be read: {exc}")
            return
        running.spec = spec
        if entry.record.status is JobStatus.SUBMITTED:
            try:
                entry = self._advance(job_id, JobStatus.RUNNING)
            except JobStateError:  # aborted while it waited for its turn
                return
        controller = NetworkController(
            job_id=job_id,
            job=spec,
            entry=entry,
            store=self.store,
            registry=self.registry,
            table=self.table,
            send=self.send,
            task_group=self.task_group,
            on_progress=self._progress,
            reconnecting=self._reconnecting,
        )
        running.controller = controller
        try:
            await self._wait_for_sites(spec, running)
            running.detail = "loading"
            resume = await anyio.to_thread.run_sync(self.store.latest_state, job_id)
            if resume is not None:
                controller.rounds_done = resume.round
                log.info("job.resumed", job=job_id, round=resume.round)
                running.detail = "running"
                controller.started(resume.round)
                state = await run_workflow(controller, spec, job_id=job_id, resume=resume)
            else:
                weights = await anyio.to_thread.run_sync(initial_weights, spec)
                controller.release_at_first_checkpoint(weights)
                running.detail = "running"
                controller.started(0)
                state = await run_workflow(controller, spec, job_id=job_id, initial_weights=weights)
            await controller.checkpoint_written()  # the last one, before the job is reported over
        except FlrtError as exc:
            await _checkpoint_settled(controller)
            self._end(job_id, JobStatus.FAILED, str(exc))
            await self._tell_sites(spec, {"op": "abort", "job": job_id, "reason": "job failed"})
            return
        except OSError:  # its checkpoint cannot be written (a full disk): interrupted, not over
            await _checkpoint_settled(controller)
            raise  # see _run_job; the sites' tasks were cancelled as the round's scatter ended
        except Exception as exc:  # a bug must fail the job with its reason, not kill the server
            log.exception("job.crashed", job=job_id)
            await _checkpoint_settled(controller)
            self._end(job_id, JobStatus.FAILED, f"internal error: {type(exc).__name__}: {exc}")
            return
        self._end(job_id, JobStatus.FINISHED, _finished_reason(state))
        await self._tell_sites(spec, {"op": "end", "job": job_id})

    def _end(self, job_id: str, status: JobStatus, reason: str) -> None:
        """Move a job to a terminal state, unless it got there first (an abort races the job's
        own end)."""
        try:
            self._advance(job_id, status, reason)
        except JobStateError as exc:
            log.info("job.already_over", job=job_id, status=exc.current, wanted=status.value)

    async def _tell_sites(self, spec: JobSpec, body: dict[str, Any]) -> None:
        for site in spec.targets or self.registry.sites:
            if self.registry.is_connected(site):
                await self.tell_quietly(f"{site}/site", body)

    async def _wait_for_sites(self, spec: JobSpec, running: _RunningJob) -> None:
        wanted = frozenset(spec.targets) or frozenset(self.registry.sites)
        deadline = anyio.current_time() + self.site_wait
        while True:
            connected = self.registry.available() & wanted
            if connected >= wanted:
                return
            if len(connected) >= spec.workflow.min_sites and anyio.current_time() >= deadline:
                return
            missing = sorted(wanted - connected)
            shown = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if missing[5:] else ""
            )
            running.detail = (
                f"waiting for sites: {len(connected)} of {len(wanted)} connected"
                f" ({spec.workflow.min_sites} needed); not connected: {shown}"
            )
            with anyio.CancelScope(deadline=deadline if anyio.current_time() < deadline else 1e18):
                await self.registry.wait_changed()

    def _progress(self, job_id: str, round: int) -> None:
        """A round of ``job_id`` is saved: tell the admins watching it, at most once per
        :data:`PROGRESS_INTERVAL` (each tell reads the job's record and sends every watcher a
        message, which a fast job's rounds need not each pay for); a round saved in between is
        told at the end of the interval. A change of status is told at once (:meth:`_advance`)."""
        if job_id in self._progress_pending:
            return  # the pending publish is due within the interval and will tell this round
        now = anyio.current_time()
        due = self._progress_told.get(job_id, -math.inf) + PROGRESS_INTERVAL
        if now >= due:
            self._progress_told[job_id] = now
            self.admin.publish(job_id)
        else:
            self._progress_pending.add(job_id)
            self.task_group.start_soon(self._progress_later, job_id, due)

    async def _progress_later(self, job_id: str, due: float) -> None:
        try:
            await anyio.sleep_until(due)
        finally:
            self._progress_pending.discard(job_id)
        if job_id in self.jobs:
            self._progress_told[job_id] = anyio.current_time()
        self.admin.publish(job_id)

    async def abort_job(self, job_id: str, reason: str) -> JobEntry:
        """Abort a submitted or running job. Raises :class:`~flrt.errors.JobStateError` if it is
        over, :class:`KeyError` if there is no such job."""
        entry = self._advance(job_id, JobStatus.ABORTED, reason)
        running = self.jobs.get(job_id)
        if running is not None:
            running.scope.cancel()
            with anyio.move_on_after(10):
                await running.done.wait()
        spec = self.job_spec(job_id)
        await self._tell_sites(spec, {"op": "abort", "job": job_id, "reason": reason})
        return entry


async def _checkpoint_settled(controller: NetworkController) -> None:
    """Let a checkpoint still being written end before a failed job is reported over (the job's
    own error is the news; a failed write is only logged)."""
    try:
        await controller.checkpoint_written()
    except Exception as exc:
        log.warning("checkpoint.not_saved", job=controller.job_id, reason=str(exc))


def _finished_reason(state: WorkflowState) -> str:
    if state.workflow == "cross_site_eval":
        return "cross-site evaluation complete"
    return f"completed {state.round} rounds"


# ------------------------------------------------------------------------------- the node


class ServerNode:
    """The server of a project, from its startup kit (see the module docstring).

    ``workspace`` holds ``jobs/``, ``registry.json`` (the kit's folder by default); ``host`` is the
    address to listen on; ``port``/``admin_port`` override the kit's (0 picks a free port, tests use
    it). After entry, :attr:`port` and :attr:`admin_port` are the bound ports and :attr:`refusals`
    lists every peer refused by admission, with the reason.

    The server holds its workspace's lock (:mod:`flrt._workspace`) from before it reads anything
    there until it stops; ``lock_workspace=False`` is for a caller that holds it already
    (``flrt server start`` takes it before it opens its log file there).

    Raises, on entry: :class:`~security.errors.KitError` (and its subclasses for a tampered or
    expired kit), :class:`~flrt._workspace.WorkspaceInUseError` when another node holds the
    workspace, :class:`OSError` when the workspace cannot be created, and
    :class:`~transport.errors.ConnectionBrokenError` when the port is taken.
    """

    def __init__(
        self,
        kit: Path | str,
        workspace: Path | str | None = None,
        *,
        host: str = "0.0.0.0",
        port: int | None = None,
        admin_port: int | None = None,
        site_wait: float = 30.0,
        max_jobs: int = 4,
        session_config: SessionConfig | None = None,
        lock_workspace: bool = True,
    ) -> None:
        self.kit_path = Path(kit)
        self.workspace = Path(workspace) if workspace is not None else self.kit_path
        self.host = host
        self._port = port
        self._admin_port = admin_port
        self.site_wait = site_wait
        self.max_jobs = max_jobs
        self.session_config = session_config
        self.lock_workspace = lock_workspace
        self.identities: dict[str, Identity] = {}
        self.refusals: list[str] = []
        self.port = 0
        self.admin_port: int | None = None
        self._stack: AsyncExitStack | None = None
        self._open = False  # from the start of __aenter__ to the end of __aexit__
        self._core: ServerCore | None = None
        self._node: Node | None = None
        self.kit: Kit | None = None

    @property
    def core(self) -> ServerCore:
        if self._core is None:
            raise RuntimeError("the server is not running (use 'async with')")
        return self._core

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("the server is not running (use 'async with')")
        return self._node

    async def __aenter__(self) -> Self:
        if self._open:
            raise RuntimeError(
                "the server is open already: use one 'async with' at a time, or another ServerNode"
            )
        self._open = True
        try:
            return await self._enter()
        except BaseException:
            self._open = False
            raise

    async def _enter(self) -> Self:
        kit = load_kit(self.kit_path)
        if kit.identity.role is not Role.SERVER:
            raise KitError(self.kit_path, f"a {kit.identity.role.value} kit cannot run the server")
        self.kit = kit
        context = server_ssl_context_from_kit(kit)
        participants = kit.participants or {}
        sites = {n: i.organisation for n, i in participants.items() if i.role is Role.SITE}
        raised: BaseException | None = None
        try:
            async with AsyncExitStack() as stack:
                try:
                    await self._start(stack, kit, context, sites)
                except BaseException as exc:
                    raised = exc
                    raise
                self._stack = stack.pop_all()
        except BaseExceptionGroup as group:  # the node's and core's task groups wrap it
            error = unwrapped(group, raised)
            if error is group:
                raise
            raise error from None
        finally:
            if self._stack is None:  # it did not start: nothing of it is running
                self._core = None
                self._node = None
        return self

    async def _start(
        self, stack: AsyncExitStack, kit: Kit, context: ssl.SSLContext, sites: dict[str, str]
    ) -> None:
        if self.lock_workspace:  # before anything in it is read or written
            stack.enter_context(_workspace.lock_workspace(self.workspace))
        else:
            self.workspace.mkdir(parents=True, exist_ok=True)
        node = await stack.enter_async_context(
            Node(kit.config.name, config=self.session_config, on_peer_lost=self._peer_lost)
        )
        self._node = node
        self._core = await stack.enter_async_context(
            ServerCore(
                node,
                self.workspace,
                sites=sites,
                identity_of=self.identities.get,
                site_wait=self.site_wait,
                max_jobs=self.max_jobs,
                resume_on_entry=False,  # once it listens: see resume_jobs() below
            )
        )
        admin_port = self._admin_port if self._admin_port is not None else kit.config.admin_port
        roles = {Role.SITE} if admin_port is not None else {Role.SITE, *ADMIN_ROLES}
        self.port = await self._listen(
            context,
            self._authenticator(kit, roles),
            self._port if self._port is not None else kit.config.port,
            "sites" if admin_port is not None else "sites and admins",
        )
        if admin_port is not None:
            self.admin_port = await self._listen(
                context, self._authenticator(kit, ADMIN_ROLES), admin_port, "admins"
            )
        log.info(
            "server.listening",
            project=kit.config.project,
            host=self.host,
            port=self.port,
            admin_port=self.admin_port,
        )
        self._core.resume_jobs()

    async def _listen(
        self, context: ssl.SSLContext, authenticate: Callable[[bytes], str], port: int, peers: str
    ) -> int:
        """Serve ``port`` for ``peers``; a port it cannot listen on is logged (the log is where an
        operator looks for why a server stopped) and raised."""
        try:
            return await self.node.serve(
                context,
                authenticate,
                host=self.host,
                port=port,
                many_sessions=self._is_admin,
            )
        except TransportError as exc:
            cause = exc.__cause__ or exc.__context__  # the OS's refusal, under the bus's error
            reason = cause.strerror if isinstance(cause, OSError) and cause.strerror else str(exc)
            log.error("server.listen_failed", host=self.host, port=port, peers=peers, reason=reason)
            raise

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> bool | None:
        assert self._stack is not None
        try:
            return await close_unwrapped(self._stack, exc_type, exc, tb)
        finally:
            self._stack = None
            self._core = None
            self._node = None
            self._open = False

    def _peer_lost(self, peer: str, error: TransportError | None) -> None:
        if self._core is not None:
            self._core.peer_lost(peer, error)

    def _is_admin(self, peer: str) -> bool:
        """An admin may run several consoles at once (each session has its own address); a site
        is one process, and a second one with its kit is refused while the first is connected."""
        identity = self.identities.get(peer)
        return identity is not None and identity.role.is_admin

    def _authenticator(
        self, kit: Kit, roles: set[Role] | frozenset[Role]
    ) -> Callable[[bytes], str]:
        participants = kit.participants or {}

        def authenticate(cert_der: bytes) -> str:
            try:
                identity = admit_peer(
                    cert_der,
                    ca=kit.ca_certificate,
                    crl=kit.crl,
                    participants=participants,
                    now=dt.datetime.now(dt.UTC),
                    expected_roles=roles,
                )
            except AdmissionError as exc:
                self.refusals.append(str(exc))
                log.warning(
                    "admission.refused",
                    reason=exc.reason.value,
                    detail=exc.detail,
                    subject=exc.subject,
                )
                raise
            self.identities[identity.name] = identity
            return identity.name

        return authenticate
