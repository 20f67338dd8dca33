"""What ``flrt site start`` runs: a :class:`~flrt.site.SiteNode` until SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
from pathlib import Path

from flrt.cli._run import run_node, until_signal
from flrt.site import SiteNode
from security.pki import Role

__all__ = ["start"]


async def _run(args: argparse.Namespace, workspace: Path) -> None:
    async with SiteNode(
        args.kit,
        workspace,
        data=dict(args.data),
        server=args.server,
        lock_workspace=False,  # run_node holds it, from before it opened the log file there
    ) as site:
        assert site.kit is not None
        await until_signal(f"flrt site {site.kit.config.name} started")


def start(args: argparse.Namespace) -> int:
    return run_node(_run, args, log_name="site", role=Role.SITE)
