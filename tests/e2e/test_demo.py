"""``flrt demo``: the whole study, processes and all, ends cleanly with results."""

from __future__ import annotations

import json
from pathlib import Path

import anyio
import pytest

from flrt.demo import run_demo

pytestmark = [pytest.mark.anyio, pytest.mark.slow]


async def test_the_demo_runs_a_study_and_stops_cleanly(tmp_path: Path) -> None:
    said: list[str] = []
    with anyio.fail_after(120):
        code = await run_demo(tmp_path / "demo", mlp=False, say=said.append)
    text = "\n".join(said)
    assert code == 0, text
    assert "all three hospitals connected over mutual TLS" in text
    assert "finished: completed 20 rounds" in text
    assert "accuracy: site \\ model  global  hospital-a  hospital-b  hospital-c" in text
    assert "stopped server (ok), hospital-a (ok), hospital-b (ok), hospital-c (ok)" in text
    results = tmp_path / "demo" / "results" / "logreg"
    assert (results / "model.safetensors").is_file()
    assert json.loads((results / "job.json").read_text())["job"]["status"] == "finished"


async def test_the_demo_wants_an_empty_folder(tmp_path: Path) -> None:
    (tmp_path / "something").write_text("mine")
    with pytest.raises(FileExistsError, match="not empty"):
        await run_demo(tmp_path, mlp=False, say=lambda _: None)
