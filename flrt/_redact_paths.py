"""What a site may say upstream about its own errors: the error, not where its files are.

A site's failure reason goes to the server, into the job's record and to every admin who reads it.
Exception messages name files (``FileNotFoundError: [Errno 2] No such file or directory:
'/home/alice/study-0042/wdbc.csv'``), and a hospital's paths can give away the host's layout, user
names, and sometimes study or patient identifiers in folder names. So what leaves the site is:

- the exception's type and its message, with every file-system path replaced by ``<path>``
  (:func:`redact_paths`, and the file an ``OSError`` names), cut to a bounded length;
- a short error id (8 hex digits, random per failure).

The site's own log keeps the full message and the traceback under the same id
(:func:`describe_failure` gives the id, both messages), so a site operator finds what an admin
reports. :func:`upstream_reason` is the same text without the id. An in-process controller
(:class:`~flrt.workflows.LocalController`, ``flrt simulate``) does the same, pointing into its log.

What counts as a path
---------------------
Text has no types, so this is a rule, chosen to lose a few words next to a path rather than leak
part of one, and to keep ordinary text readable. A path begins at the start of the text or after
white space, a bracket, a quote or one of ``=,;:|``, and is one of:

1. **absolute**: it begins with ``/`` (POSIX), ``~/`` or ``~user/`` (a home folder), a drive
   (``C:\\`` or ``C:/``) or two backslashes (a Windows share, ``\\\\server\\share``);
2. **explicitly relative**: it begins with ``./`` or ``../`` (or ``.\\``, ``..\\``);
3. **relative to a data file**: names joined by ``/`` or ``\\`` whose last name ends in a known
   file extension (:data:`FILE_EXTENSIONS`: data, model, archive, image, text and code files), such
   as ``data/site-1/patients.csv``.

Backslashes may be doubled (a ``repr`` doubles them). Everything else stays: names without a folder
(``wdbc.csv``: which file, not where), and slash-joined words without a file extension:
``1/2 sites``, ``and/or``, ``2024/01/02``, ``server/results``, and array names such as
``layer_0/weight`` or the wire's ``w/0.weight`` and ``x/scaffold_c/fc1.bias`` (``.weight`` is not a
file extension). So do numbers, shapes, dtypes (``dtype('<f4')``), error ids and URLs with their
scheme (``https://host/docs/x.html``): a URL is not a local path, except a ``file:`` URL's path.
A URL without a scheme (``example.org/x.csv``) is not recognised as one.

Where a path ends:

- **quoted** (an opening quote not inside a word, so not the one in ``can't``; ``b'...'`` is a
  quote): a quote whose text begins like an absolute or explicitly relative path, or is a relative
  path to a data file (its first name without a space), is replaced up to the same closing quote,
  spaces and all (``'<path>'``). This is how Python quotes file names in ``OSError`` messages,
  tracebacks (``File "..."``) and ``PosixPath(...)``/``WindowsPath(...)`` reprs;
- **bare**: at white space, a quote, a bracket or one of ``<>|,;`` (parentheses that open and close
  inside a name, as in ``Program Files (x86)``, are part of it, and so is an apostrophe between
  letters, as in ``St Mary's``); a trailing ``.``, ``:``, ``!`` or ``?`` is the sentence's, not
  the path's, and stays (unless more of the path follows, below);
- **bare, with spaces** (absolute and explicitly relative paths only, whose beginning is certain):
  a path goes on over single spaces when more of it follows on the same line: a folder name with
  spaces (words up to one that holds a ``/`` or ``\\``: ``/srv/Hospital Data/cohort 2/x.csv``,
  ``/srv/Dr. Smith/x``) or a file name with spaces (words up to one that ends in a file extension:
  ``/srv/data/patient list.csv``). Once a path has a folder name with spaces, its last name may
  have them too, up to where the clause ends (``.:!?``, a bracket, a quote, one of ``<>|,;``, the
  end of the line, or a word that begins a path or is ``key=`` and a path): ``Is a directory:
  /srv/Hospital Data/cohort 2`` loses all of it. A path never goes on after a name that ends in
  ``:`` or in a file extension (``/data/a.csv and b.csv``), nor over a word that begins a path or
  is ``key=`` and a path (``path=/srv/x other=/srv/y``).

  The cost: the words between an unquoted path and a later slash-joined word on the same line are
  taken for folder names with spaces, and the rest of their clause goes with them
  (``open /data/x for 1/2 sites: busy`` becomes ``open <path>: busy``). A relative path to a data
  file does not go on over spaces, because where it begins is not certain:
  ``data/Hospital Data/x.csv`` keeps ``data/Hospital``. Quoted paths have none of these costs.

Independently of the text, the file names an ``OSError`` carries (``filename``, ``filename2``, as
its message quotes them) are replaced whatever they look like, in its message and in the message of
an exception raised from it: the exception says they are paths.

Theory of operation
-------------------
One regular expression finds, left to right, a URL, a quoted path, the first space-free stretch of
a bare absolute or explicitly relative path, or a relative path to a data file; a scan then extends
a bare path over spaces word by word (:func:`_extend`), which a regular expression cannot do
without backtracking over the rest of the line at every path. The work is linear in the text, and
bounded: a message is redacted up to a fixed length before it is cut. Redacting twice changes
nothing.
"""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = [
    "FILE_EXTENSIONS",
    "PATH_PLACEHOLDER",
    "SiteFailure",
    "describe_failure",
    "redact_paths",
    "upstream_reason",
]

