"""``download`` never mixes or loses results: the folder it is given holds one job's complete
results, or is left as it was."""

from __future__ import annotations

import argparse
import errno
import json
from pathlib import Path
from typing import Any

import anyio
import pytest

import flrt.admin
from flrt._durable import atomic_write
from flrt.cli._admin_run import _download
from flrt.errors import ConfigError
from tests.nodes._federation import federation

pytestmark = pytest.mark.anyio

JOB = """\
name = "{name}"
[workflow]
name = "fedavg"
rounds = 1
min_sites = 1
[trainer]
spec = "flrt.examples.noise:NoiseTrainer"
[trainer.args]
size_mib = 0.01
"""


def _files(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _owner(folder: Path) -> str:
    return str(json.loads((folder / "job.json").read_bytes())["job"]["job_id"])


async def test_a_folder_with_another_jobs_results_is_refused_and_kept(
    kits: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "results"
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            first = await fed.admin.submit(fed.job_dir("first", JOB.format(name="first")))
            second = await fed.admin.submit(fed.job_dir("second", JOB.format(name="second")))
            for job_id in (first, second):
                assert (await fed.admin.wait(job_id, timeout=40))["status"] == "finished"

            await fed.admin.download(first, out)
            (out / "notes.txt").write_text("the analyst's own notes stay")
            kept = _files(out)
            with pytest.raises(ConfigError) as refused:
                await fed.admin.download(second, out)
            assert f"holds the results of job {first}" in str(refused.value)
            assert str(out) in str(refused.value)
            assert _files(out) == kept

            await fed.admin.download(first, out)  # the same job again: refreshed, not refused
            assert _owner(out) == first

            # A disk that fills up halfway leaves the earlier download whole, and no staging.
            fresh = tmp_path / "fresh"
            await fed.admin.download(second, fresh)
            before = _files(fresh)
            real_write = atomic_write

            def full(path: Path, data: bytes, **kwargs: Any) -> None:
                if path.name == "metrics.jsonl":
                    raise OSError(errno.ENOSPC, "No space left on device", str(path))
                real_write(path, data, **kwargs)

            monkeypatch.setattr(flrt.admin, "atomic_write", full)
            with pytest.raises(OSError, match="No space left") as failed:
                await fed.admin.download(second, fresh)
            assert failed.value.filename == str(fresh / "metrics.jsonl")
            assert _files(fresh) == before
            empty = tmp_path / "empty"
            with pytest.raises(OSError, match="No space left"):
                await fed.admin.download(second, empty)
            assert list(empty.iterdir()) == []


async def test_a_file_given_as_the_download_folder_is_named(kits: Path, tmp_path: Path) -> None:
    notes = tmp_path / "results"
    notes.write_text("not a folder")
    with anyio.fail_after(60):
        async with federation(kits, tmp_path) as fed:
            job_id = await fed.admin.submit(fed.job_dir("one", JOB.format(name="one")))
            await fed.admin.wait(job_id, timeout=40)
            with pytest.raises(ConfigError, match="is a file, not a folder"):
                await fed.admin.download(job_id, notes)
    assert notes.read_text() == "not a folder"


async def test_the_cli_says_when_a_downloaded_model_is_not_the_last(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def write_results(job_id: str, directory: Path) -> None:
        directory.mkdir()
        job = {"job_id": job_id, "status": "running", "round": 3, "rounds": 10}
        (directory / "job.json").write_text(json.dumps({"job": job}))

    class Admin:  # a running job's download: the model of round 3 of 10
        async def download(self, job_id: str, directory: Path) -> Path:
            write_results(job_id, directory)
            return directory

    args = argparse.Namespace(job_id="job-1", output=tmp_path / "out")
    assert await _download(Admin(), args) == 0  # type: ignore[arg-type]
    out = capsys.readouterr().out
    assert "the model of round 3 of 10: the job is running, not finished" in out
