"""The server's side of the admin console: the ``admin`` actor, authorization by role, job events.

Every command is an ``ask`` to ``<server>/admin`` with a map ``{"cmd": ..., ...}``; the answer is
``{"ok": true, ...}`` or ``{"ok": false, "code": ..., "error": ..., "key": ...}`` (see
:class:`~flrt.errors.AdminError` for the codes, and :data:`SERVER_ERROR` for a command the server's
file system failed: a full disk refuses a submission this way, with nothing of it stored). ``watch`` subscribes the admin to a job: every
change of its status and every completed round is then told to ``<admin>/events``, so a client
waits for a job without polling.

A command may say, with ``"as"``, which of the client's commands it carries out (a client's
``wait`` is a ``watch`` on the wire, see :data:`CALLED_AS`): a refusal then names that command
(``role member may not wait``), the one the admin typed.

Authorization is by the role in the admin's certificate (a later issue adds the full policies of
``local/authorization.toml``): ``project_admin`` may do everything; ``lead`` may submit, view, and
abort or download the jobs it submitted; ``org_admin`` and ``member`` may view. Sites and the server
itself may not use the console at all.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import anyio.to_thread

from flrt._protocol import EVENTS_ACTOR, PROTOCOL_VERSION
from flrt._report import natural_key
from flrt.checkpoint import checkpoint_rounds
from flrt.errors import (
    AdminError,
    CheckpointError,
    JobError,
    JobRecordError,
    JobStateError,
    TrainerError,
)
from flrt.job import JobSpec, loads_job
from flrt.jobstore import JobEntry, unreadable_reason
from flrt.logs import module_logger
from flrt.trainer import load_trainer
from flrt.workflows import GLOBAL_MODEL
from security.pki import Identity, Role
from transport.bus import Message, Reply
from transport.errors import TransportError

if TYPE_CHECKING:
    from flrt.server import ServerCore

__all__ = ["AdminService", "round_table", "site_failures"]

log = module_logger("flrt.admin")

_ANY, _OWN_JOB = "any", "own_job"

#: Right -> condition, per admin role.
RIGHTS: Mapping[Role, Mapping[str, str]] = {
    Role.PROJECT_ADMIN: {"view": _ANY, "submit": _ANY, "manage": _ANY, "download": _ANY},
    Role.LEAD: {"view": _ANY, "submit": _ANY, "manage": _OWN_JOB, "download": _OWN_JOB},
    Role.ORG_ADMIN: {"view": _ANY},
    Role.MEMBER: {"view": _ANY},
}

#: The right each command needs.
COMMANDS: Mapping[str, str] = {
    "submit": "submit",
    "jobs": "view",
    "status": "view",
    "job": "view",
    "watch": "view",
    "abort": "manage",
    "download": "download",
}

#: The other names a client may give a command (``"as"``): a client's ``wait`` is a ``watch``.
CALLED_AS: Mapping[str, frozenset[str]] = {"watch": frozenset({"wait"})}

#: How a refusal says "may only <verb> its own jobs", where the command is not a verb of its own.
_VERB = {"wait": "wait for", "job": "view"}


#: The code of a command the server could not carry out (its file system refused), beside those
#: of :class:`~flrt.errors.AdminError`: nothing the admin did wrong, and worth trying again.
SERVER_ERROR = "server_error"


def round_table(events: list[dict[str, Any]], rounds: int | None = None) -> list[dict[str, Any]]:
    """One row per completed training round (up to ``rounds``) from a job's ``metrics.jsonl``
    events: who was accepted, cancelled or failed, how long the round took, and the mean train and
    evaluation metrics. (Cross-site evaluation collects the sites' models in round ``rounds + 1``.)"""
    rows: dict[int, dict[str, Any]] = {}
    for event in events:
        kind, round_ = event.get("kind"), event.get("round")
        if not isinstance(round_, int) or (rounds is not None and round_ > rounds):
            continue
        if event.get("event") == "round_completed" and kind == "train":
            rows[round_] = {
                "round": round_,
                "accepted": event.get("accepted", []),
                "cancelled": event.get("cancelled", []),
                "failed": event.get("failed", {}),
                "seconds": event.get("seconds"),
                "train": {},
                "evaluate": {},
            }
        elif (
            event.get("event") == "metrics"
            and event.get("site") is None
            and round_ in rows
            and kind in ("train", "evaluate")
        ):
            rows[round_][str(kind)] = event.get("metrics", {})
    return [rows[r] for r in sorted(rows)]


#: The error id a site (or an in-process controller) puts at the end of a failure's reason:
#: ``RuntimeError: ... (error id 1f0c9a3e; details in the site's log)``
#: (:func:`flrt._redact_paths.describe_failure`).
_ERROR_ID = re.compile(r"\s*\(error id ([0-9a-f]+)(?:;[^()]*)?\)\s*\Z")

#: The tasks a site may fail, in the order a site's failures are listed.
_TASKS = ("train", "evaluate", "cross-site")


def site_failures(events: list[dict[str, Any]], rounds: int | None = None) -> list[dict[str, Any]]:
    """Why sites failed, from a job's ``metrics.jsonl`` events: one entry per site, task and
    reason (without its error id), with the rounds it happened in and the last error id
    (``None`` for a failure the server saw itself, such as a site that disconnected).

    Every round that names failed sites counts: training rounds, federated evaluation rounds,
    cross-site evaluation (the round after the last of ``rounds``, or the one a ``cross_site``
    event names: the ``task`` is then ``cross-site``), and aborted rounds that carry their failed
    sites. Entries are ordered by site (natural order: ``site-2`` before ``site-10``), then task
    (``train``, ``evaluate``, ``cross-site``), then first round.
    """
    cross_rounds = {
        e["round"]
        for e in events
        if e.get("event") == "cross_site" and isinstance(e.get("round"), int)
    }
    found: dict[tuple[str, str, str], dict[str, Any]] = {}
    seen: dict[tuple[str, str, str], set[int]] = {}  # the rounds of each entry
    for event in events:
        failed, round_ = event.get("failed"), event.get("round")
        if (
            event.get("event") not in ("round_completed", "round_aborted")
            or not isinstance(failed, dict)
            or not isinstance(round_, int)
        ):
            continue
        task = _task(event, round_, rounds, cross_rounds)
        for site, reason in failed.items():
            text, error_id = _without_error_id(str(reason))
            key = (str(site), task, text)
            entry = found.setdefault(
                key, {"site": key[0], "task": task, "reason": text, "error_id": None}
            )
            seen.setdefault(key, set()).add(round_)
            entry["error_id"] = error_id or entry["error_id"]
    for key, entry in found.items():
        entry["rounds"] = sorted(seen[key])
    return sorted(
        found.values(),
        key=lambda e: (natural_key(e["site"]), _TASKS.index(e["task"]), e["rounds"][0]),
    )


def _task(event: Mapping[str, Any], round_: int, rounds: int | None, cross: set[int]) -> str:
    model = event.get("model")
    if (
        round_ in cross
        or (rounds is not None and round_ > rounds)
        or (event.get("kind") == "evaluate" and model is not None and model != GLOBAL_MODEL)
    ):
        return "cross-site"
    return "train" if event.get("kind") == "train" else "evaluate"


def _without_error_id(reason: str) -> tuple[str, str | None]:
    """``reason`` without the error id at its end, and that id (``None`` if it has none)."""
    found = _ERROR_ID.search(reason)
    if found is None:
        return reason, None
    return reason[: found.start()], found.group(1)


class AdminService:
    """The ``admin`` actor of a :class:`~flrt.server.ServerCore`."""

    def __init__(self, core: ServerCore) -> None:
        self.core = core
        self._watchers: dict[str, set[str]] = {}  # job id -> admin consoles (bus addresses)
        self._seq = 0

    # ------------------------------------------------------------------ events

    def publish(self, job_id: str) -> None:
        """Tell every admin watching ``job_id`` its current state (never blocks)."""
        watchers = self._watchers.get(job_id)
        if not watchers or self.core.stopping:  # a stopping core's task group takes no work
            return
        try:
            view = self.view(self.core.store.entry(job_id))
        except (KeyError, OSError, ValueError):
            return
        body = {"v": PROTOCOL_VERSION, "op": "job", "job": view}
        for admin in list(watchers):
            self.core.task_group.start_soon(self._tell, admin, body)

    async def _tell(self, admin: str, body: dict[str, Any]) -> None:
        try:
            await self.core.node.tell(f"{admin}/{EVENTS_ACTOR}", body)
        except TransportError:
            self.forget(admin)

    def forget(self, admin: str) -> None:
        """``admin`` is gone: stop telling it about jobs."""
        for watchers in self._watchers.values():
            watchers.discard(admin)

    # ------------------------------------------------------------------ views

    def view(self, entry: JobEntry) -> dict[str, Any]:
        """A job as the console shows it: its record, the last round it completed, its rounds,
        what it is doing (``detail``), and ``interrupted``, the reason the server stopped it while
        it was not over (its state could not be saved: it stays ``running`` on disk and resumes
        when the server restarts; ``None`` for a job that was not stopped so)."""
        job_id = entry.record.job_id
        detail, rounds_done = self.core.job_detail(job_id)
        if rounds_done is None:
            done = checkpoint_rounds(self.core.store.checkpoints(job_id))
            rounds_done = done[-1] if done else 0
        try:
            total: int | None = self.core.job_spec(job_id).workflow.rounds
        except JobError:
            total = None
        interrupted = None
        if entry.record.status.terminal:
            detail = ""
        else:
            interrupted = self.core.interrupted.get(job_id)
        # Events travel in separate tasks: the client keeps the view of highest ``seq``. Wall-clock
        # nanoseconds, so that the views of a restarted server sort after those of the run before
        # (a client that waits across the restart would otherwise keep the old run's last view).
        self._seq = max(time.time_ns(), self._seq + 1)
        return {
            **entry.to_dict(),
            "round": rounds_done,
            "rounds": total,
            "detail": detail,
            "interrupted": interrupted,
            "seq": self._seq,
        }

    # ------------------------------------------------------------------ the actor

    async def handle(self, message: Message) -> Any:
        body = message.body if isinstance(message.body, dict) else {}
        command = body.get("cmd")
        admin = message.identity  # who asks; message.sender is the address of this console
        name = str(command)[:40]
        called = body.get("as")
        if not isinstance(called, str) or called not in CALLED_AS.get(name, ()):
            called = name  # the client called it by its own name (or by one it may not use)
        try:
            if not isinstance(command, str) or command not in COMMANDS:
                raise AdminError(f"unknown command {name!r}", command=name, code="bad_request")
            identity = self._authorize(admin, command, called)
            if command == "watch":
                result = await self._cmd_watch(
                    identity, body, console=message.sender, called=called
                )
            else:
                result = await getattr(self, f"_cmd_{command}")(identity, body)
        except AdminError as exc:
            log.warning(
                "admin.refused",
                admin=admin,
                command=name,
                called=called,
                code=exc.code,
                reason=exc.reason,
            )
            return {"ok": False, "code": exc.code, "error": exc.reason, "key": exc.key}
        except OSError as exc:  # the admin hears why in a sentence; the file is the operator's
            reason = exc.strerror or str(exc)
            log.error("admin.failed", admin=admin, command=name, reason=reason, file=exc.filename)
            error = f"the server cannot do it: its file system failed ({reason})"
            return {"ok": False, "code": SERVER_ERROR, "error": error, "key": None}
        except JobRecordError as exc:
            log.error("admin.failed", admin=admin, command=name, reason=str(exc))
            error = (
                f"the server cannot do it: the stored record of job {body.get('job_id')} cannot"
                f" be read ({exc.reason}; the server's log names the file)"
            )
            return {"ok": False, "code": SERVER_ERROR, "error": error, "key": None}
        log.info("admin.command", admin=admin, command=name, job=body.get("job_id"))
        return result

    def _authorize(self, admin: str, command: str, called: str) -> Identity:
        """Who ``admin`` is, if it may use ``command`` (``called`` by the client: named in a
        refusal). Raises :class:`~flrt.errors.AdminError` (``denied``)."""
        identity = self.core.identity_of(admin)
        if identity is None or not identity.role.is_admin:
            role = identity.role.value if identity is not None else "unknown"
            raise AdminError(
                f"only admins may use the admin console; {admin} is a {role}",
                command=called,
                code="denied",
            )
        if COMMANDS[command] not in RIGHTS.get(identity.role, {}):
            raise AdminError(
                f"role {identity.role.value} may not {called}", command=called, code="denied"
            )
        return identity

    def _entry(
        self,
        identity: Identity,
        body: Mapping[str, Any],
        command: str,
        *,
        called: str | None = None,
    ) -> JobEntry:
        """The job ``command`` (``called`` by the client, by default ``command``) names, if
        ``identity`` may use it on that job. Raises :class:`~flrt.errors.AdminError`
        (``unknown_job``, ``denied``)."""
        called = called or command
        job_id = body.get("job_id")
        try:
            if not isinstance(job_id, str):
                raise KeyError(job_id)
            entry = self.core.store.entry(job_id)
        except KeyError:
            raise AdminError(
                f"no job {str(job_id)[:80]!r}", command=called, code="unknown_job"
            ) from None
        condition = RIGHTS[identity.role].get(COMMANDS[command])
        if condition == _OWN_JOB and entry.submitted_by != identity.name:
            raise AdminError(
                f"role {identity.role.value} may only {_VERB.get(called, called)} its own jobs;"
                f" {entry.record.job_id} was submitted by {entry.submitted_by}",
                command=called,
                code="denied",
            )
        return entry

    # ------------------------------------------------------------------ commands

    async def _cmd_submit(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        text = body.get("job_toml")
        source = str(body.get("source") or "job.toml")[:500]
        if not isinstance(text, str):  # one too long is refused with the others, naming its file
            raise AdminError(
                "job_toml must be the text of a job.toml", command="submit", code="bad_request"
            )
        entry = await self.submit(identity, text, source)
        return {"ok": True, "job_id": entry.record.job_id, "job": self.view(entry)}

    async def submit(self, identity: Identity, text: str, source: str = "job.toml") -> JobEntry:
        """Validate, store and start a job submitted by ``identity`` (the simulator calls this
        directly). Raises :class:`~flrt.errors.AdminError`: ``invalid_job`` (with the key) for a
        job it refuses, ``server_error`` when the server's disk cannot store it."""
        try:
            spec = loads_job(text, path=source)
        except JobError as exc:
            raise AdminError(str(exc), command="submit", code="invalid_job", key=exc.key) from None
        self._check_targets(spec, source)
        await anyio.to_thread.run_sync(self._check_trainer, spec, source)
        try:
            entry, _ = await anyio.to_thread.run_sync(
                lambda: self.core.store.create(
                    text, submitted_by=identity.name, organisation=identity.organisation
                )
            )
        except OSError as exc:  # nothing of it is left (JobStore.create)
            reason = exc.strerror or str(exc)
            log.error(
                "job.not_stored",
                name=spec.name,
                admin=identity.name,
                reason=reason,
                file=exc.filename,
            )
            raise AdminError(
                f"the server cannot store the job: {reason}", command="submit", code=SERVER_ERROR
            ) from None
        job_id = entry.record.job_id
        log.info("job.submitted", job=job_id, name=spec.name, admin=identity.name)
        self.core.start_job(job_id)
        return entry

    def _check_targets(self, spec: JobSpec, source: str) -> None:
        known = set(self.core.registry.sites)
        for i, site in enumerate(spec.targets):
            if site not in known:
                raise AdminError(
                    f"{source}: targets.sites[{i}]: {site!r} is not a site of this project"
                    f" (sites: {', '.join(sorted(known)) or 'none'})",
                    command="submit",
                    code="invalid_job",
                    key=f"targets.sites[{i}]",
                )
        if not spec.targets and spec.workflow.min_sites > len(known):
            raise AdminError(
                f"{source}: workflow.min_sites: the project has {len(known)} sites,"
                f" fewer than {spec.workflow.min_sites}",
                command="submit",
                code="invalid_job",
                key="workflow.min_sites",
            )

    @staticmethod
    def _check_trainer(spec: JobSpec, source: str) -> None:
        """The server builds round 0's model from the trainer: it must load here and have
        ``initial_weights()``."""
        try:
            trainer = load_trainer(spec.trainer.spec, spec.trainer.args)
        except TrainerError as exc:
            raise AdminError(
                f"{source}: trainer.spec: the server builds round 0's model from the trainer and"
                f" cannot load it: {exc}",
                command="submit",
                code="invalid_job",
                key="trainer.spec",
            ) from None
        if not trainer.has_initial_weights:
            raise AdminError(
                f"{source}: trainer.spec: {spec.trainer.spec} has no initial_weights(), which the"
                " server needs to create round 0's model",
                command="submit",
                code="invalid_job",
                key="trainer.spec",
            )

    async def _cmd_jobs(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        entries = await anyio.to_thread.run_sync(self.core.store.entries)
        return {"ok": True, "jobs": [self.view(e) for e in entries]}

    async def _cmd_status(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        entries, unreadable = await anyio.to_thread.run_sync(self.core.store.scan)
        counts: dict[str, int] = {}
        interrupted: dict[str, str] = {}
        for job_id, error in unreadable.items():  # it does not run until mended, as interrupted
            counts["interrupted"] = counts.get("interrupted", 0) + 1
            interrupted[job_id] = unreadable_reason(error)
        for entry in entries:
            job_id, status = entry.record.job_id, entry.record.status.value
            if job_id in self.core.interrupted and not entry.record.status.terminal:
                status = "interrupted"  # stored as running: it resumes when the server restarts
                interrupted[job_id] = self.core.interrupted[job_id]
            counts[status] = counts.get(status, 0) + 1
        return {
            "ok": True,
            "server": self.core.node.name,
            "time": time.time(),
            "sites": self.core.registry.snapshot(),
            "jobs": counts,
            "running": sorted(self.core.jobs),
            "interrupted": interrupted,
        }

    async def _cmd_job(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        entry = self._entry(identity, body, "job")
        job_id = entry.record.job_id
        events = await anyio.to_thread.run_sync(self.core.store.metrics, job_id)
        view = self.view(entry)
        return {
            "ok": True,
            "job": view,
            "rounds": round_table(events, view["rounds"]),
            "failures": site_failures(events, view["rounds"]),
            "cross_site": self.core.store.cross_site(job_id),
        }

    async def _cmd_watch(
        self, identity: Identity, body: Mapping[str, Any], *, console: str, called: str
    ) -> dict[str, Any]:
        """Subscribe ``console`` (the address of the asking session: an admin may watch from
        several) to the job's events."""
        entry = self._entry(identity, body, "watch", called=called)
        self._watchers.setdefault(entry.record.job_id, set()).add(console)
        return {"ok": True, "job": self.view(entry)}

    async def _cmd_abort(self, identity: Identity, body: Mapping[str, Any]) -> dict[str, Any]:
        entry = self._entry(identity, body, "abort")
        try:
            entry = await self.core.abort_job(entry.record.job_id, f"aborted by {identity.name}")
        except JobStateError:
            raise AdminError(
                f"job {entry.record.job_id} is {entry.record.status.value}: it cannot be aborted",
                command="abort",
                code="bad_state",
            ) from None
        return {"ok": True, "job": self.view(entry)}

    async def _cmd_download(self, identity: Identity, body: Mapping[str, Any]) -> Reply:
        entry = self._entry(identity, body, "download")
        job_id = entry.record.job_id
        try:
            state = await anyio.to_thread.run_sync(self.core.store.latest_state, job_id)
        except CheckpointError as exc:
            raise AdminError(str(exc), command="download", code="bad_state") from None
        if state is None:
            record = entry.record
            why = (
                f"job {job_id} {record.status.value} before completing a round: it has no model"
                + (f" ({record.reason})" if record.reason else "")
                if record.status.terminal
                else f"job {job_id} has no model yet (no round completed)"
            )
            raise AdminError(why, command="download", code="bad_state")
        events = await anyio.to_thread.run_sync(self.core.store.metrics, job_id)
        summary = {
            "ok": True,
            "job": self.view(entry),
            "round": state.round,
            "finished": state.finished,
            "rounds": [r.to_dict() for r in state.rounds],
            "cross_site": None if state.cross_site is None else state.cross_site.to_dict(),
            "metrics": events,
            "job_toml": self.core.store.job_text(job_id),
        }
        return Reply(summary, arrays=state.weights)
