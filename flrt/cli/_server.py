"""``flrt server start KIT``: run the server of a project until SIGINT or SIGTERM.

It verifies the kit (a tampered or expired kit refuses to start), locks its workspace (a workspace
that another server or site holds is refused, naming that node's PID), listens on the kit's port
(and admin port), logs JSON lines to ``<workspace>/logs/server.jsonl`` and resumes the jobs that
were running when it last stopped.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flrt.cli._args import add_common_options, at_least, parse_port

__all__ = ["register"]


def _start(args: argparse.Namespace) -> int:
    from flrt.cli._server_run import start  # the node's modules load only when it starts

    return start(args)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "server",
        help="run the server of a project",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    sub = parser.add_subparsers(dest="server_command", metavar="COMMAND", required=True)
    start = sub.add_parser(
        "start",
        help="start the server from its startup kit",
        description="Start the server from its startup kit; stop it with Ctrl-C or SIGTERM.",
    )
    start.add_argument("kit", type=Path, metavar="KIT", help="the server's startup kit folder")
    start.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="where jobs/ and logs/ go (default: the kit's folder)",
    )
    start.add_argument(
        "--host", default="0.0.0.0", help="the address to listen on (default: all, 0.0.0.0)"
    )
    start.add_argument(
        "--port", type=parse_port, default=None, help="listen on this port instead of the kit's"
    )
    start.add_argument(
        "--site-wait",
        type=at_least(0.0, float),
        default=30.0,
        metavar="SECONDS",
        help="how long a starting job waits for all its sites before it starts with min_sites",
    )
    start.add_argument(
        "--max-jobs",
        type=at_least(1),
        default=4,
        metavar="N",
        help="jobs running at once (default 4)",
    )
    add_common_options(start)
    start.set_defaults(handler=_start)
