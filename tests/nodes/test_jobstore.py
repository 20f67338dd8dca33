"""Jobs on disk: whole or absent, atomic records, refused job files, metrics that survive a torn
line (and a restart, when appended to an open log), and the registry's histories."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flrt.errors import JobError, JobRecordError
from flrt.job import JobStatus
from flrt.jobstore import JobEntry, JobStore
from flrt.registry import SiteRegistry
from flrt.workflows import SiteOutcome

JOB = """\
name = "study"
[workflow]
name = "fedavg"
rounds = 2
min_sites = 1
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
"""


def test_a_job_is_stored_whole_and_its_record_advances(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    entry, spec = store.create(JOB, submitted_by="lead", organisation="Lead", now=1000.0)
    job_id = entry.record.job_id
    assert spec.name == "study"
    assert job_id in store
    assert store.job_text(job_id) == JOB
    assert store.spec(job_id) == spec
    running = JobEntry(entry.record.advance(JobStatus.RUNNING, now=1001.0), "lead", "Lead")
    store.save(running)
    assert store.entry(job_id) == running
    assert [e.record.job_id for e in store.entries()] == [job_id]
    assert not list((tmp_path / "jobs").glob(".*"))  # no temporary leftovers


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"{not json", "not a job record: Expecting property name"),
        (b"[1, 2]", "not a job record: a JSON list, not an object"),
        (b'{"job_id": "x"}', "not a job record: missing field 'name'"),
        (b"", "not a job record: Expecting value"),
    ],
)
def test_a_damaged_record_is_named_and_kept_apart_and_left_as_it_is(
    tmp_path: Path, content: bytes, reason: str
) -> None:
    store = JobStore(tmp_path / "jobs")
    good, _ = store.create(JOB, submitted_by="lead", organisation="Lead", now=1000.0)
    bad, _ = store.create(JOB, submitted_by="lead", organisation="Lead", now=2000.0)
    record = store.folder(bad.record.job_id) / "record.json"
    record.write_bytes(content)
    with pytest.raises(JobRecordError) as raised:
        store.entry(bad.record.job_id)
    assert raised.value.path == record
    assert raised.value.reason.startswith(reason)
    assert isinstance(raised.value, ValueError)
    assert not isinstance(raised.value, KeyError)
    entries, unreadable = store.scan()
    assert entries == [good] == store.entries()
    assert list(unreadable) == [bad.record.job_id]
    assert unreadable[bad.record.job_id].path == record
    assert record.read_bytes() == content  # the operator's to mend: never rewritten


def test_a_refused_job_leaves_nothing(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    with pytest.raises(JobError, match=r"workflow\.rounds"):
        store.create(JOB.replace("rounds = 2", "rounds = 0"), submitted_by="x", organisation="y")
    assert store.entries() == []
    assert list((tmp_path / "jobs").iterdir()) == []


def test_an_interrupted_submission_is_cleaned_and_ids_are_checked(tmp_path: Path) -> None:
    (tmp_path / "jobs" / ".new-x.123").mkdir(parents=True)
    store = JobStore(tmp_path / "jobs")
    assert not (tmp_path / "jobs" / ".new-x.123").exists()
    with pytest.raises(KeyError):
        store.entry("../../etc")
    assert "../../etc" not in store


def _append_alone(store: JobStore, job_id: str, event: dict[str, str]) -> None:
    """Append one event through a log that is not kept open (it opens the file for the event)."""
    log = store.metrics_log(job_id)
    log.close()
    log.append(event)


def test_metrics_skip_a_torn_last_line(tmp_path: Path) -> None:
    store = JobStore(tmp_path / "jobs")
    entry, _ = store.create(JOB, submitted_by="lead", organisation="Lead")
    job_id = entry.record.job_id
    _append_alone(store, job_id, {"event": "a"})
    with (store.folder(job_id) / "metrics.jsonl").open("a") as out:
        out.write('{"event": "b", "tor')
    assert store.metrics(job_id) == [{"event": "a"}]
    assert store.latest_state(job_id) is None
    store.save_cross_site(job_id, {"round": 3})
    assert store.cross_site(job_id) == {"round": 3}


def test_metrics_appended_to_an_open_log_are_read_at_once_and_after_a_restart(
    tmp_path: Path,
) -> None:
    store = JobStore(tmp_path / "jobs")
    entry, _ = store.create(JOB, submitted_by="lead", organisation="Lead")
    job_id = entry.record.job_id
    log = store.metrics_log(job_id)
    try:
        log.append({"event": "a", "round": 1})
        assert store.metrics(job_id) == [{"event": "a", "round": 1}]  # not held in a buffer
        log.append({"event": "b", "round": 1})
        # A server that restarts (a new store, a new log) appends after what is there.
        again = JobStore(tmp_path / "jobs").metrics_log(job_id)
        again.append({"event": "c", "round": 2})
        again.close()
        log.append({"event": "d", "round": 2})
    finally:
        log.close()
    log.append({"event": "late"})  # after close, the append opens the file for itself
    assert [e["event"] for e in store.metrics(job_id)] == ["a", "b", "c", "d", "late"]
    with pytest.raises(ValueError, match="JSON compliant"):
        log.append({"event": "bad", "value": float("nan")})
    assert len(store.metrics(job_id)) == 5


@pytest.mark.parametrize("kept_open", [True, False])
def test_the_event_after_a_torn_line_is_kept(tmp_path: Path, kept_open: bool) -> None:
    store = JobStore(tmp_path / "jobs")
    entry, _ = store.create(JOB, submitted_by="lead", organisation="Lead")
    job_id = entry.record.job_id
    _append_alone(store, job_id, {"event": "a"})
    with (store.folder(job_id) / "metrics.jsonl").open("a") as out:
        out.write('{"event": "b", "tor')  # a crash in the middle of a line
    if kept_open:
        log = store.metrics_log(job_id)
        log.append({"event": "c"})
        log.close()
    else:
        _append_alone(store, job_id, {"event": "c"})
    assert store.metrics(job_id) == [{"event": "a"}, {"event": "c"}]


def test_the_registry_keeps_connections_and_histories(tmp_path: Path) -> None:
    path = tmp_path / "registry.json"
    registry = SiteRegistry({"a": "Org A", "b": "Org B"}, path)
    assert registry.available() == frozenset()
    assert registry.connected("a", now=10.0)
    assert not registry.connected("a", now=11.0)  # no news
    assert not registry.connected("stranger")
    assert registry.available() == frozenset({"a"})
    registry.record({"a": SiteOutcome.ON_TIME, "b": SiteOutcome.FAILED, "zz": SiteOutcome.LATE})
    assert registry.disconnected("a", now=12.0)
    record = registry.get("a")
    assert (record.connected, record.last_seen, record.connections) == (False, 12.0, 1)
    again = SiteRegistry({"a": "Org A", "b": "Org B"}, path)
    assert again.history()["a"].on_time == 1
    assert again.history()["b"].failed == 1
    assert json.loads(path.read_text())["sites"]["a"]["history"]["on_time"] == 1
    assert [s["name"] for s in again.snapshot()] == ["a", "b"]


def test_the_registry_saves_a_burst_of_rounds_once_and_the_rest_when_flushed(
    tmp_path: Path,
) -> None:
    path = tmp_path / "registry.json"
    registry = SiteRegistry({"a": "Org A"}, path, save_interval=3600)

    def saved_on_time() -> int:
        count: int = json.loads(path.read_text())["sites"]["a"]["history"]["on_time"]
        return count

    registry.record({"a": SiteOutcome.ON_TIME})  # after a quiet spell: saved at once
    assert saved_on_time() == 1
    registry.record({"a": SiteOutcome.ON_TIME})  # the next round, a moment later: not yet
    assert saved_on_time() == 1
    registry.flush()
    assert saved_on_time() == 2
    mtime = path.stat().st_mtime_ns
    registry.flush()  # nothing new: not rewritten
    assert path.stat().st_mtime_ns == mtime
