"""Provisioning: additive re-runs keep every key byte-identical; failures leave the workspace intact."""

from __future__ import annotations

import datetime as dt
import fcntl
import hashlib
import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from security.admission import admit_peer
from security.crl import load_crl
from security.errors import (
    CertificateRevokedError,
    SealPasswordError,
    UnknownParticipantError,
    WorkspaceError,
)
from security.kit import load_kit, write_kit
from security.pki import CertificateAuthority, Role
from security.project import parse_project
from security.provision import open_workspace, provision, revoke
from security.seal import open_sealed_kit
from tests.security.conftest import FAST_KDF, SMALL_PROJECT, with_site


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``root`` with its bytes and mode."""
    return {
        p.relative_to(root).as_posix(): (p.read_bytes(), p.stat().st_mode & 0o777)
        for p in sorted(root.rglob("*"))
        if p.is_file() and p.name != ".lock"
    }


def _digest(snapshot: dict[str, tuple[bytes, int]]) -> dict[str, str]:
    return {k: hashlib.sha256(v[0]).hexdigest() for k, v in snapshot.items()}


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("pristine") / "ws"
    provision(parse_project(SMALL_PROJECT), path, project_text=SMALL_PROJECT.encode())
    return path


@pytest.fixture
def ws(pristine: Path, tmp_path: Path) -> Path:
    """A freshly provisioned workspace of the small project (a copy: provisioning costs fsyncs)."""
    path = tmp_path / "ws"
    shutil.copytree(pristine, path)
    return path


def test_first_run_layout(ws: Path) -> None:
    assert ws.stat().st_mode & 0o777 == 0o700
    assert (ws / "ca").stat().st_mode & 0o777 == 0o700
    assert (ws / "ca" / "ca.key").stat().st_mode & 0o777 == 0o600
    assert (ws / "project.toml").read_text() == SMALL_PROJECT
    assert sorted(p.name for p in (ws / "kits").iterdir()) == sorted(
        p.name for p in parse_project(SMALL_PROJECT).participants
    )
    workspace = open_workspace(ws)
    assert workspace.project == "test-project"
    assert {e.status for e in workspace.entries.values()} == {"active"}
    for name, entry in workspace.entries.items():
        kit = load_kit(ws / "kits" / name)
        assert kit.certificate.serial_number == entry.serial_number
        assert kit.identity == entry.identity
    crl = load_crl((ws / "ca" / "crl.pem").read_bytes(), workspace.ca.certificate)
    assert list(crl) == []
    assert not [p for p in ws.parent.iterdir() if p.name.startswith(".")]


def test_adding_a_site_keeps_everything_else_byte_identical(ws: Path) -> None:
    before = _snapshot(ws)
    result = provision(parse_project(with_site(SMALL_PROJECT, "site-c")), ws)
    assert result.created == ("site-c",)
    assert "site-a" in result.unchanged
    after = _snapshot(ws)
    changed = {k for k in before if before[k] != after[k]}
    # Only the registry and the server's participant list change; every key, certificate and
    # signed kit file stays byte for byte.
    assert changed == {
        "ca/registry.json",
        "kits/server/trust/participants.json",
        "kits/server/trust/participants.sig",
    }
    added = set(after) - set(before)
    assert added
    assert all(k.startswith("kits/site-c/") for k in added)
    server = load_kit(ws / "kits" / "server")
    assert server.participants is not None
    assert server.participants["site-c"].role is Role.SITE
    assert load_kit(ws / "kits" / "site-c").ca_certificate == server.ca_certificate
    assert result.ca_fingerprint == server.ca_fingerprint
    # A third run with nothing new changes nothing at all.
    again = _snapshot(ws)
    result = provision(parse_project(with_site(SMALL_PROJECT, "site-c")), ws)
    assert result.created == ()
    assert _snapshot(ws) == again


def test_removed_participant_keeps_its_kit_but_is_no_longer_admitted(ws: Path) -> None:
    text = SMALL_PROJECT.replace('[[sites]]\nname = "site-b"\norganisation = "Hospital B"\n', "")
    assert text != SMALL_PROJECT
    kit_before = _snapshot(ws / "kits" / "site-b")
    result = provision(parse_project(text), ws)
    assert result.removed == ("site-b",)
    assert _snapshot(ws / "kits" / "site-b") == kit_before
    assert open_workspace(ws).entries["site-b"].status == "removed"
    server = load_kit(ws / "kits" / "server")
    assert server.participants is not None
    site_b = load_kit(ws / "kits" / "site-b")
    with pytest.raises(UnknownParticipantError):
        admit_peer(
            site_b.certificate.public_bytes(serialization.Encoding.DER),
            ca=server.ca_certificate,
            crl=server.crl,
            participants=server.participants,
            now=dt.datetime.now(dt.UTC),
        )
    # Putting it back re-admits the very same kit.
    result = provision(parse_project(SMALL_PROJECT), ws)
    assert result.readmitted == ("site-b",)
    assert result.created == ()
    readmitted = load_kit(ws / "kits" / "server").participants
    assert readmitted is not None
    assert "site-b" in readmitted
    assert _snapshot(ws / "kits" / "site-b") == kit_before


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ('name = "test-project"', 'name = "other-project"', "holds project 'test-project'"),
        ('"localhost", ', "", "server hosts was"),
        ("port = 8443", "port = 9443", "server port was"),
        (
            'name = "site-b"\norganisation = "Hospital B"',
            'name = "site-b"\norganisation = "Hospital A"',
            "'site-b' was issued as site of 'Hospital B'",
        ),
        ('role = "member"', 'role = "lead"', "was issued as member"),
    ],
)
def test_conflicting_changes_are_refused_and_change_nothing(
    ws: Path, old: str, new: str, message: str
) -> None:
    before = _snapshot(ws)
    text = with_site(SMALL_PROJECT.replace(old, new, 1), "site-c")
    with pytest.raises(WorkspaceError, match=message):
        provision(parse_project(text), ws)
    assert _snapshot(ws) == before
    assert not (ws / "kits" / "site-c").exists()


def test_failure_half_way_leaves_the_workspace_intact(
    ws: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = _snapshot(ws)
    real = write_kit
    calls = []

    def flaky(*args: Any, **kwargs: Any) -> None:
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        real(*args, **kwargs)

    monkeypatch.setattr("security.provision.write_kit", flaky)
    text = with_site(with_site(SMALL_PROJECT, "site-c"), "site-d")
    with pytest.raises(OSError, match="No space"):
        provision(parse_project(text), ws)
    assert _snapshot(ws) == before
    assert sorted(p.name for p in ws.iterdir()) == [".lock", "ca", "kits", "project.toml"]
    monkeypatch.setattr("security.provision.write_kit", real)
    assert provision(parse_project(text), ws).created == ("site-c", "site-d")


def test_failed_first_run_creates_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*args: Any, **kwargs: Any) -> None:
        raise OSError(5, "Input/output error")

    monkeypatch.setattr("security.provision.write_kit", broken)
    with pytest.raises(OSError, match="Input/output"):
        provision(parse_project(SMALL_PROJECT), tmp_path / "ws")
    assert list(tmp_path.iterdir()) == []


def test_workspace_must_be_new_or_ours(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(WorkspaceError, match="not empty and is not a flrt workspace"):
        provision(parse_project(SMALL_PROJECT), tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    with pytest.raises(WorkspaceError, match="not a folder"):
        provision(parse_project(SMALL_PROJECT), tmp_path / "notes.txt")
    (tmp_path / "empty").mkdir()
    assert provision(parse_project(SMALL_PROJECT), tmp_path / "empty").first_run


def test_stray_kit_folder_is_refused(ws: Path) -> None:
    (ws / "kits" / "site-c").mkdir()
    with pytest.raises(WorkspaceError, match="kits/site-c exists"):
        provision(parse_project(with_site(SMALL_PROJECT, "site-c")), ws)


def test_concurrent_run_is_refused(ws: Path) -> None:
    fd = os.open(ws / ".lock", os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(WorkspaceError, match="another flrt provision"):
            provision(parse_project(with_site(SMALL_PROJECT, "site-c")), ws)
        with pytest.raises(WorkspaceError, match="another flrt provision"):
            revoke(ws, "site-a")
    finally:
        os.close(fd)


def test_damaged_registry(ws: Path) -> None:
    (ws / "ca" / "registry.json").write_text("{}")
    with pytest.raises(WorkspaceError, match="damaged"):
        provision(parse_project(SMALL_PROJECT), ws)


def test_revocation(ws: Path) -> None:
    kits_before = _snapshot(ws / "kits" / "site-a")
    result = revoke(ws, "site-a", reason=x509.ReasonFlags.key_compromise)
    assert not result.already_revoked
    assert result.crl_number == 2
    workspace = open_workspace(ws)
    entry = workspace.entries["site-a"]
    assert entry.status == "revoked"
    assert entry.revocation_reason == "keyCompromise"
    for file in (ws / "ca" / "crl.pem", ws / "kits" / "server" / "trust" / "crl.pem"):
        assert file in result.crl_files
        crl = load_crl(file.read_bytes(), workspace.ca.certificate)
        revoked = crl.get_revoked_certificate_by_serial_number(entry.serial_number)
        assert revoked is not None
        assert crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number == 2
    # The kit itself is untouched and still verifies; the server refuses it.
    assert _snapshot(ws / "kits" / "site-a") == kits_before
    server = load_kit(ws / "kits" / "server")
    assert server.participants is not None
    with pytest.raises(CertificateRevokedError):
        admit_peer(
            load_kit(ws / "kits" / "site-a").certificate.public_bytes(serialization.Encoding.DER),
            ca=server.ca_certificate,
            crl=server.crl,
            participants=server.participants,
            now=dt.datetime.now(dt.UTC),
        )
    again = revoke(ws, "site-a")
    assert again.already_revoked
    assert again.crl_number == 3
    # A revoked name in the project file gets no new kit.
    result_p = provision(parse_project(SMALL_PROJECT), ws)
    assert result_p.revoked == ("site-a",)
    assert result_p.created == ()


def test_revocation_refusals(ws: Path) -> None:
    with pytest.raises(WorkspaceError, match="never provisioned here"):
        revoke(ws, "nobody")
    with pytest.raises(WorkspaceError, match="server's certificate cannot be revoked"):
        revoke(ws, "server")
    with pytest.raises(WorkspaceError, match="not a flrt workspace"):
        revoke(ws / "kits", "site-a")


def test_sealed_kits_for_new_participants_only(ws: Path) -> None:
    password = b"correct horse battery"
    result = provision(
        parse_project(with_site(SMALL_PROJECT, "site-c")),
        ws,
        seal_password=password,
        seal_params=FAST_KDF,
    )
    assert [p.name for p in result.sealed] == ["site-c.flrtkit"]
    assert result.sealed[0].stat().st_mode & 0o777 == 0o600
    kit = open_sealed_kit(result.sealed[0], ws.parent / "opened", password)
    assert kit.identity.name == "site-c"
    with pytest.raises(SealPasswordError):
        provision(parse_project(with_site(SMALL_PROJECT, "site-d")), ws, seal_password=b"short")
    assert not (ws / "kits" / "site-d").exists()


def test_registry_is_plain_json(ws: Path, ca: CertificateAuthority) -> None:
    data = json.loads((ws / "ca" / "registry.json").read_text())
    assert data["format"] == "flrt-registry"
    assert data["server"]["hosts"] == ["fl.example.org", "localhost", "127.0.0.1"]
    assert set(data["participants"]["site-a"]) >= {"serial", "fingerprint", "not_after"}
    assert "PRIVATE" not in (ws / "ca" / "registry.json").read_text()


@pytest.mark.skipif(shutil.which("openssl") is None, reason="the openssl command is not installed")
def test_openssl_agrees_on_kits_and_revocation(ws: Path) -> None:
    """An independent implementation verifies a provisioned chain and honours our CRL."""
    revoke(ws, "site-a")

    def openssl(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", *args], capture_output=True, text=True, timeout=30, check=False
        )

    ca, crl = str(ws / "ca" / "ca.pem"), str(ws / "ca" / "crl.pem")
    site_a = str(ws / "kits" / "site-a" / "startup" / "cert.pem")
    site_b = str(ws / "kits" / "site-b" / "startup" / "cert.pem")
    server = str(ws / "kits" / "server" / "startup" / "cert.pem")
    text = openssl("crl", "-in", crl, "-noout", "-text")
    assert text.returncode == 0, text.stderr
    assert "X509v3 CRL Number" in text.stdout
    ok = openssl(
        "verify", "-CAfile", ca, "-CRLfile", crl, "-crl_check", "-purpose", "sslclient", site_b
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    ok = openssl(
        "verify", "-CAfile", ca, "-CRLfile", crl, "-crl_check", "-purpose", "sslserver", server
    )
    assert ok.returncode == 0, ok.stdout + ok.stderr
    revoked = openssl("verify", "-CAfile", ca, "-CRLfile", crl, "-crl_check", site_a)
    assert revoked.returncode != 0
    assert "certificate revoked" in revoked.stdout + revoked.stderr
    key = openssl(
        "pkey", "-in", str(ws / "kits" / "site-a" / "startup" / "key.pem"), "-noout", "-text"
    )
    assert key.returncode == 0
    assert "prime256v1" in key.stdout
