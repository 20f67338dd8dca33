"""What a site says upstream about an error: absolute paths become ``<path>``, the rest stays."""

from __future__ import annotations

import errno
import re
import time
from pathlib import PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flrt._redact_paths import (
    MAX_MESSAGE,
    PATH_PLACEHOLDER,
    describe_failure,
    redact_paths,
    upstream_reason,
)

P = PATH_PLACEHOLDER


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # where the path is
        ("/data/wdbc.csv: line 3: not a number", f"{P}: line 3: not a number"),
        ("cannot open /data/wdbc.csv for reading", f"cannot open {P} for reading"),
        ("cannot open /data/wdbc.csv", f"cannot open {P}"),
        ("cannot open /data/wdbc.csv.", f"cannot open {P}."),
        ("is /data/wdbc.csv?", f"is {P}?"),
        ("/a/x and /b/y, then /c", f"{P} and {P}, then {P}"),
        ("path=/srv/x,other=(/tmp/y) [/z] {/w}", f"path={P},other=({P}) [{P}] {{{P}}}"),
        ("line one\n/data/x\nline three", f"line one\n{P}\nline three"),
        # quoted, as OSError and Path reprs quote them, spaces and all
        (
            "[Errno 2] No such file or directory: '/nonexistent/wdbc.csv'",
            f"[Errno 2] No such file or directory: '{P}'",
        ),
        ("PosixPath('/home/alice/my study/wdbc.csv') is missing", f"PosixPath('{P}') is missing"),
        ('it is "/quoted with spaces/x y.csv" here', f'it is "{P}" here'),
        ('"/it\'s here/x"', f'"{P}"'),
        ("b'/data/bytes path'", f"b'{P}'"),
        ("'/data/a b' and '/data/c d'", f"'{P}' and '{P}'"),
        # Windows: drives, shares, backslashes doubled by repr() or not
        ("C:\\Users\\alice\\x.csv", P),
        ("open C:/Users/alice/x.csv failed", f"open {P} failed"),
        ("'C:\\\\Users\\\\alice\\\\My Study\\\\x.csv'", f"'{P}'"),
        ("WindowsPath('D:/Study 42/x.csv')", f"WindowsPath('{P}')"),
        ("share \\\\srv\\share\\x.csv gone", f"share {P} gone"),
        ("'\\\\\\\\srv\\\\share\\\\x.csv'", f"'{P}'"),
        ("\\\\?\\C:\\very\\long", P),
        # home folders
        ("~/data/x.csv and ~alice/x.csv", f"{P} and {P}"),
        # URLs stay readable; a file: URL is a local path
        (
            "see https://example.org/docs/errors.html#io",
            "see https://example.org/docs/errors.html#io",
        ),
        ("fetch 'https://host:8443/a/b?x=/y' failed", "fetch 'https://host:8443/a/b?x=/y' failed"),
        (
            "s3://bucket/study/x.csv and hdfs://nn:8020/a",
            "s3://bucket/study/x.csv and hdfs://nn:8020/a",
        ),
        ("read file:///home/alice/x.csv", f"read file://{P}"),
        ("read file:/home/alice/x.csv", f"read file:{P}"),
        # relative paths: explicit ones, and ones to a data file
        ("data/wdbc.csv, ./x.csv and ../y/z.csv", f"{P}, {P} and {P}"),
        ("data/site-1/patients.csv: 3 rows", f"{P}: 3 rows"),
        ("cannot load ./cohort/x.npy (shape (3,))", f"cannot load {P} (shape (3,))"),
        ("cannot read ../secret/file.", f"cannot read {P}."),
        ("Error:data/x.csv", f"Error:{P}"),
        ("DATA/SITE-1/X.CSV and data/scan.nii.gz", f"{P} and {P}"),
        ("data\\site-1\\x.csv and .\\cohort\\x", f"{P} and {P}"),
        ("'data\\\\site-1\\\\x.csv'", f"'{P}'"),
        ("'data/Hospital Data/patient list.csv'", f"'{P}'"),
        ("'./my cohort/x'", f"'{P}'"),
        # unquoted paths with spaces in their names
        ("/srv/Hospital Data/cohort 2/x.csv", P),
        (
            "[Errno 2] No such file: /srv/Hospital Data/cohort 2/x.csv",
            f"[Errno 2] No such file: {P}",
        ),
        ("/srv/Hospital Data/cohort 2/x.csv: bad row", f"{P}: bad row"),
        ("/srv/Hospital Data/cohort 2: no csv files", f"{P}: no csv files"),
        ("Is a directory: /srv/Hospital Data/cohort 2", f"Is a directory: {P}"),
        ("/srv/Hospital Data/cohort 2. See the log", f"{P}. See the log"),
        ("/srv/data/patient list.csv is empty", f"{P} is empty"),
        ("./my cohort/x.npy missing", f"{P} missing"),
        ("/srv/Dr. Smith/cohort", P),
        ("C:\\Program Files (x86)\\flrt\\x.csv", P),
        ("C:\\Users\\al\\OneDrive - St Mary's\\x.csv", P),
        ('  File "/srv/Hospital Data/trainer.py", line 3', f'  File "{P}", line 3'),
        # ... but the words after an unquoted path stay, unless more of a path follows
        ("cannot open /data/x for reading", f"cannot open {P} for reading"),
        ("/data/a.csv and /data/b c.csv", f"{P} and {P}"),
        ("/data/a.csv and b.csv differ", f"{P} and b.csv differ"),
        ("/data/x: 1/2 sites failed", f"{P}: 1/2 sites failed"),
        ("path=/srv/x other=/srv/y", f"path={P} other={P}"),
        ("/srv/x (see the log)", f"{P} (see the log)"),
        ("open /data/x for 1/2 sites: busy", f"open {P}: busy"),  # the documented cost
        # names without a folder, slash-joined words and array names stay
        ("no such file: 'wdbc.csv'", "no such file: 'wdbc.csv'"),
        ("3/4 sites, a / b, and/or, 2024/01/02", "3/4 sites, a / b, and/or, 2024/01/02"),
        (
            "N/A, I/O error, TCP/IP, km/h, ~100/200 rows",
            "N/A, I/O error, TCP/IP, km/h, ~100/200 rows",
        ),
        ("KeyError: 'layer_0/weight'", "KeyError: 'layer_0/weight'"),
        ("layer_0/weight and/or layer_1/bias", "layer_0/weight and/or layer_1/bias"),
        (
            "array 'w/0.weight' has shape (3, 4), expected (4,); x/scaffold_c/fc1.bias is float32",
            "array 'w/0.weight' has shape (3, 4), expected (4,); x/scaffold_c/fc1.bias is float32",
        ),
        ("server/results refused; 1/2.5 of the rows", "server/results refused; 1/2.5 of the rows"),
        ("dtype('<f4') != dtype('float64')", "dtype('<f4') != dtype('float64')"),
        ("see https://example.org/docs/data/x.csv", "see https://example.org/docs/data/x.csv"),
        ("can't read 'it's' / nothing", "can't read 'it's' / nothing"),
        ("a lone / and a closing '/'", f"a lone / and a closing '{P}'"),
        ("classifier.bias: shape (3,) != (4,)", "classifier.bias: shape (3,) != (4,)"),
        ('expected </tag>, got <a href="/x">', f'expected </tag>, got <a href="{P}">'),
        ("", ""),
    ],
)
def test_paths_are_replaced_and_the_rest_stays(text: str, expected: str) -> None:
    assert redact_paths(text) == expected
    assert redact_paths(expected) == expected  # idempotent: redacting twice changes nothing


