"""Checkpoints: a job's state, global model and workflow state, saved atomically after each round.

Theory of operation
-------------------
A job's checkpoint directory holds one directory ``round-NNNNNN`` per checkpoint kept, and the
job's journal::

    journal-000001.msgpack   records appended save after save (a workflow's round summaries),
                             one msgpack map each, one after the other
    round-000005/
      state.msgpack          format version, job id, round, the job record, the workflow state
                             (msgpack: plain data only), the journal extent (which journal file,
                             how many records, how many bytes, their SHA-256), and a manifest of
                             the array files with the SHA-256 of their canonical encoding
      model.safetensors      the global model
      arrays-000.safetensors one file per named group of arrays (optimizer moments, control
      ...                    variates), in the manifest's order

Nothing is pickled: state is msgpack, arrays are safetensors (:mod:`flrt.model`; the two functions
:func:`_write_arrays` and :func:`_read_arrays` are the only place that knows the array format).

**The journal** holds what grows by a little every round, so that a save costs the same after 5
rounds as after 5,000: a checkpoint covers the first ``records`` records (``bytes`` bytes) of one
journal file, and the next round's save appends only its new records. A job saves through one
:class:`CheckpointWriter`, which remembers where its last save ended. Its first save (a new
process: a resumed job) trusts nothing on disk: it starts a new journal file (the next number) and
writes the whole journal once; so does a save that does not continue the writer's previous one.
So the bytes a checkpoint covers are never changed: a journal file is only appended to, by the
writer that created it (which first cuts off what a failed save of its own left after its last
checkpoint), and is removed once no kept checkpoint names it.

**Atomicity.** Everything but the journal is written into a fresh temporary directory next to the
target (each file flushed and fsynced), the temporary directory is fsynced, the new journal records
are appended and fsynced (and the parent directory, for a new journal file), then the temporary
directory is renamed to ``round-NNNNNN`` and the parent directory is fsynced. A crash leaves either
no ``round-NNNNNN`` or a complete one whose records are on disk; records after the extent of every
checkpoint (a torn one, or those of a save whose rename did not happen) are never read.
Temporary directories (their names start with a dot) are ignored by readers and cleaned by the next
save. Older checkpoints beyond ``keep`` are removed only after the new one is in place.

**Saving a round again** (a workflow saves its last round once more with its cross-site results,
and once more as finished) cannot rename the new directory over the old one: a directory is not
replaced by a rename while it holds files. The old one is first moved aside into a fresh
``.round-NNNNNN.<random>.old/`` directory, then the new one is renamed into place, then the old one
is removed. A crash between the two renames leaves the round only in that ``.old`` directory: it is
still the round's checkpoint, complete and already reported. Readers take it from there when there
is no ``round-NNNNNN`` (:func:`checkpoint_rounds`, :func:`latest_checkpoint`), and the next save
renames it back into place before it cleans the other temporary directories; a save whose second
rename fails puts it back at once.

**Loading** checks the format version, every array file and the journal extent against their
digests, so a corrupt or truncated checkpoint, or a missing or shortened journal, is a
:class:`~flrt.errors.CheckpointError`, never a silently different model or history.
:func:`latest_checkpoint` then falls back to the next older one (``keep`` is 2 by default), and
says so. Format 1 (before the journal: a workflow kept every round's summary in its state) still
loads, with an empty journal.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgpack

from flrt._durable import fsync_directory, naming_os_errors
from flrt.errors import CheckpointError, ModelFileError
from flrt.model import load_weights, weights_digest, write_weights
from flrt.tasks import Weights

if TYPE_CHECKING:
    from _hashlib import HASH

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "CheckpointWriter",
    "checkpoint_rounds",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

#: The version written into every checkpoint; loading refuses any other but those before it that
#: it still reads (:data:`_READABLE`).
FORMAT_VERSION = 2
#: 1: no journal (a workflow's round summaries were in its state).
_READABLE = frozenset({1, FORMAT_VERSION})

_STATE = "state.msgpack"
_MODEL = "model.safetensors"
_ROUND_DIR = re.compile(r"round-(\d{6,})")
_JOURNAL = re.compile(r"journal-(\d{6,})\.msgpack")
#: Where a save of a round that has a checkpoint already sets the old one aside.
_SET_ASIDE = re.compile(r"\.round-(\d{6,})\.[^/]*\.old")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What is saved after a round.

    - ``job_id`` and ``round``: the job, and the last completed round (0 before the first).
    - ``weights``: the global model after that round.
    - ``arrays``: other named groups of arrays (``"fedopt.m"``, ``"scaffold.c"``...).
    - ``state``: the workflow's state as plain data (msgpack types: None, bool, int, float, str,
      bytes, lists and maps with string keys).
    - ``job``: the job record (see :meth:`flrt.job.JobRecord.to_dict`), if the caller keeps one.
    - ``journal``: the records the job has kept so far, oldest first, as maps of plain data (a
      workflow's round summaries). Each save extends the previous one's: a
      :class:`CheckpointWriter` writes only the records after those it saved last, and reads only
      the last of those (so a lazy sequence converts only what is new).
    """

    job_id: str
    round: int
    weights: Weights
    arrays: Mapping[str, Weights] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    job: Mapping[str, Any] | None = None
    journal: Sequence[Mapping[str, Any]] = ()


