"""What the commands' arguments share: the node options and the ``HOST:PORT`` type.

Only :mod:`argparse` here: every command's parser is built from this module whichever command runs.
"""

from __future__ import annotations

import argparse

__all__ = ["BACKENDS", "add_common_options", "parse_address"]

BACKENDS = ("trio", "asyncio")


def add_common_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backend", choices=BACKENDS, default="trio", help="the event loop (default: trio)"
    )
    parser.add_argument(
        "--quiet", action="store_true", help="log to the JSON file only, not to the terminal"
    )


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8443`` for IPv6) as a pair. Raises :class:`argparse.ArgumentTypeError`."""
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host.strip("[]"), int(port)
