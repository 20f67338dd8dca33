"""TLS contexts from our PKI: mutual authentication over memory BIOs, and every refusal."""

from __future__ import annotations

import ssl

import pytest
import trustme

from security.errors import CertificateError
from security.pki import CertificateAuthority, Credential, Identity, Role, identity_from_certificate
from security.tls import client_ssl_context, server_ssl_context
from tests.security._handshake import handshake


def test_mutual_handshake_succeeds(
    ca: CertificateAuthority, server_credential: Credential, site_credential: Credential
) -> None:
    server = server_ssl_context(server_credential, ca.cert_pem)
    client = client_ssl_context(site_credential, ca.cert_pem)
    result = handshake(server, client)
    assert result.version == "TLSv1.3"
    assert result.server_peer_der is not None
    assert result.client_peer_der is not None
    assert identity_from_certificate(result.server_peer_der) == Identity(
        "site-a", "Hospital A", Role.SITE
    )
    assert identity_from_certificate(result.client_peer_der).role is Role.SERVER


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1"])
def test_every_server_host_is_accepted(
    ca: CertificateAuthority, server_credential: Credential, site_credential: Credential, host: str
) -> None:
    server = server_ssl_context(server_credential, ca.cert_pem)
    client = client_ssl_context(site_credential, ca.cert_pem)
    handshake(server, client, server_hostname=host)


def test_tls12_floor_can_be_allowed(
    ca: CertificateAuthority, server_credential: Credential, site_credential: Credential
) -> None:
    server = server_ssl_context(
        server_credential, ca.cert_pem, minimum_version=ssl.TLSVersion.TLSv1_2
    )
    client = client_ssl_context(
        site_credential, ca.cert_pem, minimum_version=ssl.TLSVersion.TLSv1_2
    )
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    assert handshake(server, client).version == "TLSv1.2"


def test_default_floor_refuses_tls12(
    ca: CertificateAuthority, server_credential: Credential, site_credential: Credential
) -> None:
    server = server_ssl_context(server_credential, ca.cert_pem)
    client = client_ssl_context(
        site_credential, ca.cert_pem, minimum_version=ssl.TLSVersion.TLSv1_2
    )
    client.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        handshake(server, client)


def test_client_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority, server_credential: Credential
) -> None:
    stranger = other_ca.issue(Identity("site-a", "Hospital A", Role.SITE))
    server = server_ssl_context(server_credential, ca.cert_pem)
    client = client_ssl_context(stranger, ca.cert_pem)
    with pytest.raises(ssl.SSLError, match="certificate"):
        handshake(server, client)


def test_server_from_another_ca_is_refused(
    ca: CertificateAuthority, other_ca: CertificateAuthority, site_credential: Credential
) -> None:
    impostor = other_ca.issue(
        Identity("server", "Lead Hospital", Role.SERVER), hosts=["fl.example.org"]
    )
    server = server_ssl_context(impostor, other_ca.cert_pem)
    client = client_ssl_context(site_credential, ca.cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError):
        handshake(server, client)


def test_wrong_host_name_is_refused(
    ca: CertificateAuthority, server_credential: Credential, site_credential: Credential
) -> None:
    server = server_ssl_context(server_credential, ca.cert_pem)
    client = client_ssl_context(site_credential, ca.cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="mismatch"):
        handshake(server, client, server_hostname="evil.example.org")


def test_site_certificate_cannot_pose_as_server(
    ca: CertificateAuthority, site_credential: Credential
) -> None:
    """Even with the right name in its SAN, a clientAuth-only certificate is not a server's."""
    posing = ca.issue(Identity("server", "Lead Hospital", Role.SITE), hosts=["fl.example.org"])
    server = server_ssl_context(posing, ca.cert_pem)
    client = client_ssl_context(site_credential, ca.cert_pem)
    with pytest.raises(ssl.SSLCertVerificationError, match="purpose"):
        handshake(server, client)


def test_client_without_certificate_is_refused(
    ca: CertificateAuthority, server_credential: Credential
) -> None:
    server = server_ssl_context(server_credential, ca.cert_pem)
    anonymous = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    anonymous.load_verify_locations(cadata=ca.cert_pem.decode())
    with pytest.raises(ssl.SSLError):
        handshake(server, anonymous)


def test_interoperates_with_an_independent_ca_library() -> None:
    """Certificates made by trustme work in our contexts: we build nothing non-standard."""
    authority = trustme.CA()
    server_leaf = authority.issue_cert("fl.example.org", common_name="server")
    client_leaf = authority.issue_cert("site.example.org", common_name="site")

    def credential(leaf: trustme.LeafCert) -> Credential:
        return Credential(leaf.cert_chain_pems[0].bytes(), leaf.private_key_pem.bytes())

    ca_pem = authority.cert_pem.bytes()
    handshake(
        server_ssl_context(credential(server_leaf), ca_pem),
        client_ssl_context(credential(client_leaf), ca_pem),
    )


def test_bad_material_is_a_certificate_error(
    ca: CertificateAuthority, other_ca: CertificateAuthority, site_credential: Credential
) -> None:
    with pytest.raises(CertificateError, match="project CA"):
        server_ssl_context(site_credential, b"not a certificate")
    mismatched = Credential(
        site_credential.cert_pem, other_ca.issue(Identity("x", "y", Role.SITE)).key_pem
    )
    with pytest.raises(CertificateError, match="belong together"):
        client_ssl_context(mismatched, ca.cert_pem)
    with pytest.raises(ValueError, match=r"1\.2"):
        client_ssl_context(site_credential, ca.cert_pem, minimum_version=ssl.TLSVersion.TLSv1_1)
