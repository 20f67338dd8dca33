"""``flrt admin KIT COMMAND``: operate a project's server with an admin kit.

Commands: ``submit JOB_DIR``, ``jobs``, ``status``, ``job JOB_ID``, ``abort JOB_ID``,
``wait JOB_ID [--timeout S]``, ``download JOB_ID -o DIR``. ``--json`` prints the server's answer as
JSON instead of tables. What an admin may do depends on the role in its certificate.

``--command-timeout S`` bounds both how long the client keeps trying to reach the server and how
long it waits for each answer (by default 30 s to reach it, 60 s for an answer). ``wait --timeout
S`` bounds the whole wait, reaching the server included: the first time, the client gives up on
the server after the shorter of the two times; once the wait has begun, a server that goes away
(stopped, restarting) is dialled again until the job is over or S seconds have passed since the
command started, however long ``--command-timeout`` is. Without ``--timeout``, ``wait`` waits until
the job is over, however long the server is away (Ctrl-C stops waiting; the job keeps running).
A certificate that is refused ends any command at once. ``wait`` also ends at once, with exit
code 1, for a job the server interrupted (it could not save the job's state): such a job moves
again only when the server restarts.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flrt.cli._args import parse_address

__all__ = ["register"]


def _seconds(text: str) -> float:
    """A positive, finite number of seconds. Raises :class:`argparse.ArgumentTypeError`."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _handle(args: argparse.Namespace) -> int:
    from flrt.cli._admin_run import handle  # the client's modules load only when it runs

    return handle(args)


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
        "--command-timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up reaching the server, or waiting for one of its answers, after SECONDS"
        " (default: 30 to reach it, 60 for an answer); a refused certificate fails at once;"
        " a wait that has begun dials a lost server again until its own --timeout",
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
    wait = sub.add_parser(
        "wait",
        help="wait until a job is over or interrupted (exit code 0 if it finished)",
    )
    wait.add_argument("job_id", metavar="JOB_ID")
    wait.add_argument(
        "--timeout",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="give up after SECONDS, reaching the server included: a server that goes away"
        " meanwhile is dialled again until then (default: wait until the job is over, however"
        " long the server is away)",
    )
    download = sub.add_parser("download", help="download a job's model and results")
    download.add_argument("job_id", metavar="JOB_ID")
    download.add_argument("-o", "--output", type=Path, required=True, metavar="DIR")
    parser.set_defaults(handler=_handle)
