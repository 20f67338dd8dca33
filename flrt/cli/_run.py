"""What the long-running commands share: logging set-up, the event loop, and a clean stop on
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import functools
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio
import structlog

from flrt._groups import only_exception
from flrt.logs import configure_logging

T = TypeVar("T")

__all__ = ["run", "run_node", "until_signal"]

log = structlog.get_logger("flrt.cli")


async def until_signal(announce: str) -> int:
    """Print ``announce``, then wait for SIGINT or SIGTERM; returns the signal's number.

    The line is printed once the signals are caught, so that whoever waits for it (a service
    manager, a test) may stop the node right away: before, a SIGTERM still kills the process."""
    with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        print(announce, flush=True)
        async for received in signals:
            log.info("node.stopping", signal=signal.Signals(received).name)
            return int(received)
    return 0  # pragma: no cover - the receiver never ends by itself


def run_node(
    main: Callable[[argparse.Namespace, Path], Awaitable[Any]],
    args: argparse.Namespace,
    *,
    log_name: str,
) -> int:
    """Run a node command: its workspace is ``args.workspace`` or else the kit's folder; log JSON
    lines to ``<workspace>/logs/<log_name>.jsonl`` (and to the terminal unless ``args.quiet``),
    then run ``main(args, workspace)`` on ``args.backend`` until it returns."""
    workspace: Path = args.workspace or args.kit
    configure_logging(
        json_file=workspace / "logs" / f"{log_name}.jsonl",
        console=None if args.quiet else sys.stderr,
    )
    run(main, args, workspace, backend=args.backend)
    return 0


def run(main: Callable[..., Awaitable[T]], *args: Any, backend: str, **kwargs: Any) -> T:
    """``anyio.run`` (keyword arguments are passed to ``main``), re-raising a lone exception out of
    its exception groups, so that the command line prints it as one line."""
    try:
        return anyio.run(functools.partial(main, *args, **kwargs), backend=backend)
    except BaseExceptionGroup as group:
        error = only_exception(group)
        if error is group:
            raise
        raise error from None
