"""Structured logging for flrt nodes and tools.

Two renderings of the same events: JSON lines to a file for machines, and readable key=value lines on
a terminal for people. A redaction processor runs before either renderer, so that key material,
passwords, tokens and payload bytes never reach a log line, whoever logs them.
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from pathlib import Path
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "get_logger", "redact"]

_SECRET_KEY = re.compile(r"(pass(word|phrase)?|secret|token|private|key_pem|cookie)", re.IGNORECASE)
_REDACTED = "[redacted]"


def _scrub(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {k: _REDACTED if _is_secret(k) else _scrub(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_scrub(v) for v in value]
    return value


def _is_secret(key: object) -> bool:
    return isinstance(key, str) and _SECRET_KEY.search(key) is not None


def redact(
    _logger: object, _method: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """structlog processor: hide secrets by key name and replace raw bytes by their length."""
    for key in list(event_dict):
        if key == "event":
            continue
        event_dict[key] = _REDACTED if _is_secret(key) else _scrub(event_dict[key])
    return event_dict


def configure_logging(
    *,
    json_file: Path | None = None,
    console: TextIO | None = sys.stderr,
    level: int = logging.INFO,
) -> None:
    """Route structlog events to a JSON-lines file and/or a human-readable console.

    Either sink may be ``None``. Calling it again replaces the previous configuration.
    """
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    root = logging.getLogger("flrt.events")
    for handler in list(root.handlers):
        root.removeHandler(handler)
        handler.close()
    root.setLevel(level)
    root.propagate = False
    if json_file is not None:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        file_handler = logging.FileHandler(json_file, encoding="utf-8")
        file_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.processors.JSONRenderer(sort_keys=True),
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(file_handler)
    if console is not None:
        console_handler = logging.StreamHandler(console)
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.dev.ConsoleRenderer(colors=False),
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(console_handler)
    if not root.handlers:
        root.addHandler(logging.NullHandler())
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=lambda *_args: root,
        wrapper_class=structlog.make_filtering_bound_logger(level),
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A structlog logger bound to ``component=name`` and any extra context."""
    return structlog.get_logger().bind(component=name, **context)
