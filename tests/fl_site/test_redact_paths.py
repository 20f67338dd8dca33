"""What a site says upstream about an error: absolute paths become ``<path>``, the rest stays."""

from __future__ import annotations

import errno
import re
from pathlib import PurePosixPath, PureWindowsPath

import pytest
from hypothesis import given
from hypothesis import strategies as st

from flrt._redact_paths import MAX_MESSAGE, PATH_PLACEHOLDER, describe_failure, redact_paths

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
        # relative names and things that are not paths stay
        ("no such file: 'wdbc.csv'", "no such file: 'wdbc.csv'"),
        ("data/wdbc.csv, ./x.csv and ../y/z.csv", "data/wdbc.csv, ./x.csv and ../y/z.csv"),
        ("3/4 sites, a / b, and/or, 2024/01/02", "3/4 sites, a / b, and/or, 2024/01/02"),
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


@given(st.text(max_size=300))
def test_any_text_is_redacted_without_error_and_idempotently(text: str) -> None:
    once = redact_paths(text)
    assert redact_paths(once) == once


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
