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
