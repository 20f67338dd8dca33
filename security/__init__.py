"""security: identity, trust and evidence for flrt.

Pure functions and files: certificates, startup kits, signatures, policies and the audit chain. It
knows nothing of federated learning or of sockets, and imports neither :mod:`flrt` nor
:mod:`transport`.
"""

from __future__ import annotations

from security.errors import CertificateError, SecurityError
from security.pki import (
    ADMIN_ROLES,
    CertificateAuthority,
    Credential,
    Identity,
    Role,
    create_ca,
    identity_from_certificate,
)
from security.tls import client_ssl_context, server_ssl_context

__all__ = [
    "ADMIN_ROLES",
    "CertificateAuthority",
    "CertificateError",
    "Credential",
    "Identity",
    "Role",
    "SecurityError",
    "client_ssl_context",
    "create_ca",
    "identity_from_certificate",
    "server_ssl_context",
]
