"""Peer admission after the handshake: one test per refusal, and the happy path from real kits."""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from security.admission import admit_peer
from security.crl import RevokedCertificate, build_crl, load_crl
from security.errors import (
    AdmissionError,
    AdmissionReason,
    CertificateError,
    CertificateExpiredError,
    CertificateNotYetValidError,
    CertificateRevokedError,
    KitError,
    MalformedPeerCertificateError,
    RoleMismatchError,
    UnknownIssuerError,
    UnknownParticipantError,
)
from security.kit import load_kit
from security.pki import ADMIN_ROLES, CertificateAuthority, Credential, Identity, Role
from security.tls import client_ssl_context_from_kit, server_ssl_context_from_kit
from tests.security._handshake import handshake

NOW = dt.datetime.now(dt.UTC)
SITE_PORT = {Role.SITE}


def _der(credential: Credential) -> bytes:
    return credential.certificate.public_bytes(serialization.Encoding.DER)


@pytest.fixture(scope="module")
def registry() -> dict[str, Role | Identity]:
    return {
        "site-a": Role.SITE,
        "lead@example.org": Role.PROJECT_ADMIN,
        "site-b": Identity("site-b", "Hospital B", Role.SITE),
    }


def _admit(
    ca: CertificateAuthority,
    credential: Credential,
    registry: Mapping[str, Role | Identity],
    *,
    crl: x509.CertificateRevocationList | None = None,
    now: dt.datetime = NOW,
    expected: set[Role] | frozenset[Role] | None = None,
) -> Identity:
    return admit_peer(
        _der(credential),
        ca=ca.certificate,
        crl=crl,
        participants=registry,
        now=now,
        expected_roles=expected,
    )


def test_registered_site_is_admitted(
    ca: CertificateAuthority, site_credential: Credential, registry: dict[str, Role | Identity]
) -> None:
    identity = _admit(ca, site_credential, registry, expected=SITE_PORT)
    assert identity == Identity("site-a", "Hospital A", Role.SITE)


def _refusal(
    exc_type: type[AdmissionError], reason: AdmissionReason, call: object
) -> AdmissionError:
    assert callable(call)
    with pytest.raises(exc_type) as exc:
        call()
    assert exc.value.reason is reason
    return exc.value


def test_another_ca(
    ca: CertificateAuthority, other_ca: CertificateAuthority, registry: dict[str, Role | Identity]
) -> None:
    stranger = other_ca.issue(Identity("site-a", "Hospital A", Role.SITE))
    error = _refusal(
        UnknownIssuerError,
        AdmissionReason.UNKNOWN_ISSUER,
        lambda: _admit(ca, stranger, registry),
    )
    assert error.subject is not None
    assert "site-a" in error.subject


def test_expired(
    ca: CertificateAuthority, site_credential: Credential, registry: dict[str, Role | Identity]
) -> None:
    later = site_credential.certificate.not_valid_after_utc + dt.timedelta(seconds=1)
    _refusal(
        CertificateExpiredError,
        AdmissionReason.EXPIRED,
        lambda: _admit(ca, site_credential, registry, now=later),
    )


def test_not_yet_valid(ca: CertificateAuthority, registry: dict[str, Role | Identity]) -> None:
    future = ca.issue(
        Identity("site-a", "Hospital A", Role.SITE), not_before=NOW + dt.timedelta(days=1)
    )
    _refusal(
        CertificateNotYetValidError,
        AdmissionReason.NOT_YET_VALID,
        lambda: _admit(ca, future, registry),
    )


def test_revoked(
    ca: CertificateAuthority,
    site_credential: Credential,
    admin_credential: Credential,
    registry: dict[str, Role | Identity],
) -> None:
    serial = site_credential.certificate.serial_number
    crl = load_crl(
        build_crl(ca, [RevokedCertificate(serial, NOW)], number=2).public_bytes(
            serialization.Encoding.PEM
        ),
        ca.certificate,
    )
    _refusal(
        CertificateRevokedError,
        AdmissionReason.REVOKED,
        lambda: _admit(ca, site_credential, registry, crl=crl),
    )
    # Others on the same list are not affected.
    assert _admit(ca, admin_credential, registry, crl=crl).role is Role.PROJECT_ADMIN


