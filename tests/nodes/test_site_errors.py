"""What a site tells the server about its errors: the error, never where the site keeps its files.

Every failure the server records (and shows the admins) has absolute paths replaced by ``<path>``
and an error id; the site's own log holds the full message and traceback under that id."""

from __future__ import annotations

import json
import re
import shutil
import traceback
from collections.abc import Iterator, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import pytest
from structlog.testing import capture_logs

from flrt._site_config import SitePolicy
from flrt.filters import FILTERS, FilterSpec
from flrt.logs import configure_logging
from flrt.simulator import simulate
from tests.nodes._federation import federation
from tests.nodes._leaky import WINDOWS_PATH, LeakyFilter
from tests.nodes._project import ADMIN

pytestmark = pytest.mark.anyio

#: A folder name that says more than it should; every secret path holds it.
FOLDER = "study-0042 patients"
SECRET = f"/home/alice/{FOLDER}"
ERROR_ID = re.compile(r"\(error id ([0-9a-f]{8}); details in the site's log\)")
FEDAVG = 'name = "fedavg"\nrounds = 1'


def fedavg(trainer: str, args: str, *, workflow: str = FEDAVG) -> str:
    return (
        f'name = "leak"\n[workflow]\n{workflow}\nmin_sites = 1\n'
        f'[trainer]\nspec = "{trainer}"\n[trainer.args]\n{args}\n'
    )


def leaky(fail_in: str, *, windows: bool = False, workflow: str = FEDAVG) -> str:
    args = f"fail_in = {fail_in!r}\nwindows = {str(windows).lower()}\nsize_mib = 0.01"
    return fedavg("tests.nodes._leaky:LeakyTrainer", args, workflow=workflow)


def write_job(root: Path, text: str) -> Path:
    folder = root / "job"
    folder.mkdir()
    (folder / "job.toml").write_text(text)
    return folder


def strings(value: Any) -> Iterator[str]:
    """Every string in a JSON-like value (keys too)."""
    if isinstance(value, str):
        yield value
    elif isinstance(value, dict):
        for key, item in value.items():
            yield from strings(key)
            yield from strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from strings(item)
    elif value is not None:
        yield str(value)


def server_files(folder: Path) -> Iterator[str]:
    """The text of every file the server keeps (job records, state, metrics)."""
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path.read_bytes().decode("utf-8", "replace")


def check_redacted(
    upstream: list[str], logs: Sequence[MutableMapping[str, Any]], *, named: str | None = None
) -> None:
    """No upstream text names the study folder; each names an error id that a site's log line
    holds with the full reason and the exception, and only such a line names the folder.

    ``named``: the failure named no path to begin with (a data location with nothing there is
    named by its key): the site's line says ``named`` instead, and nothing needed redacting."""
    site_lines = {e["error_id"]: e for e in logs if "error_id" in e}
    assert site_lines, logs
    for event in logs:
        if "error_id" not in event:  # the server's lines and the site's other lines
            assert FOLDER not in repr(event), event
    assert not [text for text in upstream if FOLDER in text]
    ids = {i for text in upstream for i in ERROR_ID.findall(text)}
    assert ids, upstream
    assert ("<path>" in "\n".join(upstream)) == (named is None)
    for error_id in ids:
        line = site_lines[error_id]  # the site operator finds what the admin quotes
        assert line["event"] == "task.failed"
        assert (named or FOLDER) in line["reason"]
        trace = "".join(traceback.format_exception(line["exc_info"]))  # the JSON line's exception
        assert trace.startswith("Traceback (most recent call last)")
        assert (named or FOLDER) in trace


