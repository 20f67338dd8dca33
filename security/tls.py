"""TLS contexts for the bus, built from a participant's credential and the project CA.

The server requires a client certificate and verifies it against the project CA only (never the
system trust store); clients verify the server against the project CA and check that the server's
certificate names the host they dialled. TLS 1.3 is the default floor; 1.2 may be allowed, in which
case only ECDHE with AEAD ciphers is offered. ALPN is left to the transport layer.

:mod:`ssl` can only load a certificate chain from files, so the key is written to a fresh private
directory (mode 0700, file mode 0600, on ``/dev/shm`` when there is one so it never reaches a disk)
and removed as soon as OpenSSL has read it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import ssl
import tempfile
from collections.abc import Iterator
from pathlib import Path

from security.errors import CertificateError, KitError
from security.kit import Kit
from security.pki import Credential, Role

__all__ = [
    "client_ssl_context",
    "client_ssl_context_from_kit",
    "server_ssl_context",
    "server_ssl_context_from_kit",
]

_TLS12_CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20"


@contextlib.contextmanager
def _private_files(credential: Credential) -> Iterator[tuple[str, str]]:
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) else None
    directory = tempfile.mkdtemp(prefix="flrt-tls-", dir=base)  # mode 0700
    try:
        paths = []
        for name, data in (("cert.pem", credential.cert_pem), ("key.pem", credential.key_pem)):
            path = os.path.join(directory, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            paths.append(path)
        yield paths[0], paths[1]
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def _base_context(
    protocol: int, credential: Credential, ca_pem: bytes, minimum_version: ssl.TLSVersion
) -> ssl.SSLContext:
    if minimum_version < ssl.TLSVersion.TLSv1_2:
        raise ValueError("TLS versions below 1.2 are not supported")
    context = ssl.SSLContext(protocol)
    context.minimum_version = minimum_version
    context.set_ciphers(_TLS12_CIPHERS)  # TLS 1.3 suites are separate and all AEAD
    try:
        context.load_verify_locations(cadata=ca_pem.decode("ascii"))
    except (ssl.SSLError, ValueError, UnicodeDecodeError) as exc:
        raise CertificateError("the project CA certificate cannot be loaded") from exc
    with _private_files(credential) as (cert_path, key_path):
        try:
            context.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise CertificateError(
                "the certificate and key cannot be loaded, or do not belong together"
            ) from exc
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def server_ssl_context(
    credential: Credential,
    ca_pem: bytes,
    *,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A server-side context: presents ``credential``, requires a client certificate from ``ca_pem``.

    Verification proves only that the client holds a certificate of this project; whether it may
    join (revocation, registry, role) is decided after the handshake by
    :func:`security.admission.admit_peer`. Raises :class:`CertificateError` if the credential or the
    CA cannot be loaded.
    """
    return _base_context(ssl.PROTOCOL_TLS_SERVER, credential, ca_pem, minimum_version)


def client_ssl_context(
    credential: Credential,
    ca_pem: bytes,
    *,
    minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3,
) -> ssl.SSLContext:
    """A client-side context: presents ``credential``, verifies the server against ``ca_pem`` only.

    ``check_hostname`` is on: the server's certificate must name the host passed as
    ``server_hostname`` when wrapping. Raises :class:`CertificateError` if the credential or the CA
    cannot be loaded.
    """
    context = _base_context(ssl.PROTOCOL_TLS_CLIENT, credential, ca_pem, minimum_version)
    context.check_hostname = True
    return context


def server_ssl_context_from_kit(
    kit: Kit, *, minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> ssl.SSLContext:
    """:func:`server_ssl_context` from a verified server kit; raises :class:`KitError` for another role."""
    if kit.identity.role is not Role.SERVER:
        raise KitError(kit.path, f"a {kit.identity.role.value} kit cannot run the server")
    return server_ssl_context(kit.credential, kit.ca_pem, minimum_version=minimum_version)


def client_ssl_context_from_kit(
    kit: Kit, *, minimum_version: ssl.TLSVersion = ssl.TLSVersion.TLSv1_3
) -> ssl.SSLContext:
    """:func:`client_ssl_context` from a verified site or admin kit; raises :class:`KitError` for the server's."""
    if kit.identity.role is Role.SERVER:
        raise KitError(kit.path, "the server kit cannot dial the server")
    return client_ssl_context(kit.credential, kit.ca_pem, minimum_version=minimum_version)
