"""Structured logs: JSON lines for machines, never secrets or payload bytes."""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog
import structlog.testing
from hypothesis import given
from hypothesis import strategies as st

from flrt.logs import configure_logging, get_logger, redact


def test_json_file_gets_one_object_per_event_and_secrets_are_redacted(tmp_path: Path) -> None:
    log_file = tmp_path / "logs" / "node.jsonl"
    console = io.StringIO()
    configure_logging(json_file=log_file, console=console)
    log = get_logger("test", node="site-1")
    log.info(
        "kit.opened",
        password="hunter2",
        private_key_pem="-----BEGIN PRIVATE KEY-----",
        payload=b"\x00" * 4096,
        nested={"token": "abc", "count": 3},
    )
    configure_logging(json_file=None, console=None)
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 1
    record = json.loads(lines[0])
    assert record["event"] == "kit.opened"
    assert record["component"] == "test"
    assert record["node"] == "site-1"
    assert record["password"] == "[redacted]"
    assert record["private_key_pem"] == "[redacted]"
    assert record["payload"] == "<4096 bytes>"
    assert record["nested"] == {"token": "[redacted]", "count": 3}
    text = console.getvalue()
    assert "kit.opened" in text
    assert "hunter2" not in text
    assert "BEGIN PRIVATE KEY" not in text
    assert "hunter2" not in log_file.read_text(encoding="utf-8")


@pytest.fixture
def quiet_afterwards() -> Iterator[None]:
    yield
    configure_logging(json_file=None, console=None)


def _events(path: Path) -> list[str]:
    return [json.loads(line)["event"] for line in path.read_text(encoding="utf-8").splitlines()]


def test_configuring_again_reaches_the_loggers_modules_made_and_used(
    tmp_path: Path, quiet_afterwards: None
) -> None:
    # As flrt's modules do: loggers made at import, before any configuration, then used.
    logs = [structlog.get_logger("flrt.test"), get_logger("test", node="site-1")]
    configure_logging(json_file=tmp_path / "first.jsonl", console=None, level=logging.INFO)
    for log in logs:
        log.info("one")
        log.debug("hidden")
    configure_logging(json_file=tmp_path / "second.jsonl", console=None, level=logging.DEBUG)
    for log in logs:
        log.debug("two")
    configure_logging(json_file=tmp_path / "third.jsonl", console=None, level=logging.WARNING)
    for log in logs:
        log.info("hidden")
        log.warning("three")
    assert _events(tmp_path / "first.jsonl") == ["one", "one"]
    assert _events(tmp_path / "second.jsonl") == ["two", "two"]
    assert _events(tmp_path / "third.jsonl") == ["three", "three"]


def test_captured_logs_include_loggers_used_under_an_earlier_configuration(
    tmp_path: Path, quiet_afterwards: None
) -> None:
    # As in a test session: one test configures logging and logs, a later one configures it
    # again, and another captures what a module's logger says (tests/nodes/test_admission.py).
    log = structlog.get_logger("flrt.test")
    configure_logging(json_file=tmp_path / "node.jsonl", console=None)
    log.info("before")
    configure_logging(json_file=None, console=None)
    with structlog.testing.capture_logs() as captured:
        log.info("during", site="site-1")
    assert [(e["event"], e.get("site")) for e in captured] == [("during", "site-1")]


def _fail_deep_inside() -> None:
    raise ValueError("the aggregator broke")


