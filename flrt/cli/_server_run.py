"""What ``flrt server start`` runs: a :class:`~flrt.server.ServerNode` until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from flrt.cli._run import run_node, until_signal
from flrt.server import ServerNode
from security.pki import Role

__all__ = ["start"]


async def _serve(args: argparse.Namespace, workspace: Path) -> None:
    async with ServerNode(
        args.kit,
        workspace,
        host=args.host,
        port=args.port,
        site_wait=args.site_wait,
        max_jobs=args.max_jobs,
        lock_workspace=False,  # run_node holds it, from before it opened the log file there
    ) as server:
        admin = f", admins on port {server.admin_port}" if server.admin_port is not None else ""
        await until_signal(f"flrt server listening on {args.host}:{server.port}{admin}")


def start(args: argparse.Namespace) -> int:
    return run_node(_serve, args, log_name="server", role=Role.SERVER)
