"""The project's public-key infrastructure: one CA, one ECDSA P-256 key and certificate per participant.

Theory of operation
-------------------
A project has exactly one certificate authority, created offline by ``flrt provision``. It signs one
leaf certificate per participant (the server, each site, each admin). Who a participant *is* lives
in the certificate itself, so a peer's identity is read from the certificate it presented in the
TLS handshake and from nothing else:

=====================  =========================================================================
subject attribute      meaning
=====================  =========================================================================
``CN`` (commonName)    the participant's name, unique in the project (site name, admin e-mail)
``O`` (organization)   the organisation the participant belongs to
``OU`` (org. unit)     the participant's :class:`Role`, exactly one, as its ``value`` string
=====================  =========================================================================

The role is in ``OU`` rather than a private extension so that every tool (``openssl x509 -text``,
browsers, hospital PKI audits) shows it without a plug-in. Exactly one of each is required;
:func:`identity_from_certificate` refuses a certificate with none or several.

Leaf certificates carry what OpenSSL expects of a modern end-entity certificate: ``BasicConstraints``
CA=false (critical), ``KeyUsage`` digitalSignature (critical), ``ExtendedKeyUsage`` serverAuth for
the server and clientAuth for everybody else, subject and authority key identifiers, and, for the
server, a ``SubjectAlternativeName`` with every DNS name and IP address it is reached at. A site
certificate therefore cannot pose as the server: it has neither the server's names nor serverAuth.

Nothing here touches the disk; callers store the PEM bytes (see :mod:`security.provision`).
"""

from __future__ import annotations

import datetime as dt
import enum
import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.errors import CertificateError

__all__ = [
    "ADMIN_ROLES",
    "CertificateAuthority",
    "Credential",
    "Identity",
    "Role",
    "certificate_from_pem",
    "create_ca",
    "identity_from_certificate",
    "issued_by",
    "private_key_from_pem",
]

_CURVE = ec.SECP256R1()
_HASH = hashes.SHA256()
#: Certificates are back-dated by this much so that a peer whose clock is slightly behind accepts them.
_CLOCK_SKEW = dt.timedelta(minutes=5)


class Role(enum.Enum):
    """What a participant is in the project; stored in the certificate's ``OU``.

    The admin roles follow the roles of the Clara/NVFlare white paper (Lead IT, Lead researcher,
    Site IT, Site researcher) as the four levels its authorization framework uses:

    - ``PROJECT_ADMIN``: runs the whole project (Lead IT); every right everywhere.
    - ``ORG_ADMIN``: manages the sites of its own organisation (Site IT).
    - ``LEAD``: submits and operates jobs (Lead researcher, or a site's lead).
    - ``MEMBER``: views status and results (Site researcher).
    """

    SERVER = "server"
    SITE = "site"
    PROJECT_ADMIN = "project_admin"
    ORG_ADMIN = "org_admin"
    LEAD = "lead"
    MEMBER = "member"

    @property
    def is_admin(self) -> bool:
        """True for the four roles of people who use the admin console."""
        return self in ADMIN_ROLES


#: Roles held by people who use the admin console (as opposed to the server and site nodes).
ADMIN_ROLES: frozenset[Role] = frozenset(
    {Role.PROJECT_ADMIN, Role.ORG_ADMIN, Role.LEAD, Role.MEMBER}
)


@dataclass(frozen=True, slots=True)
class Identity:
    """Who a participant is: its unique name, its organisation and its role."""

    name: str
    organisation: str
    role: Role

    def __post_init__(self) -> None:
        if not isinstance(self.role, Role):
            raise TypeError(f"role must be a Role, not {type(self.role).__name__}")
        for field, value in (("name", self.name), ("organisation", self.organisation)):
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"identity {field} must be a non-empty string")

    def __str__(self) -> str:
        return f"{self.name} ({self.role.value}, {self.organisation})"


