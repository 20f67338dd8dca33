"""flrt: a federated-learning runtime for hospitals.

The runtime composes :mod:`transport` (the mutual-TLS message bus) and :mod:`security` (PKI,
provisioning, signing, audit) into server and site nodes that train models together without moving
patient data.

Importing the package imports nothing else: ``__version__`` and the error roots are looked up when
first asked for, so that ``python -m flrt`` reaches its Ctrl-C handler before any import of weight
(``importlib.metadata`` alone took most of the first 50 ms).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flrt.errors import ConfigError, FlrtError

    __version__: str

__all__ = ["ConfigError", "FlrtError", "__version__"]


def __getattr__(name: str) -> Any:
    if name == "__version__":
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("flrt")
        except PackageNotFoundError:  # pragma: no cover - a source tree without install
            found = "0.0.0+unknown"
        globals()["__version__"] = found
        return found
    if name in ("ConfigError", "FlrtError"):
        from flrt import errors

        value = getattr(errors, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'flrt' has no attribute {name!r}")
