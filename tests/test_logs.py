"""Structured logs: JSON lines for machines, never secrets or payload bytes."""

from __future__ import annotations

import io
import json
from pathlib import Path

from flrt.logs import configure_logging, get_logger


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
