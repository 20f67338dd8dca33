"""``flrt demo``: provision a project, start a server and three sites on this machine over real
mutual TLS, run a study (logistic regression, then an MLP if PyTorch is installed), print its
per-round metrics and cross-site validation, and stop everything."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def _handle(args: argparse.Namespace) -> int:
    from flrt.cli._demo_run import handle  # the demo's modules load only when it runs

    return handle(args)


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
