"""Checkpoints: a job's state, global model and workflow state, saved atomically after each round.

Theory of operation
-------------------
A checkpoint is a directory ``round-NNNNNN`` under the job's checkpoint directory::

    round-000005/
      state.msgpack          format version, job id, round, the job record, the workflow state
                             (msgpack: plain data only), and a manifest of the array files with
                             the SHA-256 of their canonical encoding
      model.safetensors      the global model
      arrays-000.safetensors one file per named group of arrays (optimizer moments, control
      ...                    variates), in the manifest's order

Nothing is pickled: state is msgpack, arrays are safetensors (:mod:`flrt.model`; the two functions
:func:`_write_arrays` and :func:`_read_arrays` are the only place that knows the array format).

**Atomicity.** Everything is written into a fresh temporary directory next to the target (each file
flushed and fsynced), the temporary directory is fsynced, then renamed to ``round-NNNNNN`` and the
parent directory is fsynced. A crash leaves either no ``round-NNNNNN`` or a complete one; temporary
directories (their names start with a dot) are ignored by readers and cleaned by the next save.
Older checkpoints beyond ``keep`` are removed only after the new one is in place.

**Loading** checks the format version and every array file against its digest, so a corrupt or
truncated checkpoint is a :class:`~flrt.errors.CheckpointError`, never a silently different model.
:func:`latest_checkpoint` then falls back to the next older one (``keep`` is 2 by default), and
says so.
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack

from flrt._durable import fsync_directory
from flrt.errors import CheckpointError, ModelFileError
from flrt.model import load_weights, weights_digest, write_weights
from flrt.tasks import Weights

__all__ = [
    "FORMAT_VERSION",
    "Checkpoint",
    "checkpoint_rounds",
    "latest_checkpoint",
    "load_checkpoint",
    "save_checkpoint",
]

#: The version written into every checkpoint; loading refuses any other.
FORMAT_VERSION = 1

_STATE = "state.msgpack"
_MODEL = "model.safetensors"
_ROUND_DIR = re.compile(r"round-(\d{6,})")


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What is saved after a round.

    - ``job_id`` and ``round``: the job, and the last completed round (0 before the first).
    - ``weights``: the global model after that round.
    - ``arrays``: other named groups of arrays (``"fedopt.m"``, ``"scaffold.c"``...).
    - ``state``: the workflow's state as plain data (msgpack types: None, bool, int, float, str,
      bytes, lists and maps with string keys).
    - ``job``: the job record (see :meth:`flrt.job.JobRecord.to_dict`), if the caller keeps one.
    """

    job_id: str
    round: int
    weights: Weights
    arrays: Mapping[str, Weights] = field(default_factory=dict)
    state: Mapping[str, Any] = field(default_factory=dict)
    job: Mapping[str, Any] | None = None


# ------------------------------------------------------------------------------- array files


def _write_arrays(path: Path, weights: Weights) -> str:
    """Write ``weights`` to the new file ``path`` (flushed and fsynced) and return their digest
    (:func:`~flrt.model.weights_digest`: the SHA-256 of the bytes written). The file needs no
    atomic write of its own: it is in the checkpoint's temporary directory."""
    with path.open("xb") as out:
        digest = write_weights(out, weights)
        out.flush()
        os.fsync(out.fileno())
    return digest


def _read_arrays(path: Path) -> tuple[Weights, str]:
    """Read arrays written by :func:`_write_arrays`, with the digest of what was read."""
    weights = load_weights(path)
    return weights, weights_digest(weights)


# ------------------------------------------------------------------------------- saving


