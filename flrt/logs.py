"""Structured logging for flrt nodes and tools.

Two renderings of the same events: JSON lines to a file for machines, and readable key=value lines on
a terminal for people. A redaction processor runs before either renderer, so that key material,
passwords, tokens and payload bytes never reach a log line, whoever logs them.

An event logged with ``exc_info`` (``log.exception(...)`` in a handler, or ``exc_info=error``)
carries its traceback: in a JSON line as the field ``exception``, the text Python would print (its
line breaks escaped, so one event stays one line); on the terminal below the event. Only the
frames' file, line and source are shown, never their local variables, which may hold what the
redaction is there to hide.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Any, TextIO

import structlog

from transport._log import get_logger as module_logger
from transport._log import redact

__all__ = ["configure_logging", "get_logger", "module_logger", "redact"]


def configure_logging(
    *,
    json_file: Path | None = None,
    console: TextIO | None = sys.stderr,
    level: int = logging.INFO,
) -> None:
    """Route structlog events to a JSON-lines file and/or a human-readable console.

    Either sink may be ``None``. Calling it again replaces the previous configuration, for every
    logger, including those the modules made at import (:func:`module_logger`) and have used
    since. Until it (or the program's own structlog set-up) runs, flrt's events go to the standard
    library's loggers (``flrt.site``, ``transport``, ...): see :mod:`transport._log`.
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
                processors=[
                    structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                    # exc_info -> "exception": the traceback as text (it is resolved here, in
                    # the handler that is still running inside the logger's except block).
                    structlog.processors.format_exc_info,
                    structlog.processors.JSONRenderer(sort_keys=True),
                ],
                foreign_pre_chain=shared,
            )
        )
        root.addHandler(file_handler)
    if console is not None:
        console_handler = logging.StreamHandler(console)
        console_handler.setFormatter(
            structlog.stdlib.ProcessorFormatter(
                processor=structlog.dev.ConsoleRenderer(
                    colors=False,
                    # Not rich's (structlog's default where rich is installed): it shows locals.
                    exception_formatter=structlog.dev.plain_traceback,
                ),
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
        # Not cached: a cached logger keeps the level (its wrapper class) and the processor list
        # of the configuration it was first used under, so calling this again would not reach
        # the modules' loggers, nor would structlog.testing.capture_logs after it (the tests do
        # both; tests/test_logs.py checks). Caching would save 1 to 4 us of a line's 15 to 65 us
        # (measured; the rest is the processors, the stdlib record and the rendering).
        cache_logger_on_first_use=False,
    )


def get_logger(name: str, **context: Any) -> Any:
    """A logger bound to ``component=name`` and any extra context, as the modules' own
    (:func:`module_logger`, :mod:`transport._log`): structlog's when the program configured it
    (:func:`configure_logging`, before or after this call), the standard library's logger
    ``name`` when not."""
    return module_logger(name, component=name, **context)
