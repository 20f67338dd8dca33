"""``flrt site start KIT``: run a site until SIGINT or SIGTERM.

The site dials the server named in its kit (it never listens), reconnects forever with backoff,
applies its own ``local/privacy.toml`` filters to every task, reads its data locations from
``local/data.toml`` (or ``--data KEY=PATH``), and logs JSON lines to
``<workspace>/logs/site.jsonl``.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flrt.cli._args import add_common_options, parse_address

__all__ = ["register"]


def _data(text: str) -> tuple[str, Path]:
    key, sep, path = text.partition("=")
    if not sep or not key or not path:
        raise argparse.ArgumentTypeError(f"expected KEY=PATH, got {text!r}")
    return key, Path(path)


def _start(args: argparse.Namespace) -> int:
    from flrt.cli._site_run import start  # the node's modules load only when it starts

    return start(args)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "site",
        help="run a site of a project",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    sub = parser.add_subparsers(dest="site_command", metavar="COMMAND", required=True)
    start = sub.add_parser(
        "start",
        help="start the site from its startup kit",
        description="Start the site from its startup kit; stop it with Ctrl-C or SIGTERM.",
    )
    start.add_argument("kit", type=Path, metavar="KIT", help="the site's startup kit folder")
    start.add_argument(
        "--workspace",
        type=Path,
        metavar="DIR",
        help="where the jobs' scratch folders and logs/ go (default: the kit's folder)",
    )
    start.add_argument(
        "--data",
        type=_data,
        action="append",
        default=[],
        metavar="KEY=PATH",
        help="a data location (adds to or overrides local/data.toml); repeat as needed",
    )
    start.add_argument(
        "--server",
        type=parse_address,
        default=None,
        metavar="HOST:PORT",
        help="dial this address instead of the kit's",
    )
    add_common_options(start)
    start.set_defaults(handler=_start)
