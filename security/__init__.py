"""security: identity, trust and evidence for flrt.

Pure functions and files: certificates, startup kits, signatures, policies and the audit chain. It
knows nothing of federated learning or of sockets, and imports neither :mod:`flrt` nor
:mod:`transport`.

- :mod:`security.pki`: the project CA (ECDSA P-256) and identities in certificates.
- :mod:`security.tls`: mutual-TLS contexts from a credential or a kit.
- :mod:`security.project`: ``project.toml``, read strictly.
- :mod:`security.provision`: the workspace, its registry, and kits for new participants; revocation
  (its functions are not re-exported here, where ``provision`` would hide the module).
- :mod:`security.kit`: verifying a startup kit. :mod:`security.seal`: password-sealed kits.
- :mod:`security.crl`: the CA-signed revocation list. :mod:`security.admission`: admitting a peer.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from security.admission import admit_peer
    from security.errors import (
        AdmissionError,
        AdmissionReason,
        CertificateError,
        KitError,
        KitTamperedError,
        KitValidityError,
        ProjectFileError,
        SealError,
        SecurityError,
        WorkspaceError,
    )
    from security.kit import Kit, NodeConfig, load_kit
    from security.pki import (
        ADMIN_ROLES,
        CertificateAuthority,
        Credential,
        Identity,
        Role,
        create_ca,
        identity_from_certificate,
    )
    from security.project import Project, load_project, parse_project
    from security.seal import open_sealed_kit, seal_kit
    from security.tls import (
        client_ssl_context,
        client_ssl_context_from_kit,
        server_ssl_context,
        server_ssl_context_from_kit,
    )

#: Where each exported name lives: imported on first use (PEP 562), so that a program using one
#: module (``flrt``'s durable writes use :mod:`security._atomic`) does not load them all, and
#: :mod:`cryptography` with them.
_EXPORTS = {
    "ADMIN_ROLES": "security.pki",
    "AdmissionError": "security.errors",
    "AdmissionReason": "security.errors",
    "CertificateAuthority": "security.pki",
    "CertificateError": "security.errors",
    "Credential": "security.pki",
    "Identity": "security.pki",
    "Kit": "security.kit",
    "KitError": "security.errors",
    "KitTamperedError": "security.errors",
    "KitValidityError": "security.errors",
    "NodeConfig": "security.kit",
    "Project": "security.project",
    "ProjectFileError": "security.errors",
    "Role": "security.pki",
    "SealError": "security.errors",
    "SecurityError": "security.errors",
    "WorkspaceError": "security.errors",
    "admit_peer": "security.admission",
    "client_ssl_context": "security.tls",
    "client_ssl_context_from_kit": "security.tls",
    "create_ca": "security.pki",
    "identity_from_certificate": "security.pki",
    "load_kit": "security.kit",
    "load_project": "security.project",
    "open_sealed_kit": "security.seal",
    "parse_project": "security.project",
    "seal_kit": "security.seal",
    "server_ssl_context": "security.tls",
    "server_ssl_context_from_kit": "security.tls",
}

__all__ = [
    "ADMIN_ROLES",
    "AdmissionError",
    "AdmissionReason",
    "CertificateAuthority",
    "CertificateError",
    "Credential",
    "Identity",
    "Kit",
    "KitError",
    "KitTamperedError",
    "KitValidityError",
    "NodeConfig",
    "Project",
    "ProjectFileError",
    "Role",
    "SealError",
    "SecurityError",
    "WorkspaceError",
    "admit_peer",
    "client_ssl_context",
    "client_ssl_context_from_kit",
    "create_ca",
    "identity_from_certificate",
    "load_kit",
    "load_project",
    "open_sealed_kit",
    "parse_project",
    "seal_kit",
    "server_ssl_context",
    "server_ssl_context_from_kit",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'security' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
