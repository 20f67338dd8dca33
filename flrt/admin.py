"""The admin console's Python API: operate a project's server with an admin kit.

::

    async with AdminClient("kits/lead@example.org") as admin:
        job_id = await admin.submit("examples/logreg")
        job = await admin.wait(job_id, timeout=600)
        await admin.download(job_id, "results/")

The client dials the server like a site does (mutual TLS, the kit's certificate; the admin port if
the project has one) and sends each command as an ``ask`` to ``<server>/admin`` (see
:mod:`flrt._admin_service` for what each role may do). Refusals come back as
:class:`~flrt.errors.AdminError` with the server's reason; a job file the server refuses names the
key (``AdminError.key``); an error names the command the caller called (``wait``, say, though
it is a ``watch`` on the wire).

Waiting. :meth:`AdminClient.watch` and :meth:`AdminClient.wait` subscribe to the job and wait for the
server to say it changed: no polling. Reaching the server to subscribe is bounded by
``connect_timeout``, like any command. Once subscribed, a server that goes away (stopped,
restarting, unreachable) is dialled again, as below, for as long as the caller waits (``wait``'s
``timeout``, or the cancel scope around ``watch``), not for ``connect_timeout``: a job outlives a
server restart, and so does a wait on it. When the server answers again, the client opens a new
session and subscribes again. A failure that dialling again cannot mend still ends the wait at once.
A wait ends when the job can no longer move by itself: it is over (:data:`TERMINAL`), or the server
stopped it while it was not over, because it could not save its state (a full disk). Such a job is
*interrupted*: it stays ``running`` on the server's disk, its view names the reason
(``interrupted``), and it resumes from its last saved round only when the server restarts, so
waiting for it before then would only run out the caller's time.

Reaching the server. The client dials each of the server's addresses in turn, then again after a
pause that doubles up to 2 s, until ``connect_timeout`` seconds have passed (while waiting for a
job: until the wait ends, see above); each dial is cut short
so that one address that never answers leaves time for the others. A failure that dialling again
cannot mend ends the attempts at once: a server certificate not signed by the kit's CA, a TLS alert
(the server refused this kit's certificate: revoked, expired, another project's), a refusal of the
kit's identity or role, a port that does not speak flrt. The client tells them by the
:class:`~transport.errors.HandshakeFailure` the transport gives the error, never by its text.
Either way the client raises
:class:`ServerUnreachableError`, which names every address, how long it tried and the last reason
for each.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import AsyncExitStack
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import anyio

from flrt._durable import atomic_write, fsync_directory
from flrt._groups import close_unwrapped
from flrt._protocol import ADMIN_ACTOR, EVENTS_ACTOR
from flrt.errors import AdminError, ConfigError, JobError
from flrt.job import MAX_JOB_FILE_BYTES, too_large
from flrt.logs import module_logger
from flrt.model import save_weights
from security.errors import KitError
from security.kit import Kit, load_kit
from security.tls import client_ssl_context_from_kit
from transport.bus import Message, Node, Reply
from transport.errors import (
    CertificateProblem,
    ConnectionClosedError,
    HandshakeError,
    HandshakeFailure,
    RemoteProtocolError,
    ResumeRefusedError,
    TransportError,
)
from transport.protocol.session import SessionConfig

__all__ = ["TERMINAL", "AdminClient", "ServerUnreachableError", "read_job"]

log = module_logger("flrt.admin")

SERVER = "server"

#: Commands that are safe to send again when a session is lost before their answer.
_RETRYABLE = frozenset({"jobs", "status", "job", "watch", "download"})

#: Job states after which nothing more happens.
TERMINAL = frozenset({"finished", "failed", "aborted"})


def _stopped(job: Mapping[str, Any]) -> bool:
    """Whether ``job`` (a view from the server) can no longer move by itself: it is over, or it
    was interrupted and waits for the server to restart (see the module docstring)."""
    return job.get("status") in TERMINAL or bool(job.get("interrupted"))


#: Longest pause between two rounds of dialling the server's addresses.
_MAX_PAUSE = 2.0

#: The handshake failures that dialling again cannot mend: the server's certificate failed the
#: kit's verification (another CA, another name, expired), a TLS alert (the server refused the
#: kit's certificate), a refusal of the kit's identity or role, a port that does not speak flrt.
#: Any other kind (transient, unknown, a refused resumption) is retried.
_FINAL = frozenset(
    {
        HandshakeFailure.PEER_CERTIFICATE,
        HandshakeFailure.TLS_ALERT,
        HandshakeFailure.IDENTITY_REFUSED,
        HandshakeFailure.NOT_FLRT,
    }
)


class ServerUnreachableError(TransportError):
    """The admin client could not open a session with the server.

    ``reasons`` maps each address dialled (``host:port``) to the last reason it failed,
    ``elapsed`` is how long the client tried (seconds), ``attempts`` how many dials it made, and
    ``final`` says whether it stopped early because dialling again would fail the same way (a
    certificate refused, a port that does not speak flrt) rather than because ``connect_timeout``
    ran out; ``last`` is the last failure itself; ``foreign_ca`` says whether a certificate was
    from a CA the other side does not know (the message then asks whether the kit is from the
    server's project).
    """

    def __init__(
        self,
        reasons: Mapping[str, str],
        *,
        elapsed: float,
        attempts: int,
        final: bool,
        last: TransportError | None = None,
        foreign_ca: bool = False,
    ) -> None:
        self.reasons = dict(reasons)
        self.last = last
        self.elapsed = elapsed
        self.attempts = attempts
        self.final = final
        self.foreign_ca = foreign_ca
        where = " or ".join(self.reasons)
        if len(self.reasons) == 1:
            why = next(iter(self.reasons.values()))
        else:
            why = "; ".join(f"{address}: {reason}" for address, reason in self.reasons.items())
        if final:
            hint = "; is this kit from the server's project?" if foreign_ca else ""
            text = f"cannot use the server at {where}: {why}{hint} (not retried: it would fail the same way)"
        else:
            tries = f"{attempts} attempt{'s' if attempts != 1 else ''}"
            text = f"cannot reach the server at {where}: tried for {elapsed:.1f} s ({tries}); last: {why}"
        super().__init__(text)


def _is_final(error: TransportError) -> bool:
    """Whether dialling again cannot mend ``error``: its kind is one of :data:`_FINAL`."""
    if isinstance(error, RemoteProtocolError):
        return True  # whatever listens there is not an flrt server
    return isinstance(error, HandshakeError) and error.kind in _FINAL


def _from_another_ca(error: TransportError) -> bool:
    """Whether ``error`` says a certificate is from a CA the other side does not trust: the server's
    is not from the kit's CA, or the server answered the kit's with the TLS alert ``unknown_ca``."""
    if not isinstance(error, HandshakeError):
        return False
    if error.kind is HandshakeFailure.PEER_CERTIFICATE:
        return error.certificate is CertificateProblem.FOREIGN_CA
    return error.kind is HandshakeFailure.TLS_ALERT and error.alert == "unknown_ca"


class AdminClient:
    """An admin's connection to the server (see the module docstring).

    ``timeout`` bounds each command; ``connect_timeout`` how long to keep trying to reach the server,
    at the start and whenever a command finds the session lost (a watch or wait that has begun keeps
    trying for as long as it waits); ``server`` (host, port) replaces the addresses of the kit. Both times must be positive (else :class:`ValueError`).

    Raises, on entry: :class:`~security.errors.KitError` for a kit that is not an admin's or cannot
    be used, and :class:`ServerUnreachableError` when the server cannot be reached in
    ``connect_timeout`` seconds, or at all with this kit (a certificate refused).
    """

    def __init__(
        self,
        kit: Path | str,
        *,
        timeout: float = 60.0,
        connect_timeout: float = 30.0,
        session_config: SessionConfig | None = None,
        server: tuple[str, int] | None = None,
    ) -> None:
        if not timeout > 0 or not connect_timeout > 0:
            raise ValueError("timeout and connect_timeout must be positive numbers of seconds")
        self.kit_path = Path(kit)
        self.server_address = server
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.session_config = session_config
        self.kit: Kit | None = None
        self._node: Node | None = None
        self._stack: AsyncExitStack | None = None
        self._context: Any = None
        self._jobs: dict[str, dict[str, Any]] = {}
        self._watched: dict[str, str] = {}  # job id -> the command that watches it
        self._changed = anyio.Event()
        self._lost = anyio.Event()
        self._open = False  # between the start of __aenter__ and the end of __aexit__

    @property
    def connected(self) -> bool:
        """Whether the client has a session with the server that is connected right now (not while
        the server is away and the client dials it again)."""
        if self._node is None or self._lost.is_set():
            return False
        return self._node.peers.get(SERVER, False)

    @property
    def node(self) -> Node:
        if self._node is None:
            raise RuntimeError("the admin client is not open (use 'async with')")
        return self._node

    # ------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        """Open the client (see the class docstring for what it raises).

        Raises :class:`RuntimeError` if it is open already (or being opened, in another task):
        a second node over the first would leave the first one's tasks running for ever.
        """
        if self._open:
            raise RuntimeError(
                "the admin client is open already: use one 'async with' at a time, or another"
                " AdminClient"
            )
        kit = load_kit(self.kit_path)
        if not kit.identity.role.is_admin:
            raise KitError(
                self.kit_path, f"a {kit.identity.role.value} kit cannot use the admin console"
            )
        self.kit = kit
        self._context = client_ssl_context_from_kit(kit)
        stack = AsyncExitStack()
        self._open = True
        try:
            node = await stack.enter_async_context(
                Node(kit.config.name, config=self.session_config, on_peer_lost=self._peer_lost)
            )
            self._node = node
            node.register(EVENTS_ACTOR, self._on_event, mailbox_size=256)
            await self._connect()
        except BaseException as exc:
            # The node's task group would wrap the failure in a group: raise it as it was raised.
            self._node = None
            try:
                await close_unwrapped(stack, type(exc), exc, exc.__traceback__)
            finally:
                self._open = False
            raise
        self._stack = stack
        return self

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
            self._node = None
            self._open = False

    def _peer_lost(self, peer: str, error: TransportError | None) -> None:
        if peer == SERVER:
            self._lost.set()
            self._wake()

    async def _connect(self, *, until_cancelled: bool = False) -> None:
        """Open a session with the server, trying each of its addresses until ``connect_timeout``
        has passed (or, with ``until_cancelled``, until the caller's cancel scope ends it) or a
        failure that retrying cannot mend (see the module docstring); then subscribe again to the
        jobs watched.

        Raises :class:`ServerUnreachableError`, and :class:`~flrt.errors.AdminError` if the server
        refuses a subscription.
        """
        assert self.kit is not None
        addresses = (
            [self.server_address] if self.server_address else self.kit.config.server_addresses
        )
        started = anyio.current_time()
        deadline = math.inf if until_cancelled else started + self.connect_timeout
        # One address that never answers must not take the whole budget from the others.
        per_dial = min(
            2 * self.node.config.handshake_timeout,
            max(self.connect_timeout / len(addresses), 1.0),
        )
        reasons: dict[str, str] = {}
        live = list(addresses)
        attempts = 0
        last: TransportError | None = None
        foreign_ca = False
        pause = 0.1
        while live:
            for host, port in list(live):
                remaining = deadline - anyio.current_time()
                if remaining <= 0:
                    break
                attempts += 1
                self._lost = anyio.Event()
                try:
                    await self.node.connect(
                        host,
                        port,
                        self._context,
                        server_hostname=host,
                        peer=SERVER,
                        first_attempt_timeout=min(per_dial, remaining),
                    )
                except TransportError as exc:
                    last = exc
                    reasons[f"{host}:{port}"] = str(exc)
                    log.info(
                        "admin.connect_failed",
                        host=host,
                        port=port,
                        reason=str(exc),
                        kind=exc.kind.value if isinstance(exc, HandshakeError) else None,
                    )
                    if _is_final(exc):
                        live.remove((host, port))
                        foreign_ca = foreign_ca or _from_another_ca(exc)
                    continue
                try:
                    for job_id, command in sorted(self._watched.items()):  # a new session
                        self._store((await self._ask_once("watch", command, job_id=job_id)).body)
                except (ConnectionClosedError, ResumeRefusedError) as exc:
                    last = exc  # lost again at once: dial again, within the same bounds
                    reasons[f"{host}:{port}"] = str(exc)
                    continue
                return
            remaining = deadline - anyio.current_time()
            if remaining <= 0:
                break
            if live:
                await anyio.sleep(min(pause, remaining))
                pause = min(pause * 2, _MAX_PAUSE)
        if not reasons:  # no dial fitted in the budget at all
            reasons = {f"{h}:{p}": "no time left to dial" for h, p in addresses}
        raise ServerUnreachableError(
            reasons,
            elapsed=anyio.current_time() - started,
            attempts=attempts,
            final=not live,
            last=last,
            foreign_ca=foreign_ca,
        ) from last

    # ------------------------------------------------------------------ commands

    async def _command(self, cmd: str, /, *, command: str | None = None, **args: Any) -> Any:
        reply = await self._ask(cmd, command=command, **args)
        return reply.body

    async def _ask(self, cmd: str, /, *, command: str | None = None, **args: Any) -> Reply:
        """Ask the server ``cmd`` with ``args``, reaching it first if the session is lost.

        ``command`` is what the caller called, named in errors (by default ``cmd``).
        """
        for attempt in (1, 2):
            if self._lost.is_set() or SERVER not in self.node.peers:
                await self._connect()
            try:
                return await self._ask_once(cmd, command or cmd, **args)
            except (ConnectionClosedError, ResumeRefusedError):
                # The session ended (the server restarted): commands that change nothing are
                # asked again on a new one; submit and abort are not, as they may have arrived.
                if attempt == 2 or cmd not in _RETRYABLE:
                    raise
        raise AssertionError("unreachable")  # pragma: no cover

    async def _ask_once(self, cmd: str, command: str, /, **args: Any) -> Reply:
        """Ask ``cmd`` on the current session; a refusal is an :class:`AdminError` for ``command``
        (which the server is told, ``"as"``, so that its reason names it too: ``may not wait``)."""
        body = {"cmd": cmd, **args} if command == cmd else {"cmd": cmd, "as": command, **args}
        reply = await self.node.ask(f"{SERVER}/{ADMIN_ACTOR}", body, timeout=self.timeout)
        answer = reply.body
        if not isinstance(answer, dict):
            raise AdminError(
                "the server's answer is not a map", command=command, code="bad_request"
            )
        if not answer.get("ok"):
            raise AdminError(
                str(answer.get("error", "refused")),
                command=command,
                code=str(answer.get("code", "bad_request")),
                key=answer.get("key") if isinstance(answer.get("key"), str) else None,
            )
        return reply

    async def submit(self, job: Path | str) -> str:
        """Submit a job folder (or its ``job.toml``); returns the job id.

        Raises :class:`~flrt.errors.AdminError` (``code="invalid_job"``, ``key`` the dotted key) for
        a job the server refuses, and :class:`~flrt.errors.JobError` if there is no job file to
        read (see :func:`read_job`).
        """
        path, text = await anyio.to_thread.run_sync(read_job, job)
        body = await self._command("submit", job_toml=text, source=str(path))
        self._store(body)
        return str(body["job_id"])

    async def jobs(self) -> list[dict[str, Any]]:
        """Every job on the server, oldest first."""
        body = await self._command("jobs")
        return list(body["jobs"])

    async def status(self) -> dict[str, Any]:
        """The server: its sites (connected, last seen, history) and how many jobs are in each
        state."""
        body: dict[str, Any] = await self._command("status")
        return body

    async def job(self, job_id: str) -> dict[str, Any]:
        """One job: its record, one row per completed training round (``rounds``), why sites
        failed in any round, evaluation included (``failures``: one entry per site, task and
        reason, with its rounds and last error id), and cross-site results."""
        body: dict[str, Any] = await self._command("job", job_id=job_id)
        self._store(body)
        return body

    async def abort(self, job_id: str) -> dict[str, Any]:
        body = await self._command("abort", job_id=job_id)
        self._store(body)
        return dict(body["job"])

    def watch(self, job_id: str) -> AsyncIterator[dict[str, Any]]:
        """Yield the job each time the server says it changed (status, a completed round), until it
        is over or interrupted (its ``interrupted`` names why: it resumes when the server
        restarts).

        If the server goes away meanwhile, the client dials it again until it answers: bound the
        watch with a cancel scope (see the module docstring). Raises
        :class:`~flrt.errors.AdminError` (``command="watch"``) for a job the server does not know,
        and :class:`ServerUnreachableError`.
        """
        return self._follow(job_id, "watch")

    async def wait(
        self,
        job_id: str,
        *,
        timeout: float | None = None,
        on_change: Callable[[dict[str, Any]], object] | None = None,
    ) -> dict[str, Any]:
        """Wait until the job is finished, failed or aborted, or until the server has interrupted
        it; returns it. An interrupted job is ``running`` still, with ``interrupted`` the reason
        (its state could not be saved): it moves again only when the server restarts, so the wait
        ends at once rather than at ``timeout``. ``on_change`` is called with the job each time the
        server says it changed, the last time included.

        ``timeout`` bounds the whole wait, reaching the server again included: a server that goes
        away meanwhile is dialled again until then (see the module docstring). Raises
        :class:`TimeoutError` after ``timeout`` seconds, :class:`~flrt.errors.AdminError`
        (``command="wait"``) for a job the server does not know, and
        :class:`ServerUnreachableError`.
        """
        with anyio.fail_after(timeout if timeout is not None else math.inf):
            async for job in self._follow(job_id, "wait"):
                if on_change is not None:
                    on_change(job)
                if _stopped(job):
                    return job
        raise AssertionError("unreachable: a follow ends only on a stopped job")  # pragma: no cover

    async def _follow(self, job_id: str, command: str) -> AsyncIterator[dict[str, Any]]:
        """Subscribe to ``job_id`` for ``command`` and yield each new view of it until it is over
        or interrupted; a lost server is dialled again for as long as the caller waits."""
        self._store(await self._command("watch", command=command, job_id=job_id))
        # Subscribed again on every new session; only now, as a job the server does not know would
        # make every later reconnection fail.
        self._watched.setdefault(job_id, command)
        seen: dict[str, Any] | None = None
        while True:
            current = self._jobs[job_id]
            if current != seen:
                seen = current
                yield current
                if _stopped(current):
                    return
            changed = self._changed
            if self._lost.is_set():
                await self._connect(until_cancelled=True)
                continue
            await changed.wait()

    async def download(self, job_id: str, directory: Path | str) -> Path:
        """Write the job's model (``model.safetensors``), ``job.json`` (record, per-round summaries),
        ``metrics.jsonl``, ``cross_site.json`` (if any) and ``job.toml`` into ``directory``.

        The files appear together or not at all: they are written into a staging folder inside
        ``directory`` and renamed into place once all are complete. ``directory`` may hold other
        files, and an earlier download of the same job (which this one refreshes), never the
        results of another job. Raises :class:`~flrt.errors.ConfigError` naming ``directory``,
        before anything is downloaded, if it is a file or holds another job's results (or result
        files of no known job), and :class:`OSError` if it cannot be written (it is then as it
        was).
        """
        target = Path(directory)
        await anyio.to_thread.run_sync(_check_download_target, target, job_id)
        reply = await self._ask("download", job_id=job_id)
        if reply.object is None:
            raise AdminError("the server sent no model", command="download", code="bad_state")
        weights = await reply.object.arrays()
        await anyio.to_thread.run_sync(_write_download, target, reply.body, dict(weights))
        return target

    # ------------------------------------------------------------------ events

    def _store(self, body: Mapping[str, Any]) -> None:
        job = body.get("job")
        if isinstance(job, dict) and isinstance(job.get("job_id"), str):
            known = self._jobs.get(job["job_id"])
            if known is not None and known.get("seq", 0) > job.get("seq", 0):
                return  # an older view overtaken by a newer one
            self._jobs[job["job_id"]] = job
            self._wake()

    def _wake(self) -> None:
        self._changed.set()
        self._changed = anyio.Event()

    async def _on_event(self, message: Message) -> None:
        if message.sender == SERVER and isinstance(message.body, dict):
            self._store(message.body)


def read_job(job: Path | str) -> tuple[Path, str]:
    """The job file of a job folder (its ``job.toml``), or ``job`` itself if it is a file, and its
    text.

    Raises :class:`~flrt.errors.JobError` naming the path when there is no such folder or file,
    the folder has no ``job.toml``, the file is larger than a job file may be
    (:data:`~flrt.job.MAX_JOB_FILE_BYTES`: it is not read, nor sent), or it cannot be read as
    UTF-8 text.
    """
    given = Path(job)
    path = given / "job.toml" if given.is_dir() else given
    try:
        with path.open("rb") as file:
            data = file.read(MAX_JOB_FILE_BYTES + 1)
            if len(data) > MAX_JOB_FILE_BYTES:
                raise too_large(os.fstat(file.fileno()).st_size, path=path)
        # As a text file reads: any line ending as "\n".
        return path, data.decode("utf-8").replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        reason = "the folder has no job.toml" if path != given else "no such job folder or file"
        raise JobError(reason, path=given) from None
    except UnicodeDecodeError:
        raise JobError("not a job file (not UTF-8 text)", path=path) from None
    except OSError as exc:
        raise JobError(f"cannot be read: {exc.strerror or exc}", path=path) from None


#: What a download writes into its folder: every one is replaced, or removed, by the next
#: download of the same job there.
_DOWNLOAD_FILES = ("model.safetensors", "job.json", "metrics.jsonl", "cross_site.json", "job.toml")


def _check_download_target(target: Path, job_id: str) -> None:
    """Refuse a download folder that is a file, or that holds results not of ``job_id``."""
    if target.exists() and not target.is_dir():
        raise ConfigError(
            "is a file, not a folder: give a folder (new or existing) with -o", path=target
        )
    present = [name for name in _DOWNLOAD_FILES if (target / name).exists()]
    if not present:
        return
    try:
        held = json.loads((target / "job.json").read_bytes())["job"]["job_id"]
    except (OSError, ValueError, KeyError, TypeError):
        held = None
    if held == job_id:
        return  # an earlier download of this job: this one refreshes it
    whose = f"the results of job {held}" if isinstance(held, str) else "results of an unknown job"
    raise ConfigError(
        f"holds {whose} ({', '.join(present)}), which this download would overwrite: give"
        " another folder with -o, or move those files away first",
        path=target,
    )


def _write_download(target: Path, body: Mapping[str, Any], weights: dict[str, Any]) -> None:
    target.mkdir(parents=True, exist_ok=True)
    # Again: another download may have come meanwhile.
    _check_download_target(target, str(body["job"]["job_id"]))
    files: dict[str, bytes] = {
        "job.json": _json({k: body[k] for k in ("job", "round", "finished", "rounds")}),
        "metrics.jsonl": "".join(
            json.dumps(e, sort_keys=True) + "\n" for e in body.get("metrics", [])
        ).encode(),
        "job.toml": str(body.get("job_toml", "")).encode(),
    }
    if body.get("cross_site") is not None:
        files["cross_site.json"] = _json(body["cross_site"])
    try:
        staging = Path(tempfile.mkdtemp(prefix=".flrt-download-", dir=target))
    except OSError as exc:  # it names the staging folder, which the caller never heard of
        raise OSError(exc.errno, exc.strerror, str(target)) from exc
    try:
        name = "model.safetensors"
        try:
            save_weights(staging / name, weights)
            for name, data in files.items():
                atomic_write(staging / name, data)
        except OSError as exc:  # name the file the caller asked for, not its staged copy
            raise OSError(exc.errno, exc.strerror, str(target / name)) from exc
        # Every file is complete: move them in, job.json last (it says whose results these are).
        for name in sorted(_DOWNLOAD_FILES, key=lambda n: n == "job.json"):
            if (staging / name).exists():
                os.replace(staging / name, target / name)
            else:  # a file of the earlier download of this job that this one does not have
                with contextlib.suppress(FileNotFoundError):
                    (target / name).unlink()
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    fsync_directory(target)


def _json(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()
