"""Peer admission: the server's decision, after the TLS handshake, whether a peer may join.

The TLS layer has already proved that the peer holds the private key of the certificate it
presented and, with :func:`security.tls.server_ssl_context`, that the project CA issued it. This
pure function then decides the rest from the certificate bytes, the CA, the current revocation list,
the registry of participants and the clock, in a fixed order so that the reported reason is the
most fundamental one: not ours (another CA), not valid at ``now``, revoked, unknown name, wrong role.
It repeats the CA check so that it is also correct behind a TLS terminator or in tests.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Mapping

from cryptography import x509

from security.errors import (
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    MalformedPeerCertificateError,
    RoleMismatchError,
    UnknownIssuerError,
    UnknownParticipantError,
)
from security.pki import Identity, Role, identity_from_certificate, issued_by

__all__ = ["admit_peer"]


def admit_peer(
    cert_der: bytes,
    *,
    ca: x509.Certificate,
    crl: x509.CertificateRevocationList | None,
    participants: Mapping[str, Role | Identity],
    now: dt.datetime,
    expected_roles: Collection[Role] | None = None,
) -> Identity:
    """Return the peer's :class:`Identity` if it may join, else raise an :class:`AdmissionError`.

    ``participants`` maps each registered name to its role, or to its full identity (then the
    organisation must match too); a server kit's :attr:`security.kit.Kit.participants` fits.
    ``expected_roles`` are the roles accepted on this endpoint (for example ``{Role.SITE}`` on the
    site port, :data:`security.pki.ADMIN_ROLES` on the admin port); ``None`` accepts any role.
    ``crl`` must already be verified (:func:`security.crl.load_crl` and :func:`security.kit.load_kit`
    do that).

    Raises, by ``reason``: :class:`MalformedPeerCertificateError`, :class:`UnknownIssuerError`,
    :class:`CertificateExpiredError`, :class:`CertificateNotYetValidError`,
    :class:`CertificateRevokedError`, :class:`UnknownParticipantError`, :class:`RoleMismatchError`.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    try:
        cert = x509.load_der_x509_certificate(bytes(cert_der))
    except ValueError:
        raise MalformedPeerCertificateError("not a DER certificate") from None
    subject = cert.subject.rfc4514_string()
    if not issued_by(cert, ca):
        raise UnknownIssuerError(
            f"issued by {cert.issuer.rfc4514_string()}, not by the project CA", subject=subject
        )
    if now < cert.not_valid_before_utc:
        raise CertificateNotYetValidError(
            f"valid from {cert.not_valid_before_utc.isoformat()}", subject=subject
        )
    if now > cert.not_valid_after_utc:
        raise CertificateExpiredError(
            f"expired {cert.not_valid_after_utc.isoformat()}", subject=subject
        )
    if crl is not None:
        entry = crl.get_revoked_certificate_by_serial_number(cert.serial_number)
        if entry is not None:
            raise CertificateRevokedError(
                f"serial {cert.serial_number:x} revoked {entry.revocation_date_utc.isoformat()}",
                subject=subject,
            )
    try:
        identity = identity_from_certificate(cert)
    except CertificateError as exc:
        raise MalformedPeerCertificateError(exc.reason, subject=subject) from None
    registered = participants.get(identity.name)
    if registered is None:
        raise UnknownParticipantError(
            f"{identity.name!r} is not a participant of this project", subject=subject
        )
    registered_role = registered.role if isinstance(registered, Identity) else registered
    if registered_role is not identity.role:
        raise RoleMismatchError(
            f"certificate says {identity.role.value}, the project registered "
            f"{identity.name!r} as {registered_role.value}",
            subject=subject,
        )
    if isinstance(registered, Identity) and registered.organisation != identity.organisation:
        raise UnknownParticipantError(
            f"certificate says organisation {identity.organisation!r}, the project registered "
            f"{registered.organisation!r}",
            subject=subject,
        )
    if expected_roles is not None and identity.role not in expected_roles:
        accepted = ", ".join(sorted(r.value for r in expected_roles)) or "none"
        raise RoleMismatchError(
            f"role {identity.role.value} is not accepted here (accepted: {accepted})",
            subject=subject,
        )
    return identity
