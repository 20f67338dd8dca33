"""The ``flrt`` command line: a thin wrapper over the library.

Each command lives in its own module that exposes ``register(subparsers)``; :data:`COMMANDS` lists
them. A command's handler returns the process exit code. Errors from the three packages are printed
as one line naming the problem, never as a stack trace; so is an :class:`OSError` that no command
translated (a full disk, a folder it may not write), with the file it concerns. Ctrl-C, even while
the commands' modules are still loading, ends with ``flrt: interrupted`` and exit code 130: this
module imports nothing at its top but :mod:`sys`, and :func:`main` imports everything else inside
its handler, so that Ctrl-C finds the handler in place from the moment the command line is
imported (``python -m flrt`` is covered from its first line, see :mod:`flrt.__main__`).

The parser is built whichever command runs, so a command's module declares its arguments and
imports little more than :mod:`argparse`; ``--version`` looks the number up only when asked. What
a command runs, if it needs more, is in ``_<command>_run``, which the handler imports when it is
called: a site process never loads the server, its job store, workflows and aggregators, nor the
kit-sealing code, nor an admin client the site's trainer (``tests/test_imports.py`` checks it).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import argparse
    from collections.abc import Sequence

__all__ = ["COMMANDS", "build_parser", "main"]

#: Modules under :mod:`flrt.cli` that each add one top-level command.
COMMANDS: tuple[str, ...] = (
    "provision",
    "kit",
    "server",
    "site",
    "admin",
    "simulate",
    "demo",
)


def _describe_os_error(exc: OSError) -> str:
    """``path: reason`` for an error of the file system or the OS, without Python's ``[Errno N]``."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    return f"{exc.filename}: {reason}" if exc.filename is not None else reason


def build_parser() -> argparse.ArgumentParser:
    import argparse
    import importlib

    class LazyVersion(argparse.Action):
        """``--version``, whose number (``importlib.metadata``: 1 MiB) is looked up when asked for."""

        def __call__(self, parser: argparse.ArgumentParser, *args: object) -> None:
            import flrt

            print(f"flrt {flrt.__version__}")
            parser.exit()

    parser = argparse.ArgumentParser(
        prog="flrt",
        description="flrt: a federated-learning runtime for hospitals.",
    )
    parser.add_argument(
        "--version", nargs=0, action=LazyVersion, help="show flrt's version and exit"
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"flrt.cli._{name}")
        module.register(sub)
    return parser


def _interrupted(error: BaseException) -> bool:
    """Whether ``error`` is Ctrl-C, alone or in a group with what it interrupted."""
    if isinstance(error, BaseExceptionGroup):
        return error.subgroup(KeyboardInterrupt) is not None
    return isinstance(error, KeyboardInterrupt)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command of ``argv`` (by default the process's); returns the exit code."""
    try:
        return _main(argv)
    except (KeyboardInterrupt, BaseExceptionGroup) as exc:
        # Ctrl-C, wherever it landed: an import, the parser, a command (a command with more to
        # say about it, such as admin, says it itself and returns 130).
        if not _interrupted(exc):
            raise
        print("flrt: interrupted", file=sys.stderr)
        return 130


def _main(argv: Sequence[str] | None) -> int:
    # Imported here rather than at the top, so that Ctrl-C while they load finds main's handler.
    import contextlib
    import os

    from flrt.errors import FlrtError
    from security.errors import SecurityError
    from transport.errors import TransportError

    try:
        parser = build_parser()  # imports every command's module: Ctrl-C may land here
        args = parser.parse_args(argv)
        handler = getattr(args, "handler", None)
        if handler is None:
            parser.print_help()
            return 2
        code: int = handler(args)
    except (FlrtError, SecurityError, TransportError) as exc:
        print(f"flrt: error: {exc}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # `flrt ... | head`: whoever read the output has all it wanted
        with contextlib.suppress(OSError, ValueError):  # and Python's flush at exit must not say
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    except OSError as exc:  # the machine refused (a full disk, a permission): name what and why
        print(f"flrt: error: {_describe_os_error(exc)}", file=sys.stderr)
        return 1
    return code
