"""The errors of :mod:`flrt`, one tree under :class:`FlrtError`.

- :class:`FlrtError`: the root; catch it to handle anything the runtime raises.

  - :class:`ConfigError`: a configuration file (project, job, node, policy) is wrong; it names the
    file, the key and what was expected.
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

Errors from :mod:`transport` and :mod:`security` keep their own trees; the runtime lets them through
unchanged so that callers can tell a broken connection from a bad job.
"""

from __future__ import annotations

from pathlib import Path

__all__ = [
    "ConfigError",
    "DatasetError",
    "FlrtError",
    "IncompatibleWeightsError",
    "ModelFileError",
    "TrainerError",
    "TrainerLoadError",
    "TrainerOutputError",
    "TrainingAbortedError",
]


class FlrtError(Exception):
    """Root of every error raised by :mod:`flrt`."""


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
