"""Sealed kits: round trip, wrong password leaves nothing behind, arbitrary bytes raise only SealError."""

from __future__ import annotations

import io
import os
import shutil
import struct
import tarfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from security.errors import KitTamperedError, SealError, SealFormatError, SealPasswordError
from security.seal import (
    _HEADER_V1,
    CIPHER_AES256GCM,
    KDF_ARGON2ID,
    KDF_SCRYPT,
    MAGIC,
    KdfParams,
    _derive,
    _tar_kit,
    open_sealed_kit,
    seal_bytes,
    seal_kit,
    unseal_bytes,
)
from tests.security.conftest import FAST_KDF

PASSWORD = b"correct horse battery"


@pytest.fixture
def sealed(workspace: Path, tmp_path: Path) -> Path:
    return seal_kit(
        workspace / "kits" / "site-a", tmp_path / "site-a.flrtkit", PASSWORD, params=FAST_KDF
    )


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("."))


def test_round_trip(sealed: Path, tmp_path: Path, workspace: Path) -> None:
    assert sealed.stat().st_mode & 0o777 == 0o600
    assert sealed.read_bytes().startswith(MAGIC)
    kit = open_sealed_kit(sealed, tmp_path / "opened", PASSWORD)
    assert kit.identity.name == "site-a"
    original = workspace / "kits" / "site-a"
    for path in original.rglob("*"):
        copy = tmp_path / "opened" / path.relative_to(original)
        assert copy.exists(), path
        if path.is_file():
            assert copy.read_bytes() == path.read_bytes()
            assert copy.stat().st_mode & 0o777 == path.stat().st_mode & 0o777
    assert _leftovers(tmp_path) == []


def test_server_kit_round_trip_keeps_trust(workspace: Path, tmp_path: Path) -> None:
    archive = seal_kit(
        workspace / "kits" / "server", tmp_path / "s.flrtkit", PASSWORD, params=FAST_KDF
    )
    kit = open_sealed_kit(archive, tmp_path / "server", PASSWORD)
    assert kit.participants is not None
    assert "site-a" in kit.participants


def test_wrong_password_leaves_nothing(sealed: Path, tmp_path: Path) -> None:
    with pytest.raises(SealPasswordError, match="wrong password"):
        open_sealed_kit(sealed, tmp_path / "opened", b"incorrect horse")
    assert not (tmp_path / "opened").exists()
    assert _leftovers(tmp_path) == []


def test_every_flipped_byte_is_detected(sealed: Path) -> None:
    data = sealed.read_bytes()
    for index in [*range(0, 52, 3), 60, len(data) // 2, len(data) - 1]:
        damaged = bytearray(data)
        damaged[index] ^= 0x40
        with pytest.raises(SealError):
            unseal_bytes(bytes(damaged), PASSWORD)


def test_truncated_and_foreign(sealed: Path) -> None:
    data = sealed.read_bytes()
    with pytest.raises(SealFormatError, match="too short"):
        unseal_bytes(data[:60], PASSWORD)
    with pytest.raises(SealFormatError, match="magic"):
        unseal_bytes(b"PK\x03\x04" + data[4:], PASSWORD)
    with pytest.raises(SealFormatError, match="version 3"):
        unseal_bytes(data[:8] + b"\x03" + data[9:], PASSWORD)


def test_a_copy_cut_short_or_joined_is_told_from_a_wrong_password(sealed: Path) -> None:
    """AES-GCM alone cannot tell a truncated archive from a wrong password: the header's length
    can, before the password is tried."""
    data = sealed.read_bytes()
    with pytest.raises(SealFormatError) as cut:
        unseal_bytes(data[:-1], b"not even the password")
    assert str(cut.value) == (
        f"sealed kit: the archive is cut short: {len(data) - 1:,} of its {len(data):,} bytes; copy it again"
        " from the original, or ask Lead IT to send it again"
    )
    with pytest.raises(SealFormatError, match="has 3 bytes past its end"):
        unseal_bytes(data + b"\n\n\n", PASSWORD)
    with pytest.raises(SealPasswordError, match="wrong password"):
        unseal_bytes(data, b"the wrong password")


def test_a_version_1_archive_still_opens() -> None:
    """Kits sealed before the length field was added (version 1: the ciphertext at byte 52)."""
    salt, nonce = os.urandom(16), os.urandom(12)
    header = _HEADER_V1.pack(
        MAGIC,
        1,
        FAST_KDF.kdf,
        CIPHER_AES256GCM,
        0,
        FAST_KDF.p1,
        FAST_KDF.p2,
        FAST_KDF.p3,
        salt,
        nonce,
    )
    key = _derive(PASSWORD, salt, FAST_KDF)
    old = header + AESGCM(key).encrypt(nonce, b"a kit", header)
    assert unseal_bytes(old, PASSWORD) == b"a kit"
    with pytest.raises(SealPasswordError):  # version 1 has no length to tell a cut copy by
        unseal_bytes(old[:-1], PASSWORD)


def test_destination_must_be_new(sealed: Path, tmp_path: Path) -> None:
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "file").write_text("mine")
    with pytest.raises(SealError, match="not an empty folder"):
        open_sealed_kit(sealed, tmp_path / "busy", PASSWORD)
    assert (tmp_path / "busy" / "file").read_text() == "mine"
    (tmp_path / "empty").mkdir()
    assert open_sealed_kit(sealed, tmp_path / "empty", PASSWORD).identity.name == "site-a"


