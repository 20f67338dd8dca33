"""The errors of :mod:`flrt`, one tree under :class:`FlrtError`.

- :class:`FlrtError`: the root; catch it to handle anything the runtime raises.

  - :class:`ConfigError`: a configuration file (project, job, node, policy) is wrong; it names the
    file, the key and what was expected.

    - :class:`JobError`: a job definition (``job.toml``) is wrong.
    - :class:`JobRecordError`: a stored job's record (``record.json``) cannot be read.
    - :class:`WorkspaceInUseError`: another node holds the workspace (its lock file); it names the
      workspace and, when known, the holder's PID.

  - :class:`ModelFileError`: a model file or an encoded model (safetensors format) is malformed; it
    names the problem, the file (if any) and the tensor (if any). Also a :class:`ValueError`.
  - :class:`IncompatibleWeightsError`: two models do not have the same names, dtypes and shapes; it
    names the first tensor that differs. Also a :class:`ValueError`.
  - :class:`TrainerError`: a site's trainer could not be used.

    - :class:`TrainerLoadError`: the trainer spec names no importable module, no attribute, not a
      trainer, or its arguments were refused.
    - :class:`TrainerOutputError`: a trainer returned something that is not the documented type.
    - :class:`TrainingAbortedError`: a trainer stopped because the site asked it to (the job was
      aborted or the task cancelled).

  - :class:`DatasetError`: a data set is missing, malformed, or cannot be split as asked. Also a
    :class:`ValueError`.
  - :class:`JobStateError`: a job was moved to a state its current state does not allow. Also a
    :class:`RuntimeError` (a misuse of the API).
  - :class:`AggregationError`: updates could not be aggregated (no update, zero total weight).

    - :class:`UpdateError`: a site's update does not fit the global model (unknown variable, wrong
      shape, a piece past the end); it names the site and the variable. Also a :class:`ValueError`.
    - :class:`AggregatorStateError`: an aggregator was called out of order. Also a
      :class:`RuntimeError`.

  - :class:`WorkflowError`: a workflow could not complete.

    - :class:`RoundFailedError`: a round could not reach its quorum (or timed out); it names the
      round and the reason.
    - :class:`QuorumError`: a round's quorum state machine was misused. Also a :class:`RuntimeError`.
    - :class:`WorkflowStalledError`: an in-process controller found that nothing can ever happen
      again (every site idle, nothing scheduled) while the workflow waits. Also a
      :class:`RuntimeError`.

  - :class:`CheckpointError`: a checkpoint is missing, incomplete or corrupt; it names the path.
  - :class:`FilterError`: a task or result filter refused its input at run time; it names the
    filter.
  - :class:`NodeProtocolError`: a peer node sent an flrt message this node cannot accept (the peer
    sent something bad); it names the peer and what was wrong.
  - :class:`AdminError`: an admin command was refused or failed at the server; ``code`` says which
    kind (``denied``, ``invalid_job``, ``unknown_job``, ``bad_state``, ``bad_request``,
    ``server_error``) and ``reason`` why.

Errors from :mod:`transport` and :mod:`security` keep their own trees; the runtime lets them through
unchanged so that callers can tell a broken connection from a bad job.

Every error survives ``pickle`` (a service that runs flrt in worker processes gets it back whole):
its message and its fields are restored as they were, without calling its constructor (see
:meth:`FlrtError.__reduce__`).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

__all__ = [
    "AdminError",
    "AggregationError",
    "AggregatorStateError",
    "CheckpointError",
    "ConfigError",
    "DatasetError",
    "FilterError",
    "FlrtError",
    "IncompatibleWeightsError",
    "JobError",
    "JobRecordError",
    "JobStateError",
    "ModelFileError",
    "NodeProtocolError",
    "QuorumError",
    "RoundFailedError",
    "TrainerError",
    "TrainerLoadError",
    "TrainerOutputError",
    "TrainingAbortedError",
    "UpdateError",
    "WorkflowError",
    "WorkflowStalledError",
    "WorkspaceInUseError",
]


class FlrtError(Exception):
    """Root of every error raised by :mod:`flrt`."""

    def __reduce__(self) -> tuple[Any, ...]:
        # Exception's own reduction calls the class with ``args`` (the message), which a
        # constructor with other parameters refuses: make the error without calling it, then
        # restore ``args`` and the fields as state (BaseException.__setstate__ sets each).
        return type(self).__new__, (type(self),), {**self.__dict__, "args": self.args}


class ConfigError(FlrtError, ValueError):
    """A configuration file or value is wrong.

    ``path`` is the file (if any), ``key`` the dotted key inside it, ``expected`` what would have been
    accepted.
    """

    def __init__(
        self, reason: str, *, path: Path | str | None = None, key: str | None = None
    ) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.key = key
        where = ""
        if self.path is not None:
            where += f"{self.path}"
        if key is not None:
            where += f"{': ' if where else ''}{key}"
        super().__init__(f"{where}: {reason}" if where else reason)


class WorkspaceInUseError(ConfigError):
    """Another node holds ``workspace``; ``pid`` is its process id (``None``: not known)."""

    def __init__(self, workspace: Path, pid: int | None) -> None:
        self.workspace = workspace
        self.pid = pid
        if pid is None:
            holder = "another flrt node"
        elif pid == os.getpid():
            holder = f"another flrt node of this process (PID {pid})"
        else:
            holder = f"another flrt node (PID {pid})"
        super().__init__(
            f"the workspace {workspace} is in use by {holder}: stop it, or give this node"
            " another workspace"
        )


class ModelFileError(FlrtError, ValueError):
    """A model file or encoded model is malformed (or could not be written).

    ``reason`` says what is wrong, ``path`` is the file (``None`` for bytes in memory) and ``tensor``
    the tensor concerned (``None`` when the problem is in the framing or the header).
    """

    def __init__(
        self, reason: str, *, path: Path | str | None = None, tensor: str | None = None
    ) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        self.tensor = tensor
        where = [str(self.path)] if self.path is not None else []
        if tensor is not None:
            where.append(f"tensor {tensor!r}")
        super().__init__(f"{', '.join(where)}: {reason}" if where else reason)


class IncompatibleWeightsError(FlrtError, ValueError):
    """Two models differ in their names, dtypes or shapes.

    ``tensor`` is the first name (in sorted order) that differs, ``expected`` and ``got`` describe it
    on each side (``"missing"`` when one side lacks it).
    """

    def __init__(self, tensor: str, *, expected: str, got: str) -> None:
        self.tensor = tensor
        self.expected = expected
        self.got = got
        super().__init__(f"tensor {tensor!r}: expected {expected}, got {got}")


class TrainerError(FlrtError):
    """A site's trainer could not be used. ``spec`` is the ``module:object`` it was loaded from."""

    def __init__(self, reason: str, *, spec: str | None = None) -> None:
        self.reason = reason
        self.spec = spec
        super().__init__(f"trainer {spec}: {reason}" if spec is not None else reason)


