"""What the long-running commands share: logging set-up, the event loop, and a clean stop on
SIGINT or SIGTERM."""

from __future__ import annotations

import argparse
import functools
import logging
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import anyio

from flrt._groups import only_exception
from flrt._workspace import lock_workspace
from flrt.errors import ConfigError
from flrt.logs import configure_logging, module_logger
from security.errors import KitError
from security.kit import load_kit
from security.pki import Role

T = TypeVar("T")

__all__ = ["run", "run_node", "until_signal"]

#: The logger :func:`~flrt.logs.configure_logging` routes every event to.
EVENTS_LOGGER = "flrt.events"

log = module_logger("flrt.cli")


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
    role: Role,
) -> int:
    """Run a node command: its workspace is ``args.workspace`` or else the kit's folder; lock it
    for this node (:mod:`flrt._workspace`: a second node on it is refused, naming the first's PID);
    log JSON lines to ``<workspace>/logs/<log_name>.jsonl`` (and to the terminal unless
    ``args.quiet``), then run ``main(args, workspace)`` on ``args.backend`` until it returns. The
    lock is held until then, so ``main``'s node must not take it again.

    Raises :class:`~security.errors.KitError` for a kit it cannot use, or one whose role is not
    ``role``, before anything is written."""
    workspace: Path = args.workspace or args.kit
    kit = load_kit(args.kit)
    _check_role(args.kit, kit.identity.role, role)
    log_file = workspace / "logs" / f"{log_name}.jsonl"
    try:
        lock = lock_workspace(workspace)  # before the log file, the first thing written there
    except OSError as exc:
        raise _unwritable(workspace, exc, args) from None
    with lock:
        try:
            configure_logging(json_file=log_file, console=None if args.quiet else sys.stderr)
        except OSError as exc:
            raise _unwritable(workspace, exc, args) from None
        _report_log_errors_once(log_file)
        run(main, args, workspace, backend=args.backend)
    return 0


def _check_role(path: Path, has: Role, wanted: Role) -> None:
    """A kit of another role is refused, saying which kit the command wants."""
    if has is wanted:
        return
    what = "the server" if wanted is Role.SERVER else f"a {wanted.value}"
    own = "the server's kit" if wanted is Role.SERVER else f"the {wanted.value}'s own kit"
    hint = "; an admin kit is used with `flrt admin KIT COMMAND`" if has.is_admin else ""
    raise KitError(path, f"a {has.value} kit cannot run {what}: start it from {own}{hint}")


def _unwritable(workspace: Path, exc: OSError, args: argparse.Namespace) -> ConfigError:
    hint = "" if args.workspace is not None else "; give a folder it may write with --workspace"
    return ConfigError(f"the workspace {workspace} cannot be written ({exc.strerror or exc}){hint}")


def _report_log_errors_once(log_file: Path) -> None:
    """A log file that cannot be written (a full disk) costs one warning on stderr, not the
    standard library's stack trace for every line."""
    reported = False

    def handle_error(record: logging.LogRecord) -> None:
        nonlocal reported
        if not reported:
            reported = True
            error = sys.exc_info()[1]
            reason = (error.strerror if isinstance(error, OSError) else None) or error
            print(
                f"flrt: warning: cannot write {log_file} ({reason}): log lines are lost until it"
                " can be written (reported once)",
                file=sys.stderr,
                flush=True,
            )

    for handler in logging.getLogger(EVENTS_LOGGER).handlers:
        if isinstance(handler, logging.FileHandler):
            handler.handleError = handle_error  # type: ignore[method-assign]


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
