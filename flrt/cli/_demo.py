"""``flrt demo``: provision a project, start a server and three sites on this machine over real
mutual TLS, run a study (logistic regression, then an MLP if PyTorch is installed), print its
per-round metrics and cross-site validation, and stop everything."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

from flrt.cli._run import run
from flrt.demo import run_demo
from flrt.logs import configure_logging

__all__ = ["register"]


def _handle(args: argparse.Namespace) -> int:
    configure_logging(console=None)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="flrt-demo-"))
    mlp = False if args.no_mlp else None
    try:
        code: int = run(run_demo, workspace, backend="trio", mlp=mlp)
    except FileExistsError as exc:
        print(f"flrt: error: {exc}")
        return 1
    return code


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run a whole study on this machine over real mutual TLS",
        description=__doc__.replace("``", "").replace("\n", " "),
    )
    parser.add_argument(
        "--workspace",
        type=Path,
        default=None,
        metavar="DIR",
        help="a new or empty folder for kits, logs and results (default: a new temporary one)",
    )
    parser.add_argument(
        "--no-mlp", action="store_true", help="skip the PyTorch job even if PyTorch is installed"
    )
    parser.set_defaults(handler=_handle)
