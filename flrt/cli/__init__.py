"""The ``flrt`` command line: a thin wrapper over the library.

Each command lives in its own module that exposes ``register(subparsers)``; :data:`COMMANDS` lists
them. A command's handler returns the process exit code. Errors from the three packages are printed
as one line naming the problem, never as a stack trace; so is an :class:`OSError` that no command
translated (a full disk, a folder it may not write), with the file it concerns. Ctrl-C, even while
the commands' modules are still loading, ends with ``flrt: interrupted`` and exit code 130.

The parser is built whichever command runs, so a command's module declares its arguments and
imports little more than :mod:`argparse` (``_kit`` is the exception: it still loads the kit and
seal code, and with them ``cryptography``, for every command). What a command runs, if it needs
more, is in
``_<command>_run``, which the handler imports when it is called: a site process never loads the
server, its job store, workflows and aggregators, nor an admin client the site's trainer
(``tests/test_imports.py`` checks it).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import sys
from collections.abc import Sequence

import flrt
from flrt.errors import FlrtError
from security.errors import SecurityError
from transport.errors import TransportError

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
    parser = argparse.ArgumentParser(
        prog="flrt",
        description="flrt: a federated-learning runtime for hospitals.",
    )
    parser.add_argument("--version", action="version", version=f"flrt {flrt.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"flrt.cli._{name}")
        module.register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
    except KeyboardInterrupt:  # a command with more to say about it (admin) says it itself
        print("flrt: interrupted", file=sys.stderr)
        return 130
    return code