segments = st.lists(
    st.text("abcxyzABC0123456789 _-.", min_size=1, max_size=12).filter(
        lambda s: s.strip(" ") == s and s not in (".", "..")
    ),
    min_size=1,
    max_size=5,
)


@given(segments, st.booleans(), st.sampled_from(["start", "middle", "end"]))
def test_a_quoted_path_goes_whole_wherever_it_is(
    parts: list[str], windows: bool, where: str
) -> None:
    path = str(PureWindowsPath("C:/", *parts) if windows else PurePosixPath("/", *parts))
    quoted = repr(path)  # what OSError and Path reprs show: quotes, doubled backslashes
    text = {
        "start": f"{quoted}: cannot be read",
        "middle": f"open {quoted} failed",
        "end": f"No such file or directory: {quoted}",
    }[where]
    assert redact_paths(text) == text.replace(quoted, f"'{P}'")


@given(st.one_of(st.text(max_size=300), st.text("/\\ .:!'\"aZ09=()~_-,;|\n", max_size=80)))
def test_any_text_is_redacted_without_error_and_idempotently(text: str) -> None:
    """Arbitrary text, and text made of what paths and the text around them are made of."""
    once = redact_paths(text)
    assert redact_paths(once) == once


# Generated paths are made of upper-case letters and digits, which the text around them never
# holds: any of them left after redaction is part of a path that leaked.
_IN_PATHS = "ABCXYZ0123456789"
_AROUND = "abcdefz ,.;:()!?=|'\"\n"
_path_word = st.text(_IN_PATHS + "_-", min_size=1, max_size=8)
# A folder name: words, one space apart, some ending in "." ("Dr. Smith").
_folder = st.lists(
    st.builds(str.__add__, _path_word, st.sampled_from(["", "", "."])), min_size=1, max_size=3
).map(" ".join)
# A file name: one word, or words ending in a file extension.
_file = st.one_of(
    _path_word,
    st.builds(
        str.__add__,
        st.lists(_path_word, min_size=1, max_size=3).map(" ".join),
        st.sampled_from([".CSV", ".npy", ".NII.GZ", ".parquet"]),
    ),
)
_roots = {  # a root and the separator its paths use
    "/": "/",
    "~/": "/",
    "~alice/": "/",
    "C:\\": "\\",
    "C:/": "/",
    "D:\\\\": "\\\\",  # as repr() doubles them
    "\\\\SRV\\": "\\",
    "./": "/",
    "../": "/",
    ".\\": "\\",
}
_before = st.builds(
    str.__add__,
    st.text(_AROUND, max_size=30),
    st.sampled_from([" ", "\n", ": ", "=", "(", "[", "'", '"', ", ", "| "]),
)
# Nothing, the end of a sentence, or what ends a name and then anything.
_after = st.one_of(
    st.sampled_from(["", ".", "!", "'", '"']),
    st.builds(
        str.__add__,
        st.sampled_from([" ", ": ", ", ", ". ", "! ", ")", "' ", '" ', "\n", ";", " (", "|"]),
        st.text(_AROUND, max_size=30),
    ),
)