#: What a path is replaced by.
PATH_PLACEHOLDER = "<path>"

#: The longest message (after redaction) sent upstream; the rest is cut, so that the error id at
#: the end survives the protocol's own limit on a reason (2,000 characters).
MAX_MESSAGE = 1500
#: Redaction runs on at most this much of a message: a bound on the work for a huge one.
_SCAN = 4 * MAX_MESSAGE

#: File extensions (lower case; matched in any case) that make slash-joined names a relative path.
FILE_EXTENSIONS = frozenset(
    {
        # tables and text
        "csv", "tsv", "txt", "dat", "json", "jsonl", "ndjson", "xml", "yaml", "yml", "toml",
        "ini", "cfg", "conf", "log", "parquet", "feather", "arrow", "orc", "avro",
        "xls", "xlsx", "ods", "sas7bdat", "xpt", "sav", "dta", "rds", "rdata",
        # arrays, models and databases
        "npy", "npz", "mat", "h5", "hdf5", "hdf", "nc", "zarr", "pkl", "pickle", "joblib",
        "pt", "pth", "ckpt", "safetensors", "onnx", "pb", "tflite", "keras", "bin",
        "db", "sqlite", "sqlite3",
        # medical images and signals, images
        "dcm", "dicom", "nii", "mha", "mhd", "nrrd", "svs", "ndpi", "edf", "bdf",
        "png", "jpg", "jpeg", "tif", "tiff", "bmp",
        # archives, code, keys and kits
        "gz", "bz2", "xz", "zst", "zip", "tar", "7z",
        "py", "ipynb", "sh", "pem", "crt", "key", "flrtkit",
    }
)  # fmt: skip

