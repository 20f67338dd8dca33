"""The server's jobs on disk: one folder per job, every durable write atomic.

Layout (``<workspace>/jobs/<job-id>/``)::

    job.toml           the job file as submitted (the server re-reads and re-validates it on start)
    record.json        status, reason, times, who submitted it (rewritten atomically on each change)
    checkpoints/       round-NNNNNN/ per completed round (:mod:`flrt.checkpoint`), newest two kept
    metrics.jsonl      one JSON object per reported event: rounds, per-site and mean metrics,
                       discarded updates, and ``job_started`` each time a server starts the job
                       after a round (its checkpoint, 0 for none): what follows supersedes what
                       was recorded before for later rounds (append-only; a torn last line after
                       a crash is skipped)
    cross_site.json    the cross-site validation results, once there are any

A job folder appears whole or not at all: it is written under a dot-name and renamed into place.
Every other durable file is written to a temporary file, flushed, fsynced and renamed, then the
folder is fsynced (:func:`atomic_write`, from :mod:`flrt._durable`); the temporary files a crash
leaves behind (dot-names) are removed when the server starts again. Nothing here is ever
unpickled: JSON, TOML, msgpack and safetensors only.

``metrics.jsonl`` is a record, not state, and is not fsynced: a running job keeps it open
(:class:`MetricsLog`) and hands each event to the operating system as one whole-line ``write`` the
moment it is reported, so a crash of the server loses none of them and a power cut only the last
ones. What a job resumes from is its checkpoints, which are durable (:mod:`flrt.checkpoint`).
"""

from __future__ import annotations

import errno
import io
import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flrt._durable import atomic_write, fsync_directory, remove_stale_copies
from flrt.checkpoint import latest_checkpoint
from flrt.errors import CheckpointError, JobError, JobRecordError
from flrt.job import JobRecord, JobSpec, is_job_id, load_job, loads_job, new_job_id
from flrt.logs import module_logger
from flrt.workflows.state import WorkflowState

__all__ = ["JobEntry", "JobStore", "MetricsLog", "unreadable_reason"]

log = module_logger("flrt.jobstore")

JOB_FILE = "job.toml"
RECORD_FILE = "record.json"
CHECKPOINTS = "checkpoints"
METRICS_FILE = "metrics.jsonl"
CROSS_SITE_FILE = "cross_site.json"


def unreadable_reason(error: JobRecordError) -> str:
    """What admins hear of a job whose record cannot be read (the server's log names the file)."""
    return (
        f"its stored record cannot be read ({error.reason}): mend or remove the file the server's"
        " log names, then restart the server"
    )


def _json(data: Any) -> bytes:
    return (json.dumps(data, sort_keys=True, indent=1) + "\n").encode()


