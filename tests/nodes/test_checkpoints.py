"""The server writes a round's checkpoint while the next round runs, and never reports a round, an
aggregate or a job's end ahead of the checkpoint it depends on; a failed write interrupts the job
(it resumes from its last good checkpoint at the next start, see test_operator_errors.py)."""

from __future__ import annotations

import errno
import json
import time
from pathlib import Path

import anyio
import pytest

from flrt.checkpoint import Checkpoint, CheckpointWriter, checkpoint_rounds, latest_checkpoint
from flrt.simulator import simulate

pytestmark = pytest.mark.anyio

NOISE = """\
name = "noise"
[workflow]
name = "fedavg"
rounds = 3
min_sites = 2
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 0.01
sleep_seconds = 0.05
"""


def job(tmp_path: Path) -> Path:
    folder = tmp_path / "job"
    folder.mkdir()
    (folder / "job.toml").write_text(NOISE)
    return folder


def events(workspace: Path) -> list[tuple[str, int]]:
    (metrics,) = (workspace / "server" / "jobs").glob("*/metrics.jsonl")
    lines = [json.loads(line) for line in metrics.read_text().splitlines()]
    return [(e["event"], e["round"]) for e in lines if e["event"] != "metrics"]


async def test_a_checkpoint_is_written_while_the_next_round_runs_and_before_its_aggregate(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = CheckpointWriter.save
    writers: set[int] = set()

    def slow_save(writer: CheckpointWriter, checkpoint: Checkpoint) -> Path:
        writers.add(id(writer))
        time.sleep(0.3)  # a slow disk: longer than a round's training
        return real_save(writer, checkpoint)

    monkeypatch.setattr(CheckpointWriter, "save", slow_save)
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path), sites=2, workspace=tmp_path / "ws")
    assert result.status == "finished", result.reason
    seen = events(tmp_path / "ws")
    at = {event: i for i, event in enumerate(seen)}
    for r in (1, 2):
        # Round r + 1's task went out before round r's checkpoint was on disk ...
        assert at[("round_started", r + 1)] < at[("checkpoint", r)], seen
        # ... and its results were aggregated only after.
        assert at[("checkpoint", r)] < at[("round_completed", r + 1)], seen
    # The job was reported over only once its last checkpoint (the finished state) was written.
    assert seen[-1] == ("checkpoint", 3), seen
    (folder,) = (tmp_path / "ws" / "server" / "jobs").glob("*/checkpoints")
    latest = latest_checkpoint(folder)
    assert latest is not None
    assert latest.state["finished"] is True
    assert result.weights is not None
    # One writer for the job: each save appended its round's summary to one journal.
    assert len(writers) == 1
    assert [p.name for p in folder.glob("journal-*")] == ["journal-000001.msgpack"]
    assert [r["round"] for r in latest.journal] == [1, 2, 3]


async def test_a_checkpoint_that_cannot_be_written_interrupts_the_job(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_save = CheckpointWriter.save

    def full_disk(writer: CheckpointWriter, checkpoint: Checkpoint) -> Path:
        if checkpoint.round == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(writer, checkpoint)

    monkeypatch.setattr(CheckpointWriter, "save", full_disk)
    with anyio.fail_after(60):
        result = await simulate(job(tmp_path), sites=2, workspace=tmp_path / "ws")
    assert result.status == "interrupted"
    assert result.reason == "its state cannot be saved: No space left on device"
    seen = events(tmp_path / "ws")
    # Round 3 ran while the write failed, but nothing was aggregated after the failure.
    assert ("round_completed", 3) not in seen, seen
    assert ("checkpoint", 2) not in seen, seen
    (folder,) = (tmp_path / "ws" / "server" / "jobs").glob("*/checkpoints")
    assert checkpoint_rounds(folder) == [1]
    # Not failed for good: it is stored as running, to resume from round 1 at the next start.
    (record,) = (tmp_path / "ws" / "server" / "jobs").glob("*/record.json")
    assert json.loads(record.read_text())["status"] == "running"