_EXT = "(?i:{})".format("|".join(sorted(FILE_EXTENSIONS, key=lambda e: (-len(e), e))))
# Where a path may begin: an absolute POSIX path, a home folder, a drive, a Windows share, or an
# explicitly relative path.
_ROOT = r"(?:/|~(?:[A-Za-z_][\w.-]*)?/|[A-Za-z]:[\\/]|\\{2,}(?=[^\s\\])|\.\.?[\\/])"
# What may come before a path or an opening quote: not part of a word or of a relative path, nor
# "<" (so "</tag>" stays). A negated class in a negative look-behind also matches at the start.
_BEFORE = r"""(?<![^\s'"(\[{=,;:|])"""
# One character of a bare path, and a stretch of them: parentheses only in pairs within a name
# ("Program Files (x86)"), an apostrophe only between letters ("St Mary's").
_CHAR = r"""[^\s'"<>|,;()\[\]{}]"""
_RUN = rf"(?:{_CHAR}|\({_CHAR}*\)|(?<=\w)'(?=\w))+"
# One name of a relative path: no separator, and no ":" or "=", so that "Error:data/x.csv" starts
# after the ":" (and each place a relative path may begin is tried over a short stretch only).
_NAME = r"""[^\s'"<>|,;:=()\[\]{}\\/]+"""
_ENDS_WITH_EXT = re.compile(rf"\.{_EXT}$")
_SEPARATORS = "/\\"
_SENTENCE_END = ".:!?"

# The alternatives, in the order they are tried at each place: a URL (its scheme at most 32
# characters, so that trying one at every word costs a bounded scan), a quoted path, the start of
# a bare absolute or explicitly relative path, a relative path to a data file.
_PATH = re.compile(
    rf"""
    (?P<url>\b(?P<scheme>[A-Za-z][A-Za-z0-9+.-]{{0,31}})://[^\s'"<>]*)
    | {_BEFORE}(?P<prefix>[bB]?)(?P<quote>['"])
      (?: {_ROOT}(?:(?!(?P=quote))[^\n])*
        | {_NAME}[\\/](?:(?!(?P=quote))[^\n<>|,;:=])*?\.{_EXT}
      )(?P=quote)
    | {_BEFORE}(?P<bare>{_ROOT}{_RUN})
    | {_BEFORE}(?P<relative>(?:{_NAME}[\\/]+)+(?:{_NAME})?\.{_EXT})(?![\w-])
    """,
    re.VERBOSE,
)
# A word that a bare path may take in after a space.
_WORD = re.compile(_RUN)
_STARTS_A_PATH = re.compile(_ROOT)
# A word such as "other=/srv/y": a key, then a path of its own.
_KEY_OF_A_PATH = re.compile(rf"={_ROOT}")


def _has_extension(name: str) -> bool:
    return _ENDS_WITH_EXT.search(name) is not None


def _extend(text: str, end: int, resume: int, last: str) -> int:
    """Where a bare path really ends in ``text``, going on over the spaces of folder and file names
    (see the module docstring). So far it ends at ``end``; ``resume`` is where a space would go on
    from (after a trailing ``.``, ``!`` or ``?``), and ``last`` its last stretch without a space.

    Each word is looked at once, and words that are not taken hold no separator, so no path: a
    scan that finds no more of the path costs no more than the text it passes over."""
    spaced = False  # whether the path has been seen to have spaces in its folder names
    while resume < len(text) and text[resume] == " ":
        if last.endswith(":") or _has_extension(last.rstrip(_SENTENCE_END)):
            return end  # "path: message", or a file name is complete
        # Scan the words that follow for more of the path. In a path with spaces in its folder
        # names, the last name may have them too: up to where its clause ends ("taken").
        at, taken, closed = resume, end, False
        while True:
            word = _WORD.match(text, at + 1)
            if word is None or _STARTS_A_PATH.match(word[0]) or _KEY_OF_A_PATH.search(word[0]):
                return taken if spaced else end
            name = word[0].rstrip(_SENTENCE_END)
            if any(separator in name for separator in _SEPARATORS):  # a folder name with spaces
                end, resume, last, spaced = at + 1 + len(name), word.end(), word[0], True
                break
            if _has_extension(name):  # a file name with spaces
                return at + 1 + len(name)
            if not closed:
                taken, closed = at + 1 + len(name), name != word[0]
            if word[0].endswith(":") or word.end() == len(text) or text[word.end()] != " ":
                return taken if spaced else end
            at = word.end()
    return end


