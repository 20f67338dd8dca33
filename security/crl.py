"""Revocation: the project CA's X.509 certificate revocation list.

``flrt provision revoke NAME`` adds the participant's certificate serial to the list, increases the
CRL number and signs the list with the CA key. The CRL is a separate file, outside every kit's
signed manifest, so it can be replaced without re-signing a kit; it carries its own CA signature, so
a forged or edited list is refused (:func:`load_crl`). The server reads it from its kit
(``trust/crl.pem``) at start and hands it to :func:`security.admission.admit_peer`.

``next_update`` is set (X.509 requires it) but not enforced: in an offline project a stale list is
still the newest one there is, and refusing every peer because a date passed would stop the study.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from security.errors import CertificateError
from security.pki import CertificateAuthority

__all__ = ["RevokedCertificate", "build_crl", "crl_pem", "load_crl", "revoked_serials"]

_NEXT_UPDATE = dt.timedelta(days=365)


@dataclass(frozen=True, slots=True)
class RevokedCertificate:
    """One entry of the list: a certificate serial number, when it was revoked, and why."""

    serial_number: int
    revoked_at: dt.datetime
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified


def build_crl(
    ca: CertificateAuthority,
    revoked: Iterable[RevokedCertificate],
    *,
    number: int,
    now: dt.datetime | None = None,
) -> x509.CertificateRevocationList:
    """A CRL signed by ``ca`` listing ``revoked``; ``number`` must grow with every new list."""
    if number < 1:
        raise ValueError("the CRL number starts at 1")
    now = now or dt.datetime.now(dt.UTC)
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.certificate.subject)
        .last_update(now)
        .next_update(now + _NEXT_UPDATE)
        .add_extension(x509.CRLNumber(number), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False
        )
    )
    for entry in sorted(revoked, key=lambda e: e.serial_number):
        item = (
            x509.RevokedCertificateBuilder()
            .serial_number(entry.serial_number)
            .revocation_date(entry.revoked_at)
        )
        if entry.reason is not x509.ReasonFlags.unspecified:
            item = item.add_extension(x509.CRLReason(entry.reason), critical=False)
        builder = builder.add_revoked_certificate(item.build())
    return builder.sign(ca.private_key, hashes.SHA256())


def crl_pem(crl: x509.CertificateRevocationList) -> bytes:
    return crl.public_bytes(serialization.Encoding.PEM)


def load_crl(data: bytes, ca_certificate: x509.Certificate) -> x509.CertificateRevocationList:
    """Parse a PEM (or DER) CRL and check that ``ca_certificate``'s key signed it.

    Raises :class:`CertificateError` if it cannot be parsed, names another issuer, or its signature
    does not verify.
    """
    try:
        crl = (
            x509.load_pem_x509_crl(data)
            if data.lstrip().startswith(b"-----")
            else x509.load_der_x509_crl(data)
        )
    except ValueError as exc:
        raise CertificateError("not a certificate revocation list") from exc
    if crl.issuer != ca_certificate.subject:
        raise CertificateError(
            f"revocation list issued by {crl.issuer.rfc4514_string()}, not by the project CA"
        )
    public_key = ca_certificate.public_key()
    if not crl.is_signature_valid(public_key):  # type: ignore[arg-type]
        raise CertificateError("revocation list is not signed by the project CA")
    return crl


def revoked_serials(crl: x509.CertificateRevocationList) -> frozenset[int]:
    return frozenset(entry.serial_number for entry in crl)