# ------------------------------------------------------------------------------- array files


def _write_arrays(path: Path, weights: Weights) -> str:
    """Write ``weights`` to the new file ``path`` (flushed and fsynced) and return their digest
    (:func:`~flrt.model.weights_digest`: the SHA-256 of the bytes written). The file needs no
    atomic write of its own: it is in the checkpoint's temporary directory."""
    with naming_os_errors(path), path.open("xb") as out:
        digest = write_weights(out, weights)
        out.flush()
        os.fsync(out.fileno())
    return digest


def _read_arrays(path: Path) -> tuple[Weights, str]:
    """Read arrays written by :func:`_write_arrays`, with the digest of what was read."""
    weights = load_weights(path)
    return weights, weights_digest(weights)


# ------------------------------------------------------------------------------- the journal


@dataclass(frozen=True, slots=True)
class _JournalEnd:
    """Where a writer's journal file ends after its last save: ``records`` records, ``size``
    bytes whose SHA-256 state is ``hasher``, the last record encoded as ``last``. The file is
    created with the first record (``created``): a job with no records has no journal file."""

    path: Path
    records: int
    size: int
    hasher: HASH
    last: bytes
    created: bool


def _append_journal(path: Path, offset: int, data: bytes, *, create: bool) -> None:
    """Write ``data`` at ``offset`` of the journal file ``path`` and fsync it, after cutting off
    whatever is past ``offset`` (a failed save's bytes: no checkpoint covers them). ``create``
    makes a new file (or takes over what a failed save of the same writer made of it), and fsyncs
    the directory so that its name survives a power cut too."""
    fd = os.open(path, os.O_WRONLY | (os.O_CREAT if create else 0), 0o666)
    try:
        with naming_os_errors(path):
            if os.fstat(fd).st_size != offset:
                os.ftruncate(fd, offset)
            view = memoryview(data)
            while view:
                written = os.pwrite(fd, view, offset)
                view = view[written:]
                offset += written
            os.fsync(fd)
    finally:
        os.close(fd)
    if create:
        fsync_directory(path.parent)


def _read_journal(root: Path, extent: Any, where: Path) -> tuple[Mapping[str, Any], ...]:
    """The records that ``extent`` (a checkpoint's ``journal`` entry) covers, verified."""
    name = extent["file"]
    records = int(extent["records"])
    size = int(extent["bytes"])
    if not isinstance(name, str) or not _JOURNAL.fullmatch(name) or records < 0 or size < 0:
        raise CheckpointError(f"malformed journal extent {extent!r}", path=where)
    data = b""
    if size:
        try:
            with (root / name).open("rb") as file:
                data = file.read(size)
        except OSError as exc:
            raise CheckpointError(
                f"cannot read {name}: {exc.strerror or exc}", path=where
            ) from None
    if len(data) < size:
        raise CheckpointError(f"{name} is shorter than the checkpoint says", path=where)
    if hashlib.sha256(data).hexdigest() != extent["sha256"]:
        raise CheckpointError(f"{name} does not match its digest", path=where)
    unpacker = msgpack.Unpacker(raw=False, max_buffer_size=0)
    unpacker.feed(data)
    try:
        out = tuple(unpacker)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{name} is not valid msgpack: {exc}", path=where) from None
    if len(out) != records or unpacker.tell() != size or not all(isinstance(r, dict) for r in out):
        raise CheckpointError(f"{name} does not hold {records} records", path=where)
    return out


