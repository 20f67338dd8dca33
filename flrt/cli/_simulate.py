"""``flrt simulate JOB_DIR --sites N``: run a job on N simulated sites in this process.

The real server and site actors and workflows run over in-memory links (no sockets, no TLS; see
:mod:`flrt.simulator`). Sites are named site-1 .. site-N, which is how the shipped examples find
their part of the data: set the job's ``num_sites`` to N.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flrt._report import cross_site_table, rounds_table
from flrt.cli._run import BACKENDS, run
from flrt.logs import configure_logging
from flrt.model import save_weights
from flrt.simulator import SimulationResult, simulate

__all__ = ["register"]


def _report(result: SimulationResult) -> int:
    if result.rounds:
        print(rounds_table(result.rounds))
    if result.cross_site:
        names = sorted({k for _, _, m, _ in result.cross_site.get("results", []) for k in m})
        for metric in [m for m in ("accuracy", "auc") if m in names] or names[:1]:
            print()
            print(cross_site_table(result.cross_site, metric))
    if result.weights is not None:
        save_weights(result.workspace / "model.safetensors", result.weights)
    print(f"\njob {result.job_id} {result.status}: {result.reason}; results in {result.workspace}")
    return 0 if result.status == "finished" else 1


def _handle(args: argparse.Namespace) -> int:
    if args.sites < 1:
        print("flrt: error: --sites must be at least 1", file=sys.stderr)
        return 2
    workspace: Path | None = args.workspace
    log_file = workspace / "logs" / "simulation.jsonl" if workspace is not None else None
    configure_logging(json_file=log_file, console=sys.stderr if args.verbose else None)
    result = run(simulate, args.job, backend=args.backend, sites=args.sites, workspace=workspace)
    return _report(result)


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
