"""The project PKI: identities in certificates, leaf extensions, CA storage, and independent parses."""

from __future__ import annotations

import datetime as dt
import shutil
import subprocess
from pathlib import Path

import pytest
import trustme
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from security.errors import CertificateError
from security.pki import (
    CertificateAuthority,
    Credential,
    Identity,
    Role,
    create_ca,
    identity_from_certificate,
)

OPENSSL = shutil.which("openssl")
needs_openssl = pytest.mark.skipif(OPENSSL is None, reason="the openssl command is not installed")


@pytest.mark.parametrize("role", list(Role))
def test_identity_round_trips_through_the_certificate(ca: CertificateAuthority, role: Role) -> None:
    identity = Identity("alice@example.org", "Hospital Ä", role)
    hosts = ("fl.example.org",) if role is Role.SERVER else ()
    credential = ca.issue(identity, hosts=hosts, valid_days=2)
    assert identity_from_certificate(credential.certificate) == identity
    der = credential.certificate.public_bytes(serialization.Encoding.DER)
    assert identity_from_certificate(der) == identity
    assert credential.identity == identity


def test_server_certificate_names_every_host_and_is_server_only(
    ca: CertificateAuthority, server_credential: Credential
) -> None:
    cert = server_credential.certificate
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["fl.example.org", "localhost"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["127.0.0.1", "::1"]
    eku = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert list(eku) == [ExtendedKeyUsageOID.SERVER_AUTH]


def test_leaf_extensions(ca: CertificateAuthority, site_credential: Credential) -> None:
    cert = site_credential.certificate
    ext = cert.extensions
    basic = ext.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca is False
    usage = ext.get_extension_for_class(x509.KeyUsage)
    assert usage.critical
    assert usage.value.digital_signature
    assert not usage.value.key_cert_sign
    assert list(ext.get_extension_for_class(x509.ExtendedKeyUsage).value) == [
        ExtendedKeyUsageOID.CLIENT_AUTH
    ]
    ski = ext.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert ski == x509.SubjectKeyIdentifier.from_public_key(cert.public_key())
    aki = ext.get_extension_for_class(x509.AuthorityKeyIdentifier).value
    ca_ski = ca.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    assert aki.key_identifier == ca_ski.digest
    with pytest.raises(x509.ExtensionNotFound):
        ext.get_extension_for_class(x509.SubjectAlternativeName)
    key = site_credential.private_key
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.curve.name == "secp256r1"
    assert ca.issued(cert)
    assert cert.issuer == ca.certificate.subject


def test_ca_certificate(ca: CertificateAuthority) -> None:
    basic = ca.certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    assert basic.critical
    assert basic.value.ca
    assert basic.value.path_length == 0
    usage = ca.certificate.extensions.get_extension_for_class(x509.KeyUsage).value
    assert usage.key_cert_sign
    assert usage.crl_sign
    assert ca.name == "flrt test project CA"


def test_another_ca_did_not_issue(
    other_ca: CertificateAuthority, site_credential: Credential
) -> None:
    assert not other_ca.issued(site_credential.certificate)


def test_validity_window(ca: CertificateAuthority) -> None:
    start = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)
    cred = ca.issue(Identity("s", "o", Role.SITE), valid_days=10, not_before=start)
    assert cred.certificate.not_valid_before_utc == start
    assert cred.certificate.not_valid_after_utc == start + dt.timedelta(days=10)


def test_leaf_never_outlives_its_ca() -> None:
    short = create_ca("short-lived", valid_days=2)
    cred = short.issue(Identity("s", "o", Role.SITE), valid_days=365)
    assert cred.certificate.not_valid_after_utc == short.certificate.not_valid_after_utc


def test_bad_issue_arguments(ca: CertificateAuthority) -> None:
    with pytest.raises(CertificateError, match="host name"):
        ca.issue(Identity("server", "o", Role.SERVER))
    with pytest.raises(CertificateError, match="not a host name"):
        ca.issue(Identity("server", "o", Role.SERVER), hosts=["bad host"])
    with pytest.raises(TypeError):
        ca.issue(Identity("server", "o", Role.SERVER), hosts="fl.example.org")
    with pytest.raises(ValueError, match="valid_days"):
        ca.issue(Identity("s", "o", Role.SITE), valid_days=0)
    with pytest.raises(ValueError, match="timezone"):
        ca.issue(Identity("s", "o", Role.SITE), not_before=dt.datetime(2030, 1, 1))
    with pytest.raises(ValueError, match="non-empty"):
        Identity("", "o", Role.SITE)


def test_credential_repr_hides_the_key(site_credential: Credential) -> None:
    text = repr(site_credential)
    assert "redacted" in text
    assert "PRIVATE" not in text


def test_ca_round_trips_through_pem(ca: CertificateAuthority) -> None:
    loaded = CertificateAuthority.from_pem(ca.cert_pem, ca.key_pem)
    assert loaded.certificate == ca.certificate
    cred = loaded.issue(Identity("s", "o", Role.SITE))
    assert ca.issued(cred.certificate)
    encrypted = ca.encrypted_key_pem(b"correct horse")
    assert b"ENCRYPTED" in encrypted
    assert CertificateAuthority.from_pem(ca.cert_pem, encrypted, password=b"correct horse")
    with pytest.raises(CertificateError, match="cannot be read"):
        CertificateAuthority.from_pem(ca.cert_pem, encrypted, password=b"wrong")


