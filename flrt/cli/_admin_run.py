"""What ``flrt admin KIT COMMAND`` runs: the command over an :class:`~flrt.admin.AdminClient`,
its answer printed as tables or JSON.

Every failure ends as one line on stderr and exit code 1 (130 after Ctrl-C): errors of the three
packages are printed by :func:`flrt.cli.main`; what is particular to a command (a wait that ran out
of time, an interrupted submit that may have reached the server) is said here.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from flrt._report import (
    cross_site_table,
    failures_table,
    jobs_table,
    rounds_table,
    sites_table,
)
from flrt.admin import AdminClient, read_job
from flrt.cli import _interrupted
from flrt.cli._run import run
from flrt.logs import configure_logging
from transport.errors import TransportError

__all__ = ["handle"]


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=1, sort_keys=True))


async def _submit(admin: AdminClient, args: argparse.Namespace) -> int:
    job_id = await admin.submit(args.job)
    print(job_id if not args.json else json.dumps({"job_id": job_id}))
    return 0


async def _jobs(admin: AdminClient, args: argparse.Namespace) -> int:
    jobs = await admin.jobs()
    if args.json:
        _print_json(jobs)
    else:
        print(jobs_table(jobs) if jobs else "no jobs")
    return 0


async def _status(admin: AdminClient, args: argparse.Namespace) -> int:
    status = await admin.status()
    if args.json:
        _print_json(status)
        return 0
    counts = ", ".join(f"{n} {s}" for s, n in sorted(status["jobs"].items())) or "none"
    print(f"server {status['server']}: jobs {counts}")
    for job_id, reason in sorted(status.get("interrupted", {}).items()):
        print(f"job {job_id} interrupted: {reason}; it resumes when the server restarts")
    print(sites_table(status["sites"]))
    return 0


def _print_job(detail: dict[str, Any]) -> None:
    print(jobs_table([detail["job"]]))
    if detail.get("rounds"):
        print()
        print(rounds_table(detail["rounds"]))
    if detail.get("failures"):
        print()
        print(failures_table(detail["failures"]))
    cross = detail.get("cross_site")
    if cross:
        print()
        names = sorted({k for _, _, metrics, _ in cross.get("results", []) for k in metrics})
        for metric in [m for m in ("accuracy", "auc") if m in names] or names[:1]:
            print(cross_site_table(cross, metric))


async def _job(admin: AdminClient, args: argparse.Namespace) -> int:
    detail = await admin.job(args.job_id)
    if args.json:
        _print_json(detail)
    else:
        _print_job(detail)
    return 0


async def _abort(admin: AdminClient, args: argparse.Namespace) -> int:
    job = await admin.abort(args.job_id)
    print(json.dumps(job) if args.json else f"{job['job_id']} {job['status']}: {job['reason']}")
    return 0


def _print_progress(job: dict[str, Any]) -> None:
    status = "interrupted" if job.get("interrupted") else job["status"]
    print(
        f"{job['job_id']} {status} round {job.get('round', 0)}/{job.get('rounds')}"
        + (f": {job['reason']}" if job.get("reason") else ""),
        flush=True,
    )


def _interrupted_job(job: dict[str, Any]) -> str:
    """What to say of a job the server interrupted: why, and what resumes it."""
    return (
        f"job {job['job_id']} was interrupted at round {job.get('round', 0)}/{job.get('rounds')}:"
        f" {job['interrupted']}; it resumes from its last saved round when the server restarts:"
        " mend the cause, then restart the server (flrt server start)"
    )


async def _wait(admin: AdminClient, args: argparse.Namespace, deadline: float) -> int:
    """``wait``: :meth:`AdminClient.wait` until ``deadline`` (a server that goes away meanwhile is
    dialled again until then, see :mod:`flrt.cli._admin`). Exit code 0 for a finished job, 1 for
    one that failed or was aborted, and 1 at once, saying why and what resumes it, for one the
    server interrupted."""
    try:
        job = await admin.wait(
            args.job_id,
            timeout=max(deadline - anyio.current_time(), 0.0),
            on_change=None if args.json else _print_progress,
        )
    except TimeoutError as exc:
        if isinstance(exc, TransportError):  # no answer from the server: flrt.cli.main says it
            raise
        if admin.connected:
            why = f"job {args.job_id} is not over after {args.timeout:g} s"
            why += " (it keeps running on the server)"
        else:
            why = f"gave up on job {args.job_id} after {args.timeout:g} s: the server went away"
            why += " and has not answered since (the job may still be running there)"
        print(f"flrt: error: {why}", file=sys.stderr)
        return 1
    if args.json:
        _print_json(job)
    if job.get("interrupted"):  # it moves no more until the server restarts: no use waiting
        print(f"flrt: error: {_interrupted_job(job)}", file=sys.stderr)
        return 1
    return 0 if job["status"] == "finished" else 1


async def _download(admin: AdminClient, args: argparse.Namespace) -> int:
    try:
        target = await admin.download(args.job_id, args.output)
    except OSError as exc:  # the output folder, not the server
        where = exc.filename or args.output
        print(
            f"flrt: error: cannot write {where}: {exc.strerror or exc}; nothing was downloaded"
            f" into {args.output}",
            file=sys.stderr,
        )
        return 1
    print(f"{args.job_id}: model and results written to {target}{_download_note(target)}")
    return 0


def _download_note(target: Path) -> str:
    """What to know of a downloaded model that is not the job's last: the round it is from."""
    try:
        job = json.loads((target / "job.json").read_bytes())["job"]
        if job["status"] == "finished":
            return ""
        return (
            f" (the model of round {job['round']} of {job['rounds']}: the job is {job['status']},"
            " not finished)"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return ""


_COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace], Awaitable[int]]] = {
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "job": _job,
    "abort": _abort,
    "download": _download,
}

#: What an interrupted command may have done all the same.
_INTERRUPTED = {
    "submit": "; the job may have reached the server ('jobs' lists it)",
    "abort": "; the abort may have reached the server ('job JOB_ID' shows it)",
    "wait": "; the job keeps running on the server",
}


async def _run(args: argparse.Namespace) -> int:
    started = anyio.current_time()
    if args.admin_command == "submit":
        await anyio.to_thread.run_sync(read_job, args.job)  # a wrong path is said before dialling
    admin = AdminClient(args.kit, server=args.server)
    if args.command_timeout is not None:
        admin.timeout = admin.connect_timeout = args.command_timeout
    deadline = float("inf")
    if args.admin_command == "wait" and args.timeout is not None:
        deadline = started + args.timeout
        admin.connect_timeout = min(admin.connect_timeout, args.timeout)
    async with admin:
        if args.admin_command == "wait":
            return await _wait(admin, args, deadline)
        return await _COMMANDS[args.admin_command](admin, args)


def handle(args: argparse.Namespace) -> int:
    configure_logging(console=sys.stderr if args.verbose else None)
    try:
        code: int = run(_run, args, backend="trio")
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        if not _interrupted(exc):
            raise
        print(f"flrt: interrupted{_INTERRUPTED.get(args.admin_command, '')}", file=sys.stderr)
        return 130
    return code