@dataclass(frozen=True, slots=True)
class JobEntry:
    """A stored job: its record and who submitted it."""

    record: JobRecord
    submitted_by: str
    organisation: str

    def to_dict(self) -> dict[str, Any]:
        return {
            **self.record.to_dict(),
            "submitted_by": self.submitted_by,
            "organisation": self.organisation,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> JobEntry:
        return cls(
            JobRecord.from_dict(data),
            str(data.get("submitted_by", "")),
            str(data.get("organisation", "")),
        )


class JobStore:
    """Jobs under ``root`` (``<workspace>/jobs``). Methods block on the file system: call them from
    a worker thread in an event loop when they may be slow (checkpoints)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        for stale in root.glob(".new-*"):  # a submission interrupted by a crash
            shutil.rmtree(stale, ignore_errors=True)
        for folder in root.iterdir():  # a record (or results) rewrite a crash interrupted
            if folder.is_dir():
                remove_stale_copies(folder)

    def folder(self, job_id: str) -> Path:
        """The job's folder. Raises :class:`KeyError` for something that is not a job id."""
        if not is_job_id(job_id):
            raise KeyError(job_id)
        return self.root / job_id

    def __contains__(self, job_id: object) -> bool:
        return (
            isinstance(job_id, str)
            and is_job_id(job_id)
            and (self.root / job_id / RECORD_FILE).is_file()
        )

    # ------------------------------------------------------------------ submission

    def create(
        self, text: str, *, submitted_by: str, organisation: str, now: float | None = None
    ) -> tuple[JobEntry, JobSpec]:
        """Validate ``text`` (a ``job.toml``) and store it as a new submitted job.

        Raises :class:`~flrt.errors.JobError` naming the key for a job that is refused, and
        :class:`OSError` when the file system refuses (a full disk); nothing of the job is left
        then, not even a folder that was renamed into place but could not be made durable.
        """
        spec = loads_job(text, path=JOB_FILE)
        now = time.time() if now is None else now
        job_id = new_job_id(now=now)
        entry = JobEntry(
            JobRecord.submitted(job_id, spec.name, now=now), submitted_by, organisation
        )
        staging = Path(tempfile.mkdtemp(prefix=f".new-{job_id}.", dir=self.root))
        folder = self.root / job_id
        try:
            atomic_write(staging / JOB_FILE, text.encode())
            atomic_write(staging / RECORD_FILE, _json(entry.to_dict()))
            os.replace(staging, folder)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        try:
            fsync_directory(self.root)
        except BaseException:  # the submitter is told it failed: it must not run all the same
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return entry, spec

    # ------------------------------------------------------------------ records

    def entry(self, job_id: str) -> JobEntry:
        """Raises :class:`KeyError` for an unknown job, :class:`~flrt.errors.JobRecordError` for a
        record that cannot be read (not JSON, not a record, a disk error)."""
        path = self.folder(job_id) / RECORD_FILE
        try:
            raw = path.read_bytes()
        except FileNotFoundError:
            raise KeyError(job_id) from None
        except OSError as exc:
            raise JobRecordError(f"cannot read it: {exc.strerror or exc}", path=path) from None
        try:
            data = json.loads(raw)
            if not isinstance(data, dict):
                raise TypeError(f"a JSON {type(data).__name__}, not an object")
            return JobEntry.from_dict(data)
        except (ValueError, KeyError, TypeError) as exc:
            what = f"missing field {exc}" if isinstance(exc, KeyError) else str(exc)
            raise JobRecordError(f"not a job record: {what}"[:300], path=path) from None

    def save(self, entry: JobEntry) -> None:
        atomic_write(self.folder(entry.record.job_id) / RECORD_FILE, _json(entry.to_dict()))

    def entries(self) -> list[JobEntry]:
        """Every job whose record can be read, oldest first (job ids sort by creation time)."""
        return self.scan()[0]

    def scan(self) -> tuple[list[JobEntry], dict[str, JobRecordError]]:
        """Every job, oldest first: those whose record can be read, and the others with the
        reason (see :meth:`entry`)."""
        out: list[JobEntry] = []
        unreadable: dict[str, JobRecordError] = {}
        for folder in sorted(self.root.iterdir()):
            if is_job_id(folder.name) and (folder / RECORD_FILE).is_file():
                try:
                    out.append(self.entry(folder.name))
                except JobRecordError as exc:
                    unreadable[folder.name] = exc
                except KeyError:  # removed meanwhile
                    pass
        return out, unreadable

    def spec(self, job_id: str) -> JobSpec:
        """The stored job, validated again. Raises :class:`~flrt.errors.JobError`."""
        try:
            return load_job(self.folder(job_id) / JOB_FILE)
        except OSError as exc:
            raise JobError(f"cannot read the stored job: {exc.strerror or exc}") from None

    def job_text(self, job_id: str) -> str:
        return (self.folder(job_id) / JOB_FILE).read_text(encoding="utf-8")

    # ------------------------------------------------------------------ state and results

    def checkpoints(self, job_id: str) -> Path:
        return self.folder(job_id) / CHECKPOINTS

    def latest_state(self, job_id: str) -> WorkflowState | None:
        """The workflow state of the newest checkpoint that loads, or ``None`` before the first.

        A newer one that does not load is logged (``checkpoint.skipped``) and passed over. Raises
        :class:`~flrt.errors.CheckpointError` if none loads.
        """

        def skipped(error: CheckpointError) -> None:
            log.warning("checkpoint.skipped", job=job_id, reason=str(error))

        checkpoint = latest_checkpoint(self.checkpoints(job_id), on_skipped=skipped)
        if checkpoint is None:
            return None
        try:
            return WorkflowState.from_checkpoint(checkpoint)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"not a workflow's checkpoint: {exc!r}", path=self.checkpoints(job_id)
            ) from None

    def metrics_log(self, job_id: str) -> MetricsLog:
        """The job's ``metrics.jsonl``, to append to while the job runs (close it after)."""
        return MetricsLog(self.folder(job_id) / METRICS_FILE)

    def metrics(self, job_id: str) -> list[dict[str, Any]]:
        """Every recorded event, in order (a torn line left by a crash is skipped)."""
        path = self.folder(job_id) / METRICS_FILE
        if not path.is_file():
            return []
        return list(_json_lines(path))

    def save_cross_site(self, job_id: str, data: Mapping[str, Any]) -> None:
        atomic_write(self.folder(job_id) / CROSS_SITE_FILE, _json(dict(data)))

    def cross_site(self, job_id: str) -> dict[str, Any] | None:
        path = self.folder(job_id) / CROSS_SITE_FILE
        if not path.is_file():
            return None
        data: dict[str, Any] = json.loads(path.read_bytes())
        return data


class MetricsLog:
    """Appends events to a ``metrics.jsonl`` through one file kept open until :meth:`close`.

    Each event is one ``write`` of a whole line to a file opened with ``O_APPEND`` (no buffer in
    this process, no fsync: see the module docstring), so a reader sees every event appended so
    far. A file whose last line a crash tore is first ended with a newline, so that the torn line
    is skipped alone, not with the event after it. After :meth:`close`, each append opens the file
    for itself (a result that arrives after its job ended is still recorded).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file: io.FileIO | None = None
        self._closed = False

    def append(self, event: Mapping[str, Any]) -> None:
        """Raises :class:`OSError`, and :class:`ValueError` for an event that is not JSON."""
        line = (json.dumps(event, sort_keys=True, allow_nan=False) + "\n").encode()
        if self._file is None:
            self._file = _open_for_append(self.path)
        try:
            _write_all(self._file, line)
        except OSError:
            self._drop()  # the line may be torn: the next append opens the file and ends it
            raise
        if self._closed:
            self._drop()

    def close(self) -> None:
        self._closed = True
        self._drop()

    def _drop(self) -> None:
        file, self._file = self._file, None
        if file is not None:
            file.close()


def _open_for_append(path: Path) -> io.FileIO:
    file = io.FileIO(path, "a+")  # O_APPEND: every write lands at the end, whatever the offset
    try:
        size = file.seek(0, os.SEEK_END)
        if size:
            file.seek(size - 1)
            if file.read(1) != b"\n":
                _write_all(file, b"\n")
    except BaseException:
        file.close()
        raise
    return file


def _write_all(file: io.FileIO, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = file.write(view)  # short only when the disk is full, and then it raises next
        if not written:
            raise OSError(errno.EIO, "nothing written", str(file.name))
        view = view[written:]


def _json_lines(path: Path) -> Iterator[dict[str, Any]]:
    with path.open(encoding="utf-8") as lines:
        for line in lines:
            try:
                value = json.loads(line)
            except ValueError:
                continue
            if isinstance(value, dict):
                yield value
