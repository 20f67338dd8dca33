"""``flrt provision -o FOLDER`` into an empty folder that already exists (made for the project
with the owner and mode Lead IT chose, or a mount point such as an encrypted volume, which cannot
be renamed or replaced): the workspace is built inside that very folder."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from security.kit import load_kit
from security.project import parse_project
from security.provision import open_workspace, provision
from tests.security.conftest import SMALL_PROJECT


def test_an_empty_folder_that_exists_is_kept_and_filled(tmp_path: Path) -> None:
    folder = tmp_path / "secure-volume"
    folder.mkdir()
    os.chmod(folder, 0o750)
    before = os.stat(folder)
    result = provision(parse_project(SMALL_PROJECT), folder)
    after = os.stat(folder)
    assert (after.st_ino, after.st_mode) == (before.st_ino, before.st_mode)  # the same folder
    assert result.first_run
    assert sorted(p.name for p in folder.iterdir()) == ["ca", "kits"]  # no staging left
    assert open_workspace(folder).entries.keys() == {
        p.name for p in parse_project(SMALL_PROJECT).participants
    }
    load_kit(folder / "kits" / "site-a")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["secure-volume"]


def test_a_failure_leaves_the_existing_folder_empty(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "secure-volume"
    folder.mkdir()

    def full(*args: object, **kwargs: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr("security.provision.write_kit", full)
    with pytest.raises(OSError, match="No space left"):
        provision(parse_project(SMALL_PROJECT), folder)
    assert list(folder.iterdir()) == []
