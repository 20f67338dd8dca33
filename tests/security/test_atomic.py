"""security._atomic: the one crash-safe write, for security and (through flrt._durable) for flrt.

A full disk is played by a file object that takes a budget of bytes and then answers ENOSPC, as a
kernel does (a short write, then the error), and once for real: a child process whose file-size
limit (RLIMIT_FSIZE) makes the kernel refuse the write.
"""

from __future__ import annotations

import errno
import io
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from security._atomic import atomic_file, atomic_write, fsync_dir

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

ROOT = Path(__file__).resolve().parents[2]
OLD = b"the old content, which nothing may lose\n"
NEW = b"x" * 200_000  # larger than a write buffer: the writer writes it straight through


class _FullDisk(io.FileIO):
    """A file on a disk with ``budget`` bytes free: a short write, then ENOSPC."""

    def __init__(self, fd: int, budget: int) -> None:
        super().__init__(fd, "wb")
        self.budget = budget

    def write(self, data: ReadableBuffer) -> int:
        view = memoryview(data)
        if self.budget == 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        taken = super().write(view[: self.budget])
        self.budget -= taken
        return taken


def _full_disk(monkeypatch: pytest.MonkeyPatch, budget: int) -> None:
    def fdopen(fd: int, mode: str) -> io.BufferedWriter:
        assert mode == "wb"
        return io.BufferedWriter(_FullDisk(fd, budget))

    monkeypatch.setattr(os, "fdopen", fdopen)


def _failing_fsync(monkeypatch: pytest.MonkeyPatch, code: int, *, folders: bool) -> list[str]:
    """Make fsync of folders (or of files) fail with ``code``; return what was fsynced."""
    real = os.fsync
    calls: list[str] = []

    def fsync(fd: int) -> None:
        kind = "folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file"
        calls.append(kind)
        if (kind == "folder") == folders:
            raise OSError(code, os.strerror(code))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


def _counting_fsync(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    real = os.fsync
    calls: list[str] = []

    def fsync(fd: int) -> None:
        calls.append("folder" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return calls


@pytest.fixture
def old(tmp_path: Path) -> Path:
    path = tmp_path / "registry.json"
    path.write_bytes(OLD)
    return path


def _intact(path: Path) -> None:
    """The old file is as it was and no temporary file is left beside it."""
    assert path.read_bytes() == OLD
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]


def _write(path: Path, data: bytes) -> None:
    atomic_write(path, data)


def _stream(path: Path, data: bytes) -> None:
    with atomic_file(path) as out:
        for start in range(0, len(data), 4096):
            out.write(data[start : start + 4096])


WRITERS = [pytest.param(_write, id="atomic_write"), pytest.param(_stream, id="atomic_file")]


# ------------------------------------------------------------------ the normal case


@pytest.mark.parametrize("writer", WRITERS)
def test_the_new_content_replaces_the_old_and_no_temporary_file_remains(
    old: Path, writer: Callable[[Path, bytes], None]
) -> None:
    writer(old, NEW)
    assert old.read_bytes() == NEW
    assert [p.name for p in old.parent.iterdir()] == [old.name]


def test_the_mode_is_set_whatever_the_umask(tmp_path: Path) -> None:
    previous = os.umask(0o077)
    try:
        atomic_write(tmp_path / "cert.pem", b"public", mode=0o644)
        atomic_write(tmp_path / "key.pem", b"secret", mode=0o600)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "cert.pem").stat().st_mode) == 0o644
    assert stat.S_IMODE((tmp_path / "key.pem").stat().st_mode) == 0o600


def test_atomic_write_makes_the_folder_unless_told_not_to(tmp_path: Path) -> None:
    atomic_write(tmp_path / "a" / "b" / "file", b"1")
    assert (tmp_path / "a" / "b" / "file").read_bytes() == b"1"
    with pytest.raises(FileNotFoundError) as caught:
        atomic_write(tmp_path / "c" / "file", b"1", parents=False)
    assert caught.value.filename == str(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_a_string_path_and_any_bytes_like_data_are_accepted(tmp_path: Path) -> None:
    atomic_write(str(tmp_path / "file"), bytearray(b"ab"))
    atomic_write(tmp_path / "view", memoryview(b"abcd")[1:3])
    assert (tmp_path / "file").read_bytes() == b"ab"
    assert (tmp_path / "view").read_bytes() == b"bc"


@pytest.mark.parametrize(
    ("kwargs", "expected"),
    [
        ({}, ["file", "folder"]),
        ({"sync_dir": False}, ["file"]),
        ({"durable": False}, []),
    ],
)
def test_what_is_fsynced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, kwargs: dict[str, bool], expected: list[str]
) -> None:
    calls = _counting_fsync(monkeypatch)
    atomic_write(tmp_path / "file", b"1", **kwargs)
    assert calls == expected


# ------------------------------------------------------------------ a full disk


@pytest.mark.parametrize("writer", WRITERS)
@pytest.mark.parametrize("budget", [0, 1000, len(NEW) - 1])
def test_a_full_disk_keeps_the_old_file_and_removes_the_temporary_one(
    old: Path, monkeypatch: pytest.MonkeyPatch, writer: Callable[[Path, bytes], None], budget: int
) -> None:
    _full_disk(monkeypatch, budget)
    with pytest.raises(OSError, match="No space left on device") as caught:
        writer(old, NEW)
    assert caught.value.errno == errno.ENOSPC
    if writer is _write:  # atomic_file's caller writes, and hears the file object's own error
        assert caught.value.filename == str(old)
    monkeypatch.undo()
    _intact(old)


