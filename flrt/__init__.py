"""flrt: a federated-learning runtime for hospitals.

The runtime composes :mod:`transport` (the mutual-TLS message bus) and :mod:`security` (PKI,
provisioning, signing, audit) into server and site nodes that train models together without moving
patient data.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

from flrt.errors import ConfigError, FlrtError

try:
    __version__ = version("flrt")
except PackageNotFoundError:  # pragma: no cover - running from a source tree without install
    __version__ = "0.0.0+unknown"

__all__ = ["ConfigError", "FlrtError", "__version__"]
