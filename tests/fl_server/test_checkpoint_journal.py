"""The checkpoint journal: a save writes only the records that are new, whatever the job's length;
records past a checkpoint's extent (torn, or from a save that never finished) are never read; a
missing or damaged journal is refused; a save interrupted at any step leaves the last checkpoint
loadable; checkpoints written before the journal (format 1) still load and a job resumes from them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import anyio
import msgpack
import numpy as np
import pytest

import flrt.checkpoint
from flrt.checkpoint import (
    Checkpoint,
    CheckpointWriter,
    checkpoint_rounds,
    latest_checkpoint,
    load_checkpoint,
    save_checkpoint,
)
from flrt.errors import CheckpointError
from flrt.model import save_weights
from flrt.workflows import (
    LocalController,
    RoundSummary,
    SiteHistory,
    WorkflowState,
    run_workflow,
)

from ._sites import LinearSite, initial_model, job

Record = Mapping[str, Any]


def _record(i: int, tag: str = "") -> dict[str, Any]:
    """Journal record ``i`` (``tag`` makes a different one for the same round)."""
    return {"round": i, "accepted": ["a", "b", tag or "c"], "loss": 1.0 / i, "nan": float("nan")}


def _records(n: int) -> list[dict[str, Any]]:
    return [_record(i) for i in range(1, n + 1)]


def _checkpoint(round: int, journal: Sequence[Record]) -> Checkpoint:
    return Checkpoint(
        job_id="job-1",
        round=round,
        weights={"w": np.full(3, float(round), np.float32)},
        state={"round": round},
        journal=journal,
    )


def _same_records(a: Sequence[Record], b: Sequence[Record]) -> bool:
    """Equal as encoded (a NaN equals itself)."""
    return [msgpack.packb(dict(r)) for r in a] == [msgpack.packb(dict(r)) for r in b]


def _journals(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.glob("journal-*"))


def _packed_size(records: Sequence[Record]) -> int:
    return sum(len(msgpack.packb(dict(r), use_bin_type=True)) for r in records)


class _Counting(Sequence[Record]):
    """A journal that notes which records were read (as a lazy sequence converts them)."""

    def __init__(self, records: Sequence[Record], seen: list[int]) -> None:
        self.records = records
        self.seen = seen

    def __len__(self) -> int:
        return len(self.records)

    @overload
    def __getitem__(self, index: int) -> Record: ...
    @overload
    def __getitem__(self, index: slice) -> Sequence[Record]: ...
    def __getitem__(self, index: int | slice) -> Record | Sequence[Record]:
        if isinstance(index, slice):
            indices = range(len(self.records))[index]
            self.seen.extend(indices)
            return [self.records[i] for i in indices]
        self.seen.append(range(len(self.records))[index])
        return self.records[index]


# ----------------------------------------------------------------------------- appending


def test_each_save_reads_and_appends_only_the_records_that_are_new(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    records = _records(60)
    first: list[int] = []
    writer.save(_checkpoint(10, _Counting(records[:10], first)))
    assert sorted(set(first)) == list(range(10))  # a writer's first save writes the whole journal
    for r in range(11, 61):
        seen: list[int] = []
        before = (tmp_path / "journal-000001.msgpack").stat().st_size
        writer.save(_checkpoint(r, _Counting(records[:r], seen)))
        # The last record saved (to check that this save continues it) and the new one: the same
        # work after 60 rounds as after 11.
        assert sorted(set(seen)) == [r - 2, r - 1]
        after = (tmp_path / "journal-000001.msgpack").stat().st_size
        assert after - before == _packed_size(records[r - 1 : r])
    assert _journals(tmp_path) == ["journal-000001.msgpack"]
    assert checkpoint_rounds(tmp_path) == [59, 60]
    for r in (59, 60):
        loaded = load_checkpoint(tmp_path / f"round-{r:06d}")
        assert _same_records(loaded.journal, records[:r])
        assert loaded.state == {"round": r}


def test_a_workflow_state_converts_only_its_new_round_summaries(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def summary(r: int) -> RoundSummary:
        return RoundSummary(
            r, 10.0 * r, 10.0 * r + 3, ("a", "b"), ("c",), (), 1, 40, {"loss": 1 / r}
        )

    state = WorkflowState(
        job_id="job-1",
        workflow="fedavg",
        seed=3,
        round=1000,
        weights=initial_model(),
        history={"a": SiteHistory(1000, 0, 0)},
        rounds=tuple(summary(r) for r in range(1, 1001)),
        population=3,
    )
    writer = CheckpointWriter(tmp_path)
    writer.save(state.to_checkpoint())
    converted: list[int] = []
    to_dict = RoundSummary.to_dict

    def counting(self: RoundSummary) -> dict[str, Any]:
        converted.append(self.round)
        return to_dict(self)

    monkeypatch.setattr(RoundSummary, "to_dict", counting)
    state = replace(state, round=1001, rounds=(*state.rounds, summary(1001)))
    writer.save(state.to_checkpoint())
    assert sorted(converted) == [1000, 1001]
    back = WorkflowState.from_checkpoint(load_checkpoint(tmp_path / "round-001001"))
    assert back.rounds == state.rounds


def test_saving_the_same_journal_again_appends_nothing(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    writer.save(_checkpoint(3, _records(3)))
    size = (tmp_path / "journal-000001.msgpack").stat().st_size
    writer.save(_checkpoint(3, _records(3)))  # e.g. the same round again, with cross-site results
    assert (tmp_path / "journal-000001.msgpack").stat().st_size == size
    assert _same_records(load_checkpoint(tmp_path / "round-000003").journal, _records(3))


def test_a_job_without_records_has_no_journal_file(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    writer.save(_checkpoint(1, []))
    assert _journals(tmp_path) == []
    assert load_checkpoint(tmp_path / "round-000001").journal == ()
    writer.save(_checkpoint(2, _records(1)))  # the first record creates the file
    assert _same_records(load_checkpoint(tmp_path / "round-000002").journal, _records(1))
    assert load_checkpoint(tmp_path / "round-000001").journal == ()


def test_a_save_that_does_not_continue_the_last_one_writes_a_new_journal(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path, keep=3)
    writer.save(_checkpoint(3, _records(3)))
    rewritten = [*_records(2), _record(3, "x")]  # same length, another last record
    writer.save(_checkpoint(4, rewritten))
    shorter = _records(2)
    writer.save(_checkpoint(5, shorter))
    assert _same_records(load_checkpoint(tmp_path / "round-000003").journal, _records(3))
    assert _same_records(load_checkpoint(tmp_path / "round-000004").journal, rewritten)
    assert _same_records(load_checkpoint(tmp_path / "round-000005").journal, shorter)
    assert _journals(tmp_path) == [f"journal-00000{i}.msgpack" for i in (1, 2, 3)]


def test_a_journal_no_kept_checkpoint_names_is_removed(tmp_path: Path) -> None:
    CheckpointWriter(tmp_path).save(_checkpoint(1, _records(1)))
    CheckpointWriter(tmp_path).save(_checkpoint(2, _records(2)))  # a new writer: a new journal
    assert _journals(tmp_path) == ["journal-000001.msgpack", "journal-000002.msgpack"]
    writer = CheckpointWriter(tmp_path)
    writer.save(_checkpoint(3, _records(3)))  # round 1 is pruned, and its journal with it
    assert _journals(tmp_path) == ["journal-000002.msgpack", "journal-000003.msgpack"]
    assert _same_records(load_checkpoint(tmp_path / "round-000002").journal, _records(2))
    writer.save(_checkpoint(4, _records(4)))
    assert _journals(tmp_path) == ["journal-000003.msgpack"]
    assert checkpoint_rounds(tmp_path) == [3, 4]
    assert _same_records(load_checkpoint(tmp_path / "round-000003").journal, _records(3))


# ----------------------------------------------------------------------------- after a crash


def test_a_torn_record_after_the_last_checkpoint_is_never_read(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    for r in (1, 2, 3):
        writer.save(_checkpoint(r, _records(r)))
    journal = tmp_path / "journal-000001.msgpack"
    torn = msgpack.packb(_record(4), use_bin_type=True)
    for cut in range(1, len(torn)):  # the save of round 4 stopped after any byte of its record
        with journal.open("r+b") as file:
            file.truncate(_packed_size(_records(3)))
            file.seek(0, os.SEEK_END)
            file.write(torn[:cut])
        latest = latest_checkpoint(tmp_path)
        assert latest is not None
        assert latest.round == 3
        assert _same_records(latest.journal, _records(3))
        assert _same_records(load_checkpoint(tmp_path / "round-000002").journal, _records(2))

    restarted = CheckpointWriter(tmp_path)  # a new process goes on from round 3
    restarted.save(_checkpoint(4, [*_records(3), _record(4, "again")]))
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.round == 4
    assert _same_records(latest.journal, [*_records(3), _record(4, "again")])
    assert _same_records(load_checkpoint(tmp_path / "round-000003").journal, _records(3))


def test_records_of_a_save_that_never_finished_are_ignored_then_cut_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    writer = CheckpointWriter(tmp_path)
    for r in (1, 2, 3):
        writer.save(_checkpoint(r, _records(r)))

    def no_rename(src: Any, dst: Any) -> None:
        raise OSError("the disk went away")

    unfinished = [*_records(3), _record(4, "a longer record than the one saved after it")]
    with monkeypatch.context() as patch:
        patch.setattr(os, "replace", no_rename)
        with pytest.raises(OSError, match="went away"):
            writer.save(_checkpoint(4, unfinished))
    journal = tmp_path / "journal-000001.msgpack"
    assert journal.stat().st_size == _packed_size(unfinished)  # longer than round 3 says
    latest = latest_checkpoint(tmp_path)
    assert latest is not None
    assert latest.round == 3
    assert _same_records(latest.journal, _records(3))

    # The same writer saves round 4 again, with another record: the unfinished one is cut off.
    again = [*_records(3), _record(4, "again")]
    writer.save(_checkpoint(4, again))
    assert journal.stat().st_size == _packed_size(again)
    assert _same_records(load_checkpoint(tmp_path / "round-000004").journal, again)
    assert _same_records(load_checkpoint(tmp_path / "round-000003").journal, _records(3))


def test_a_missing_or_damaged_journal_is_refused(tmp_path: Path) -> None:
    writer = CheckpointWriter(tmp_path)
    writer.save(_checkpoint(1, _records(1)))
    newest = writer.save(_checkpoint(2, _records(2)))
    journal = tmp_path / "journal-000001.msgpack"
    data = journal.read_bytes()

    journal.unlink()
    with pytest.raises(CheckpointError, match=r"cannot read journal-000001\.msgpack") as info:
        load_checkpoint(newest)
    assert info.value.path == newest
    with pytest.raises(CheckpointError, match="cannot read journal"):
        latest_checkpoint(tmp_path)  # the older one needs it too

    journal.write_bytes(data[:-1])
    with pytest.raises(CheckpointError, match="shorter than the checkpoint says"):
        load_checkpoint(newest)
    assert _same_records(load_checkpoint(tmp_path / "round-000001").journal, _records(1))

    damaged = bytearray(data)
    damaged[-2] ^= 0x01
    journal.write_bytes(bytes(damaged))
    with pytest.raises(CheckpointError, match="does not match its digest"):
        load_checkpoint(newest)

    journal.write_bytes(data)
    header = msgpack.unpackb((newest / "state.msgpack").read_bytes())
    for extent in ({**header["journal"], "file": "../journal-000001.msgpack"}, "nonsense"):
        (newest / "state.msgpack").write_bytes(msgpack.packb({**header, "journal": extent}))
        with pytest.raises(CheckpointError, match="malformed"):
            load_checkpoint(newest)
    miscounted = {**header["journal"], "records": 1}  # the bytes and digest of two records
    (newest / "state.msgpack").write_bytes(msgpack.packb({**header, "journal": miscounted}))
    with pytest.raises(CheckpointError, match="does not hold 1 records"):
        load_checkpoint(newest)


class _Crash(BaseException):
    """The process dies here."""


#: What a save does to the disk, in the order it does it; a crash may come before any of them.
_STEPS = ("_write_arrays", "_write_file", "fsync_directory", "_append_journal")


def _crash_at(
    monkeypatch: pytest.MonkeyPatch, step: int, torn: bool, *, dead: bool = False
) -> list[int]:
    """Make the ``step``-th disk operation of the next saves crash; ``torn`` lets a crashing
    journal append write half of its bytes first; ``dead`` makes every operation after the crash
    crash too (the process is gone: no clean-up of its own runs). Returns the operation counter."""
    count = [0]

    def countdown() -> None:
        count[0] += 1
        if count[0] == step or (dead and count[0] > step):
            raise _Crash

    def wrap(name: str, real: Callable[..., Any]) -> Callable[..., Any]:
        def operation(*args: Any, **kwargs: Any) -> Any:
            if name == "_append_journal" and torn and count[0] + 1 == step:
                path, offset, data = args
                real(path, offset, data[: len(data) // 2], **kwargs)
            countdown()
            return real(*args, **kwargs)

        return operation

    for name in _STEPS:
        monkeypatch.setattr(flrt.checkpoint, name, wrap(name, getattr(flrt.checkpoint, name)))
    real_replace = os.replace
    monkeypatch.setattr(os, "replace", wrap("replace", real_replace))
    return count


@pytest.mark.parametrize("torn", [False, True], ids=["whole", "torn"])
def test_a_save_interrupted_at_any_step_leaves_the_last_checkpoint_loadable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, torn: bool
) -> None:
    step = 0
    while True:
        step += 1
        folder = tmp_path / f"crash-{step}"
        writer = CheckpointWriter(folder)
        for r in (1, 2, 3):
            writer.save(_checkpoint(r, _records(r)))
        with monkeypatch.context() as patch:
            _crash_at(patch, step, torn)
            try:
                writer.save(_checkpoint(4, _records(4)))
                finished = True
            except _Crash:
                finished = False
        # The server restarts: every checkpoint there is whole, the newest with its own records.
        for r in checkpoint_rounds(folder):
            load_checkpoint(folder / f"round-{r:06d}")
        latest = latest_checkpoint(folder)
        assert latest is not None
        assert latest.round in (3, 4)
        assert latest.state == {"round": latest.round}
        assert _same_records(latest.journal, _records(latest.round))
        assert _same_records(load_checkpoint(folder / "round-000003").journal, _records(3))
        # It runs on from there, with another history than the crashed run's.
        restarted = CheckpointWriter(folder)
        for r in (latest.round + 1, latest.round + 2):
            restarted.save(
                _checkpoint(r, [*_records(3), *[_record(i, "b") for i in range(4, r + 1)]])
            )
        final = latest_checkpoint(folder)
        assert final is not None
        assert _same_records(
            final.journal, [*_records(3), *[_record(i, "b") for i in range(4, final.round + 1)]]
        )
        if finished:
            break
    assert step > len(_STEPS)  # every step was interrupted once


@pytest.mark.parametrize("keep", [1, 2])
def test_saving_a_round_again_interrupted_at_any_step_keeps_that_round(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, keep: int
) -> None:
    """A workflow saves its last round again (with its cross-site results, then as finished): a
    crash at any step of that save leaves the round's checkpoint, old or new, not only the round
    before it (or none), and the restarted server's saves put everything back in place."""
    again = _checkpoint(3, _records(3))
    again = replace(again, state={"round": 3, "finished": True})
    step = 0
    while True:
        step += 1
        folder = tmp_path / f"crash-{step}"
        writer = CheckpointWriter(folder, keep=keep)
        for r in (1, 2, 3):
            writer.save(_checkpoint(r, _records(r)))
        with monkeypatch.context() as patch:
            _crash_at(patch, step, torn=False, dead=True)
            try:
                writer.save(again)
                finished = True
            except _Crash:
                finished = False
        # The server restarts: round 3 is still the last one saved, whole.
        assert checkpoint_rounds(folder)[-1] == 3, sorted(p.name for p in folder.iterdir())
        latest = latest_checkpoint(folder)
        assert latest is not None
        assert latest.round == 3
        assert latest.state in ({"round": 3}, {"round": 3, "finished": True})
        assert _same_records(latest.journal, _records(3))
        restarted = CheckpointWriter(folder, keep=keep)
        restarted.save(again)
        restarted.save(_checkpoint(4, _records(4)))
        assert checkpoint_rounds(folder) == [3, 4][-keep:]
        assert [p.name for p in folder.iterdir() if p.name.startswith(".")] == []
        if finished:
            break
    assert step > 3  # the saves' files, and both renames, were each interrupted once


