"""flrt._durable: security._atomic's one implementation, with flrt's names, signatures and defaults.

The mechanism itself (a full disk, a failing fsync, bad input) is tested in
``tests/security/test_atomic.py``; here, that flrt's front end keeps what its callers rely on.
"""

from __future__ import annotations

import errno
import inspect
import os
import stat
from pathlib import Path

import pytest

from flrt import _durable
from flrt._durable import atomic_file, atomic_write, fsync_directory
from security import _atomic
from tests.security.test_atomic import _counting_fsync, _failing_fsync, _full_disk

OLD = b"the job record as it was\n"


def _parameters(function: object) -> list[tuple[str, object, object]]:
    assert callable(function)
    return [(p.name, p.kind, p.default) for p in inspect.signature(function).parameters.values()]


def test_the_names_and_signatures_callers_use_are_kept() -> None:
    assert _durable.__all__ == [
        "atomic_file",
        "atomic_write",
        "fsync_directory",
        "naming_os_errors",
        "remove_stale_copies",
    ]
    positional, keyword = inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY
    assert _parameters(atomic_file) == [
        ("path", positional, inspect.Parameter.empty),
        ("durable", keyword, True),
    ]
    assert _parameters(atomic_write) == [
        ("path", positional, inspect.Parameter.empty),
        ("data", positional, inspect.Parameter.empty),
        ("durable", keyword, True),
    ]
    assert _parameters(fsync_directory) == [("directory", positional, inspect.Parameter.empty)]


def test_the_folder_fsync_is_security_s() -> None:
    assert fsync_directory is _atomic.fsync_dir


def test_files_are_the_owner_s_only(tmp_path: Path) -> None:
    atomic_write(tmp_path / "record.json", b"{}")
    with atomic_file(tmp_path / "model.safetensors") as out:
        out.write(b"weights")
    for name in ("record.json", "model.safetensors"):
        assert stat.S_IMODE((tmp_path / name).stat().st_mode) == 0o600


def test_a_missing_folder_is_an_error_naming_it_and_is_not_made(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write(tmp_path / "gone" / "record.json", b"{}")
    assert caught.value.filename == str(tmp_path / "gone")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("durable", "expected"), [(True, ["file", "folder"]), (False, [])])
def test_durable_says_whether_anything_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, expected: list[str]
) -> None:
    calls = _counting_fsync(monkeypatch)
    atomic_write(tmp_path / "registry.json", b"{}", durable=durable)
    assert calls == expected
    calls.clear()
    with atomic_file(tmp_path / "model", durable=durable) as out:
        out.write(b"weights")
    assert calls == expected


@pytest.mark.parametrize("streamed", [False, True], ids=["atomic_write", "atomic_file"])
def test_a_full_disk_keeps_the_old_file_and_removes_the_temporary_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, streamed: bool
) -> None:
    path = tmp_path / "record.json"
    path.write_bytes(OLD)
    _full_disk(monkeypatch, 100)

    def write() -> None:
        if streamed:
            with atomic_file(path) as out:
                out.write(b"x" * 100_000)
        else:
            atomic_write(path, b"x" * 100_000)

    with pytest.raises(OSError, match="No space left on device") as caught:
        write()
    assert caught.value.errno == errno.ENOSPC
    monkeypatch.undo()
    assert path.read_bytes() == OLD
    assert [p.name for p in tmp_path.iterdir()] == ["record.json"]


def test_an_io_error_on_the_folder_fsync_is_not_swallowed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_fsync(monkeypatch, errno.EIO, folders=True)
    with pytest.raises(OSError, match=os.strerror(errno.EIO)) as caught:
        fsync_directory(tmp_path)
    assert caught.value.filename == str(tmp_path)


def test_a_folder_without_fsync_is_no_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _failing_fsync(monkeypatch, errno.EINVAL, folders=True)
    atomic_write(tmp_path / "record.json", b"{}")
    fsync_directory(tmp_path)
    assert (tmp_path / "record.json").read_bytes() == b"{}"