@dataclass(frozen=True)
class Credential:
    """A participant's certificate and private key, both PEM (the key is unencrypted PKCS#8).

    Treat ``key_pem`` as a secret: never log it or put it in an error message.
    """

    cert_pem: bytes
    key_pem: bytes

    def __repr__(self) -> str:  # keep the key out of reprs, tracebacks and logs
        return f"Credential(cert_pem=<{len(self.cert_pem)} bytes>, key_pem=<redacted>)"

    @property
    def certificate(self) -> x509.Certificate:
        """The parsed certificate; raises :class:`CertificateError` if the PEM is not one."""
        return certificate_from_pem(self.cert_pem)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The parsed private key; raises :class:`CertificateError` if it is not a P-256 key."""
        return private_key_from_pem(self.key_pem)

    @property
    def identity(self) -> Identity:
        """The identity the certificate names."""
        return identity_from_certificate(self.certificate)


def certificate_from_pem(data: bytes) -> x509.Certificate:
    """Parse one PEM certificate; raises :class:`CertificateError` if ``data`` is not one."""
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise CertificateError("not a PEM certificate") from exc


def private_key_from_pem(
    data: bytes, *, password: bytes | None = None
) -> ec.EllipticCurvePrivateKey:
    """Parse a PEM private key, which must be ECDSA P-256.

    Raises :class:`CertificateError` if it cannot be read (wrong password included) or is another kind
    of key. The message never contains key material.
    """
    try:
        key = serialization.load_pem_private_key(data, password=password)
    except (ValueError, TypeError) as exc:
        raise CertificateError("private key cannot be read (not PEM, or wrong password)") from exc
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != _CURVE.name:
        raise CertificateError("private key is not ECDSA P-256")
    return key


def _key_pem(key: ec.EllipticCurvePrivateKey, password: bytes | None = None) -> bytes:
    encryption: serialization.KeySerializationEncryption = (
        serialization.BestAvailableEncryption(password)
        if password
        else serialization.NoEncryption()
    )
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encryption
    )


def _utcnow(now: dt.datetime | None) -> dt.datetime:
    if now is None:
        return dt.datetime.now(dt.UTC)
    if now.tzinfo is None:
        raise ValueError("times must be timezone-aware (use datetime.UTC)")
    return now


def _san_entry(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not host or any(c.isspace() for c in host) or "/" in host:
        raise CertificateError(f"not a host name or IP address: {host!r}")
    return x509.DNSName(host)


def _one_attribute(name: x509.Name, oid: x509.ObjectIdentifier, what: str, subject: str) -> str:
    values = name.get_attributes_for_oid(oid)
    if not values:
        raise CertificateError(f"subject has no {what}", subject=subject)
    if len(values) > 1:
        raise CertificateError(
            f"subject has {len(values)} {what} attributes, expected one", subject=subject
        )
    value = values[0].value
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if not value:
        raise CertificateError(f"subject has an empty {what}", subject=subject)
    return value


def identity_from_certificate(cert: x509.Certificate | bytes) -> Identity:
    """Read the :class:`Identity` a certificate names (``bytes`` are DER, as TLS hands them over).

    This reads; it does not verify. Use :func:`security.admission.admit_peer` to decide whether to
    trust the certificate. Raises :class:`CertificateError` naming what is missing or wrong (no CN,
    no O, no or unknown role in OU, or bytes that are not a DER certificate).
    """
    if isinstance(cert, bytes | bytearray | memoryview):
        try:
            cert = x509.load_der_x509_certificate(bytes(cert))
        except ValueError as exc:
            raise CertificateError("not a DER certificate") from exc
    subject = cert.subject.rfc4514_string()
    name = _one_attribute(cert.subject, NameOID.COMMON_NAME, "common name (CN)", subject)
    organisation = _one_attribute(
        cert.subject, NameOID.ORGANIZATION_NAME, "organisation (O)", subject
    )
    role_text = _one_attribute(cert.subject, NameOID.ORGANIZATIONAL_UNIT_NAME, "role (OU)", subject)
    try:
        role = Role(role_text)
    except ValueError:
        known = ", ".join(r.value for r in Role)
        raise CertificateError(
            f"unknown role {role_text!r} in OU (expected one of {known})", subject=subject
        ) from None
    return Identity(name=name, organisation=organisation, role=role)


class CertificateAuthority:
    """The project CA: its self-signed certificate and its P-256 private key.

    Create one with :func:`create_ca`, or load a stored one with :meth:`from_pem`.
    """

    __slots__ = ("_certificate", "_key")

    def __init__(self, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey) -> None:
        if certificate.public_key() != key.public_key():
            raise CertificateError(
                "CA private key does not match the CA certificate",
                subject=certificate.subject.rfc4514_string(),
            )
        try:
            constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
        except x509.ExtensionNotFound:
            constraints = None
        if constraints is None or not constraints.value.ca:
            raise CertificateError(
                "not a CA certificate (BasicConstraints CA=true missing)",
                subject=certificate.subject.rfc4514_string(),
            )
        self._certificate = certificate
        self._key = key

    def __repr__(self) -> str:
        return f"CertificateAuthority({self._certificate.subject.rfc4514_string()!r})"

    @classmethod
    def from_pem(
        cls, cert_pem: bytes, key_pem: bytes, *, password: bytes | None = None
    ) -> CertificateAuthority:
        """Load a CA from its PEM certificate and PEM key (encrypted with ``password`` if given).

        Raises :class:`CertificateError` if either cannot be read or they do not belong together.
        """
        return cls(certificate_from_pem(cert_pem), private_key_from_pem(key_pem, password=password))

    @property
    def certificate(self) -> x509.Certificate:
        return self._certificate

    @property
    def cert_pem(self) -> bytes:
        return self._certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The CA key as unencrypted PKCS#8 PEM; see :meth:`encrypted_key_pem`."""
        return _key_pem(self._key)

    def encrypted_key_pem(self, password: bytes) -> bytes:
        """The CA key as PKCS#8 PEM encrypted with ``password``."""
        if not password:
            raise ValueError("password must not be empty")
        return _key_pem(self._key, password)

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        """The CA's signing key (for kit manifests and CRLs); never store it outside the CA folder."""
        return self._key

    @property
    def name(self) -> str:
        names = self._certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        value = names[0].value if names else ""
        return value.decode() if isinstance(value, bytes) else value

    def issue(
        self,
        identity: Identity,
        *,
        hosts: Sequence[str] = (),
        valid_days: int = 365,
        not_before: dt.datetime | None = None,
        serial_number: int | None = None,
    ) -> Credential:
        """Create a fresh P-256 key and a certificate for ``identity`` signed by this CA.

        ``hosts`` are the DNS names and IP addresses the participant is reached at (the server's);
        they go into the SubjectAlternativeName. The certificate is valid from ``not_before`` (default
        now, back-dated five minutes for clock skew) for ``valid_days`` days, but never past the CA's
        own expiry. Raises :class:`CertificateError` for a bad host, ``ValueError`` for bad arguments.
        """
        if valid_days < 1:
            raise ValueError("valid_days must be at least 1")
        if isinstance(hosts, str):
            raise TypeError("hosts must be a sequence of host names, not one string")
        if identity.role is Role.SERVER and not hosts:
            raise CertificateError(
                "a server certificate needs at least one host name", subject=identity.name
            )
        start = _utcnow(not_before) if not_before is not None else _utcnow(None) - _CLOCK_SKEW
        end = min(start + dt.timedelta(days=valid_days), self._certificate.not_valid_after_utc)
        if end <= start:
            raise CertificateError("the CA has expired; create a new project CA", subject=self.name)
        key = ec.generate_private_key(_CURVE)
        subject = x509.Name(
            [
                x509.NameAttribute(NameOID.COMMON_NAME, identity.name),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, identity.organisation),
                x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, identity.role.value),
            ]
        )
        usage = (
            ExtendedKeyUsageOID.SERVER_AUTH
            if identity.role is Role.SERVER
            else ExtendedKeyUsageOID.CLIENT_AUTH
        )
        ca_ski = self._certificate.extensions.get_extension_for_class(
            x509.SubjectKeyIdentifier
        ).value
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(self._certificate.subject)
            .public_key(key.public_key())
            .serial_number(
                serial_number if serial_number is not None else x509.random_serial_number()
            )
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski),
                critical=False,
            )
        )
        if hosts:
            builder = builder.add_extension(
                x509.SubjectAlternativeName([_san_entry(h) for h in hosts]), critical=False
            )
        cert = builder.sign(self._key, _HASH)
        return Credential(
            cert_pem=cert.public_bytes(serialization.Encoding.PEM), key_pem=_key_pem(key)
        )

    def issued(self, cert: x509.Certificate) -> bool:
        """True if this CA's key signed ``cert`` (signature and issuer name both match)."""
        return issued_by(cert, self._certificate)


