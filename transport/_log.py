"""Loggers for code that runs inside other people's programs.

Every module of ``transport`` and ``flrt`` logs structured events through :func:`get_logger`.
What becomes of an event depends on the program that runs the code, decided at each line:

- A program that configured structlog (``flrt``'s own commands do, through
  :func:`flrt.logs.configure_logging`; so may a host program) gets the events through structlog,
  as ``structlog.get_logger(name)`` would give them, to render and route as it configured.
- A program that did not (a hospital service that embeds a site and uses :mod:`logging`) gets them
  through the standard library's logger of the same name (``flrt.site``, ``transport``, ...),
  rendered as ``event key=value ...``, with levels it can filter and handlers it chose. Left
  unconfigured, structlog would print every event, debug included, to the program's stdout.

Either way :func:`redact` runs first, so that key material, passwords, tokens and payload bytes
never reach a log line, whoever logs them.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import MutableMapping
from typing import Any

import structlog

__all__ = ["get_logger", "redact"]

_SECRET_KEY = re.compile(r"(pass(word|phrase)?|secret|token|private|key_pem|cookie)", re.IGNORECASE)
_REDACTED = "[redacted]"
#: Values that pass through :func:`redact` unchanged: most of every event, so checked first.
_PLAIN = frozenset({str, int, float, bool, type(None)})


def _scrub(value: Any) -> Any:
    if type(value) in _PLAIN:
        return value
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _REDACTED if _is_secret(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


@functools.lru_cache(maxsize=4096)
def _secret_name(key: str) -> bool:
    # Event keys come from a few call sites: one regex search per name, not one per log line.
    return _SECRET_KEY.search(key) is not None


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and _secret_name(key)


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hide secrets by key name and replace raw bytes by their length."""
    for key, value in event_dict.items():  # values change in place, keys do not
        if key == "event":
            continue
        if _is_secret(key):
            event_dict[key] = _REDACTED
        elif type(value) not in _PLAIN:
            event_dict[key] = _scrub(value)
    return event_dict


@functools.cache
def _standard(name: str) -> Any:
    """A structlog logger that hands ``event key=value`` lines to the stdlib logger ``name``."""
    return structlog.wrap_logger(
        logging.getLogger(name),
        processors=[
            redact,
            structlog.processors.format_exc_info,  # a traceback into the line, as text
            structlog.processors.KeyValueRenderer(key_order=["event"], sort_keys=True),
        ],
        wrapper_class=structlog.stdlib.BoundLogger,
    )


class _Logger:
    """A logger that follows the program's logging set-up (see the module docstring) at each line:
    a program may configure structlog after importing this code, or configure it again."""

    __slots__ = ("_context", "_name")

    def __init__(self, name: str, context: dict[str, Any]) -> None:
        self._name = name
        self._context = context

    def bind(self, **context: Any) -> _Logger:
        return _Logger(self._name, {**self._context, **context})

    def _target(self) -> Any:
        if structlog.is_configured():
            return structlog.get_logger(self._name, **self._context)
        return _standard(self._name).bind(**self._context)

    def __getattr__(self, method: str) -> Any:  # debug, info, warning, error, exception, ...
        return getattr(self._target(), method)


def get_logger(name: str, **context: Any) -> Any:
    """The logger of the module ``name`` (``flrt.site``), bound to ``context``."""
    return _Logger(name, context)