def test_an_exception_is_a_formatted_traceback_in_one_json_line(
    tmp_path: Path, quiet_afterwards: None
) -> None:
    # As ServerCore does for a job's internal error: log.exception(...), that is exc_info=True.
    log_file = tmp_path / "server.jsonl"
    console = io.StringIO()
    configure_logging(json_file=log_file, console=console)
    log = structlog.get_logger("flrt.server")
    try:
        _fail_deep_inside()
    except ValueError:
        log.exception("job.crashed", job="j1", password="hunter2")
    try:
        _fail_deep_inside()
    except ValueError as exc:
        error = exc
    log.error("job.crashed", job="j2", exc_info=error)  # an exception handled elsewhere
    log.info("job.resumed", job="j3", exc_info=True)  # outside any handler: nothing to show
    lines = log_file.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3  # a traceback's line breaks are escaped, never a line of their own
    first, second, third = (json.loads(line) for line in lines)
    for record, job in ((first, "j1"), (second, "j2")):
        assert record["job"] == job
        assert "exc_info" not in record
        trace = record["exception"]
        assert trace.startswith("Traceback (most recent call last):\n"), trace
        assert "in _fail_deep_inside" in trace
        assert trace.rstrip().endswith("ValueError: the aggregator broke")
    assert first["password"] == "[redacted]"
    assert "exception" not in third
    assert "exc_info" not in third
    text = console.getvalue()
    assert "ValueError: the aggregator broke" in text  # people see it on the terminal too
    assert "hunter2" not in text + log_file.read_text(encoding="utf-8")


# ------------------------------------------------------------------ redaction, against its definition

_SECRET = re.compile(r"(pass(word|phrase)?|secret|token|private|key_pem|cookie)", re.IGNORECASE)


def _defined(value: Any) -> Any:
    """What :func:`redact` does to a value, written as plainly as possible."""
    if isinstance(value, bytes | bytearray | memoryview):
        return f"<{len(value)} bytes>"
    if isinstance(value, dict):
        return {
            k: "[redacted]" if isinstance(k, str) and _SECRET.search(k) else _defined(v)
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [_defined(v) for v in value]
    return value


_keys = st.one_of(
    st.sampled_from(["password", "Token", "private_key", "key_pem", "site", "round", "event"]),
    st.text(max_size=12),
)
_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False)
    | st.text(max_size=8)
    | st.binary(max_size=8)
    | st.binary(max_size=8).map(bytearray),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.lists(inner, max_size=3).map(tuple)
        | st.dictionaries(_keys | st.integers(), inner, max_size=3)
    ),
    max_leaves=12,
)


@given(st.dictionaries(_keys, _values, max_size=6))
def test_redact_hides_secrets_and_bytes_at_every_depth(event: dict[str, Any]) -> None:
    expected = {
        k: v if k == "event" else "[redacted]" if _SECRET.search(k) else _defined(v)
        for k, v in event.items()
    }
    assert redact(None, "info", dict(event)) == expected


@pytest.fixture
def unconfigured_structlog() -> Iterator[None]:
    """structlog as a host program that never configured it has it; put back afterwards."""
    saved = structlog.get_config()
    structlog.reset_defaults()
    try:
        yield
    finally:
        structlog.configure(**saved)


@pytest.mark.usefixtures("unconfigured_structlog")
def test_without_a_structlog_setup_events_go_to_the_standard_loggers(
    caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    """A program that embeds a site and uses logging sees flrt's events as its other records, by
    module name and level, not printed to its stdout by structlog's defaults."""
    from flrt.site import log as site_log
    from transport.bus import log as bus_log

    with caplog.at_level(logging.INFO):
        site_log.bind(job="j-1").info("task.done", samples=3, password="hunter2")
        bus_log.debug("noise")  # below the level the program chose
        try:
            raise ValueError("bad rows")
        except ValueError:
            site_log.exception("task.failed", site="site-1")
    assert capsys.readouterr().out == ""
    records = [(r.name, r.levelname) for r in caplog.records]
    assert records == [("flrt.site", "INFO"), ("flrt.site", "ERROR")]
    done, failed = (r.getMessage() for r in caplog.records)
    assert done == "event='task.done' job='j-1' password='[redacted]' samples=3"
    assert failed.startswith("event='task.failed' exception='Traceback")
    assert "ValueError: bad rows" in failed


def test_once_structlog_is_set_up_the_same_loggers_follow_it(tmp_path: Path) -> None:
    from flrt.site import log as site_log

    log_file = tmp_path / "node.jsonl"
    configure_logging(json_file=log_file, console=None)
    try:
        site_log.bind(job="j-2").info("task.done", samples=1)
    finally:
        configure_logging(json_file=None, console=None)
    [record] = [json.loads(line) for line in log_file.read_text(encoding="utf-8").splitlines()]
    assert (record["event"], record["job"], record["samples"]) == ("task.done", "j-2", 1)