def issued_by(cert: x509.Certificate, ca_certificate: x509.Certificate) -> bool:
    """True if ``ca_certificate``'s key signed ``cert`` and ``cert`` names it as issuer."""
    try:
        cert.verify_directly_issued_by(ca_certificate)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def create_ca(
    common_name: str,
    *,
    valid_days: int = 3650,
    now: dt.datetime | None = None,
    organisation: str | None = None,
) -> CertificateAuthority:
    """Create a new project CA: a fresh P-256 key and a self-signed CA certificate.

    The certificate is valid from ``now`` (default: the current time, back-dated five minutes) for
    ``valid_days`` days; it may sign leaf certificates and CRLs only (path length 0).
    Raises ``ValueError`` for an empty name or a non-positive validity.
    """
    if not common_name.strip():
        raise ValueError("the CA needs a common name")
    if valid_days < 1:
        raise ValueError("valid_days must be at least 1")
    start = _utcnow(now) - _CLOCK_SKEW if now is None else _utcnow(now)
    key = ec.generate_private_key(_CURVE)
    attributes = [x509.NameAttribute(NameOID.COMMON_NAME, common_name)]
    if organisation:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATION_NAME, organisation))
    name = x509.Name(attributes)
    ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=valid_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(ski, critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski), critical=False
        )
        .sign(key, _HASH)
    )
    return CertificateAuthority(cert, key)