@given(
    st.sampled_from(sorted(_roots)),
    st.lists(_folder, max_size=4),
    _file,
    _before,
    _after,
)
def test_an_absolute_or_explicitly_relative_path_never_survives(
    root: str, folders: list[str], file: str, before: str, after: str
) -> None:
    """Spaces in its names or not, quoted or not, wherever it is in the text."""
    path = root + _roots[root].join([*folders, file])
    redacted = redact_paths(before + path + after)
    assert not set(redacted) & set(_IN_PATHS), (path, redacted)
    assert redacted.startswith(before) or before.endswith(("'", '"'))  # what comes before stays
    assert redact_paths(redacted) == redacted


@given(
    st.lists(st.text(_IN_PATHS + "_-.", min_size=1, max_size=8), min_size=1, max_size=4),
    st.sampled_from(["/", "\\", "\\\\"]),
    st.sampled_from([".csv", ".NPY", ".nii.gz", ".Parquet", ".pt"]),
    _before,
    _after,
)
def test_a_relative_path_to_a_data_file_never_survives(
    folders: list[str], separator: str, extension: str, before: str, after: str
) -> None:
    path = separator.join([*folders, "F" + extension])
    redacted = redact_paths(before + path + after)
    assert not set(redacted) & set(_IN_PATHS), (path, redacted)


_identifier = st.from_regex(r"[a-z_][a-z0-9_]{0,7}", fullmatch=True)
_not_paths = st.one_of(
    st.from_regex(r"[a-z]{1,8}", fullmatch=True),
    st.lists(_identifier, min_size=2, max_size=4).map("/".join),  # and/or, layer_0/weight
    st.builds(  # array names on the wire: w/0.weight, x/scaffold_c/fc1.bias
        "{}/{}.{}".format,
        st.sampled_from(["w", "x/scaffold_c", "layer_0", "encoder"]),
        _identifier,
        st.sampled_from(["weight", "bias", "running_mean", "kernel"]),
    ),
    st.builds("{}/{}".format, st.integers(0, 99), st.integers(1, 99)),  # 1/2 sites
    st.sampled_from(
        [
            "2024/01/02",
            "3.5",
            "(3, 4)",
            "(3,)",
            "dtype('<f4')",
            "float32",
            "can't",
            "it's",
            "1f0c9a3e",
            "(error id 1f0c9a3e; details in the site's log)",
            "https://example.org/docs/a/b.csv",
            "s3://bucket/study/x.csv",
            "N/A",
            "I/O",
            "wdbc.csv",
            "'wdbc.csv'",
            "'layer_0/weight'",
            "server/results",
        ]
    ),
)


@given(
    st.lists(
        st.tuples(_not_paths, st.sampled_from([" ", ", ", ": ", "; ", " - ", "\n"])),
        max_size=12,
    )
)
def test_text_without_paths_stays_as_it_is(tokens: list[tuple[str, str]]) -> None:
    text = "".join(token + separator for token, separator in tokens)
    assert redact_paths(text) == text


@pytest.mark.parametrize(
    "text",
    [
        "/a " * 8000,
        "/a" + " b" * 12000,
        "/a" + " b." * 8000 + "/c",
        "a." * 12000,
        "a=" * 12000 + "a/b.csv",
        "'a/" * 8000,
        "'" + '" ' * 12000,
        "x/" * 12000,
        "/a(" * 8000,
        " ./x y" * 4000,
        "a/b " * 6000,
    ],
)
def test_redaction_takes_time_in_proportion_to_the_text(text: str) -> None:
    """Inputs that a quadratic scan (a regular expression backtracking over the line at every
    word) takes seconds on; a linear one takes milliseconds."""
    started = time.perf_counter()
    redact_paths(text)
    assert time.perf_counter() - started < 1.0


