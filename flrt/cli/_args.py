"""What the commands' arguments share: the node options and the ``HOST:PORT`` type.

Only :mod:`argparse` here: every command's parser is built from this module whichever command runs.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

__all__ = ["BACKENDS", "add_common_options", "at_least", "parse_address", "parse_port"]

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


def parse_port(text: str) -> int:
    """A TCP port, 0 (any free port) to 65535. Raises :class:`argparse.ArgumentTypeError`."""
    if not text.isdigit() or not 0 <= int(text) < 65536:
        raise argparse.ArgumentTypeError(f"expected a port from 0 to 65535, got {text!r}")
    return int(text)


def at_least(minimum: float, kind: type[int] | type[float] = int) -> Callable[[str], float]:
    """An argument type: a number (``kind``) no smaller than ``minimum``."""

    def parse(text: str) -> float:
        try:
            value = kind(text)
        except ValueError:
            what = "a whole number" if kind is int else "a number"
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if not value >= minimum:  # also refuses nan
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, got {text!r}")
        return value

    return parse