# ------------------------------------------------------------------------------- saving


def _write_file(path: Path, data: bytes) -> None:
    with naming_os_errors(path), path.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def checkpoint_rounds(directory: str | os.PathLike[str]) -> list[int]:
    """The rounds that have a complete checkpoint in ``directory``, ascending (one that a crash
    left set aside while it was being saved again counts: see "Saving a round again")."""
    return sorted(_checkpoint_dirs(Path(directory)))


def _checkpoint_dirs(root: Path) -> dict[int, Path]:
    """Each round's checkpoint directory: ``round-NNNNNN``, or the ``.old`` directory that holds
    the round's only copy."""
    try:
        rounds, _, _, aside = _scan(root)
    except (FileNotFoundError, NotADirectoryError):
        return {}
    found = {r: root / f"round-{r:06d}" for r in rounds}
    return {**aside, **found}


def _scan(root: Path) -> tuple[set[int], list[str], dict[int, str], dict[int, Path]]:
    """One listing of ``root``: the rounds that have a checkpoint, the temporary directories
    (``.round-*``) that a crash during a save left behind, the journal files by number, and the
    rounds whose only checkpoint a crash left set aside (``.round-NNNNNN.*.old/round-NNNNNN``,
    see "Saving a round again")."""
    rounds: set[int] = set()
    debris: list[str] = []
    journals: dict[int, str] = {}
    aside: dict[int, Path] = {}
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".round-"):
                debris.append(entry.path)
                match = _SET_ASIDE.fullmatch(entry.name)
                if match and (Path(entry.path) / f"round-{match.group(1)}").is_dir():
                    aside[int(match.group(1))] = Path(entry.path) / f"round-{match.group(1)}"
                continue
            match = _ROUND_DIR.fullmatch(entry.name)
            if match and entry.is_dir():
                rounds.add(int(match.group(1)))
            elif match := _JOURNAL.fullmatch(entry.name):
                journals[int(match.group(1))] = entry.name
    return rounds, debris, journals, {r: p for r, p in aside.items() if r not in rounds}