@pytest.mark.parametrize(
    ("case", "secret"),
    [
        ("train", f"{SECRET}/wdbc.csv"),
        ("train on windows", WINDOWS_PATH),
        ("validation", f"{SECRET}/wdbc.csv"),
        ("filter", f"{SECRET}/words.txt"),
        ("example trainer", f"{SECRET}/wdbc.csv"),
        ("relative data location", f"{FOLDER}/wdbc.csv"),
    ],
)
async def test_what_the_server_records_names_no_local_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, secret: str
) -> None:
    policy = None
    data = {"wdbc": Path(secret)}
    if case == "train":
        text = leaky("train")
    elif case == "train on windows":
        text = leaky("train", windows=True)
    elif case == "validation":  # cross-site validation: evaluate tasks
        text = leaky("evaluate", workflow='name = "cross_site_eval"')
    elif case == "filter":
        monkeypatch.setitem(FILTERS, LeakyFilter.type_name, LeakyFilter)
        policy = SitePolicy((FilterSpec(LeakyFilter.type_name, {"path": secret}),))
        text = leaky("nothing")
    else:
        monkeypatch.chdir(tmp_path)  # a relative location is relative to where the site runs
        text = fedavg("flrt.examples.logreg:LogisticRegressionTrainer", 'data_key = "wdbc"')
    with anyio.fail_after(60), capture_logs() as logs:
        result = await simulate(
            write_job(tmp_path, text),
            sites=1,
            workspace=tmp_path / "ws",
            data=data,
            policy=policy,
        )
    # Cross-site validation records a failed evaluation and finishes; the others cannot go on.
    assert result.status == ("finished" if case == "validation" else "failed"), result
    upstream = [
        *strings(result.reason),
        *strings(result.rounds),
        *strings(result.cross_site),
        *server_files(tmp_path / "ws" / "server"),
    ]
    named = None
    if case in ("example trainer", "relative data location"):  # data_path names the key
        named = "nothing is at data location 'wdbc'"
        assert f"ConfigError: data.wdbc: site 'site-1': {named}" in str(result.reason)
    elif case not in ("validation", "filter"):
        assert "FileNotFoundError: [Errno 2] No such file or directory: '<path>'" in str(
            result.reason
        )
    check_redacted(upstream, logs, named=named)


def site_kit(kits: Path, local: Path, name: str, data_toml: str) -> None:
    kit = local / name
    shutil.copytree(kits / name, kit)
    (kit / "local" / "data.toml").write_text(data_toml)


async def test_an_admin_reads_the_failure_without_the_sites_path(
    kits: Path, tmp_path: Path
) -> None:
    """The QA report's case: a site whose data.toml names a file that is not there. The admin
    used to read a bare FileNotFoundError of '<path>'; the key to fix is named now."""
    local = tmp_path / "kits"
    local.mkdir()
    for name in ("server", ADMIN):
        (local / name).symlink_to(kits / name)
    secret = str(tmp_path / "mnt" / FOLDER / "wdbc.csv")
    site_kit(kits, local, "site-1", f"format = 1\n[data]\nwdbc = {json.dumps(secret)}\n")
    text = fedavg("flrt.examples.logreg:LogisticRegressionTrainer", 'data_key = "wdbc"')
    with anyio.fail_after(60), capture_logs() as logs:
        async with federation(local, tmp_path / "fed", sites=["site-1"]) as fed:
            job_id = await fed.admin.submit(fed.job_dir("leak", text))
            final = await fed.admin.wait(job_id, timeout=40)
            view = await fed.admin.job(job_id)
    assert final["status"] == "failed", final
    reason = final["reason"]
    assert "ConfigError: data.wdbc: site 'site-1': nothing is at data location 'wdbc'" in reason
    assert "data.toml of the site kit's local folder (or --data wdbc=PATH)" in reason
    startup = [e for e in logs if e["event"] == "site.data_missing"]
    assert [e["path"] for e in startup] == [secret]  # the site's own log names it at start
    check_redacted(
        [*strings(final), *strings(view)],
        [e for e in logs if e not in startup],
        named="nothing is at data location 'wdbc'",
    )


async def test_the_sites_log_file_has_the_message_and_traceback_under_the_id(
    tmp_path: Path,
) -> None:
    log_file = tmp_path / "logs" / "site.jsonl"
    configure_logging(json_file=log_file, console=None)
    try:
        with anyio.fail_after(60):
            result = await simulate(
                write_job(tmp_path, leaky("train")),
                sites=1,
                workspace=tmp_path / "ws",
                data={"wdbc": Path(f"{SECRET}/wdbc.csv")},
            )
    finally:
        configure_logging(json_file=None, console=None)
    (error_id,) = ERROR_ID.findall(str(result.reason))
    assert FOLDER not in str(result.reason)
    lines = [json.loads(line) for line in log_file.read_text().splitlines()]
    (failed,) = [e for e in lines if e.get("error_id") == error_id]
    assert failed["event"] == "task.failed"
    assert failed["reason"] == (
        f"FileNotFoundError: [Errno 2] No such file or directory: '{SECRET}/wdbc.csv'"
    )
    assert failed["exception"].startswith("Traceback (most recent call last)")
    assert failed["exception"].endswith(failed["reason"])
