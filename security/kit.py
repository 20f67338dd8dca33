"""Startup kits: one folder per participant, its signed part verified before anything uses it.

Theory of operation
-------------------
A kit is a folder::

    <kit>/
      startup/            signed by the project CA
        ca.pem            the project CA certificate (the trust anchor)
        cert.pem          this participant's certificate (identity in CN/O/OU, see security.pki)
        key.pem           this participant's private key, mode 0600
        node.toml         project, own name and role, the server's host names and ports
        start.sh          starts the node (or the admin console) from this kit
        manifest.json     {"files": {relative path: SHA-256 hex}, who, when} (canonical JSON)
        manifest.sig      base64 DER ECDSA-SHA256 signature of manifest.json by the CA key
      local/              owned by the site: authorization.toml, privacy.toml (NOT signed)
      trust/              server kits only; each file separately signed by the CA (NOT in the manifest)
        participants.json, participants.sig   who may connect, and in which role
        crl.pem           the CA's revocation list
      README.txt          for the person receiving the kit (NOT signed)

:func:`load_kit` verifies, in this order: the manifest's signature against ``startup/ca.pem`` (and,
when given, that CA's SHA-256 fingerprint, which Lead IT communicates out of band, because a kit
re-signed by another CA is self-consistent); that the files under ``startup/`` are exactly those
of the manifest with the same digests (a change, an addition and a removal are each a
:class:`KitTamperedError` naming the file); that the certificate was issued by the CA, is valid
now, matches the key and names the identity of ``node.toml``; and the signatures of ``trust/``.

``local/`` and ``trust/`` stay outside the manifest on purpose: the site edits its own policies,
and the CA updates the participant list and revocation list without re-signing the kit.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import os
import stat
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from security import _kit_texts, _signed
from security._atomic import atomic_write, fsync_dir
from security.crl import load_crl
from security.errors import CertificateError, KitError, KitTamperedError, KitValidityError
from security.pki import (
    CertificateAuthority,
    Credential,
    Identity,
    Role,
    certificate_from_pem,
    identity_from_certificate,
    issued_by,
)

__all__ = [
    "CA_FILE",
    "CERT_FILE",
    "CRL_FILE",
    "KEY_FILE",
    "LOCAL_DIR",
    "MANIFEST_FILE",
    "NODE_FILE",
    "PARTICIPANTS_FILE",
    "SIGNATURE_FILE",
    "STARTUP_DIR",
    "TRUST_DIR",
    "Kit",
    "NodeConfig",
    "ca_fingerprint",
    "load_kit",
    "participants_document",
    "write_kit",
]

STARTUP_DIR = "startup"
LOCAL_DIR = "local"
TRUST_DIR = "trust"
CA_FILE = "ca.pem"
CERT_FILE = "cert.pem"
KEY_FILE = "key.pem"
NODE_FILE = "node.toml"
START_FILE = "start.sh"
MANIFEST_FILE = "manifest.json"
SIGNATURE_FILE = "manifest.sig"
CRL_FILE = "crl.pem"
PARTICIPANTS_FILE = "participants.json"
PARTICIPANTS_SIGNATURE = "participants.sig"
README_FILE = "README.txt"

_MANIFEST_FORMAT = "flrt-kit-manifest"
_PARTICIPANTS_FORMAT = "flrt-participants"
_VERSION = 1
_MAX_FILE = 64 * 1024 * 1024


def ca_fingerprint(certificate: x509.Certificate) -> str:
    """The SHA-256 fingerprint of a certificate, as ``AB:CD:...`` (what ``openssl x509 -fingerprint -sha256`` prints)."""
    return ":".join(f"{b:02X}" for b in certificate.fingerprint(hashes.SHA256()))


_fingerprint_of = ca_fingerprint  # load_kit's keyword argument shadows the name


def _normalise_fingerprint(text: str) -> str:
    return text.replace(":", "").replace(" ", "").upper().removeprefix("SHA256=")


@dataclass(frozen=True, slots=True)
class NodeConfig:
    """The content of ``startup/node.toml``: who this node is and where the server is."""

    project: str
    name: str
    organisation: str
    role: Role
    server_name: str
    server_hosts: tuple[str, ...]
    port: int
    admin_port: int | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.name, self.organisation, self.role)

    @property
    def connect_port(self) -> int:
        """The port this node dials: the admin port for admins when there is one, else the port."""
        if self.role.is_admin and self.admin_port is not None:
            return self.admin_port
        return self.port

    @property
    def server_addresses(self) -> tuple[tuple[str, int], ...]:
        """Every (host, port) this node may dial, in the order to try them."""
        return tuple((host, self.connect_port) for host in self.server_hosts)

    def to_toml(self) -> bytes:
        t = _kit_texts.toml_string
        hosts = ", ".join(t(h) for h in self.server_hosts)
        lines = [
            f"# flrt node configuration of {self.name!r} ({self.role.value}) in project {self.project!r}.",
            "# Written by `flrt provision` and covered by the kit's signature: do not edit.",
            "# Site-specific settings belong in ../local/.",
            f"format = {_VERSION}",
            "",
            "[node]",
            f"project = {t(self.project)}",
            f"name = {t(self.name)}",
            f"organisation = {t(self.organisation)}",
            f"role = {t(self.role.value)}",
            "",
            "[server]",
            f"name = {t(self.server_name)}",
            f"hosts = [{hosts}]",
            f"port = {self.port}",
        ]
        if self.admin_port is not None:
            lines.append(f"admin_port = {self.admin_port}")
        return ("\n".join(lines) + "\n").encode()

    @classmethod
    def from_toml(cls, data: bytes, path: Path) -> NodeConfig:
        """Parse ``node.toml``; raises :class:`KitError` naming the key that is wrong."""
        try:
            doc = tomllib.loads(data.decode("utf-8"))
            if doc.get("format") != _VERSION:
                raise KitError(path, f"{NODE_FILE}: unsupported format {doc.get('format')!r}")
            node, server = doc["node"], doc["server"]
            admin_port = server.get("admin_port")
            config = cls(
                project=_typed(node, "project", str),
                name=_typed(node, "name", str),
                organisation=_typed(node, "organisation", str),
                role=Role(_typed(node, "role", str)),
                server_name=_typed(server, "name", str),
                server_hosts=tuple(_typed(h, None, str) for h in _typed(server, "hosts", list)),
                port=_typed(server, "port", int),
                admin_port=None if admin_port is None else _typed(server, "admin_port", int),
            )
        except KitError:
            raise
        except (
            UnicodeDecodeError,
            tomllib.TOMLDecodeError,
            KeyError,
            TypeError,
            ValueError,
        ) as exc:
            raise KitError(path, f"{STARTUP_DIR}/{NODE_FILE} cannot be read: {exc}") from None
        return config


def _typed(table: Any, key: str | None, kind: type) -> Any:
    value = table if key is None else table[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise TypeError(f"{key or 'value'}: expected {kind.__name__}")
    return value


@dataclass(frozen=True)
class Kit:
    """A verified startup kit. Build it with :func:`load_kit`, never by hand."""

    path: Path
    config: NodeConfig
    credential: Credential
    ca_pem: bytes
    ca_certificate: x509.Certificate
    signed_files: tuple[str, ...]
    signed_at: str
    crl: x509.CertificateRevocationList | None = None
    participants: Mapping[str, Identity] | None = field(default=None)

    @property
    def identity(self) -> Identity:
        return self.config.identity

    @property
    def certificate(self) -> x509.Certificate:
        return self.credential.certificate

    @property
    def ca_fingerprint(self) -> str:
        return ca_fingerprint(self.ca_certificate)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


def _signed_tree(startup: Path, kit: Path) -> dict[str, str]:
    """Digest of every file under ``startup/`` except the manifest and its signature."""
    digests: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(startup, followlinks=False):
        base = Path(dirpath)
        for name in sorted(dirnames):
            if (base / name).is_symlink():
                rel = (base / name).relative_to(startup).as_posix()
                raise KitTamperedError(kit, f"{STARTUP_DIR}/{rel}", "special")
        for name in sorted(filenames):
            full = base / name
            rel = full.relative_to(startup).as_posix()
            if rel in (MANIFEST_FILE, SIGNATURE_FILE):
                continue
            mode = full.lstat().st_mode
            if not stat.S_ISREG(mode):
                raise KitTamperedError(kit, f"{STARTUP_DIR}/{rel}", "special")
            digests[rel] = hashlib.sha256(full.read_bytes()).hexdigest()
    return digests


def write_kit(
    path: Path,
    *,
    ca: CertificateAuthority,
    credential: Credential,
    config: NodeConfig,
    description: str = "",
    now: dt.datetime | None = None,
) -> None:
    """Write a complete, signed kit into the empty or missing folder ``path``.

    Every file is written atomically; ``key.pem`` is created with mode 0600. The caller (normally
    :func:`security.provision.provision`) writes into a staging folder and renames it into place.
    """
    if credential.identity != config.identity:
        raise ValueError("the credential's identity differs from the node configuration")
    now = now or dt.datetime.now(dt.UTC)
    startup = path / STARTUP_DIR
    startup.mkdir(parents=True, exist_ok=True)
    files = {
        CA_FILE: (ca.cert_pem, 0o644),
        CERT_FILE: (credential.cert_pem, 0o644),
        KEY_FILE: (credential.key_pem, 0o600),
        NODE_FILE: (config.to_toml(), 0o644),
        START_FILE: (_kit_texts.start_script(config), 0o755),
    }
    for name, (data, mode) in files.items():
        atomic_write(startup / name, data, mode=mode, sync_dir=False)
    manifest = {
        "format": _MANIFEST_FORMAT,
        "version": _VERSION,
        "project": config.project,
        "name": config.name,
        "role": config.role.value,
        "signed_at": now.isoformat(timespec="seconds"),
        "files": {name: hashlib.sha256(data).hexdigest() for name, (data, _) in files.items()},
    }
    body = _signed.canonical_json(manifest)
    atomic_write(startup / MANIFEST_FILE, body, sync_dir=False)
    atomic_write(startup / SIGNATURE_FILE, _signed.sign(ca.private_key, body), sync_dir=False)
    folders = [startup, path]
    if config.role in (Role.SERVER, Role.SITE):
        local = path / LOCAL_DIR
        folders.append(local)
        policy = _kit_texts.default_authorization(config)
        atomic_write(local / "authorization.toml", policy, sync_dir=False)
        if config.role is Role.SITE:
            privacy = _kit_texts.default_privacy(config)
            atomic_write(local / "privacy.toml", privacy, sync_dir=False)
    fingerprint = ca_fingerprint(ca.certificate)
    readme = _kit_texts.readme(config, fingerprint, description)
    atomic_write(path / README_FILE, readme, sync_dir=False)
    for folder in folders:
        fsync_dir(folder)


def participants_document(
    ca: CertificateAuthority, project: str, participants: Mapping[str, Identity], *, number: int
) -> tuple[bytes, bytes]:
    """The server's participant list, ``(participants.json, participants.sig)``, signed by ``ca``.

    ``number`` grows with every new list, like a CRL number, so a server can refuse an older one.
    """
    payload = {
        "format": _PARTICIPANTS_FORMAT,
        "version": _VERSION,
        "project": project,
        "number": number,
        "participants": {
            name: {"organisation": ident.organisation, "role": ident.role.value}
            for name, ident in sorted(participants.items())
        },
    }
    body = _signed.canonical_json(payload)
    return body, _signed.sign(ca.private_key, body)


def _read(path: Path, kit: Path, rel: str) -> bytes:
    try:
        if path.stat().st_size > _MAX_FILE:
            raise KitError(kit, f"{rel} is larger than {_MAX_FILE} bytes")
        return path.read_bytes()
    except FileNotFoundError:
        raise KitTamperedError(kit, rel, "removed") from None
    except OSError as exc:
        raise KitError(kit, f"{rel} cannot be read: {exc.strerror or exc}") from None


def _load_manifest(kit: Path, startup: Path, ca_cert: x509.Certificate) -> dict[str, Any]:
    body = _read(startup / MANIFEST_FILE, kit, f"{STARTUP_DIR}/{MANIFEST_FILE}")
    signature = _read(startup / SIGNATURE_FILE, kit, f"{STARTUP_DIR}/{SIGNATURE_FILE}")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not _signed.verify(
        public_key, body, signature
    ):
        raise KitTamperedError(kit, f"{STARTUP_DIR}/{MANIFEST_FILE}", "signature")
    try:
        manifest: dict[str, Any] = json.loads(body)
        files = manifest["files"]
        if manifest.get("format") != _MANIFEST_FORMAT or manifest.get("version") != _VERSION:
            raise ValueError("unsupported manifest format")
        if not isinstance(files, dict) or not all(isinstance(v, str) for v in files.values()):
            raise ValueError("files is not a table of digests")
    except (ValueError, KeyError, TypeError) as exc:
        raise KitError(kit, f"{STARTUP_DIR}/{MANIFEST_FILE}: {exc}") from None
    return manifest


def _load_trust(
    kit: Path, ca_cert: x509.Certificate, project: str
) -> tuple[x509.CertificateRevocationList | None, dict[str, Identity]]:
    trust = kit / TRUST_DIR
    crl = None
    crl_path = trust / CRL_FILE
    if crl_path.exists():
        try:
            crl = load_crl(_read(crl_path, kit, f"{TRUST_DIR}/{CRL_FILE}"), ca_cert)
        except CertificateError:
            raise KitTamperedError(kit, f"{TRUST_DIR}/{CRL_FILE}", "signature") from None
    rel = f"{TRUST_DIR}/{PARTICIPANTS_FILE}"
    body = _read(trust / PARTICIPANTS_FILE, kit, rel)
    signature = _read(trust / PARTICIPANTS_SIGNATURE, kit, f"{TRUST_DIR}/{PARTICIPANTS_SIGNATURE}")
    public_key = ca_cert.public_key()
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not _signed.verify(
        public_key, body, signature
    ):
        raise KitTamperedError(kit, rel, "signature")
    try:
        doc = json.loads(body)
        if doc.get("format") != _PARTICIPANTS_FORMAT or doc.get("project") != project:
            raise ValueError("not this project's participant list")
        participants = {
            name: Identity(name, entry["organisation"], Role(entry["role"]))
            for name, entry in doc["participants"].items()
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise KitError(kit, f"{rel}: {exc}") from None
    return crl, participants


def load_kit(
    path: Path | str, *, now: dt.datetime | None = None, ca_fingerprint: str | None = None
) -> Kit:
    """Verify the kit at ``path`` and return it.

    ``ca_fingerprint`` (SHA-256, with or without colons) pins the project CA. Raises
    :class:`KitTamperedError` naming the file if the signed part was changed, added to or removed
    from, or a signature is wrong; :class:`KitValidityError` if the certificate is expired or not yet
    valid at ``now``; :class:`KitError` for anything else that makes the kit unusable.
    """
    kit = Path(path)
    try:
        return _load_kit(kit, now=now, ca_fingerprint=ca_fingerprint)
    except OSError as exc:  # a file or folder of the kit this user may not read
        what = Path(exc.filename) if exc.filename is not None else kit
        with contextlib.suppress(ValueError):
            what = what.relative_to(kit)
        raise KitError(kit, f"{what.as_posix()} cannot be read: {exc.strerror or exc}") from None


def _load_kit(kit: Path, *, now: dt.datetime | None, ca_fingerprint: str | None) -> Kit:
    startup = kit / STARTUP_DIR
    if kit.is_file():
        raise KitError(
            kit, "is a file, not a kit folder (a sealed kit? open it with `flrt kit open`)"
        )
    if not kit.exists():
        raise KitError(kit, "does not exist")
    if not startup.is_dir():
        raise KitError(kit, f"not a startup kit (no {STARTUP_DIR}/ folder)")
    now = now or dt.datetime.now(dt.UTC)

    ca_pem = _read(startup / CA_FILE, kit, f"{STARTUP_DIR}/{CA_FILE}")
    try:
        ca_cert = certificate_from_pem(ca_pem)
    except CertificateError:
        raise KitError(kit, f"{STARTUP_DIR}/{CA_FILE} is not a certificate") from None
    if ca_fingerprint is not None:
        actual = _fingerprint_of(ca_cert)
        if _normalise_fingerprint(actual) != _normalise_fingerprint(ca_fingerprint):
            raise KitError(
                kit, f"the project CA's fingerprint is {actual}, not the expected {ca_fingerprint}"
            )

    manifest = _load_manifest(kit, startup, ca_cert)
    expected: dict[str, str] = manifest["files"]
    actual_files = _signed_tree(startup, kit)
    for rel in sorted(set(expected) - set(actual_files)):
        raise KitTamperedError(kit, f"{STARTUP_DIR}/{rel}", "removed")
    for rel in sorted(expected):
        if actual_files[rel] != expected[rel]:
            raise KitTamperedError(kit, f"{STARTUP_DIR}/{rel}", "changed")
    for rel in sorted(set(actual_files) - set(expected)):
        raise KitTamperedError(kit, f"{STARTUP_DIR}/{rel}", "added")

    credential = Credential(
        cert_pem=(startup / CERT_FILE).read_bytes(), key_pem=(startup / KEY_FILE).read_bytes()
    )
    try:
        cert = credential.certificate
        identity = identity_from_certificate(cert)
        key = credential.private_key
    except CertificateError as exc:
        raise KitError(kit, exc.reason) from None
    if not issued_by(cert, ca_cert):
        raise KitError(kit, f"{STARTUP_DIR}/{CERT_FILE} was not issued by {STARTUP_DIR}/{CA_FILE}")
    if key.public_key() != cert.public_key():
        raise KitError(
            kit, f"{STARTUP_DIR}/{KEY_FILE} does not belong to {STARTUP_DIR}/{CERT_FILE}"
        )
    for certificate in (ca_cert, cert):
        before, after = certificate.not_valid_before_utc, certificate.not_valid_after_utc
        if now < before or now > after:
            raise KitValidityError(
                kit,
                state="expired" if now > after else "not yet valid",
                not_before=before,
                not_after=after,
                now=now,
            )
    key_mode = (startup / KEY_FILE).stat().st_mode
    if key_mode & 0o077:
        raise KitError(
            kit,
            f"{STARTUP_DIR}/{KEY_FILE} is readable by others (mode {stat.S_IMODE(key_mode):04o}); "
            f"run: chmod 600 {startup / KEY_FILE}",
        )

    config = NodeConfig.from_toml((startup / NODE_FILE).read_bytes(), kit)
    if config.identity != identity:
        raise KitError(
            kit, f"{STARTUP_DIR}/{NODE_FILE} names {config.identity}, the certificate {identity}"
        )
    crl: x509.CertificateRevocationList | None = None
    participants: dict[str, Identity] | None = None
    if config.role is Role.SERVER:
        crl, participants = _load_trust(kit, ca_cert, config.project)
    return Kit(
        path=kit,
        config=config,
        credential=credential,
        ca_pem=ca_pem,
        ca_certificate=ca_cert,
        signed_files=tuple(sorted(expected)),
        signed_at=str(manifest.get("signed_at", "")),
        crl=crl,
        participants=participants,
    )
