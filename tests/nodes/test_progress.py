"""How often admins watching a job hear of its saved rounds: at most once per PROGRESS_INTERVAL,
and never later than that after the last saved round; and what building those views reads.

The tests that watch a whole job share one run of it per backend (:func:`fast_job`)."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import pytest

from flrt.job import JobSpec
from flrt.server import PROGRESS_INTERVAL, ServerCore, _RunningJob
from tests.nodes._federation import federation

pytestmark = pytest.mark.anyio

FAST_JOB = """\
name = "fast"
[workflow]
name = "fedavg"
rounds = 30
sites_per_round = 3
min_sites = 3
seed = 3
[trainer]
spec = "tests.nodes._trainers:SiteBehaviour"
[trainer.args]
size_mib = 0.001
"""


class _Published:
    """Stands in for ``AdminService.publish``: when it was called, and for which job."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, str]] = []
        self.changed = anyio.Event()

    def __call__(self, job_id: str) -> None:
        self.calls.append((anyio.current_time(), job_id))
        self.changed.set()
        self.changed = anyio.Event()

    async def wait_for(self, count: int) -> None:
        while len(self.calls) < count:
            await self.changed.wait()


async def test_rounds_saved_in_a_burst_are_told_once_at_once_and_once_at_the_interval(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with federation(kits, tmp_path, sites=()) as fed:
        core: ServerCore = fed.server.core
        published = _Published()
        monkeypatch.setattr(core.admin, "publish", published)
        # job-a runs (as the server records a running job); job-b has ended.
        monkeypatch.setitem(core.jobs, "job-a", _RunningJob(anyio.CancelScope()))
        start = anyio.current_time()
        for round in range(1, 11):
            core._progress("job-a", round)
        core._progress("job-b", 1)  # another job has its own interval
        assert [job for _, job in published.calls] == ["job-a", "job-b"]
        with anyio.fail_after(5):
            await published.wait_for(3)
        at, job = published.calls[2]
        assert job == "job-a"
        assert at >= start + PROGRESS_INTERVAL
        # The trailing one told the burst's last round: nothing else is pending, and the next
        # interval of a running job starts from it.
        assert not core._progress_pending
        assert core._progress_told["job-a"] > at - PROGRESS_INTERVAL / 2  # not the burst's first
        await anyio.sleep_until(at + PROGRESS_INTERVAL)  # a quiet interval (the throttle's clock)
        assert len(published.calls) == 3
        # A round saved after a quiet interval is told at once.
        core._progress("job-a", 11)
        assert len(published.calls) == 4


@dataclass(frozen=True)
class _Watched:
    """What one run of FAST_JOB showed an admin who watched it from submission to its end."""

    job_id: str
    seen: list[dict[str, Any]]  # the views the watching admin received
    told: list[float]  # when the server published a view of the job
    read: list[str]  # whose job file the store read (and parsed) while the job ran
    held_after: bool  # whether the server still held the job once it was over
    view_after: dict[str, Any]  # a view built once the job was over
    read_for_view_after: int  # how many job files building that view read


@pytest.fixture(scope="module", params=[pytest.param("trio"), pytest.param("asyncio")])
def anyio_backend(request: pytest.FixtureRequest) -> str:
    """Module-scoped (both backends still), so that one run of FAST_JOB per backend serves the
    tests that watch it (:func:`fast_job`)."""
    backend: str = request.param
    return backend


@pytest.fixture(scope="module")
async def fast_job(
    anyio_backend: str, kits: Path, tmp_path_factory: pytest.TempPathFactory
) -> _Watched:
    """Run FAST_JOB (30 rounds) once per backend, watched by an admin, noting what the tests below
    check. ``anyio_backend`` is named so that pytest runs it again for the second backend (the
    AnyIO plugin's own use of it does not tell pytest so: the trio run would serve both)."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        async with federation(kits, tmp_path_factory.mktemp("fast")) as fed:
            core: ServerCore = fed.server.core
            real_publish = core.admin.publish
            real_spec = core.store.spec
            told: list[float] = []
            read: list[str] = []

            def publish(job_id: str) -> None:
                told.append(anyio.current_time())
                real_publish(job_id)

            def spec(job_id: str) -> JobSpec:
                read.append(job_id)
                return real_spec(job_id)

            monkeypatch.setattr(core.admin, "publish", publish)
            monkeypatch.setattr(core.store, "spec", spec)
            with anyio.fail_after(60):
                job_id = await fed.admin.submit(fed.job_dir("fast", FAST_JOB))
                seen = [view async for view in fed.admin.watch(job_id)]
            read_while_running = list(read)
            held_after = job_id in core.jobs
            view_after = core.admin.view(core.store.entry(job_id))
            return _Watched(
                job_id=job_id,
                seen=seen,
                told=told,
                read=read_while_running,
                held_after=held_after,
                view_after=view_after,
                read_for_view_after=len(read) - len(read_while_running),
            )


async def test_a_watching_admin_sees_every_status_and_the_last_round_of_a_fast_job(
    fast_job: _Watched,
) -> None:
    seen, told = fast_job.seen, fast_job.told
    assert seen[-1]["status"] == "finished"
    assert seen[-1]["round"] == 30
    assert [v["round"] for v in seen] == sorted(v["round"] for v in seen)
    # Publishes less than the interval apart involve a change of status (running at the
    # start; finished, then the trailing round, at the end), never two rounds.
    close = sum(1 for a, b in itertools.pairwise(told) if b - a < PROGRESS_INTERVAL)
    assert close <= 3, told


async def test_views_of_a_running_job_do_not_read_its_job_file_again(fast_job: _Watched) -> None:
    seen, read = fast_job.seen, fast_job.read
    assert len(seen) > 3
    assert all(v["rounds"] == 30 for v in seen)
    # Read when the job started, and for the answers to submit and watch if they came
    # before: not for each view told while it ran.
    assert set(read) == {fast_job.job_id}
    assert len(read) <= 3, read
    # Once the job is over, nothing of it is held: a view reads the file.
    assert not fast_job.held_after
    view = fast_job.view_after
    assert (view["status"], view["round"], view["rounds"]) == ("finished", 30, 30)
    assert fast_job.read_for_view_after == 1
