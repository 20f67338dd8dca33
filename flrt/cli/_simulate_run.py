"""What ``flrt simulate`` runs: the job on simulated sites, then its tables and results."""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

from flrt._report import cross_site_table, failures_table, rounds_table
from flrt.cli._run import run
from flrt.logs import configure_logging
from flrt.model import save_weights
from flrt.simulator import SimulationResult, simulate

__all__ = ["handle"]


def _report(result: SimulationResult, log_file: Path) -> int:
    if result.rounds:
        print(rounds_table(result.rounds))
    if result.failures:
        print()
        print(failures_table(result.failures))
    if result.cross_site:
        names = sorted({k for _, _, m, _ in result.cross_site.get("results", []) for k in m})
        for metric in [m for m in ("accuracy", "auc") if m in names] or names[:1]:
            print()
            print(cross_site_table(result.cross_site, metric))
    saved = True
    if result.weights is not None:
        model = result.workspace / "model.safetensors"
        try:
            save_weights(model, result.weights)
        except OSError as exc:
            saved = False
            print(f"flrt: error: cannot write {model}: {exc.strerror or exc}", file=sys.stderr)
    print(f"\njob {result.job_id} {result.status}: {result.reason}; results in {result.workspace}")
    # A site's failure names an error id, failed job or not: say where its details are.
    if result.status != "finished" or result.failures:
        print(f"the sites' and the server's log, with each error id's details: {log_file}")
    return 0 if result.status == "finished" and saved else 1


def handle(args: argparse.Namespace) -> int:
    if args.sites < 1:
        print("flrt: error: --sites must be at least 1", file=sys.stderr)
        return 2
    # Always a log: a site's failure is reported as an error id whose details are in the log.
    workspace: Path = args.workspace or Path(tempfile.mkdtemp(prefix="flrt-sim-"))
    log_file = workspace / "logs" / "simulation.jsonl"
    configure_logging(json_file=log_file, console=sys.stderr if args.verbose else None)
    result = run(simulate, args.job, backend=args.backend, sites=args.sites, workspace=workspace)
    return _report(result, log_file)
