"""Provisioning: the project CA, the registry of participants, and one signed kit per participant.

Theory of operation
-------------------
A workspace is the Lead IT's private, offline state of one project::

    <workspace>/
      project.toml        copy of the project file last provisioned (for reference only)
      ca/
        ca.pem  ca.key    the project CA (key mode 0600: keep the workspace offline and backed up)
        registry.json     every participant ever issued: identity, serial, fingerprint, dates,
                          whether it is still in project.toml, and whether it was revoked
        crl.pem           the current CA-signed revocation list
      kits/<name>/        one startup kit per participant (see security.kit)
      sealed/<name>.flrtkit   the kit as one password-sealed file (with --seal)

:func:`provision` is idempotent and additive. A participant already in the registry keeps its key,
certificate and kit byte for byte; only new participants get a key and a kit. A participant that
disappeared from ``project.toml`` keeps its kit and its registry entry (nothing is deleted), but is
dropped from the server's participant list, so the server refuses it as unknown once it loads the
new list; putting it back in the file re-admits the same kit. To lock a key out for good (lost
laptop, stolen kit) use :func:`revoke`, which puts its serial on the CRL.

The server's participant list and CRL live in its kit's ``trust/`` folder, outside the kit's signed
manifest but each signed by the CA; provisioning and revocation rewrite them there and Lead IT copies
``kits/<server>/trust/`` to the server.

Every check (project file, workspace, conflicts with what was issued before) runs before anything
is written. New kits are built in a private staging folder inside the workspace and renamed into
place; the registry is written last, atomically. A first run builds the whole workspace next to
its destination and renames it into place, or, if the destination is an empty folder already (a
mount point cannot be replaced), inside it and moves it in with ``ca/`` last. A failure at any
point leaves the workspace as it was.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cryptography import x509

from security._atomic import atomic_write, fsync_dir, replace_dir, staging_dir
from security.crl import RevokedCertificate, build_crl, crl_pem
from security.errors import CertificateError, WorkspaceError
from security.kit import (
    CRL_FILE,
    PARTICIPANTS_FILE,
    TRUST_DIR,
    NodeConfig,
    ca_fingerprint,
    participants_document,
    write_kit,
)
from security.pki import CertificateAuthority, Credential, Identity, Role, create_ca
from security.project import Participant, Project
from security.seal import DEFAULT_PARAMS, SEAL_SUFFIX, KdfParams, check_new_password, seal_kit

__all__ = [
    "CA_DIR",
    "KITS_DIR",
    "SEALED_DIR",
    "ProvisionResult",
    "RegistryEntry",
    "RevocationResult",
    "Workspace",
    "open_workspace",
    "provision",
    "revoke",
]

CA_DIR = "ca"
KITS_DIR = "kits"
SEALED_DIR = "sealed"
_CA_CERT = "ca.pem"
_CA_KEY = "ca.key"
_REGISTRY = "registry.json"
_LOCK = ".lock"
_REGISTRY_FORMAT = "flrt-registry"
_VERSION = 1
_SKEW = dt.timedelta(minutes=5)


@dataclass(frozen=True, slots=True)
class RegistryEntry:
    """What the CA issued to one participant."""

    name: str
    organisation: str
    role: Role
    serial_number: int
    fingerprint: str
    not_before: str
    not_after: str
    issued_at: str
    in_project: bool = True
    revoked_at: str | None = None
    revocation_reason: str | None = None

    @property
    def identity(self) -> Identity:
        return Identity(self.name, self.organisation, self.role)

    @property
    def status(self) -> str:
        if self.revoked_at is not None:
            return "revoked"
        return "active" if self.in_project else "removed"

    def to_json(self) -> dict[str, Any]:
        return {
            "organisation": self.organisation,
            "role": self.role.value,
            "serial": f"{self.serial_number:x}",
            "fingerprint": self.fingerprint,
            "not_before": self.not_before,
            "not_after": self.not_after,
            "issued_at": self.issued_at,
            "in_project": self.in_project,
            "revoked_at": self.revoked_at,
            "revocation_reason": self.revocation_reason,
        }

    @classmethod
    def from_json(cls, name: str, data: dict[str, Any]) -> RegistryEntry:
        return cls(
            name=name,
            organisation=str(data["organisation"]),
            role=Role(data["role"]),
            serial_number=int(data["serial"], 16),
            fingerprint=str(data["fingerprint"]),
            not_before=str(data["not_before"]),
            not_after=str(data["not_after"]),
            issued_at=str(data["issued_at"]),
            in_project=bool(data["in_project"]),
            revoked_at=data.get("revoked_at"),
            revocation_reason=data.get("revocation_reason"),
        )


@dataclass(frozen=True)
class Workspace:
    """A loaded workspace: its CA and its registry."""

    path: Path
    ca: CertificateAuthority
    project: str
    server: dict[str, Any]
    crl_number: int
    participants_number: int
    entries: dict[str, RegistryEntry]

    @property
    def server_name(self) -> str:
        return str(self.server["name"])

    def registry_json(self) -> bytes:
        payload = {
            "format": _REGISTRY_FORMAT,
            "version": _VERSION,
            "project": self.project,
            "server": self.server,
            "crl_number": self.crl_number,
            "participants_number": self.participants_number,
            "participants": {name: entry.to_json() for name, entry in sorted(self.entries.items())},
        }
        return (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode()


@dataclass(frozen=True)
class ProvisionResult:
    """What :func:`provision` did. Names are in project-file order."""

    workspace: Path
    created: tuple[str, ...]
    unchanged: tuple[str, ...]
    removed: tuple[str, ...]
    readmitted: tuple[str, ...]
    revoked: tuple[str, ...]
    sealed: tuple[Path, ...]
    ca_fingerprint: str
    first_run: bool


@dataclass(frozen=True)
class RevocationResult:
    """What :func:`revoke` did."""

    name: str
    serial_number: int
    already_revoked: bool
    crl_files: tuple[Path, ...]
    crl_number: int


def _server_block(project: Project) -> dict[str, Any]:
    return {
        "name": project.server.name,
        "hosts": list(project.server.hosts),
        "port": project.server.port,
        "admin_port": project.server.admin_port,
    }


def _is_workspace(path: Path) -> bool:
    return (path / CA_DIR / _REGISTRY).is_file()


def open_workspace(path: Path | str) -> Workspace:
    """Load the CA and registry of the workspace at ``path``; raises :class:`WorkspaceError`."""
    path = Path(path)
    if not _is_workspace(path):
        raise WorkspaceError(path, f"not a flrt workspace (no {CA_DIR}/{_REGISTRY})")
    ca_dir = path / CA_DIR
    try:
        ca = CertificateAuthority.from_pem(
            (ca_dir / _CA_CERT).read_bytes(), (ca_dir / _CA_KEY).read_bytes()
        )
        data = json.loads((ca_dir / _REGISTRY).read_bytes())
        if data.get("format") != _REGISTRY_FORMAT or data.get("version") != _VERSION:
            raise ValueError("unsupported registry format")
        entries = {
            name: RegistryEntry.from_json(name, entry)
            for name, entry in data["participants"].items()
        }
        return Workspace(
            path=path,
            ca=ca,
            project=str(data["project"]),
            server=dict(data["server"]),
            crl_number=int(data["crl_number"]),
            participants_number=int(data["participants_number"]),
            entries=entries,
        )
    except OSError as exc:
        raise WorkspaceError(path, f"cannot be read: {exc.strerror or exc}") from None
    except CertificateError as exc:
        raise WorkspaceError(path, f"the CA cannot be loaded: {exc.reason}") from None
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise WorkspaceError(path, f"{CA_DIR}/{_REGISTRY} is damaged: {exc}") from None


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path / _LOCK, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkspaceError(path, "another flrt provision is running on it") from None
        yield
    finally:
        os.close(fd)


def _node_config(project: Project, participant: Participant) -> NodeConfig:
    return NodeConfig(
        project=project.name,
        name=participant.name,
        organisation=participant.organisation,
        role=participant.role,
        server_name=project.server.name,
        server_hosts=project.server.hosts,
        port=project.server.port,
        admin_port=project.server.admin_port,
    )


def _entry(credential: Credential, now: dt.datetime) -> RegistryEntry:
    cert = credential.certificate
    identity = credential.identity
    return RegistryEntry(
        name=identity.name,
        organisation=identity.organisation,
        role=identity.role,
        serial_number=cert.serial_number,
        fingerprint=ca_fingerprint(cert),
        not_before=cert.not_valid_before_utc.isoformat(),
        not_after=cert.not_valid_after_utc.isoformat(),
        issued_at=now.isoformat(timespec="seconds"),
    )


def _crl_bytes(ws: Workspace, now: dt.datetime) -> bytes:
    revoked = [
        RevokedCertificate(
            e.serial_number,
            dt.datetime.fromisoformat(e.revoked_at),
            x509.ReasonFlags(e.revocation_reason or "unspecified"),
        )
        for e in ws.entries.values()
        if e.revoked_at is not None
    ]
    return crl_pem(build_crl(ws.ca, revoked, number=ws.crl_number, now=now))


def _participants_files(ws: Workspace) -> tuple[bytes, bytes]:
    admitted = {name: e.identity for name, e in ws.entries.items() if e.in_project}
    return participants_document(ws.ca, ws.project, admitted, number=ws.participants_number)


def _write_trust(
    kit: Path, ws: Workspace, now: dt.datetime, *, crl: bool, participants: bool
) -> None:
    trust = kit / TRUST_DIR
    if participants:
        body, signature = _participants_files(ws)
        atomic_write(trust / PARTICIPANTS_FILE, body)
        atomic_write(trust / "participants.sig", signature)
    if crl:
        atomic_write(trust / CRL_FILE, _crl_bytes(ws, now))


def _check_against_registry(project: Project, ws: Workspace) -> None:
    if ws.project != project.name:
        raise WorkspaceError(
            ws.path, f"holds project {ws.project!r}, but the project file names {project.name!r}"
        )
    wanted = _server_block(project)
    for key in ("name", "hosts", "port", "admin_port"):
        if ws.server.get(key) != wanted[key]:
            raise WorkspaceError(
                ws.path,
                f"server {key} was {ws.server.get(key)!r} when the kits were made and is now "
                f"{wanted[key]!r}; every kit names the server, so this needs a new project "
                "(new workspace) or the old value back",
            )
    for participant in project.participants:
        entry = ws.entries.get(participant.name)
        if entry is None:
            continue
        if (entry.organisation, entry.role) != (participant.organisation, participant.role):
            raise WorkspaceError(
                ws.path,
                f"{participant.name!r} was issued as {entry.role.value} of {entry.organisation!r} "
                f"and is now {participant.role.value} of {participant.organisation!r}; a "
                "certificate cannot change: revoke it and add the participant under a new name",
            )


def _issue_kits(
    project: Project,
    ws: Workspace,
    participants: list[Participant],
    kits_dir: Path,
    now: dt.datetime,
    not_before: dt.datetime | None,
) -> dict[str, RegistryEntry]:
    issued: dict[str, RegistryEntry] = {}
    for participant in participants:
        credential = ws.ca.issue(
            participant.identity,
            hosts=participant.hosts,
            valid_days=project.cert_valid_days,
            not_before=not_before,
        )
        write_kit(
            kits_dir / participant.name,
            ca=ws.ca,
            credential=credential,
            config=_node_config(project, participant),
            description=project.description,
            now=now,
        )
        issued[participant.name] = _entry(credential, now)
    return issued


def _seal(
    names: list[str], kits_dir: Path, sealed_dir: Path, password: bytes, params: KdfParams
) -> list[Path]:
    sealed_dir.mkdir(parents=True, exist_ok=True)
    return [
        seal_kit(kits_dir / name, sealed_dir / f"{name}{SEAL_SUFFIX}", password, params=params)
        for name in names
    ]


def provision(
    project: Project,
    workspace: Path | str,
    *,
    project_text: bytes | None = None,
    seal_password: bytes | None = None,
    seal_params: KdfParams = DEFAULT_PARAMS,
    now: dt.datetime | None = None,
) -> ProvisionResult:
    """Create or extend the workspace for ``project``; see the module docstring.

    ``project_text`` is stored as ``project.toml`` for reference. With ``seal_password``, every kit
    created by this run is also sealed into ``sealed/``. Raises :class:`WorkspaceError` if the
    workspace cannot be used or conflicts with what was issued before, and lets through the
    :class:`~security.errors.SealPasswordError` of an unacceptable password; in every case the
    workspace is left as it was.
    """
    if seal_password is not None:
        check_new_password(seal_password)  # refuse a bad password before any work
    clock = now or dt.datetime.now(dt.UTC)
    not_before = None if now is None else now - _SKEW
    path = Path(workspace).absolute()
    if path.exists() and not path.is_dir():
        raise WorkspaceError(path, "exists and is not a folder")
    if _is_workspace(path):
        return _extend(project, path, project_text, seal_password, seal_params, clock, not_before)
    if path.is_dir() and any(path.iterdir()):
        raise WorkspaceError(
            path, f"exists, is not empty and is not a flrt workspace (no {CA_DIR}/{_REGISTRY})"
        )
    return _create(project, path, project_text, seal_password, seal_params, clock, not_before)


def _create(
    project: Project,
    path: Path,
    project_text: bytes | None,
    password: bytes | None,
    params: KdfParams,
    now: dt.datetime,
    not_before: dt.datetime | None,
) -> ProvisionResult:
    ca = create_ca(
        f"{project.name} CA",
        valid_days=project.ca_valid_days,
        now=not_before,
        organisation=project.server.participant.organisation,
    )
    names = [p.name for p in project.participants]
    # An empty folder that already exists (one made for the project, a mount point such as an
    # encrypted volume) is kept, with its owner and mode: the workspace is built inside it and
    # moved in entry by entry, ca/ last, as only ca/registry.json makes it a workspace. A new
    # folder is built beside its destination and renamed into place whole.
    in_place = path.is_dir()
    parent, prefix = (
        (path, ".provisioning-") if in_place else (path.parent, f".{path.name}.provisioning-")
    )
    with staging_dir(parent, prefix) as staging:
        ws = Workspace(
            path=staging,
            ca=ca,
            project=project.name,
            server=_server_block(project),
            crl_number=1,
            participants_number=1,
            entries={},
        )
        ca_dir = staging / CA_DIR
        atomic_write(ca_dir / _CA_CERT, ca.cert_pem)
        atomic_write(ca_dir / _CA_KEY, ca.key_pem, mode=0o600)
        issued = _issue_kits(
            project, ws, list(project.participants), staging / KITS_DIR, now, not_before
        )
        ws = replace(ws, entries=issued)
        _write_trust(staging / KITS_DIR / project.server.name, ws, now, crl=True, participants=True)
        atomic_write(ca_dir / "crl.pem", _crl_bytes(ws, now))
        sealed: list[Path] = []
        if password is not None:
            sealed = _seal(names, staging / KITS_DIR, staging / SEALED_DIR, password, params)
        if project_text is not None:
            atomic_write(staging / "project.toml", project_text)
        atomic_write(ca_dir / _REGISTRY, ws.registry_json())
        os.chmod(ca_dir, 0o700)  # the CA key; the workspace itself stays 0700 as staging made it
        try:
            if in_place:
                for entry in sorted(staging.iterdir(), key=lambda e: e.name == CA_DIR):
                    os.rename(entry, path / entry.name)
                fsync_dir(path)
            else:
                replace_dir(staging, path)
        except OSError as exc:
            raise WorkspaceError(path, f"cannot be created: {exc.strerror or exc}") from None
    return ProvisionResult(
        workspace=path,
        created=tuple(names),
        unchanged=(),
        removed=(),
        readmitted=(),
        revoked=(),
        sealed=tuple(path / SEALED_DIR / p.name for p in sealed),
        ca_fingerprint=ca_fingerprint(ca.certificate),
        first_run=True,
    )


def _extend(
    project: Project,
    path: Path,
    project_text: bytes | None,
    password: bytes | None,
    params: KdfParams,
    now: dt.datetime,
    not_before: dt.datetime | None,
) -> ProvisionResult:
    with _locked(path):
        ws = open_workspace(path)
        _check_against_registry(project, ws)
        in_file = {p.name for p in project.participants}
        new = [p for p in project.participants if p.name not in ws.entries]
        for participant in new:
            if (path / KITS_DIR / participant.name).exists():
                raise WorkspaceError(
                    path,
                    f"{KITS_DIR}/{participant.name} exists but the registry does not list it "
                    "(left by an interrupted run?); move it away and run again",
                )
        removed = [n for n, e in ws.entries.items() if e.in_project and n not in in_file]
        readmitted = [
            p.name
            for p in project.participants
            if p.name in ws.entries and not ws.entries[p.name].in_project
        ]
        revoked = [
            p.name
            for p in project.participants
            if p.name in ws.entries and ws.entries[p.name].revoked_at
        ]
        unchanged = [
            p.name
            for p in project.participants
            if p.name in ws.entries and p.name not in readmitted
        ]
        entries = {
            name: replace(entry, in_project=name in in_file) for name, entry in ws.entries.items()
        }
        membership_changed = bool(new or removed or readmitted)
        sealed: list[Path] = []
        if membership_changed:
            with staging_dir(path, ".staging-") as staging:
                issued = _issue_kits(project, ws, new, staging / KITS_DIR, now, not_before)
                entries.update(issued)
                ws = replace(ws, entries=entries, participants_number=ws.participants_number + 1)
                if password is not None and new:
                    sealed = _seal(
                        [p.name for p in new],
                        staging / KITS_DIR,
                        staging / SEALED_DIR,
                        password,
                        params,
                    )
                # Commit: kits and sealed files first, then the server's list, the registry last.
                (path / KITS_DIR).mkdir(exist_ok=True)
                for participant in new:
                    replace_dir(
                        staging / KITS_DIR / participant.name, path / KITS_DIR / participant.name
                    )
                for archive in sealed:
                    (path / SEALED_DIR).mkdir(exist_ok=True)
                    os.replace(archive, path / SEALED_DIR / archive.name)
                if sealed:
                    fsync_dir(path / SEALED_DIR)
                # Written even when the server's kit was moved away (handed over): the report
                # tells Lead IT to copy this folder to the server, so it must hold the new list.
                server_kit = path / KITS_DIR / ws.server_name
                missing_crl = not (server_kit / TRUST_DIR / CRL_FILE).is_file()
                _write_trust(server_kit, ws, now, crl=missing_crl, participants=True)
                atomic_write(path / CA_DIR / _REGISTRY, ws.registry_json())
            if project_text is not None:
                atomic_write(path / "project.toml", project_text)
    return ProvisionResult(
        workspace=path,
        created=tuple(p.name for p in new),
        unchanged=tuple(unchanged),
        removed=tuple(removed),
        readmitted=tuple(readmitted),
        revoked=tuple(revoked),
        sealed=tuple(path / SEALED_DIR / p.name for p in sealed),
        ca_fingerprint=ca_fingerprint(ws.ca.certificate),
        first_run=False,
    )


def revoke(
    workspace: Path | str,
    name: str,
    *,
    reason: x509.ReasonFlags = x509.ReasonFlags.unspecified,
    now: dt.datetime | None = None,
) -> RevocationResult:
    """Revoke ``name``'s certificate: record it, and write a new CA-signed CRL.

    The CRL goes to ``ca/crl.pem`` and to the server kit's ``trust/crl.pem`` in the workspace.
    Revoking again rewrites the CRL (so an interrupted run is completed) and reports
    ``already_revoked``. Raises :class:`WorkspaceError` for an unknown name or the server itself.
    """
    path = Path(workspace).absolute()
    now = now or dt.datetime.now(dt.UTC)
    if reason in (x509.ReasonFlags.remove_from_crl,):
        raise ValueError("remove_from_crl is not a revocation reason")
    if not _is_workspace(path):
        raise WorkspaceError(path, f"not a flrt workspace (no {CA_DIR}/{_REGISTRY})")
    with _locked(path):
        ws = open_workspace(path)
        entry = ws.entries.get(name)
        if entry is None:
            known = ", ".join(sorted(ws.entries)) or "none"
            raise WorkspaceError(path, f"{name!r} was never provisioned here (known: {known})")
        if entry.role is Role.SERVER:
            raise WorkspaceError(
                path,
                "the server's certificate cannot be revoked: sites do not load a revocation list; "
                "start a new project (new workspace) to replace the server",
            )
        already = entry.revoked_at is not None
        if not already:
            entry = replace(
                entry, revoked_at=now.isoformat(timespec="seconds"), revocation_reason=reason.value
            )
        ws = replace(ws, entries={**ws.entries, name: entry}, crl_number=ws.crl_number + 1)
        # The registry first: a CRL is always rebuilt from it, so a crash between the two writes
        # is repaired by running revoke again.
        atomic_write(path / CA_DIR / _REGISTRY, ws.registry_json())
        data = _crl_bytes(ws, now)
        # The server kit's trust/ too, even when the kit was moved away: it is what Lead IT
        # is told to copy to the server.
        files = [path / CA_DIR / "crl.pem", path / KITS_DIR / ws.server_name / TRUST_DIR / CRL_FILE]
        for file in files:
            atomic_write(file, data)
    return RevocationResult(
        name=name,
        serial_number=entry.serial_number,
        already_revoked=already,
        crl_files=tuple(files),
        crl_number=ws.crl_number,
    )
