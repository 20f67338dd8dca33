"""Startup kits: a provisioned kit verifies; every change to its signed part is found and named."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from security import _signed
from security.crl import build_crl, crl_pem
from security.errors import KitError, KitTamperedError, KitValidityError
from security.kit import load_kit
from security.pki import CertificateAuthority, Role

KitCopy = Callable[[str], Path]
SIGNED = ["ca.pem", "cert.pem", "key.pem", "node.toml", "start.sh"]


def test_provisioned_kits_verify(workspace: Path) -> None:
    kit = load_kit(workspace / "kits" / "site-a")
    assert (kit.identity.name, kit.identity.organisation, kit.identity.role) == (
        "site-a",
        "Hospital A",
        Role.SITE,
    )
    assert kit.signed_files == tuple(SIGNED)
    assert kit.config.server_addresses == (
        ("fl.example.org", 8443),
        ("localhost", 8443),
        ("127.0.0.1", 8443),
    )
    assert kit.participants is None
    assert kit.crl is None
    admin = load_kit(workspace / "kits" / "viewer@hospital-b.example")
    assert admin.identity.role is Role.MEMBER
    assert admin.config.connect_port == 8444
    server = load_kit(workspace / "kits" / "server")
    assert server.participants is not None
    assert set(server.participants) == {
        "server",
        "site-a",
        "site-b",
        "lead-it@example.org",
        "it@hospital-a.example",
        "researcher@example.org",
        "viewer@hospital-b.example",
    }
    assert server.crl is not None
    assert list(server.crl) == []


def test_key_is_private_and_script_executable(workspace: Path) -> None:
    startup = workspace / "kits" / "site-a" / "startup"
    assert (startup / "key.pem").stat().st_mode & 0o777 == 0o600
    assert (startup / "start.sh").stat().st_mode & 0o777 == 0o755
    assert b"flrt site start" in (startup / "start.sh").read_bytes()
    assert b"flrt server start" in (workspace / "kits/server/startup/start.sh").read_bytes()
    assert b"flrt admin" in (workspace / "kits/lead-it@example.org/startup/start.sh").read_bytes()
    assert (workspace / "kits/site-a/local/privacy.toml").is_file()
    assert (workspace / "kits/site-a/local/authorization.toml").is_file()
    assert (workspace / "kits/site-a/README.txt").is_file()


def test_local_policies_and_readme_are_not_signed(kit_copy: KitCopy) -> None:
    kit = kit_copy("site-a")
    with (kit / "local" / "privacy.toml").open("a") as handle:
        handle.write('required_job_filters = ["differential_privacy"]\n')
    (kit / "local" / "data.toml").write_text("path = '/data'\n")
    (kit / "README.txt").write_text("notes by site IT\n")
    assert load_kit(kit).identity.name == "site-a"


@pytest.mark.parametrize("name", SIGNED)
def test_changed_file_is_named(kit_copy: KitCopy, name: str) -> None:
    kit = kit_copy("site-a")
    path = kit / "startup" / name
    path.write_bytes(path.read_bytes() + b"\n")
    with pytest.raises(KitTamperedError) as exc:
        load_kit(kit)
    assert (exc.value.file, exc.value.change) == (f"startup/{name}", "changed")
    assert f"startup/{name} was changed" in str(exc.value)
    assert "ask the project's Lead IT for a new one" in str(exc.value)


@pytest.mark.parametrize("name", SIGNED)
def test_removed_file_is_named(kit_copy: KitCopy, name: str) -> None:
    kit = kit_copy("site-a")
    (kit / "startup" / name).unlink()
    with pytest.raises(KitTamperedError) as exc:
        load_kit(kit)
    assert (exc.value.file, exc.value.change) == (f"startup/{name}", "removed")


@pytest.mark.parametrize("name", ["extra.pem", "sub/dir/hook.sh", ".hidden"])
def test_added_file_is_named(kit_copy: KitCopy, name: str) -> None:
    kit = kit_copy("site-a")
    path = kit / "startup" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("echo pwned\n")
    with pytest.raises(KitTamperedError) as exc:
        load_kit(kit)
    assert (exc.value.file, exc.value.change) == (f"startup/{name}", "added")


def test_symlink_is_refused(kit_copy: KitCopy) -> None:
    kit = kit_copy("site-a")
    (kit / "startup" / "link").symlink_to("/etc/passwd")
    with pytest.raises(KitTamperedError, match="not a regular file"):
        load_kit(kit)


@pytest.mark.parametrize("target", ["manifest.json", "manifest.sig"])
def test_manifest_or_signature_changed(kit_copy: KitCopy, target: str) -> None:
    kit = kit_copy("site-a")
    path = kit / "startup" / target
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(KitTamperedError) as exc:
        load_kit(kit)
    assert (exc.value.file, exc.value.change) == ("startup/manifest.json", "signature")


def test_manifest_rewritten_without_the_ca_key(
    kit_copy: KitCopy, other_ca: CertificateAuthority
) -> None:
    """Adding a file and its digest to the manifest needs the CA key; another key does not pass."""
    kit = kit_copy("site-a")
    manifest_path = kit / "startup" / "manifest.json"
    manifest = json.loads(manifest_path.read_bytes())
    manifest["files"]["node.toml"] = "0" * 64
    body = _signed.canonical_json(manifest)
    manifest_path.write_bytes(body)
    (kit / "startup" / "manifest.sig").write_bytes(_signed.sign(other_ca.private_key, body))
    with pytest.raises(KitTamperedError, match="signature"):
        load_kit(kit)


def test_kit_re_signed_by_another_ca_is_caught_by_the_fingerprint(
    kit_copy: KitCopy, workspace: Path, other_ca: CertificateAuthority
) -> None:
    kit = kit_copy("site-a")
    genuine = load_kit(workspace / "kits" / "site-a").ca_fingerprint
    (kit / "startup" / "ca.pem").write_bytes(other_ca.cert_pem)
    startup = kit / "startup"
    manifest = json.loads((startup / "manifest.json").read_bytes())
    manifest["files"]["ca.pem"] = hashlib.sha256(other_ca.cert_pem).hexdigest()
    body = _signed.canonical_json(manifest)
    (startup / "manifest.json").write_bytes(body)
    (startup / "manifest.sig").write_bytes(_signed.sign(other_ca.private_key, body))
    # Self-consistent now, but the certificate was not issued by this CA ...
    with pytest.raises(KitError, match="not issued by"):
        load_kit(kit)
    # ... and the pinned fingerprint is refused before anything else.
    with pytest.raises(KitError, match="fingerprint"):
        load_kit(kit, ca_fingerprint=genuine)
    assert load_kit(workspace / "kits" / "site-a", ca_fingerprint=genuine.replace(":", "").lower())


def test_expired_and_not_yet_valid(workspace: Path) -> None:
    kit = workspace / "kits" / "site-a"
    cert = load_kit(kit).certificate
    with pytest.raises(KitValidityError) as late:
        load_kit(kit, now=cert.not_valid_after_utc + dt.timedelta(seconds=1))
    assert late.value.state == "expired"
    assert "expired" in str(late.value)
    with pytest.raises(KitValidityError) as early:
        load_kit(kit, now=cert.not_valid_before_utc - dt.timedelta(seconds=1))
    assert early.value.state == "not yet valid"


def test_world_readable_key_is_refused(kit_copy: KitCopy) -> None:
    kit = kit_copy("site-a")
    os.chmod(kit / "startup" / "key.pem", 0o644)
    with pytest.raises(KitError, match="chmod 600"):
        load_kit(kit)


def test_not_a_kit(tmp_path: Path) -> None:
    with pytest.raises(KitError, match="not a startup kit"):
        load_kit(tmp_path)
    (tmp_path / "site-a.flrtkit").write_bytes(b"FLRTSEAL")
    with pytest.raises(KitError, match="flrt kit open"):
        load_kit(tmp_path / "site-a.flrtkit")


def test_server_trust_files_are_signed(
    kit_copy: KitCopy, workspace: Path, other_ca: CertificateAuthority
) -> None:
    kit = kit_copy("server")
    participants = kit / "trust" / "participants.json"
    participants.write_bytes(participants.read_bytes().replace(b"viewer@", b"mallory@"))
    with pytest.raises(KitTamperedError) as exc:
        load_kit(kit)
    assert exc.value.file == "trust/participants.json"

    (kit / "trust" / "participants.json").write_bytes(
        (workspace / "kits/server/trust/participants.json").read_bytes()
    )
    load_kit(kit)
    forged = build_crl(other_ca, [], number=99)
    (kit / "trust" / "crl.pem").write_bytes(crl_pem(forged))
    with pytest.raises(KitTamperedError) as crl_exc:
        load_kit(kit)
    assert crl_exc.value.file == "trust/crl.pem"
    (kit / "trust" / "crl.pem").unlink()
    assert load_kit(kit).crl is None  # no list is a valid state: nothing revoked yet
    (kit / "trust" / "participants.sig").unlink()
    with pytest.raises(KitTamperedError, match="removed"):
        load_kit(kit)
