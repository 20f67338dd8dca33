"""The in-process controller words a site's failure as a deployed site does: paths redacted, and
an error id under which the full error and its traceback are logged."""

from __future__ import annotations

import errno
import re
from typing import ClassVar

import anyio
import pytest
from structlog.testing import capture_logs

from flrt._redact_paths import upstream_reason
from flrt.filters import Filter, FilterChain, FilterContext, Task
from flrt.tasks import TrainResult, TrainTask
from flrt.workflows import LocalController, LocalSite, RoundCompleted, run_workflow

from ._sites import LinearSite, initial_model, job

pytestmark = pytest.mark.anyio

MISSING = FileNotFoundError(errno.ENOENT, "No such file or directory", "cohort 2")
BAD_ROWS = ValueError("bad rows in /srv/Hospital Data/cohort 2/x.csv and data/site-d/y.csv")
NO_CONSENT = RuntimeError("no consent list at ./consent/list.csv")


class ConsentFilter(Filter):
    """A site's filter that fails: it cannot find what it checks tasks against."""

    type_name: ClassVar[str] = "test_consent"

    def filter_task(self, task: Task, context: FilterContext) -> Task:
        raise NO_CONSENT


def _raising(exc: Exception) -> LocalSite:
    def train(task: TrainTask) -> TrainResult:
        raise exc

    return LocalSite(train=train)


_ERROR_ID = re.compile(r" \(error id ([0-9a-f]{8}); details in the simulation's log\)$")


async def test_a_sites_failure_reads_as_a_deployed_sites_with_an_error_id_into_the_log() -> None:
    sites = {name: LinearSite(name, 20) for name in ("a", "b")}
    ctl = LocalController(
        {
            "a": sites["a"].local_site(),
            "b": sites["b"].local_site(),
            "c": _raising(MISSING),
            "d": _raising(BAD_ROWS),
            "e": LocalSite(train=sites["a"].train, filters=FilterChain([ConsentFilter()])),
            "f": sites["b"].local_site(fail=lambda task: "disk full at /srv/Hospital Data/tmp"),
        }
    )
    with anyio.fail_after(20), capture_logs() as logs:
        await run_workflow(
            ctl, job(rounds=1, min_sites=2), job_id="j", initial_weights=initial_model()
        )
    [completed] = [e for e in ctl.events if isinstance(e, RoundCompleted)]
    ids = {}
    failed = dict(completed.failed)
    for site in ("c", "d", "e"):
        found = _ERROR_ID.search(failed[site])
        assert found is not None, failed[site]
        ids[site] = found[1]
        failed[site] = failed[site][: found.start()]
    assert failed == {
        "c": "FileNotFoundError: [Errno 2] No such file or directory: '<path>'",
        "d": "ValueError: bad rows in <path> and <path>",
        "e": "RuntimeError: no consent list at <path>",
        "f": "disk full at <path>",  # a fail hook's reason: no error to log
    }
    for site, exc in {"c": MISSING, "d": BAD_ROWS, "e": NO_CONSENT}.items():
        assert failed[site] == upstream_reason(exc)  # what a site sends, less its id
    logged = {e["site"]: e for e in logs if e["event"] == "task.failed"}
    assert sorted(logged) == ["c", "d", "e"]
    for site, exc in {"c": MISSING, "d": BAD_ROWS, "e": NO_CONSENT}.items():
        entry = logged[site]
        assert entry["error_id"] == ids[site]
        assert entry["exc_info"] is exc  # the traceback goes to the log, unredacted
        assert entry["reason"] == f"{type(exc).__name__}: {exc}"
    assert completed.accepted == ("a", "b")
