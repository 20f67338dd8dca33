"""security: identity, trust and evidence for flrt.

Pure functions and files: certificates, startup kits, signatures, policies and the audit chain. It
knows nothing of federated learning or of sockets, and imports neither :mod:`flrt` nor
:mod:`transport`.
"""

from __future__ import annotations

from security.errors import CertificateError, SecurityError

__all__ = ["CertificateError", "SecurityError"]