class CheckpointWriter:
    """Saves one job's checkpoints under ``directory`` (created if needed), keeping the ``keep``
    newest; see "The journal" in the module docstring.

    A job saves all its checkpoints through one writer, one save at a time, in order: each
    checkpoint's journal extends the previous one's, and a save writes only the new records. A save
    that does not extend the previous one (fewer records, or another last one) is still correct: it
    writes its whole journal to a new file, as a new writer's first save does. Raises
    :class:`ValueError` for ``keep < 1``.
    """

    def __init__(self, directory: str | os.PathLike[str], *, keep: int = 2) -> None:
        if keep < 1:
            raise ValueError(f"keep must be >= 1, got {keep}")
        self.directory = Path(directory)
        self.keep = keep
        self._end: _JournalEnd | None = None  # where this writer's last save left its journal
        self._packer = msgpack.Packer(use_bin_type=True)  # used by one save at a time

    def _pack(self, record: Mapping[str, Any]) -> bytes:
        """One journal record's encoding (raises :class:`TypeError` for what msgpack cannot
        encode)."""
        packed: bytes = self._packer.pack(record if isinstance(record, dict) else dict(record))
        return packed

    def _continues(self, journal: Sequence[Mapping[str, Any]]) -> _JournalEnd | None:
        """This writer's journal end if ``journal`` extends what its last save wrote, else None."""
        end = self._end
        if end is None or len(journal) < end.records:
            return None
        if end.records and self._pack(journal[end.records - 1]) != end.last:
            return None
        return end

    def save(self, checkpoint: Checkpoint) -> Path:
        """Save ``checkpoint`` atomically and remove the checkpoints older than the ``keep`` newest
        (and the journal files none of those names). Returns the checkpoint's directory.

        Saving a round that already has a checkpoint replaces it. Raises :class:`TypeError` for
        state or journal records that msgpack cannot encode, :class:`~flrt.errors.ModelFileError`
        for arrays that cannot be stored (both before anything is written or renamed into place),
        and :class:`OSError` when the file system refuses.
        """
        root = self.directory
        try:
            rounds, debris, journals, aside = _scan(root)
        except FileNotFoundError:
            root.mkdir(parents=True, exist_ok=True)
            rounds, debris, journals, aside = set(), [], {}, {}
        for round_, where in aside.items():  # a crash set it aside: back into place first
            os.replace(where, root / f"round-{round_:06d}")
            rounds.add(round_)
        if aside:
            fsync_directory(root)
        for stale in debris:  # left by a crash during an earlier save
            shutil.rmtree(stale, ignore_errors=True)
        journal = checkpoint.journal
        end = self._continues(journal)
        if end is None:  # a new file, numbered after every file there: no checkpoint covers it
            number = max(journals, default=0) + 1
            path = root / f"journal-{number:06d}.msgpack"
            end = _JournalEnd(path, 0, 0, hashlib.sha256(), b"", created=False)
        added = [self._pack(record) for record in journal[end.records :]]
        data = b"".join(added)
        hasher = end.hasher.copy()
        hasher.update(data)
        new_end = _JournalEnd(
            end.path,
            len(journal),
            end.size + len(data),
            hasher,
            added[-1] if added else end.last,
            created=end.created or bool(data),
        )
        extent = {
            "file": new_end.path.name,
            "records": new_end.records,
            "bytes": new_end.size,
            "sha256": hasher.hexdigest(),
        }
        name = f"round-{checkpoint.round:06d}"
        tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
        try:
            _stage(tmp, checkpoint, extent)
            if data:
                _append_journal(end.path, end.size, data, create=not end.created)
            target = root / name
            if checkpoint.round in rounds:  # see "Saving a round again"
                old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root))
                os.replace(target, old / name)
                try:
                    os.replace(tmp, target)
                except BaseException:
                    with contextlib.suppress(OSError):  # the round keeps its checkpoint
                        os.replace(old / name, target)
                    raise
                shutil.rmtree(old, ignore_errors=True)
            else:
                os.replace(tmp, target)
            self._end = new_end  # in place: the next save continues from it
            fsync_directory(root)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self._prune(sorted(rounds | {checkpoint.round}), checkpoint.round, journals.values())
        return target

    def _prune(self, rounds: list[int], saved: int, journals: Iterable[str]) -> None:
        """Remove the checkpoints before the ``keep`` newest of ``rounds`` (ascending, ``saved``
        the one just saved), then the ``journals`` that none of those left names."""
        root = self.directory
        for old_round in rounds[: -self.keep]:  # one save at a time per folder
            shutil.rmtree(root / f"round-{old_round:06d}", ignore_errors=True)
        assert self._end is not None
        named = {self._end.path.name}  # the one just saved names it
        for other in rounds[-self.keep :]:
            if other != saved:
                named.add(_journal_named(root / f"round-{other:06d}"))
        for file in journals:
            if file not in named:
                with contextlib.suppress(OSError):
                    (root / file).unlink()


def _stage(tmp: Path, checkpoint: Checkpoint, extent: Mapping[str, Any]) -> None:
    """Write everything of ``checkpoint`` but its journal into the directory ``tmp``, each file
    fsynced, then the directory itself; ``extent`` is the journal's part that it covers."""
    files: list[dict[str, str]] = [
        {"group": "", "file": _MODEL, "sha256": _write_arrays(tmp / _MODEL, checkpoint.weights)}
    ]
    for i, (group, arrays) in enumerate(sorted(checkpoint.arrays.items())):
        file = f"arrays-{i:03d}.safetensors"
        files.append({"group": group, "file": file, "sha256": _write_arrays(tmp / file, arrays)})
    header = {
        "format": FORMAT_VERSION,
        "job_id": checkpoint.job_id,
        "round": checkpoint.round,
        "job": None if checkpoint.job is None else dict(checkpoint.job),
        "state": dict(checkpoint.state),
        "journal": dict(extent),
        "files": files,
    }
    _write_file(tmp / _STATE, msgpack.packb(header, use_bin_type=True))
    fsync_directory(tmp)


