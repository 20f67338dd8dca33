"""What a site may say upstream about its own errors: the error, not where its files are.

A site's failure reason goes to the server, into the job's record and to every admin who reads it.
Exception messages name files (``FileNotFoundError: [Errno 2] No such file or directory:
'/home/alice/study-0042/wdbc.csv'``), and a hospital's paths can give away the host's layout, user
names, and sometimes study or patient identifiers in folder names. So what leaves the site is:

- the exception's type and its message, with every absolute file-system path replaced by
  ``<path>`` (:func:`redact_paths`), cut to a bounded length;
- a short error id (8 hex digits, random per failure).

The site's own log keeps the full message and the traceback under the same id
(:func:`describe_failure` gives the id, both messages), so a site operator finds what an admin
reports.

Theory of operation
-------------------
One regular expression scans the text left to right; at each position it tries, in order:

1. a URL (``scheme://...``): kept as it is, so ``https://...`` stays readable, except that a
   ``file:`` URL's path is a local path and is replaced;
2. a quoted path: a quote (not inside a word, so not the one in ``can't``; ``b'...'`` is a quote)
   whose text begins like an absolute path; everything up to the same closing quote is replaced, so
   a path with spaces in it goes whole (``'<path>'``). This is how Python quotes file names in
   ``OSError`` messages and ``PosixPath(...)``/``WindowsPath(...)`` reprs;
3. a bare path: it begins after the start of the text, a space, a bracket, a quote or one of
   ``=,;:|``, and ends at white space, a quote, a bracket or one of ``<>|,;``; a trailing ``.``,
   ``:``, ``!`` or ``?`` is the sentence's, not the path's, and stays.

An absolute path begins with ``/`` (POSIX), ``~/`` or ``~user/`` (a home folder), a drive
(``C:\\`` or ``C:/``) or two backslashes (a Windows share, ``\\\\server\\share``), backslashes
doubled or not (a ``repr`` doubles them). Relative names (``wdbc.csv``, ``data/wdbc.csv``) stay: they
say which file without saying where it is, and the site hands trainers absolute data locations, so
the paths its own configuration gives are all caught. An unquoted path with a space in it loses only
its first part; what follows the space is a relative name.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass

__all__ = ["PATH_PLACEHOLDER", "SiteFailure", "describe_failure", "redact_paths"]

#: What an absolute path is replaced by.
PATH_PLACEHOLDER = "<path>"

#: The longest message (after redaction) sent upstream; the rest is cut, so that the error id at
#: the end survives the protocol's own limit on a reason (2,000 characters).
MAX_MESSAGE = 1500
#: Redaction runs on at most this much of a message: a bound on the work for a huge one.
_SCAN = 4 * MAX_MESSAGE

# Where a path may begin: an absolute POSIX path, a home folder, a drive, a Windows share.
_ROOT = r"(?:/|~[\w.-]*/|[A-Za-z]:[\\/]|\\{2,}(?=[^\s\\]))"
# What may come before a path or an opening quote: not part of a word or of a relative path, nor
# "<" (so "</tag>" stays). A negated class in a negative look-behind also matches at the start.
_BEFORE = r"""(?<![^\s'"(\[{=,;:|])"""
_PATH = re.compile(
    rf"""
    (?P<url>\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]*)://[^\s'"<>]*)
    | {_BEFORE}(?P<prefix>[bB]?)(?P<quote>['"]){_ROOT}(?:(?!(?P=quote))[^\n])*(?P=quote)
    | {_BEFORE}(?P<bare>{_ROOT}(?=[^\s'"<>|,;()\[\]{{}}])[^\s'"<>|,;()\[\]{{}}]*)
    """,
    re.VERBOSE,
)
_SENTENCE_END = ".:!?"


def _replace(match: re.Match[str]) -> str:
    if match["url"] is not None:
        url, scheme = match["url"], match["scheme"]
        # A file: URL names a local path (a bare "file://" names nothing, and stays).
        if scheme.lower() == "file" and len(url) > len(scheme) + 3:
            return f"{scheme}://{PATH_PLACEHOLDER}"
        return url
    if match["quote"] is not None:
        return f"{match['prefix']}{match['quote']}{PATH_PLACEHOLDER}{match['quote']}"
    bare = match["bare"]
    tail = len(bare) - len(bare.rstrip(_SENTENCE_END))
    return PATH_PLACEHOLDER + (bare[-tail:] if tail else "")


def redact_paths(text: str) -> str:
    """``text`` with every absolute file-system path replaced by :data:`PATH_PLACEHOLDER` (see the
    module docstring for what counts as one). URLs other than ``file:`` ones and relative names stay.
    Idempotent; raises nothing."""
    return _PATH.sub(_replace, text)


@dataclass(frozen=True, slots=True)
class SiteFailure:
    """One failure as the site tells it: ``upstream`` for the server, ``reason`` for its own log
    (next to the traceback)."""

    error_id: str
    #: ``Type: message (error id ...)``, paths redacted, bounded: what the server receives.
    upstream: str
    #: ``Type: message`` in full, for the site's log only.
    reason: str


def _message(exc: BaseException) -> str:
    try:
        return str(exc)
    except Exception:  # an exception's own __str__ failed: still say what the error was
        return "<the message could not be formatted>"


def describe_failure(exc: BaseException, *, context: str | None = None) -> SiteFailure:
    """The upstream and the local account of ``exc`` under a new error id; ``context`` (such as
    ``"task not received"``) is put before both. Raises nothing."""
    error_id = secrets.token_hex(4)
    prefix = f"{context}: " if context else ""
    name = type(exc).__name__
    message = _message(exc)
    reason = f"{prefix}{name}: {message}" if message else f"{prefix}{name}"
    shown = redact_paths(message[:_SCAN])
    if len(shown) > MAX_MESSAGE or len(message) > _SCAN:
        shown = shown[:MAX_MESSAGE] + " [cut]"
    upstream = f"{prefix}{name}: {shown}" if shown else f"{prefix}{name}"
    upstream += f" (error id {error_id}; details in the site's log)"
    return SiteFailure(error_id, upstream, reason)
