"""Kits, sealed kits and project files that an operator gets wrong, or that the machine will not let
flrt read or write: each is one :class:`~security.errors.SecurityError` naming the file and the
problem, never a bare :class:`OSError` nor a temporary folder's name."""

from __future__ import annotations

import errno
from collections.abc import Callable
from pathlib import Path

import pytest

from flrt.cli import main
from security.errors import KitError, ProjectFileError, SealError
from security.kit import load_kit
from security.project import parse_project
from security.seal import open_sealed_kit, seal_kit
from tests.security.conftest import FAST_KDF, SMALL_PROJECT

PASSWORD = b"correct horse battery"


def test_a_kit_folder_that_does_not_exist_says_so(tmp_path: Path) -> None:
    with pytest.raises(KitError, match=r"hospital-a: does not exist$"):
        load_kit(tmp_path / "hospital-a")


@pytest.mark.parametrize("name", ["key.pem", "cert.pem", "ca.pem"])
def test_a_kit_file_this_user_may_not_read_is_named(
    kit_copy: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    kit = kit_copy("site-a")
    real = Path.read_bytes

    def read_bytes(path: Path) -> bytes:  # what chmod 000 does to a user who is not root
        if path.name == name:
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    with pytest.raises(KitError, match=rf"startup/{name} cannot be read: Permission denied$"):
        load_kit(kit)


def test_a_server_kit_whose_trust_folder_cannot_be_searched_is_named(
    kit_copy: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    kit = kit_copy("server")
    real = Path.exists

    def exists(path: Path) -> bool:
        if path.parent.name == "trust":
            raise PermissionError(errno.EACCES, "Permission denied", str(path))
        return real(path)

    monkeypatch.setattr(Path, "exists", exists)
    with pytest.raises(KitError, match=r"trust/crl\.pem cannot be read: Permission denied$"):
        load_kit(kit)


@pytest.fixture
def sealed(workspace: Path, tmp_path: Path) -> Path:
    return seal_kit(
        workspace / "kits" / "site-a", tmp_path / "site-a.flrtkit", PASSWORD, params=FAST_KDF
    )


def test_a_wrong_ca_fingerprint_names_the_archive_not_a_temporary_folder(
    sealed: Path, tmp_path: Path
) -> None:
    with pytest.raises(KitError) as caught:
        open_sealed_kit(sealed, tmp_path / "opened", PASSWORD, ca_fingerprint="AA:BB")
    assert str(caught.value).startswith(f"kit {sealed}: the project CA's fingerprint is ")
    assert caught.value.path == sealed
    assert sorted(p.name for p in tmp_path.iterdir()) == ["site-a.flrtkit"]


def test_opening_where_nothing_can_be_created_is_a_seal_error(sealed: Path, tmp_path: Path) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(SealError, match=r"/opened cannot be created: "):
        open_sealed_kit(sealed, blocker / "opened", PASSWORD)


def test_sealing_where_nothing_can_be_written_is_a_seal_error(
    workspace: Path, tmp_path: Path
) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    with pytest.raises(SealError, match=r"/x\.flrtkit cannot be written: "):
        seal_kit(workspace / "kits" / "site-a", blocker / "x.flrtkit", PASSWORD, params=FAST_KDF)


@pytest.mark.parametrize("host", ["999.1.1.1", "10.20.0", "010.20.0.5", "12345"])
def test_a_host_that_looks_like_a_mistyped_address_is_refused(host: str) -> None:
    text = SMALL_PROJECT.replace('"127.0.0.1"]', f'"127.0.0.1", "{host}"]')
    assert host in text
    with pytest.raises(ProjectFileError, match=r"server\.hosts\[3\]: .* is not an IP address"):
        parse_project(text)


def test_a_project_file_saved_with_a_byte_order_mark_is_read() -> None:
    assert parse_project("\ufeff" + SMALL_PROJECT).name == "test-project"


def test_provision_into_a_workspace_it_cannot_write_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    project = tmp_path / "project.toml"
    project.write_text(SMALL_PROJECT)
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert main(["provision", str(project), "-o", str(blocker / "ws")]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"flrt: error: workspace {blocker / 'ws'}: cannot be written: "), err
    assert err.count("\n") == 1, err
