"""``flrt simulate JOB_DIR --sites N``: run a job on N simulated sites in this process.

The real server and site actors and workflows run over in-memory links (no sockets, no TLS; see
:mod:`flrt.simulator`). Sites are named site-1 .. site-N, which is how the shipped examples find
their part of the data: set the job's ``num_sites`` to N.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from flrt.cli._args import BACKENDS

__all__ = ["register"]


def _handle(args: argparse.Namespace) -> int:
    from flrt.cli._simulate_run import handle  # the simulator loads only when it runs

    return handle(args)


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "simulate",
        help="run a job on simulated sites in one process",
        description=__doc__.split("\n\n")[0].replace("``", ""),
    )
    parser.add_argument("job", type=Path, metavar="JOB_DIR", help="a job folder (or its job.toml)")
    parser.add_argument("--sites", type=int, default=2, metavar="N", help="how many sites (2)")
    parser.add_argument(
        "--workspace", type=Path, default=None, metavar="DIR", help="keep results here"
    )
    parser.add_argument("--backend", choices=BACKENDS, default="trio")
    parser.add_argument("-v", "--verbose", action="store_true", help="log to the terminal")
    parser.set_defaults(handler=_handle)