def test_ca_refuses_a_key_that_is_not_its_own(
    ca: CertificateAuthority, other_ca: CertificateAuthority
) -> None:
    with pytest.raises(CertificateError, match="does not match"):
        CertificateAuthority.from_pem(ca.cert_pem, other_ca.key_pem)


def test_a_leaf_is_not_a_ca(site_credential: Credential) -> None:
    with pytest.raises(CertificateError, match="not a CA"):
        CertificateAuthority.from_pem(site_credential.cert_pem, site_credential.key_pem)


def test_garbage_is_refused() -> None:
    with pytest.raises(CertificateError, match="DER"):
        identity_from_certificate(b"\x30\x03junk")
    with pytest.raises(CertificateError, match="PEM certificate"):
        _ = Credential(b"nope", b"nope").certificate
    with pytest.raises(CertificateError, match="cannot be read"):
        _ = Credential(b"nope", b"nope").private_key


def _cert_with_subject(
    ca: CertificateAuthority, attributes: list[x509.NameAttribute[str]]
) -> x509.Certificate:
    key = ec.generate_private_key(ec.SECP256R1())
    now = dt.datetime.now(dt.UTC)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attributes))
        .issuer_name(ca.certificate.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(ca.private_key, hashes.SHA256())
    )


CN = x509.NameAttribute(NameOID.COMMON_NAME, "site-a")
O = x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Hospital A")  # noqa: E741
OU = x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "site")


@pytest.mark.parametrize(
    ("attributes", "message"),
    [
        ([O, OU], "no common name"),
        ([CN, OU], "no organisation"),
        ([CN, O], "no role"),
        (
            [CN, O, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "wizard")],
            "unknown role 'wizard'",
        ),
        ([CN, O, OU, x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "server")], "2 role"),
        ([CN, CN, O, OU], "2 common name"),
    ],
)
def test_identity_names_what_is_missing(
    ca: CertificateAuthority, attributes: list[x509.NameAttribute[str]], message: str
) -> None:
    cert = _cert_with_subject(ca, attributes)
    with pytest.raises(CertificateError, match=message) as exc:
        identity_from_certificate(cert)
    assert exc.value.subject is not None


def test_trustme_certificate_is_read_the_same_way() -> None:
    """An independent CA library's certificate with the same subject layout gives the same identity."""
    authority = trustme.CA()
    leaf = authority.issue_cert(
        "site-b.example.org",
        common_name="site-b",
        organization_name="Hospital B",
        organization_unit_name="site",
    )
    cert = x509.load_pem_x509_certificate(leaf.cert_chain_pems[0].bytes())
    assert identity_from_certificate(cert) == Identity("site-b", "Hospital B", Role.SITE)


def _openssl(*args: str) -> subprocess.CompletedProcess[str]:
    assert OPENSSL is not None
    return subprocess.run([OPENSSL, *args], capture_output=True, text=True, check=False, timeout=30)


@needs_openssl
def test_openssl_parses_our_certificates(
    tmp_path: Path,
    ca: CertificateAuthority,
    server_credential: Credential,
    site_credential: Credential,
) -> None:
    (tmp_path / "ca.pem").write_bytes(ca.cert_pem)
    (tmp_path / "server.pem").write_bytes(server_credential.cert_pem)
    (tmp_path / "site.pem").write_bytes(site_credential.cert_pem)
    text = _openssl("x509", "-in", str(tmp_path / "server.pem"), "-text", "-noout")
    assert text.returncode == 0, text.stderr
    out = text.stdout
    assert "OU = server" in out
    assert "CN = server" in out
    assert "O = Lead Hospital" in out
    assert "ASN1 OID: prime256v1" in out
    assert "ecdsa-with-SHA256" in out
    assert "CA:FALSE" in out
    assert "TLS Web Server Authentication" in out
    assert "DNS:fl.example.org" in out
    assert "IP Address:127.0.0.1" in out
    assert "X509v3 Subject Key Identifier" in out
    assert "X509v3 Authority Key Identifier" in out
    ca_text = _openssl("x509", "-in", str(tmp_path / "ca.pem"), "-text", "-noout")
    assert ca_text.returncode == 0
    assert "CA:TRUE, pathlen:0" in ca_text.stdout

    ca_file = str(tmp_path / "ca.pem")
    ok_server = _openssl(
        "verify", "-CAfile", ca_file, "-purpose", "sslserver", str(tmp_path / "server.pem")
    )
    assert ok_server.returncode == 0, ok_server.stdout + ok_server.stderr
    ok_site = _openssl(
        "verify", "-CAfile", ca_file, "-purpose", "sslclient", str(tmp_path / "site.pem")
    )
    assert ok_site.returncode == 0, ok_site.stdout + ok_site.stderr
    # A site certificate cannot be used as the server's.
    bad = _openssl(
        "verify", "-CAfile", ca_file, "-purpose", "sslserver", str(tmp_path / "site.pem")
    )
    assert bad.returncode != 0