def redact_paths(text: str) -> str:
    """``text`` with every file-system path replaced by :data:`PATH_PLACEHOLDER` (see the module
    docstring for what counts as one). URLs other than ``file:`` ones, names without a folder and
    slash-joined words without a file extension stay. Idempotent; raises nothing."""
    out: list[str] = []
    pos = 0
    while (match := _PATH.search(text, pos)) is not None:
        out.append(text[pos : match.start()])
        end = match.end()
        if match["url"] is not None:
            url, scheme = match["url"], match["scheme"]
            # A file: URL names a local path (a bare "file://" names nothing, and stays).
            if scheme.lower() == "file" and len(url) > len(scheme) + 3:
                url = f"{scheme}://{PATH_PLACEHOLDER}"
            out.append(url)
        elif match["quote"] is not None:
            out.append(f"{match['prefix']}{match['quote']}{PATH_PLACEHOLDER}{match['quote']}")
        else:
            path = match["bare"]
            if path is not None:  # a trailing ".:!?" is the sentence's, unless more path follows
                last = path[max(map(path.rfind, _SEPARATORS)) + 1 :]
                kept = match.start() + len(path.rstrip(_SENTENCE_END))
                end = _extend(text, kept, end, last)
            out.append(PATH_PLACEHOLDER)
        pos = end
    out.append(text[pos:])
    return "".join(out)


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


def _named_files(exc: BaseException) -> Iterator[tuple[str, str]]:
    """``(as its message shows it, what replaces that)`` for each file that an ``OSError`` in
    ``exc`` or in what it was raised from names."""
    seen: set[int] = set()
    error: BaseException | None = exc
    while error is not None and id(error) not in seen and len(seen) < 16:
        seen.add(id(error))
        if isinstance(error, OSError):
            for name in (error.filename, error.filename2):
                if isinstance(name, str):
                    replacement = repr(PATH_PLACEHOLDER)
                elif isinstance(name, bytes):
                    replacement = repr(PATH_PLACEHOLDER.encode())
                elif isinstance(name, os.PathLike):
                    replacement = f"{type(name).__name__}({PATH_PLACEHOLDER!r})"
                else:
                    continue
                try:
                    shown = repr(name)  # as OSError.__str__ shows it
                except Exception:  # a path-like object whose repr fails cannot be in a message
                    continue
                if name:
                    yield shown, replacement
        error = error.__cause__ or error.__context__


def _redacted_message(exc: BaseException, message: str) -> str:
    """``message`` (``exc``'s) with its paths replaced, bounded."""
    scanned = message[:_SCAN]
    for shown, replacement in _named_files(exc):
        scanned = scanned.replace(shown, replacement)
    redacted = redact_paths(scanned)
    if len(redacted) > MAX_MESSAGE or len(message) > _SCAN:
        redacted = redacted[:MAX_MESSAGE] + " [cut]"
    return redacted


def _with_message(prefix: str, name: str, message: str) -> str:
    return f"{prefix}{name}: {message}" if message else f"{prefix}{name}"


def upstream_reason(exc: BaseException, *, context: str | None = None) -> str:
    """``Type: message`` as a site tells the server, paths redacted and bounded, without an error
    id; ``context`` is put before it. Raises nothing."""
    prefix = f"{context}: " if context else ""
    return _with_message(prefix, type(exc).__name__, _redacted_message(exc, _message(exc)))


def describe_failure(
    exc: BaseException, *, context: str | None = None, log_name: str = "the site's log"
) -> SiteFailure:
    """The upstream and the local account of ``exc`` under a new error id; ``context`` (such as
    ``"task not received"``) is put before both, and the upstream one says the details are in
    ``log_name``. Raises nothing."""
    error_id = secrets.token_hex(4)
    prefix = f"{context}: " if context else ""
    upstream = (
        f"{upstream_reason(exc, context=context)} (error id {error_id}; details in {log_name})"
    )
    return SiteFailure(error_id, upstream, _with_message(prefix, type(exc).__name__, _message(exc)))