def test_a_round_saved_again_keeps_its_checkpoint_when_the_rename_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new copy cannot be renamed into place (the file system refuses): the round keeps the
    checkpoint it had, in place, and the error is raised."""
    writer = CheckpointWriter(tmp_path)
    for r in (1, 2):
        writer.save(_checkpoint(r, _records(r)))
    real_replace = os.replace

    def refuse_into_place(src: Any, dst: Any) -> None:
        if Path(src).name.endswith(".tmp"):
            raise OSError(5, "Input/output error", str(dst))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", refuse_into_place)
    with pytest.raises(OSError, match="Input/output"):
        writer.save(replace(_checkpoint(2, _records(2)), state={"round": 2, "finished": True}))
    monkeypatch.undo()
    assert checkpoint_rounds(tmp_path) == [1, 2]
    loaded = load_checkpoint(tmp_path / "round-000002")
    assert loaded.state == {"round": 2}


# ----------------------------------------------------------------------------- format 1


def _save_format_1(folder: Path, state: WorkflowState) -> Path:
    """A checkpoint as flrt wrote it before the journal: format 1, every round's summary in the
    state (this spells out that layout, not the code that writes checkpoints now)."""
    where = folder / f"round-{state.round:06d}"
    where.mkdir(parents=True)
    files = [
        {
            "group": "",
            "file": "model.safetensors",
            "sha256": save_weights(where / "model.safetensors", state.weights),
        }
    ]
    for i, (group, arrays) in enumerate(sorted(state.arrays.items())):
        file = f"arrays-{i:03d}.safetensors"
        files.append({"group": group, "file": file, "sha256": save_weights(where / file, arrays)})
    header = {
        "format": 1,
        "job_id": state.job_id,
        "round": state.round,
        "job": None,
        "state": {
            "workflow": state.workflow,
            "seed": state.seed,
            "history": {site: h.to_dict() for site, h in sorted(state.history.items())},
            "rounds": [r.to_dict() for r in state.rounds],
            "population": state.population,
            "cross_site": None,
            "finished": state.finished,
        },
        "files": files,
    }
    (where / "state.msgpack").write_bytes(msgpack.packb(header, use_bin_type=True))
    return where


def _sites() -> dict[str, LinearSite]:
    return {n: LinearSite(n, 20 + 7 * i) for i, n in enumerate(("a", "b", "c"))}


def _controller(sites: Mapping[str, LinearSite], **kwargs: Any) -> LocalController:
    return LocalController({n: s.local_site(delay=1.0) for n, s in sites.items()}, **kwargs)


SPEC = job("fedopt", params='optimizer = "fedadam"\nserver_lr = 0.05', rounds=6, min_sites=2)


@pytest.mark.anyio
async def test_a_job_resumes_from_a_format_1_checkpoint(tmp_path: Path) -> None:
    with anyio.fail_after(30):
        straight = await run_workflow(
            _controller(_sites()), SPEC, job_id="job-1", initial_weights=initial_model()
        )
        sites = _sites()
        kept: list[WorkflowState] = []
        async with anyio.create_task_group() as tg:

            def stop(state: WorkflowState) -> None:
                if state.round == 3:
                    kept.append(state)
                    tg.cancel_scope.cancel()

            first = _controller(sites, on_checkpoint=stop)  # the old server: nothing on disk yet
            tg.start_soon(
                lambda: run_workflow(first, SPEC, job_id="job-1", initial_weights=initial_model())
            )
        _save_format_1(tmp_path, kept[0])  # what the old server left

        loaded = latest_checkpoint(tmp_path)
        assert loaded is not None
        resumed_from = WorkflowState.from_checkpoint(loaded)
        assert resumed_from.rounds == kept[0].rounds
        assert len(resumed_from.rounds) == 3
        assert resumed_from.arrays.keys() == {"fedopt.m", "fedopt.v"}
        second = _controller(sites, checkpoint_dir=tmp_path)  # the upgraded server
        resumed = await run_workflow(second, SPEC, job_id="job-1", resume=resumed_from)

    assert [r.round for r in resumed.rounds] == [1, 2, 3, 4, 5, 6]
    assert [r.accepted for r in resumed.rounds] == [r.accepted for r in straight.rounds]
    assert [r.train_metrics for r in resumed.rounds] == [r.train_metrics for r in straight.rounds]
    np.testing.assert_array_equal(resumed.weights["w"], straight.weights["w"])
    final = latest_checkpoint(tmp_path)
    assert final is not None
    assert WorkflowState.from_checkpoint(final).rounds == resumed.rounds
    assert checkpoint_rounds(tmp_path) == [5, 6]
    assert _journals(tmp_path) == ["journal-000001.msgpack"]


@pytest.mark.anyio
async def test_a_job_resumed_after_its_newest_checkpoint_was_damaged_keeps_one_history(
    tmp_path: Path,
) -> None:
    """The damaged round's summary is in the journal already: the round run again replaces it."""
    with anyio.fail_after(30):
        straight = await run_workflow(
            _controller(_sites()), SPEC, job_id="job-1", initial_weights=initial_model()
        )
        sites = _sites()
        async with anyio.create_task_group() as tg:

            def stop(state: WorkflowState) -> None:
                if state.round == 4:
                    tg.cancel_scope.cancel()

            first = _controller(sites, checkpoint_dir=tmp_path, on_checkpoint=stop)
            tg.start_soon(
                lambda: run_workflow(first, SPEC, job_id="job-1", initial_weights=initial_model())
            )
        model = tmp_path / "round-000004" / "model.safetensors"
        data = bytearray(model.read_bytes())
        data[-1] ^= 0xFF
        model.write_bytes(bytes(data))

        loaded = latest_checkpoint(tmp_path)
        assert loaded is not None
        assert loaded.round == 3
        second = _controller(sites, checkpoint_dir=tmp_path, start=1000.0)
        resumed = await run_workflow(
            second, SPEC, job_id="job-1", resume=WorkflowState.from_checkpoint(loaded)
        )

    final = latest_checkpoint(tmp_path)
    assert final is not None
    on_disk = WorkflowState.from_checkpoint(final).rounds
    assert on_disk == resumed.rounds
    assert [r.round for r in on_disk] == [1, 2, 3, 4, 5, 6]
    assert [r.started_at < 1000.0 for r in on_disk] == [True] * 3 + [False] * 3  # 4 was run again
    assert [r.accepted for r in on_disk] == [r.accepted for r in straight.rounds]


def test_save_checkpoint_alone_still_saves_a_whole_checkpoint(tmp_path: Path) -> None:
    path = save_checkpoint(tmp_path, _checkpoint(2, _records(2)))
    assert _same_records(load_checkpoint(path).journal, _records(2))
    with pytest.raises(ValueError, match="keep"):
        CheckpointWriter(tmp_path, keep=0)