def _journal_named(where: Path) -> str:
    """The journal file the checkpoint in ``where`` names ("" for none, or if it is unreadable:
    a checkpoint that does not load needs no journal)."""
    try:
        return str(_read_header(where)["journal"]["file"])
    except (CheckpointError, KeyError, TypeError):
        return ""


def save_checkpoint(
    directory: str | os.PathLike[str], checkpoint: Checkpoint, *, keep: int = 2
) -> Path:
    """Save ``checkpoint`` as a new :class:`CheckpointWriter` does (its whole journal into a new
    file): for one save; a job saving round after round keeps one writer, whose saves write only
    what is new. Raises what :meth:`CheckpointWriter.save` raises, and :class:`ValueError` for
    ``keep < 1``."""
    return CheckpointWriter(directory, keep=keep).save(checkpoint)


# ------------------------------------------------------------------------------- loading


def _read_header(where: Path) -> dict[str, Any]:
    """The checkpoint's ``state.msgpack``, of a format this module reads."""
    try:
        raw = (where / _STATE).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {_STATE}: {exc.strerror or exc}", path=where) from None
    try:
        header = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{_STATE} is not valid msgpack: {exc}", path=where) from None
    found = header.get("format") if isinstance(header, dict) else None
    if found not in _READABLE:
        readable = ", ".join(map(str, sorted(_READABLE)))
        raise CheckpointError(f"format {found!r} is not one this reads ({readable})", path=where)
    assert isinstance(header, dict)
    return header


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load the checkpoint in directory ``path``, verifying every array file and its journal.

    Raises :class:`~flrt.errors.CheckpointError` if it is missing, of another format version,
    incomplete or corrupt, or its journal is.
    """
    where = Path(path)
    header = _read_header(where)
    root = where.parent  # the journal's folder: the job's, also for a checkpoint set aside
    if _SET_ASIDE.fullmatch(root.name):
        root = root.parent
    try:
        files = header["files"]
        job_id = str(header["job_id"])
        round_ = int(header["round"])
        state = dict(header["state"])
        job = header["job"]
        journal = () if header["format"] == 1 else _read_journal(root, header["journal"], where)
        weights: Weights | None = None
        arrays: dict[str, Weights] = {}
        for entry in files:
            try:
                loaded, digest = _read_arrays(where / entry["file"])
            except (OSError, ModelFileError) as exc:
                raise CheckpointError(f"cannot read {entry['file']}: {exc}", path=where) from None
            if digest != entry["sha256"]:
                raise CheckpointError(f"{entry['file']} does not match its digest", path=where)
            if entry["group"] == "":
                weights = loaded
            else:
                arrays[entry["group"]] = loaded
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"malformed {_STATE}: {exc!r}", path=where) from None
    if weights is None:
        raise CheckpointError("no model in the checkpoint", path=where)
    return Checkpoint(job_id, round_, weights, arrays, state, job, journal)


def latest_checkpoint(
    directory: str | os.PathLike[str],
    on_skipped: Callable[[CheckpointError], None] | None = None,
) -> Checkpoint | None:
    """The newest checkpoint in ``directory`` that loads, or ``None`` if there is none.

    A newer checkpoint that cannot be loaded (corrupt, truncated, another format) is passed to
    ``on_skipped`` and the next older one is tried: a job resumes from its last good round rather
    than not at all. Nothing is deleted; saving that round again replaces the bad copy. Raises the
    newest one's :class:`~flrt.errors.CheckpointError` if none loads.
    """
    newest_error: CheckpointError | None = None
    found = _checkpoint_dirs(Path(directory))
    for round_ in sorted(found, reverse=True):
        try:
            return load_checkpoint(found[round_])
        except CheckpointError as exc:
            newest_error = newest_error or exc
            if on_skipped is not None:
                on_skipped(exc)
    if newest_error is not None:
        raise newest_error
    return None
