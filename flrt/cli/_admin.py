"""``flrt admin KIT COMMAND``: operate a project's server with an admin kit.

Commands: ``submit JOB_DIR``, ``jobs``, ``status``, ``job JOB_ID``, ``abort JOB_ID``,
``wait JOB_ID [--timeout S]``, ``download JOB_ID -o DIR``. ``--json`` prints the server's answer as
JSON instead of tables. What an admin may do depends on the role in its certificate.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import anyio

from flrt._report import cross_site_table, jobs_table, rounds_table, sites_table
from flrt.admin import AdminClient
from flrt.cli._run import parse_address, run
from flrt.logs import configure_logging

__all__ = ["register"]


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


def _handle(args: argparse.Namespace) -> int:
    configure_logging(console=sys.stderr if args.verbose else None)
    try:
        code: int = run(_run, args, backend="trio")
    except TimeoutError:
        print("flrt: error: timed out", file=sys.stderr)
        return 1
    return code


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "admin",
        help="operate the server with an admin kit",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("kit", type=Path, metavar="KIT", help="your admin startup kit folder")
    parser.add_argument("--json", action="store_true", help="print JSON instead of tables")
    parser.add_argument(
        "--server",
        type=parse_address,
        default=None,
        metavar="HOST:PORT",
        help="dial this address instead of the kit's",
    )
    parser.add_argument(
        "--command-timeout", type=float, default=60.0, metavar="SECONDS", help=argparse.SUPPRESS
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log to the terminal")
    sub = parser.add_subparsers(dest="admin_command", metavar="COMMAND", required=True)
    submit = sub.add_parser("submit", help="submit a job folder (with its job.toml)")
    submit.add_argument("job", type=Path, metavar="JOB_DIR")
    sub.add_parser("jobs", help="list the jobs")
    sub.add_parser("status", help="the server's sites and jobs")
    for name, text in (
        ("job", "a job's rounds, metrics and cross-site results"),
        ("abort", "abort a job"),
    ):
        p = sub.add_parser(name, help=text)
        p.add_argument("job_id", metavar="JOB_ID")
    wait = sub.add_parser("wait", help="wait until a job is over (exit code 0 if it finished)")
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument("--timeout", type=float, default=None, metavar="SECONDS")
    download = sub.add_parser("download", help="download a job's model and results")
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    parser.set_defaults(handler=_handle)
