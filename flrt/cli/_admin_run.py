"""What ``flrt admin KIT COMMAND`` runs: the command over an :class:`~flrt.admin.AdminClient`,
its answer printed as tables or JSON."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import anyio

from flrt._report import cross_site_table, jobs_table, rounds_table, sites_table
from flrt.admin import AdminClient
from flrt.cli._run import run
from flrt.logs import configure_logging

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
    print(sites_table(status["sites"]))
    return 0


def _print_job(detail: dict[str, Any]) -> None:
    print(jobs_table([detail["job"]]))
    if detail.get("rounds"):
        print()
        print(rounds_table(detail["rounds"]))
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


async def _wait(admin: AdminClient, args: argparse.Namespace) -> int:
    with anyio.fail_after(args.timeout if args.timeout is not None else float("inf")):
        async for job in admin.watch(args.job_id):
            if not args.json:
                print(
                    f"{job['job_id']} {job['status']} round {job.get('round', 0)}/{job.get('rounds')}"
                    + (f": {job['reason']}" if job.get("reason") else ""),
                    flush=True,
                )
    final = await admin.job(args.job_id)
    if args.json:
        _print_json(final["job"])
    return 0 if final["job"]["status"] == "finished" else 1


async def _download(admin: AdminClient, args: argparse.Namespace) -> int:
    target = await admin.download(args.job_id, args.output)
    print(f"{args.job_id}: model and results written to {target}")
    return 0


_COMMANDS: dict[str, Callable[[AdminClient, argparse.Namespace], Awaitable[int]]] = {
    "submit": _submit,
    "jobs": _jobs,
    "status": _status,
    "job": _job,
    "abort": _abort,
    "wait": _wait,
    "download": _download,
}


async def _run(args: argparse.Namespace) -> int:
    async with AdminClient(args.kit, server=args.server, timeout=args.command_timeout) as admin:
        return await _COMMANDS[args.admin_command](admin, args)


def handle(args: argparse.Namespace) -> int:
    configure_logging(console=sys.stderr if args.verbose else None)
    try:
        code: int = run(_run, args, backend="trio")
    except TimeoutError:
        print("flrt: error: timed out", file=sys.stderr)
        return 1
    return code