def test_an_empty_folder_that_exists_is_kept_with_its_mode(sealed: Path, tmp_path: Path) -> None:
    # A mount point (an encrypted volume) cannot be replaced, and an operator's folder keeps the
    # owner and mode it was given: the kit is opened inside it.
    folder = tmp_path / "volume"
    folder.mkdir(mode=0o750)
    os.chmod(folder, 0o750)
    before = folder.stat()
    kit = open_sealed_kit(sealed, folder, PASSWORD)
    after = folder.stat()
    assert kit.identity.name == "site-a"
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)
    assert not [p.name for p in folder.iterdir() if p.name.startswith(".")]


@pytest.mark.parametrize("password", [b"", b"short", b"aaaaaaaaaaaa"])
def test_weak_password_refused(password: bytes) -> None:
    with pytest.raises(SealPasswordError):
        seal_bytes(b"kit", password, params=FAST_KDF)


def test_scrypt_archives_open_too() -> None:
    params = KdfParams(KDF_SCRYPT, 14, 8, 1)
    assert unseal_bytes(seal_bytes(b"payload", PASSWORD, params=params), PASSWORD) == b"payload"


def test_kdf_cost_is_bounded() -> None:
    heavy = seal_bytes(b"x", PASSWORD, params=KdfParams(KDF_ARGON2ID, 64 * 1024, 1, 1))
    with pytest.raises(SealFormatError, match="more than"):
        unseal_bytes(heavy, PASSWORD, max_kdf_memory_kib=16 * 1024)
    absurd = bytearray(heavy)
    struct.pack_into(">I", absurd, 12, 1 << 31)  # 2 TiB of Argon2 memory
    with pytest.raises(SealFormatError):
        unseal_bytes(bytes(absurd), PASSWORD)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return buffer.getvalue()


@pytest.mark.parametrize(
    "info",
    [
        tarfile.TarInfo("../escape.txt"),
        tarfile.TarInfo("/etc/escape.txt"),
        tarfile.TarInfo("startup/../../escape.txt"),
    ],
)
def test_unsafe_archive_paths_are_refused(tmp_path: Path, info: tarfile.TarInfo) -> None:
    archive = tmp_path / "evil.flrtkit"
    archive.write_bytes(seal_bytes(_tar([(info, b"x")]), PASSWORD, params=FAST_KDF))
    with pytest.raises(SealFormatError, match="unsafe path"):
        open_sealed_kit(archive, tmp_path / "out" / "kit", PASSWORD)
    assert not (tmp_path / "escape.txt").exists()
    assert not (tmp_path / "out" / "kit").exists()


def test_links_in_archive_are_refused(tmp_path: Path) -> None:
    link = tarfile.TarInfo("startup/key.pem")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/shadow"
    archive = tmp_path / "evil.flrtkit"
    archive.write_bytes(seal_bytes(_tar([(link, b"")]), PASSWORD, params=FAST_KDF))
    with pytest.raises(SealFormatError, match="not a regular file"):
        open_sealed_kit(archive, tmp_path / "kit", PASSWORD)
    assert not (tmp_path / "kit").exists()


def test_sealed_kit_that_does_not_verify_leaves_nothing(workspace: Path, tmp_path: Path) -> None:
    """The password is right but the kit inside was tampered with before sealing."""
    kit = tmp_path / "tampered"
    shutil.copytree(workspace / "kits" / "site-a", kit)
    (kit / "startup" / "extra").write_text("x")
    archive = tmp_path / "t.flrtkit"
    archive.write_bytes(seal_bytes(_tar_kit(kit), PASSWORD, params=FAST_KDF))
    with pytest.raises(KitTamperedError):
        open_sealed_kit(archive, tmp_path / "opened", PASSWORD)
    assert not (tmp_path / "opened").exists()
    assert _leftovers(tmp_path) == []


def test_seal_refuses_a_broken_kit(workspace: Path, tmp_path: Path) -> None:
    kit = tmp_path / "k"
    shutil.copytree(workspace / "kits" / "site-a", kit)
    (kit / "startup" / "node.toml").write_text("x")
    with pytest.raises(KitTamperedError):
        seal_kit(kit, tmp_path / "k.flrtkit", PASSWORD, params=FAST_KDF)
    assert not (tmp_path / "k.flrtkit").exists()


_HEADERS = st.builds(
    lambda version, kdf, cipher, p1, p2, p3, rest: (
        MAGIC + bytes([version, kdf, cipher, 0]) + struct.pack(">III", p1, p2, p3) + rest
    ),
    st.sampled_from([1, 1, 1, 2, 255]),
    st.sampled_from([KDF_ARGON2ID, KDF_SCRYPT, 0, 9]),
    st.sampled_from([1, 1, 2]),
    st.sampled_from([0, 1, 14, 8 * 1024, 16 * 1024, 1 << 20, 2**32 - 1]),
    st.integers(0, 40),
    st.integers(0, 20),
    st.binary(max_size=200),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.one_of(st.binary(max_size=300), _HEADERS), password=st.binary(max_size=20))
def test_arbitrary_bytes_raise_only_seal_errors(data: bytes, password: bytes) -> None:
    with pytest.raises(SealError):
        unseal_bytes(data, password, max_kdf_memory_kib=16 * 1024)
