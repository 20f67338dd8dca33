"""Sealed kits: one password-protected file per kit, for transfer by e-mail, USB stick or share.

Format (version 2), all integers big-endian::

    offset  size  field
         0     8  magic  b"FLRTSEAL"
         8     1  format version = 2
         9     1  KDF: 1 = Argon2id, 2 = scrypt
        10     1  cipher: 1 = AES-256-GCM
        11     1  reserved, 0
        12     4  KDF parameter 1  (Argon2id: memory in KiB; scrypt: log2 N)
        16     4  KDF parameter 2  (Argon2id: iterations;   scrypt: r)
        20     4  KDF parameter 3  (Argon2id: lanes;        scrypt: p)
        24    16  salt
        40    12  nonce
        52     8  length of the ciphertext that follows, tag included
        60     …  AES-256-GCM ciphertext of a gzip tar of the kit folder, with its 16-byte tag;
                  the 60 header bytes are the associated data, so no field can be altered

Version 1 (still opened) is the same without the length field: its ciphertext starts at byte 52.
The length tells a copy cut short (an e-mail attachment, a USB stick pulled out) from a wrong
password before the password is even tried; AES-GCM alone cannot tell them apart.

The key is derived from the password with Argon2id (RFC 9106's second recommended setting: 64 MiB,
3 passes, 4 lanes), or scrypt where this cryptography build lacks Argon2. The KDF parameters are
read from the header but bounded, so a crafted archive cannot make the opener allocate gigabytes.
A wrong password and a damaged archive are both an authentication failure
(:class:`~security.errors.SealPasswordError`); anything that is not this format is a
:class:`~security.errors.SealFormatError`.

Opening extracts into a private staging folder next to the destination, verifies the kit with
:func:`security.kit.load_kit` and only then renames the folder into place: a wrong password, a
damaged archive or a kit that does not verify leaves nothing behind. The tar is read member by
member: only regular files and folders with relative, normalised names are accepted.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import io
import os
import secrets
import stat
import struct
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cryptography.exceptions import InvalidTag, UnsupportedAlgorithm
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from security._atomic import atomic_write, fsync_dir, replace_dir, staging_dir
from security.errors import KitError, SealError, SealFormatError, SealPasswordError
from security.kit import MANIFEST_FILE, SIGNATURE_FILE, Kit, load_kit

__all__ = [
    "DEFAULT_PARAMS",
    "MIN_PASSWORD_LENGTH",
    "SEAL_SUFFIX",
    "KdfParams",
    "check_new_password",
    "open_sealed_kit",
    "seal_bytes",
    "seal_kit",
    "unseal_bytes",
]

MAGIC = b"FLRTSEAL"
VERSION = 2
SEAL_SUFFIX = ".flrtkit"
MIN_PASSWORD_LENGTH = 8
KDF_ARGON2ID = 1
KDF_SCRYPT = 2
CIPHER_AES256GCM = 1
_HEADER_V1 = struct.Struct(">8sBBBBIII16s12s")
_HEADER = struct.Struct(">8sBBBBIII16s12sQ")
_TAG = 16
_MAX_ARCHIVE = 1 << 30
_MAX_MEMBERS = 10_000
_MAX_UNPACKED = 1 << 30
#: Upper bound on the memory a header may ask the KDF to use, in KiB (1 GiB).
MAX_KDF_MEMORY_KIB = 1 << 20


@dataclass(frozen=True, slots=True)
class KdfParams:
    """Password-hashing parameters; see the module docstring for the meaning per KDF."""

    kdf: int
    p1: int
    p2: int
    p3: int

    def memory_kib(self) -> int:
        if self.kdf == KDF_ARGON2ID:
            return self.p1
        return 128 * self.p2 * (1 << min(self.p1, 40)) // 1024


def _argon2_available() -> bool:
    try:
        from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

        Argon2id(salt=b"\0" * 16, length=32, iterations=1, lanes=1, memory_cost=8).derive(b"x")
    except (ImportError, UnsupportedAlgorithm):
        return False
    return True


DEFAULT_PARAMS = (
    KdfParams(KDF_ARGON2ID, 64 * 1024, 3, 4)
    if _argon2_available()
    else KdfParams(KDF_SCRYPT, 17, 8, 1)  # 128 MiB
)


def _check_params(params: KdfParams, max_memory_kib: int) -> None:
    if params.kdf == KDF_ARGON2ID:
        ok = params.p1 >= 8 * 1024 and 1 <= params.p2 <= 16 and 1 <= params.p3 <= 16
    elif params.kdf == KDF_SCRYPT:
        ok = 14 <= params.p1 <= 24 and 1 <= params.p2 <= 32 and 1 <= params.p3 <= 16
    else:
        raise SealFormatError(f"unknown key-derivation function {params.kdf}")
    if not ok:
        raise SealFormatError("key-derivation parameters out of range")
    if params.memory_kib() > max_memory_kib:
        raise SealFormatError(
            f"key derivation would need {params.memory_kib() // 1024} MiB, more than the "
            f"{max_memory_kib // 1024} MiB allowed"
        )


def _derive(password: bytes, salt: bytes, params: KdfParams) -> bytes:
    try:
        if params.kdf == KDF_ARGON2ID:
            from cryptography.hazmat.primitives.kdf.argon2 import Argon2id

            return Argon2id(
                salt=salt,
                length=32,
                iterations=params.p2,
                lanes=params.p3,
                memory_cost=params.p1,
            ).derive(password)
        return Scrypt(salt=salt, length=32, n=1 << params.p1, r=params.p2, p=params.p3).derive(
            password
        )
    except (ImportError, UnsupportedAlgorithm):
        raise SealFormatError(
            "this build of cryptography cannot derive the archive's key"
        ) from None
    except MemoryError:
        raise SealFormatError("not enough memory for the archive's key derivation") from None


def check_new_password(password: bytes) -> None:
    """Raise :class:`SealPasswordError` if ``password`` is too weak to seal a kit with."""
    if len(password) < MIN_PASSWORD_LENGTH:
        raise SealPasswordError(f"the password must have at least {MIN_PASSWORD_LENGTH} characters")
    if len(set(password)) < 3:
        raise SealPasswordError("the password must use at least three different characters")


def seal_bytes(plaintext: bytes, password: bytes, *, params: KdfParams = DEFAULT_PARAMS) -> bytes:
    """Encrypt ``plaintext`` under ``password``; raises :class:`SealPasswordError` for a weak password."""
    check_new_password(password)
    _check_params(params, MAX_KDF_MEMORY_KIB)
    salt, nonce = secrets.token_bytes(16), secrets.token_bytes(12)
    header = _HEADER.pack(
        MAGIC,
        VERSION,
        params.kdf,
        CIPHER_AES256GCM,
        0,
        params.p1,
        params.p2,
        params.p3,
        salt,
        nonce,
        len(plaintext) + _TAG,
    )
    key = _derive(password, salt, params)
    return header + AESGCM(key).encrypt(nonce, plaintext, header)


def unseal_bytes(
    data: bytes, password: bytes, *, max_kdf_memory_kib: int = MAX_KDF_MEMORY_KIB
) -> bytes:
    """Decrypt what :func:`seal_bytes` made.

    Raises :class:`SealFormatError` if ``data`` is not a sealed archive of version 1 or 2, is cut
    short or has bytes past its end (version 2), or asks for more than ``max_kdf_memory_kib`` of
    KDF memory; :class:`SealPasswordError` if the password is wrong or the archive was altered.
    Raises nothing else, whatever the bytes.
    """
    if len(data) < _HEADER_V1.size + _TAG:
        raise SealFormatError("too short to be a sealed kit")
    _magic, version, kdf, cipher, reserved, p1, p2, p3, salt, nonce = _HEADER_V1.unpack_from(data)
    if _magic != MAGIC:
        raise SealFormatError("not a sealed kit (wrong magic bytes)")
    if version == VERSION:  # version 1's fields, then the ciphertext's length
        if len(data) < _HEADER.size:
            raise SealFormatError("too short to be a sealed kit")
        header_size = _HEADER.size
        _check_length(len(data), header_size + _HEADER.unpack_from(data)[-1])
    elif version == 1:
        header_size = _HEADER_V1.size
    else:
        raise SealFormatError(
            f"format version {version} is not supported (this flrt reads 1 and {VERSION})"
        )
    if cipher != CIPHER_AES256GCM or reserved != 0:
        raise SealFormatError(f"unknown cipher {cipher}")
    _check_params(KdfParams(kdf, p1, p2, p3), max_kdf_memory_kib)
    key = _derive(password, salt, KdfParams(kdf, p1, p2, p3))
    header = data[:header_size]
    try:
        return AESGCM(key).decrypt(nonce, data[header_size:], header)
    except InvalidTag:
        raise SealPasswordError("wrong password, or the archive is damaged") from None


def _check_length(size: int, declared: int) -> None:
    """Raise :class:`SealFormatError` unless an archive of ``size`` bytes is as long as its header
    says (``declared``)."""
    if size < declared:
        raise SealFormatError(
            f"the archive is cut short: {size:,} of its {declared:,} bytes; copy it again from"
            " the original, or ask Lead IT to send it again"
        )
    if size > declared:
        raise SealFormatError(
            f"the archive has {size - declared:,} bytes past its end ({declared:,} bytes):"
            " it was altered or joined with another file; ask Lead IT to send it again"
        )


def _tar_kit(kit: Path) -> bytes:
    buffer = io.BytesIO()
    with (
        gzip.GzipFile(fileobj=buffer, mode="wb", mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for dirpath, dirnames, filenames in os.walk(kit):
            dirnames.sort()
            base = Path(dirpath)
            for name in [*dirnames, *sorted(filenames)]:
                full = base / name
                info = tar.gettarinfo(str(full), arcname=full.relative_to(kit).as_posix())
                info.uid = info.gid = 0
                info.uname = info.gname = ""
                if info.isreg():
                    with full.open("rb") as handle:
                        tar.addfile(info, handle)
                elif info.isdir():
                    tar.addfile(info)
                else:
                    raise SealError(f"{full} is not a regular file or folder")
    return buffer.getvalue()


def seal_kit(
    kit: Path | str, archive: Path | str, password: bytes, *, params: KdfParams = DEFAULT_PARAMS
) -> Path:
    """Write the kit folder ``kit`` as one sealed file ``archive`` (mode 0600, written atomically).

    The kit is verified first (:func:`security.kit.load_kit`), so a broken kit is never sealed.
    Raises that function's :class:`~security.errors.KitError`, and :class:`SealError` if the
    archive cannot be written.
    """
    kit, archive = Path(kit), Path(archive)
    load_kit(kit)
    sealed = seal_bytes(_tar_kit(kit), password, params=params)
    try:
        atomic_write(archive, sealed, mode=0o600)
    except OSError as exc:  # a full disk, a folder this user may not write
        raise SealError(f"{archive} cannot be written: {exc.strerror or exc}") from None
    return archive


def _extract(payload: bytes, target: Path) -> None:
    try:
        with tarfile.open(fileobj=io.BytesIO(payload), mode="r:gz") as tar:
            total = 0
            for count, member in enumerate(tar, start=1):
                if count > _MAX_MEMBERS:
                    raise SealFormatError("too many files in the archive")
                name = PurePosixPath(member.name)
                if (
                    name.is_absolute()
                    or not name.parts
                    or any(part in ("", ".", "..") for part in name.parts)
                    or "\\" in member.name
                ):
                    raise SealFormatError(f"unsafe path in the archive: {member.name!r}")
                dest = target.joinpath(*name.parts)
                if member.isdir():
                    dest.mkdir(mode=0o700, parents=True, exist_ok=True)
                elif member.isreg():
                    total += member.size
                    if total > _MAX_UNPACKED:
                        raise SealFormatError("the archive unpacks to more than 1 GiB")
                    source = tar.extractfile(member)
                    if source is None:  # pragma: no cover - isreg() guarantees a file object
                        raise SealFormatError(f"cannot read {member.name!r}")
                    dest.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                    mode = stat.S_IMODE(member.mode) & 0o755 or 0o600
                    if dest.name == "key.pem":
                        mode = 0o600
                    fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
                    with os.fdopen(fd, "wb") as out:
                        out.write(source.read())
                        out.flush()
                        os.fsync(out.fileno())
                    os.chmod(dest, mode)  # O_CREAT's mode is reduced by the umask
                else:
                    raise SealFormatError(f"{member.name!r} is not a regular file or folder")
            for member in tar.getmembers():
                if member.isdir():
                    os.chmod(target.joinpath(*PurePosixPath(member.name).parts), 0o755)
    except (tarfile.TarError, EOFError, zlib.error, gzip.BadGzipFile, ValueError) as exc:
        raise SealFormatError(f"the sealed content is not a kit archive: {exc}") from None
    except FileExistsError as exc:
        raise SealFormatError(f"the archive holds {exc.filename!r} twice") from None


def open_sealed_kit(
    archive: Path | str,
    destination: Path | str,
    password: bytes,
    *,
    now: dt.datetime | None = None,
    ca_fingerprint: str | None = None,
) -> Kit:
    """Open the sealed kit ``archive`` into the new folder ``destination`` and return the verified kit.

    ``destination`` must not exist, or be an empty folder (kept as it is: its owner and mode, or a
    mount point). Raises :class:`SealFormatError`,
    :class:`SealPasswordError`, any :class:`~security.errors.KitError` of the kit inside, or
    :class:`SealError` if the destination is taken; in every case nothing is left at ``destination``.
    """
    archive, destination = Path(archive), Path(destination)
    if destination.exists() and (not destination.is_dir() or any(destination.iterdir())):
        raise SealError(f"{destination} already exists and is not an empty folder")
    try:
        size = archive.stat().st_size
        if size > _MAX_ARCHIVE:
            raise SealFormatError("larger than 1 GiB: not a sealed kit")
        data = archive.read_bytes()
    except OSError as exc:
        raise SealError(f"{archive} cannot be read: {exc.strerror or exc}") from None
    payload = unseal_bytes(data, password)
    # An empty folder that exists already (made for the kit, or a mount point such as an
    # encrypted volume, which cannot be replaced) is kept, with its owner and mode: the kit is
    # opened inside it and moved in, its signed manifest last. A new folder is opened beside its
    # destination and renamed into place whole.
    in_place = destination.is_dir()
    parent = destination if in_place else destination.absolute().parent
    try:
        with staging_dir(
            parent, ".opening-" if in_place else f".{destination.name}.opening-"
        ) as staging:
            _extract(payload, staging)
            try:
                load_kit(staging, now=now, ca_fingerprint=ca_fingerprint)
            except KitError as exc:  # named after the archive, not the temporary folder
                exc.path = archive
                exc.args = (f"kit {archive}: {exc.reason}",)
                raise
            if in_place:
                _move_into(staging, destination)
            else:
                os.chmod(staging, 0o755)
                replace_dir(staging, destination)
    except OSError as exc:  # a full disk, a folder this user may not write
        raise SealError(f"{destination} cannot be created: {exc.strerror or exc}") from None
    fsync_dir(parent)
    return load_kit(destination, now=now, ca_fingerprint=ca_fingerprint)


def _move_into(staging: Path, destination: Path) -> None:
    """Move every entry of ``staging`` into the empty folder ``destination``, the manifest and
    its signature last (a kit without them does not load); on failure, take back what moved."""
    moved: list[Path] = []
    last = (MANIFEST_FILE, SIGNATURE_FILE)
    try:
        for entry in sorted(staging.iterdir(), key=lambda e: (e.name in last, e.name)):
            os.rename(entry, destination / entry.name)
            moved.append(destination / entry.name)
        fsync_dir(destination)
    except OSError:
        for path in reversed(moved):
            with contextlib.suppress(OSError):
                os.rename(path, staging / path.name)
        raise
