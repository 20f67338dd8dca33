"""What ``flrt demo`` runs: :func:`flrt.demo.run_demo` in a new or given workspace."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from flrt.cli._run import run
from flrt.demo import run_demo
from flrt.logs import configure_logging

__all__ = ["handle"]


def handle(args: argparse.Namespace) -> int:
    configure_logging(console=None)
    workspace = args.workspace or Path(tempfile.mkdtemp(prefix="flrt-demo-"))
    mlp = False if args.no_mlp else None
    try:
        code: int = run(run_demo, workspace, backend="trio", mlp=mlp)
    except FileExistsError as exc:
        print(f"flrt: error: {exc}")
        return 1
    return code