class TrainerLoadError(TrainerError):
    """The trainer spec is malformed, its module or attribute is missing, the object is not a trainer,
    or the trainer refused its arguments."""


class TrainerOutputError(TrainerError):
    """A trainer returned a value of the wrong type (``method`` names the method that did)."""

    def __init__(self, reason: str, *, method: str, spec: str | None = None) -> None:
        self.method = method
        super().__init__(f"{method}() {reason}", spec=spec)


class TrainingAbortedError(TrainerError):
    """A trainer stopped early because its site context's abort check said so."""


class DatasetError(FlrtError, ValueError):
    """A data set is missing or malformed, or cannot be split as asked."""


# ------------------------------------------------------------------ jobs, aggregation, workflows


class JobError(ConfigError):
    """A job definition (``job.toml``) is wrong: ``path`` is the file, ``key`` the dotted key."""


class JobRecordError(ConfigError):
    """A stored job's record (``record.json``: its status and history) cannot be read: ``path`` is
    the file. The server leaves the file as it is, runs the job no further and says so; the job
    resumes once the record is mended (or the folder removed) and the server restarts."""


class JobStateError(FlrtError, RuntimeError):
    """A job was asked to move from ``current`` to ``requested``, which the job life cycle forbids."""

    def __init__(self, job_id: str, *, current: str, requested: str) -> None:
        self.job_id = job_id
        self.current = current
        self.requested = requested
        super().__init__(f"job {job_id}: cannot go from {current} to {requested}")


class AggregationError(FlrtError):
    """Updates could not be aggregated: ``reason`` says why."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


class UpdateError(AggregationError, ValueError):
    """A site's update does not fit the global model (the peer sent something bad).

    ``site`` sent it; ``variable`` is the array concerned (``None`` when the update as a whole is
    wrong).
    """

    def __init__(self, reason: str, *, site: str, variable: str | None = None) -> None:
        self.site = site
        self.variable = variable
        where = f"site {site!r}" + (f", variable {variable!r}" if variable is not None else "")
        super().__init__(f"{where}: {reason}")
        self.reason = reason


class AggregatorStateError(AggregationError, RuntimeError):
    """An aggregator was called out of order (``accept`` before ``open``, ``finish`` twice...)."""


class WorkflowError(FlrtError):
    """A workflow could not complete."""


class RoundFailedError(WorkflowError):
    """Round ``round`` could not reach its quorum, or ran out of time; ``reason`` says which."""

    def __init__(self, round: int, reason: str) -> None:
        self.round = round
        self.reason = reason
        super().__init__(f"round {round} failed: {reason}")


class QuorumError(WorkflowError, RuntimeError):
    """A round's quorum state machine was misused (for example, sites asked after it closed)."""


class WorkflowStalledError(WorkflowError, RuntimeError):
    """An in-process controller found that nothing can happen any more while a workflow waits."""


class CheckpointError(FlrtError):
    """A checkpoint is missing, incomplete or corrupt. ``path`` is the file or directory."""

    def __init__(self, reason: str, *, path: Path | str | None = None) -> None:
        self.reason = reason
        self.path = Path(path) if path is not None else None
        super().__init__(f"{self.path}: {reason}" if self.path is not None else reason)


class FilterError(FlrtError):
    """Filter ``filter`` refused a task or a result at run time."""

    def __init__(self, reason: str, *, filter: str) -> None:
        self.reason = reason
        self.filter = filter
        super().__init__(f"filter {filter}: {reason}")


# ------------------------------------------------------------------ nodes and the admin console


class NodeProtocolError(FlrtError):
    """Peer ``peer`` sent an flrt message this node cannot accept; ``reason`` says what was wrong."""

    def __init__(self, reason: str, *, peer: str | None = None) -> None:
        self.reason = reason
        self.peer = peer
        super().__init__(f"message from {peer}: {reason}" if peer is not None else reason)


class AdminError(FlrtError):
    """An admin command was refused or failed at the server.

    ``command`` is the command, ``code`` the kind of failure (``denied``: the role may not do this;
    ``invalid_job``: the job file was refused, ``key`` names the dotted key; ``unknown_job``;
    ``bad_state``: the job cannot do that now; ``bad_request``; ``server_error``: the server could
    not do it, its file system failed (a full disk), and its log has the details), ``reason`` the
    server's explanation.
    """

    def __init__(self, reason: str, *, command: str, code: str, key: str | None = None) -> None:
        self.reason = reason
        self.command = command
        self.code = code
        self.key = key
        super().__init__(f"{command}: {reason}")
