"""Throw-away certificates for benchmarks, written to a folder so child processes can load them."""

from __future__ import annotations

import ssl
from pathlib import Path

from security.pki import Credential, Identity, Role, create_ca
from security.tls import client_ssl_context, server_ssl_context

__all__ = ["BenchPki"]


class BenchPki:
    """A CA, a server credential for ``localhost``, and any number of site credentials."""

    def __init__(self, folder: Path, sites: int = 1) -> None:
        self.folder = folder
        ca = create_ca("flrt-bench-ca")
        self._write("ca.pem", ca.cert_pem)
        server = ca.issue(Identity("server", "hub", Role.SERVER), hosts=["localhost", "127.0.0.1"])
        self._write_credential("server", server)
        for i in range(1, sites + 1):
            self._write_credential(f"site-{i}", ca.issue(Identity(f"site-{i}", "org", Role.SITE)))

    def _write(self, name: str, data: bytes) -> None:
        path = self.folder / name
        path.write_bytes(data)
        path.chmod(0o600)

    def _write_credential(self, name: str, credential: Credential) -> None:
        self._write(f"{name}.crt", credential.cert_pem)
        self._write(f"{name}.key", credential.key_pem)

    @staticmethod
    def load(folder: Path, name: str) -> tuple[Credential, bytes]:
        credential = Credential(
            (folder / f"{name}.crt").read_bytes(), (folder / f"{name}.key").read_bytes()
        )
        return credential, (folder / "ca.pem").read_bytes()

    @staticmethod
    def server_context(folder: Path) -> ssl.SSLContext:
        return server_ssl_context(*BenchPki.load(folder, "server"))

    @staticmethod
    def client_context(folder: Path, name: str) -> ssl.SSLContext:
        return client_ssl_context(*BenchPki.load(folder, name))