def test_unknown_name(ca: CertificateAuthority, registry: dict[str, Role | Identity]) -> None:
    unknown = ca.issue(Identity("site-z", "Hospital Z", Role.SITE))
    _refusal(
        UnknownParticipantError,
        AdmissionReason.UNKNOWN_PARTICIPANT,
        lambda: _admit(ca, unknown, registry),
    )


def test_organisation_must_match_a_registered_identity(
    ca: CertificateAuthority, registry: dict[str, Role | Identity]
) -> None:
    wrong_org = ca.issue(Identity("site-b", "Hospital A", Role.SITE))
    _refusal(
        UnknownParticipantError,
        AdmissionReason.UNKNOWN_PARTICIPANT,
        lambda: _admit(ca, wrong_org, registry),
    )
    right = ca.issue(Identity("site-b", "Hospital B", Role.SITE))
    assert _admit(ca, right, registry).name == "site-b"


def test_site_certificate_on_the_admin_endpoint(
    ca: CertificateAuthority, site_credential: Credential, registry: dict[str, Role | Identity]
) -> None:
    error = _refusal(
        RoleMismatchError,
        AdmissionReason.ROLE_MISMATCH,
        lambda: _admit(ca, site_credential, registry, expected=ADMIN_ROLES),
    )
    assert "site is not accepted" in str(error)


def test_admin_certificate_on_the_site_endpoint(
    ca: CertificateAuthority, admin_credential: Credential, registry: dict[str, Role | Identity]
) -> None:
    _refusal(
        RoleMismatchError,
        AdmissionReason.ROLE_MISMATCH,
        lambda: _admit(ca, admin_credential, registry, expected=SITE_PORT),
    )
    assert _admit(ca, admin_credential, registry, expected=ADMIN_ROLES).name == "lead@example.org"


@pytest.mark.parametrize(
    ("issued_as", "registered_as"), [(Role.SITE, Role.MEMBER), (Role.LEAD, Role.SITE)]
)
def test_role_differs_from_the_registry(
    ca: CertificateAuthority, issued_as: Role, registered_as: Role
) -> None:
    credential = ca.issue(Identity("someone", "Hospital A", issued_as))
    error = _refusal(
        RoleMismatchError,
        AdmissionReason.ROLE_MISMATCH,
        lambda: _admit(ca, credential, {"someone": registered_as}),
    )
    assert f"registered 'someone' as {registered_as.value}" in str(error)


def test_malformed(ca: CertificateAuthority) -> None:
    with pytest.raises(MalformedPeerCertificateError):
        admit_peer(b"\x30\x00", ca=ca.certificate, crl=None, participants={}, now=NOW)
    with pytest.raises(ValueError, match="timezone"):
        admit_peer(b"", ca=ca.certificate, crl=None, participants={}, now=dt.datetime(2030, 1, 1))


def test_crl_of_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    forged = build_crl(other_ca, [], number=1).public_bytes(serialization.Encoding.PEM)
    with pytest.raises(CertificateError, match="not by the project CA"):
        load_crl(forged, ca.certificate)
    with pytest.raises(CertificateError, match="not a certificate revocation list"):
        load_crl(b"garbage", ca.certificate)


def test_handshake_and_admission_from_provisioned_kits(workspace: Path) -> None:
    """What the bus will do: TLS from kits, then admit the peer against the server kit's lists."""
    server = load_kit(workspace / "kits" / "server")
    site = load_kit(workspace / "kits" / "site-b")
    admin = load_kit(workspace / "kits" / "viewer@hospital-b.example")
    assert server.participants is not None
    for kit, expected in ((site, SITE_PORT), (admin, ADMIN_ROLES)):
        result = handshake(server_ssl_context_from_kit(server), client_ssl_context_from_kit(kit))
        assert result.server_peer_der is not None
        identity = admit_peer(
            result.server_peer_der,
            ca=server.ca_certificate,
            crl=server.crl,
            participants=server.participants,
            now=dt.datetime.now(dt.UTC),
            expected_roles=expected,
        )
        assert identity == kit.identity


def test_context_helpers_check_the_role(workspace: Path) -> None:
    with pytest.raises(KitError, match="cannot run the server"):
        server_ssl_context_from_kit(load_kit(workspace / "kits" / "site-a"))
    with pytest.raises(KitError, match="cannot dial"):
        client_ssl_context_from_kit(load_kit(workspace / "kits" / "server"))