def _write_file(path: Path, data: bytes) -> None:
    with path.open("xb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def checkpoint_rounds(directory: str | os.PathLike[str]) -> list[int]:
    """The rounds that have a complete checkpoint in ``directory``, ascending."""
    try:
        rounds, _ = _scan(Path(directory))
    except (FileNotFoundError, NotADirectoryError):
        return []
    return sorted(rounds)


def _scan(root: Path) -> tuple[set[int], list[str]]:
    """One listing of ``root``: the rounds that have a checkpoint, and the temporary directories
    (``.round-*``) that a crash during a save left behind."""
    rounds: set[int] = set()
    debris: list[str] = []
    with os.scandir(root) as entries:
        for entry in entries:
            if entry.name.startswith(".round-"):
                debris.append(entry.path)
                continue
            match = _ROUND_DIR.fullmatch(entry.name)
            if match and entry.is_dir():
                rounds.add(int(match.group(1)))
    return rounds, debris


def save_checkpoint(
    directory: str | os.PathLike[str], checkpoint: Checkpoint, *, keep: int = 2
) -> Path:
    """Save ``checkpoint`` atomically under ``directory`` (created if needed) and keep only the
    ``keep`` newest checkpoints. Returns the checkpoint's directory.

    Saving a round that already has a checkpoint replaces it. One save at a time per directory
    (a job writes its checkpoints in order). Raises :class:`TypeError` for state
    that msgpack cannot encode, :class:`~flrt.errors.ModelFileError` for arrays that cannot be
    stored (both before anything is renamed into place), :class:`ValueError` for ``keep < 1``, and
    :class:`OSError` when the file system refuses.
    """
    if keep < 1:
        raise ValueError(f"keep must be >= 1, got {keep}")
    root = Path(directory)
    try:
        rounds, debris = _scan(root)
    except FileNotFoundError:
        root.mkdir(parents=True, exist_ok=True)
        rounds, debris = set(), []
    for stale in debris:  # left by a crash during an earlier save
        shutil.rmtree(stale, ignore_errors=True)
    name = f"round-{checkpoint.round:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".tmp", dir=root))
    try:
        files: list[dict[str, str]] = [
            {"group": "", "file": _MODEL, "sha256": _write_arrays(tmp / _MODEL, checkpoint.weights)}
        ]
        for i, (group, arrays) in enumerate(sorted(checkpoint.arrays.items())):
            file = f"arrays-{i:03d}.safetensors"
            files.append(
                {"group": group, "file": file, "sha256": _write_arrays(tmp / file, arrays)}
            )
        header = {
            "format": FORMAT_VERSION,
            "job_id": checkpoint.job_id,
            "round": checkpoint.round,
            "job": None if checkpoint.job is None else dict(checkpoint.job),
            "state": dict(checkpoint.state),
            "files": files,
        }
        _write_file(tmp / _STATE, msgpack.packb(header, use_bin_type=True))
        fsync_directory(tmp)
        target = root / name
        if checkpoint.round in rounds:
            old = Path(tempfile.mkdtemp(prefix=f".{name}.", suffix=".old", dir=root))
            os.replace(target, old / name)
            os.replace(tmp, target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, target)
        fsync_directory(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    for old_round in sorted(rounds | {checkpoint.round})[:-keep]:  # one save at a time per folder
        shutil.rmtree(root / f"round-{old_round:06d}", ignore_errors=True)
    return target


# ------------------------------------------------------------------------------- loading


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Load the checkpoint in directory ``path``, verifying every array file.

    Raises :class:`~flrt.errors.CheckpointError` if it is missing, of another format version,
    incomplete or corrupt.
    """
    where = Path(path)
    try:
        raw = (where / _STATE).read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read {_STATE}: {exc.strerror or exc}", path=where) from None
    try:
        header = msgpack.unpackb(raw, raw=False)
    except (ValueError, msgpack.UnpackException) as exc:
        raise CheckpointError(f"{_STATE} is not valid msgpack: {exc}", path=where) from None
    if not isinstance(header, dict) or header.get("format") != FORMAT_VERSION:
        found = header.get("format") if isinstance(header, dict) else None
        raise CheckpointError(f"format {found!r} is not the supported {FORMAT_VERSION}", path=where)
    try:
        files = header["files"]
        job_id = str(header["job_id"])
        round_ = int(header["round"])
        state = dict(header["state"])
        job = header["job"]
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
    return Checkpoint(job_id, round_, weights, arrays, state, job)


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
    for round_ in reversed(checkpoint_rounds(directory)):
        try:
            return load_checkpoint(Path(directory) / f"round-{round_:06d}")
        except CheckpointError as exc:
            newest_error = newest_error or exc
            if on_skipped is not None:
                on_skipped(exc)
    if newest_error is not None:
        raise newest_error
    return None
