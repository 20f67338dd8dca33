"""Checkpoints: atomic, verified, pruned; and a workflow killed after round k and resumed from its
checkpoint ends with exactly the model of a run that never stopped."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import anyio
import msgpack
import numpy as np
import pytest

import flrt.checkpoint
from flrt.checkpoint import (
    FORMAT_VERSION,
    Checkpoint,
    checkpoint_rounds,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from flrt.errors import CheckpointError
from flrt.filters import Task
from flrt.job import JobRecord
from flrt.model import encode_weights
from flrt.tasks import EvalResult, Weights
from flrt.workflows import (
    CrossSiteResults,
    LocalController,
    RoundSummary,
    SiteHistory,
    WorkflowState,
    run_workflow,
)

from ._sites import LinearSite, initial_model, job


def _checkpoint(round: int = 3) -> Checkpoint:
    return Checkpoint(
        job_id="job-1",
        round=round,
        weights={"w": np.arange(6, dtype=np.float32).reshape(2, 3), "n": np.array([7], np.int64)},
        arrays={"fedopt.m": {"w": np.ones((2, 3))}, "fedopt.v": {"w": np.full((2, 3), 0.5)}},
        state={"seed": 5, "history": {"a": {"on_time": 1, "late": 0, "failed": 2}}, "x": None},
        job={"job_id": "job-1", "status": "running"},
    )


def _same(a: Weights, b: Weights) -> bool:
    return a.keys() == b.keys() and all(
        a[k].dtype == b[k].dtype and np.array_equal(a[k], b[k]) for k in a
    )


def test_a_checkpoint_round_trips(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _checkpoint())
    assert path == tmp_path / "round-000003"
    loaded = load_checkpoint(path)
    original = _checkpoint()
    assert (loaded.job_id, loaded.round, loaded.state, loaded.job) == (
        original.job_id,
        original.round,
        original.state,
        original.job,
    )
    assert _same(loaded.weights, original.weights)
    assert loaded.arrays.keys() == original.arrays.keys()
    for group in original.arrays:
        assert _same(loaded.arrays[group], original.arrays[group])
    assert not any(p.suffix == ".pkl" for p in path.iterdir())
    header = msgpack.unpackb((path / "state.msgpack").read_bytes())
    assert header["format"] == FORMAT_VERSION


def test_array_groups_are_written_as_their_encoding_and_nothing_else(tmp_path: Path) -> None:
    original = _checkpoint()
    path = save_checkpoint(tmp_path, original)
    assert (path / "model.safetensors").read_bytes() == encode_weights(original.weights)
    assert sorted(p.name for p in path.iterdir()) == [  # no temporary files
        "arrays-000.safetensors",
        "arrays-001.safetensors",
        "model.safetensors",
        "state.msgpack",
    ]
    assert _same(load_checkpoint(path).weights, original.weights)  # the digests match
    assert [p.name for p in tmp_path.iterdir()] == ["round-000003"]


def test_only_the_newest_checkpoints_are_kept_and_the_latest_is_found(tmp_path: Path) -> None:
    assert latest_checkpoint(tmp_path / "none") is None
    for r in range(1, 6):
        save_checkpoint(tmp_path, _checkpoint(r), keep=2)
    assert checkpoint_rounds(tmp_path) == [4, 5]
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.round == 5
    save_checkpoint(tmp_path, _checkpoint(5), keep=2)  # the same round again replaces it
    assert checkpoint_rounds(tmp_path) == [4, 5]
    with pytest.raises(ValueError, match="keep"):
        save_checkpoint(tmp_path, _checkpoint(6), keep=0)


def test_a_crash_mid_save_leaves_the_previous_checkpoint_and_is_cleaned_up(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    debris = tmp_path / ".round-000002.abc.tmp"  # what a crash before the rename leaves
    debris.mkdir()
    (debris / "model.safetensors").write_bytes(b"partial")
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.round == 1
    save_checkpoint(tmp_path, _checkpoint(2))
    assert not debris.exists()


def test_state_that_cannot_be_encoded_is_refused_before_anything_is_in_place(
    tmp_path: Path,
) -> None:
    bad = Checkpoint("job-1", 1, {"w": np.zeros(1)}, state={"when": object()})
    with pytest.raises(TypeError):
        save_checkpoint(tmp_path, bad)
    assert list(tmp_path.iterdir()) == []


def test_corrupt_or_foreign_checkpoints_are_refused(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _checkpoint())
    model = path / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF  # one flipped bit in the model's values
    model.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its digest") as info:
        load_checkpoint(path)
    assert info.value.path == path

    path = save_checkpoint(tmp_path, _checkpoint(4))
    (path / "arrays-000.safetensors").unlink()
    with pytest.raises(CheckpointError, match="cannot read arrays-000"):
        latest_checkpoint(tmp_path)

    path = save_checkpoint(tmp_path, _checkpoint(5))
    (path / "state.msgpack").write_bytes(msgpack.packb({"format": 99}))
    with pytest.raises(CheckpointError, match="format 99"):
        load_checkpoint(path)
    (path / "state.msgpack").write_bytes(b"\xc1")
    with pytest.raises(CheckpointError, match="msgpack"):
        load_checkpoint(path)
    (path / "state.msgpack").write_bytes(msgpack.packb({"format": FORMAT_VERSION}))
    with pytest.raises(CheckpointError, match="malformed"):
        load_checkpoint(path)
    with pytest.raises(CheckpointError, match="cannot read state"):
        load_checkpoint(tmp_path / "round-999999")


def test_a_corrupt_newest_checkpoint_falls_back_to_the_one_before(tmp_path: Path) -> None:
    save_checkpoint(tmp_path, _checkpoint(1))
    newest = save_checkpoint(tmp_path, _checkpoint(2))
    model = newest / "model.safetensors"
    data = bytearray(model.read_bytes())
    data[-1] ^= 0xFF
    model.write_bytes(bytes(data))

    skipped: list[CheckpointError] = []
    latest = latest_checkpoint(tmp_path, on_skipped=skipped.append)
    assert latest is not None
    assert latest.round == 1
    assert [e.path for e in skipped] == [newest]
    assert "does not match its digest" in str(skipped[0])
    assert checkpoint_rounds(tmp_path) == [1, 2]  # nothing is deleted by looking

    save_checkpoint(tmp_path, _checkpoint(2))  # the round run again replaces the bad copy
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.round == 2


def test_workflow_state_round_trips_through_a_checkpoint(tmp_path: Path) -> None:
    cross = CrossSiteResults(
        round=4,
        models=("global", "a"),
        evaluators=("a", "b"),
        results={
            ("a", "global"): EvalResult({"acc": 0.9}, 10),
            ("b", "a"): EvalResult({"acc": 0.7}, 5),
        },
        missing={("b", "global"): "late"},
    )
    state = WorkflowState(
        job_id="job-1",
        workflow="scaffold",
        seed=123,
        round=3,
        weights=initial_model(),
        arrays={"scaffold.c": {"w": np.full(3, 0.25)}},
        history={"a": SiteHistory(3, 1, 0), "b": SiteHistory(0, 0, 4)},
        rounds=(RoundSummary(1, 0.0, 3.0, ("a", "b"), ("c",), (), 2, 30, {"loss": 1.0}, {}),),
        population=3,
        cross_site=cross,
        finished=True,
    )
    record = JobRecord.submitted("job-1", "study", now=1.0)
    path = save_checkpoint(tmp_path, state.to_checkpoint(job=record.to_dict()))
    loaded = load_checkpoint(path)
    back = WorkflowState.from_checkpoint(loaded)
    assert JobRecord.from_dict(loaded.job or {}) == record
    assert _same(back.weights, state.weights)
    assert _same(back.arrays["scaffold.c"], state.arrays["scaffold.c"])
    assert (
        back.history,
        back.rounds,
        back.cross_site,
        back.population,
        back.finished,
        back.seed,
    ) == (
        state.history,
        state.rounds,
        state.cross_site,
        state.population,
        state.finished,
        state.seed,
    )
    assert cross.matrix("acc") == [[0.9, None], [None, 0.7]]


# ----------------------------------------------------------------------------- resume equivalence


def _controller(sites: dict[str, LinearSite], **kwargs: Any) -> LocalController:
    def delay_of(name: str) -> Any:
        def delay(task: Task) -> float:  # "c" is a straggler on odd rounds, "d" on rounds 2 and 5
            slow = (name == "c" and task.round % 2 == 1) or (name == "d" and task.round in (2, 5))
            return 30.0 if slow else 1.0 + 0.1 * ord(name[0]) % 3

        return delay

    return LocalController({n: s.local_site(delay=delay_of(n)) for n, s in sites.items()}, **kwargs)


WORKFLOW_JOBS = {
    "fedavg": ("fedavg", ""),
    "fedavg-median": ("fedavg", 'aggregator = "median"'),
    "fedprox": ("fedprox", "mu = 0.1"),
    "fedopt": ("fedopt", 'optimizer = "fedyogi"\nserver_lr = 0.05'),
    "scaffold": ("scaffold", "server_lr = 0.9\nevaluate_every = 2"),
}


@pytest.mark.anyio
@pytest.mark.parametrize("case", sorted(WORKFLOW_JOBS))
async def test_a_resumed_workflow_ends_with_the_model_of_an_uninterrupted_run(
    case: str, tmp_path: Path
) -> None:
    name, params = WORKFLOW_JOBS[case]
    spec = job(
        name,
        params=params,
        rounds=6,
        min_sites=2,
        sites_per_round=3,
        grace_seconds=2.0,
        sampling="reliable",
        seed=11,
    )
    names = ("a", "b", "c", "d")

    with anyio.fail_after(30):
        straight = await run_workflow(
            _controller({n: LinearSite(n, 20 + 7 * i) for i, n in enumerate(names)}),
            spec,
            job_id="job-1",
            initial_weights=initial_model(),
        )

        # the interrupted run: the sites live on (a server restart does not restart them)
        sites = {n: LinearSite(n, 20 + 7 * i) for i, n in enumerate(names)}
        stop_after = 3
        async with anyio.create_task_group() as tg:

            def kill(state: WorkflowState) -> None:
                if state.round == stop_after:
                    tg.cancel_scope.cancel()

            first = _controller(sites, checkpoint_dir=tmp_path, on_checkpoint=kill)
            tg.start_soon(
                lambda: run_workflow(first, spec, job_id="job-1", initial_weights=initial_model())
            )
        assert checkpoint_rounds(tmp_path) == [2, 3]
        assert first.checkpoints[-1].round == stop_after

        loaded = latest_checkpoint(tmp_path)
        assert loaded is not None
        resumed_from = WorkflowState.from_checkpoint(loaded)
        second = _controller(sites, checkpoint_dir=tmp_path)  # a new server process
        resumed = await run_workflow(second, spec, job_id="job-1", resume=resumed_from)

    assert resumed.round == straight.round == 6
    assert _same(resumed.weights, straight.weights)
    assert resumed.arrays.keys() == straight.arrays.keys()
    for group in straight.arrays:
        assert _same(dict(resumed.arrays[group]), dict(straight.arrays[group]))
    assert resumed.history == straight.history
    assert [r.accepted for r in resumed.rounds] == [r.accepted for r in straight.rounds]
    assert [r.train_metrics for r in resumed.rounds] == [r.train_metrics for r in straight.rounds]
    # the run really was interrupted: the second controller ran only rounds 4 to 6
    assert {r for r in (e.round for e in second.events if hasattr(e, "round")) if r <= 6} >= {
        4,
        5,
        6,
    }
    assert not any(getattr(e, "round", 99) <= stop_after for e in second.events)
    assert checkpoint_rounds(tmp_path)[-1] == 6


@pytest.mark.parametrize("refused", ["model", "journal"])
def test_a_full_disk_names_the_checkpoint_file_it_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, refused: str
) -> None:
    """A write that fills the disk raises an OSError without a file name; the server logs the
    error's file (``job.interrupted``), which said ``null``. The save names the file now, and
    leaves nothing of itself behind."""

    def full(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    if refused == "model":
        monkeypatch.setattr(flrt.checkpoint, "write_weights", full)
    else:
        monkeypatch.setattr(os, "pwrite", full)
    checkpoint = Checkpoint("job-1", 1, {"w": np.zeros(3)}, journal=[{"round": 1}])
    with pytest.raises(OSError, match="No space left") as info:
        save_checkpoint(tmp_path, checkpoint)
    assert info.value.errno == errno.ENOSPC
    expected = "model.safetensors" if refused == "model" else "journal-000001.msgpack"
    assert str(info.value.filename).endswith(expected), info.value.filename
    assert checkpoint_rounds(tmp_path) == []