def _raise(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:
        return caught


ID = r"\(error id ([0-9a-f]{8}); details in the site's log\)"


def test_a_failure_upstream_has_the_type_the_redacted_message_and_an_id() -> None:
    exc = _raise(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x y.csv"))
    failure = describe_failure(exc)
    match = re.fullmatch(
        rf"FileNotFoundError: \[Errno 2\] No such file or directory: '<path>' {ID}",
        failure.upstream,
    )
    assert match is not None, failure.upstream
    assert match[1] == failure.error_id
    assert (
        failure.reason == "FileNotFoundError: [Errno 2] No such file or directory: '/data/x y.csv'"
    )
    assert describe_failure(exc).error_id != failure.error_id  # one id per failure


def test_a_failure_with_context_and_without_a_message() -> None:
    failure = describe_failure(RuntimeError(), context="task not received")
    assert failure.reason == "task not received: RuntimeError"
    assert re.fullmatch(rf"task not received: RuntimeError {ID}", failure.upstream)


def test_a_long_message_is_cut_and_keeps_its_id() -> None:
    failure = describe_failure(ValueError("x" * 10 * MAX_MESSAGE + " /data/tail.csv"))
    assert len(failure.upstream) < 2000  # the protocol's limit on a reason would cut the id
    assert "[cut]" in failure.upstream
    assert re.search(ID, failure.upstream)
    assert failure.reason.endswith("/data/tail.csv")  # the site's log keeps all of it


def test_a_long_path_cut_at_the_limit_is_still_redacted() -> None:
    path = "/data/" + "a" * 10 * MAX_MESSAGE
    failure = describe_failure(OSError(f"cannot open {path}"))
    assert "aaaa" not in failure.upstream
    assert failure.upstream.startswith(f"OSError: cannot open {P}")


def test_an_exception_whose_message_cannot_be_formatted_is_still_described() -> None:
    class Broken(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no")

    failure = describe_failure(Broken())
    assert failure.upstream.startswith("Broken: <the message could not be formatted> (error id ")


@pytest.mark.parametrize(
    ("exc", "shown"),
    [
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "cohort"), f"'{P}'"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", "data/site-1"), f"'{P}'"),
        (FileNotFoundError(errno.ENOENT, "No such file or directory", b"cohort"), f"b'{P}'"),
        (
            IsADirectoryError(errno.EISDIR, "Is a directory", PurePosixPath("data/site-1")),
            f"PurePosixPath('{P}')",
        ),
        (OSError(errno.EXDEV, "Invalid cross-device link", "a", None, "b"), f"'{P}' -> '{P}'"),
    ],
)
def test_the_files_an_oserror_names_are_paths_whatever_they_look_like(
    exc: OSError, shown: str
) -> None:
    """Its message shows them quoted; a relative name without a folder or an extension is still
    where the site keeps a file."""
    failure = describe_failure(exc)
    assert failure.upstream.startswith(f"{type(exc).__name__}: [Errno {exc.errno}] ")
    assert f": {shown} (error id {failure.error_id};" in failure.upstream
    assert str(exc) in failure.reason  # the site's log keeps the name


def test_a_file_named_by_the_oserror_an_error_was_raised_from_is_a_path() -> None:
    missing = FileNotFoundError(errno.ENOENT, "No such file or directory", "cohort 7")
    try:
        try:
            raise missing
        except OSError as exc:
            raise RuntimeError(f"cannot load the cohort: {exc}") from exc
    except RuntimeError as exc:
        caught = exc
    assert upstream_reason(caught) == (
        f"RuntimeError: cannot load the cohort: [Errno 2] No such file or directory: '{P}'"
    )
    caught.__cause__ = None  # raised while handling it, not from it: the same
    assert caught.__context__ is missing
    assert upstream_reason(caught).endswith(f"No such file or directory: '{P}'")


def test_the_upstream_reason_is_what_a_site_sends_without_the_id() -> None:
    exc = _raise(ValueError("bad row in /srv/Hospital Data/cohort 2/x.csv: 3 columns"))
    failure = describe_failure(exc, context="task not received")
    reason = upstream_reason(exc, context="task not received")
    assert reason == f"task not received: ValueError: bad row in {P}: 3 columns"
    assert failure.upstream == f"{reason} (error id {failure.error_id}; details in the site's log)"
    assert upstream_reason(RuntimeError()) == "RuntimeError"