def test_a_full_disk_on_a_small_buffered_write_fails_at_the_flush(
    old: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _full_disk(monkeypatch, 3)
    with pytest.raises(OSError, match="No space left on device") as caught:
        atomic_write(old, b"short, still in the buffer")
    assert (caught.value.errno, caught.value.filename) == (errno.ENOSPC, str(old))
    monkeypatch.undo()
    _intact(old)


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EIO])
def test_a_failing_file_fsync_keeps_the_old_file(
    old: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    _failing_fsync(monkeypatch, code, folders=False)
    with pytest.raises(OSError, match=os.strerror(code)) as caught:
        atomic_write(old, NEW)
    assert (caught.value.errno, caught.value.filename) == (code, str(old))
    monkeypatch.undo()
    _intact(old)


@pytest.mark.timeout(60)
def test_a_write_the_kernel_refuses_keeps_the_old_file(old: Path) -> None:
    # A real refusal: the child may not grow a file past 64 KiB, so write(2) fails with EFBIG part
    # way through NEW, as it fails with ENOSPC on a full disk.
    child = textwrap.dedent(
        """
        import resource, signal, sys
        from pathlib import Path
        from security._atomic import atomic_write
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.RLIM_INFINITY))
        try:
            atomic_write(Path(sys.argv[1]), b"x" * 200_000)
        except OSError as exc:
            print(exc.errno, exc.filename)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", child, str(old)],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert done.stdout.split() == [str(errno.EFBIG), str(old)], done.stderr
    _intact(old)


# ------------------------------------------------------------------ the caller's block fails


class _Cancelled(BaseException):
    """Stands for a cancellation: not an Exception, and not to be swallowed."""


@pytest.mark.parametrize("raised", [ValueError("bad weights"), _Cancelled()])
def test_whatever_the_block_raises_propagates_and_keeps_the_old_file(
    old: Path, raised: BaseException
) -> None:
    def block() -> None:
        with atomic_file(old) as out:
            out.write(NEW)
            raise raised

    with pytest.raises(type(raised)) as caught:
        block()
    assert caught.value is raised
    _intact(old)


# ------------------------------------------------------------------ bad input


def test_data_that_is_not_bytes_is_refused_before_anything_is_written(old: Path) -> None:
    with pytest.raises(
        TypeError, match=r"registry\.json: the data to write must be bytes, not str"
    ):
        atomic_write(old, "text")  # type: ignore[arg-type]
    _intact(old)


def test_a_folder_as_the_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "kit").mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder, not a file") as caught:
        atomic_write(tmp_path / "kit", b"1")
    assert caught.value.filename == str(tmp_path / "kit")
    assert [p.name for p in tmp_path.iterdir()] == ["kit"]


@pytest.mark.parametrize("mode", [-1, 0o10000])
def test_a_mode_that_is_not_permission_bits_is_refused(old: Path, mode: int) -> None:
    with pytest.raises(ValueError, match="is not a permission mode"):
        atomic_write(old, NEW, mode=mode)
    _intact(old)


def test_a_folder_that_is_a_file_is_named(tmp_path: Path) -> None:
    (tmp_path / "plain").write_bytes(b"")
    with pytest.raises(NotADirectoryError) as caught:
        atomic_write(tmp_path / "plain" / "file", b"1", parents=False)
    assert caught.value.filename == str(tmp_path / "plain")


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into a read-only folder")
def test_a_read_only_folder_is_named_and_keeps_the_old_file(old: Path) -> None:
    old.parent.chmod(0o500)
    try:
        with pytest.raises(PermissionError) as caught:
            atomic_write(old, NEW)
        assert caught.value.filename == str(old.parent)
    finally:
        old.parent.chmod(0o700)
    _intact(old)


# ------------------------------------------------------------------ the folder fsync


@pytest.mark.parametrize("code", [errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP])
def test_a_file_system_without_folder_fsync_is_no_error(
    old: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    calls = _failing_fsync(monkeypatch, code, folders=True)
    atomic_write(old, NEW)
    fsync_dir(old.parent)
    assert calls == ["file", "folder", "folder"]
    assert old.read_bytes() == NEW


@pytest.mark.parametrize("code", [errno.EIO, errno.ENOSPC, errno.EDQUOT])
def test_a_real_folder_fsync_error_is_raised_naming_the_folder(
    old: Path, monkeypatch: pytest.MonkeyPatch, code: int
) -> None:
    _failing_fsync(monkeypatch, code, folders=True)
    with pytest.raises(OSError, match=os.strerror(code)) as caught:
        fsync_dir(old.parent)
    assert (caught.value.errno, caught.value.filename) == (code, str(old.parent))
    # After the rename: the new file is in place, but the caller hears it may not be durable.
    with pytest.raises(OSError, match=os.strerror(code)) as caught:
        atomic_write(old, NEW)
    assert (caught.value.errno, caught.value.filename) == (code, str(old.parent))
    assert old.read_bytes() == NEW
    assert [p.name for p in old.parent.iterdir()] == [old.name]


def test_fsync_dir_refuses_what_is_not_a_folder(tmp_path: Path) -> None:
    (tmp_path / "file").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        fsync_dir(tmp_path / "file")
    with pytest.raises(FileNotFoundError):
        fsync_dir(tmp_path / "missing")
