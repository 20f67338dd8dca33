"""Model files in the safetensors format, read and written without pickle and without a dependency.

Theory of operation
-------------------
A safetensors file (https://github.com/huggingface/safetensors, "Format") is::

    8 bytes   N, the header length, unsigned little-endian
    N bytes   a UTF-8 JSON object: {"__metadata__": {str: str}, name: {"dtype": "F32",
              "shape": [2, 3], "data_offsets": [begin, end]}, ...}, starting with "{" and padded
              at the end with spaces (0x20) so that 8 + N is a multiple of 8
    the rest  the byte buffer: every tensor's elements, C order, little-endian, at
              [begin, end) relative to the start of the buffer

The buffer is indexed entirely: sorted by ``begin``, the spans follow each other with no hole and no
overlap, and the last one ends at the end of the file. A reader that checks this, checks that every
span is exactly ``prod(shape) * itemsize`` bytes, and refuses duplicate names, unknown dtypes and
headers longer than the data, can take a file a peer wrote without trusting it: nothing here ever
executes anything from the file.

We write tensors in the order of the reference implementation (larger dtypes first, then by name)
with a compact JSON header, so that for the same tensors and metadata our bytes are the bytes the
``safetensors`` library writes. :func:`weights_digest` is the SHA-256 of that canonical encoding
without metadata, so two models have the same digest exactly when they have the same names, dtypes,
shapes and values (bit for bit).

Files are written atomically: a temporary file in the same directory, flushed, fsynced and renamed
over the target, then the directory is fsynced, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import math
import os
import struct
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from flrt._durable import atomic_file
from flrt.errors import IncompatibleWeightsError, ModelFileError
from flrt.tasks import Weights

__all__ = [
    "MAX_HEADER_BYTES",
    "all_finite",
    "check_compatible",
    "decode_weights",
    "encode_weights",
    "load_weights",
    "read_metadata",
    "save_weights",
    "weights_digest",
    "write_weights",
]

#: The largest header we accept (the reference implementation's limit).
MAX_HEADER_BYTES = 100_000_000

_METADATA_KEY = "__metadata__"
_TENSOR_KEYS = frozenset({"dtype", "shape", "data_offsets"})
_MAX_NDIM = 64  # numpy's limit
_MAX_DIM = 2**63 - 1

#: safetensors dtype code -> little-endian numpy dtype. The order is the reference implementation's
#: dtype order; tensors are written largest rank first.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("?"),
    "U8": np.dtype("u1"),
    "I8": np.dtype("i1"),
    "I16": np.dtype("<i2"),
    "U16": np.dtype("<u2"),
    "F16": np.dtype("<f2"),
    "I32": np.dtype("<i4"),
    "U32": np.dtype("<u4"),
    "F32": np.dtype("<f4"),
    "F64": np.dtype("<f8"),
    "I64": np.dtype("<i8"),
    "U64": np.dtype("<u8"),
}
_RANK = {code: rank for rank, code in enumerate(_DTYPES)}
_CODES = {(dtype.kind, dtype.itemsize): code for code, dtype in _DTYPES.items()}


@dataclass(frozen=True, slots=True)
class _Entry:
    """One tensor as the header describes it."""

    name: str
    code: str
    shape: tuple[int, ...]
    begin: int
    end: int

    @property
    def dtype(self) -> np.dtype[Any]:
        return _DTYPES[self.code]


# --------------------------------------------------------------------------------------- writing


def _code(name: str, array: npt.NDArray[Any]) -> str:
    if not isinstance(array, np.ndarray):
        raise ModelFileError(f"is {type(array).__name__}, not numpy.ndarray", tensor=name)
    code = _CODES.get((array.dtype.kind, array.dtype.itemsize))
    if code is None:
        raise ModelFileError(
            f"dtype {array.dtype} cannot be stored (supported: bool, uint8..uint64, "
            "int8..int64, float16, float32, float64)",
            tensor=name,
        )
    return code


def _layout(
    weights: Mapping[str, npt.NDArray[Any]], metadata: Mapping[str, str] | None
) -> tuple[bytes, list[tuple[str, str]]]:
    """Return the framed, padded header (length prefix included) and the (name, code) write order."""
    order: list[tuple[str, str]] = []
    for name, array in weights.items():
        if not isinstance(name, str) or not name or name == _METADATA_KEY:
            raise ModelFileError("tensor names must be non-empty strings other than __metadata__")
        order.append((name, _code(name, array)))
    order.sort(key=lambda item: (-_RANK[item[1]], item[0]))
    header: dict[str, Any] = {}
    if metadata is not None:
        for key, value in metadata.items():
            if not isinstance(key, str) or not isinstance(value, str):
                raise ModelFileError("metadata keys and values must be strings")
        header[_METADATA_KEY] = dict(sorted(metadata.items()))
    offset = 0
    for name, code in order:
        array = weights[name]
        header[name] = {
            "dtype": code,
            "shape": list(array.shape),
            "data_offsets": [offset, offset + array.nbytes],
        }
        offset += array.nbytes
    try:
        text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate in a name or in the metadata
        raise ModelFileError("names and metadata must be valid Unicode") from None
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text, order


def _chunks(
    weights: Mapping[str, npt.NDArray[Any]], metadata: Mapping[str, str] | None
) -> Iterator[bytes | memoryview]:
    """The encoding as a sequence of byte strings: the framed header, then each tensor's bytes
    (a view of the array itself when it is contiguous and little-endian already, else a copy)."""
    framed, order = _layout(weights, metadata)
    yield framed
    for name, code in order:
        array = np.ascontiguousarray(weights[name], dtype=_DTYPES[code])
        yield array.reshape(-1).view(np.uint8).data


def encode_weights(weights: Weights, metadata: Mapping[str, str] | None = None) -> bytes:
    """Encode a model as safetensors bytes (readable by the ``safetensors`` library).

    Raises :class:`~flrt.errors.ModelFileError` for a name, dtype or metadata that cannot be stored.
    """
    return b"".join(_chunks(weights, metadata))


def save_weights(
    path: str | os.PathLike[str], weights: Weights, metadata: Mapping[str, str] | None = None
) -> str:
    """Write a model to ``path`` as a safetensors file, atomically, and return the SHA-256 (hex)
    of the bytes written: without ``metadata``, that is :func:`weights_digest`, computed in the
    same pass over the arrays.

    The file is written under a temporary name in the same directory, flushed, fsynced and renamed
    over ``path``; readers see the old file or the new one, never a part.

    Raises :class:`~flrt.errors.ModelFileError` for a name, dtype or metadata that cannot be stored
    (before anything is written), and :class:`OSError` when the file system refuses.
    """
    chunks = _chunks(weights, metadata)
    first = next(chunks)  # validates everything before a file is created
    with atomic_file(Path(path)) as out:
        return _write_chunks(out, itertools.chain((first,), chunks))


def write_weights(
    out: BinaryIO, weights: Weights, metadata: Mapping[str, str] | None = None
) -> str:
    """Write a model to the open file ``out`` as safetensors bytes, streamed from the arrays' own
    memory (no copy of the model), and return the SHA-256 (hex) of the bytes written (without
    ``metadata``, that is :func:`weights_digest`). Flushing and syncing are the caller's.

    Raises :class:`~flrt.errors.ModelFileError` for a name, dtype or metadata that cannot be stored
    (before anything is written).
    """
    return _write_chunks(out, _chunks(weights, metadata))


def _write_chunks(out: BinaryIO, chunks: Iterable[bytes | memoryview]) -> str:
    digest = hashlib.sha256()
    for chunk in chunks:
        digest.update(chunk)
        out.write(chunk)
    return digest.hexdigest()


# --------------------------------------------------------------------------------------- reading


def _reject_constant(token: str) -> None:
    raise ValueError(f"{token} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError(f"duplicate key {key!r}")
        result[key] = value
    return result


def _is_int(value: object) -> bool:
    return type(value) is int  # JSON true/false are bools, which are ints in Python


def _parse_header(
    raw: bytes, buffer_len: int, path: Path | None
) -> tuple[dict[str, str], list[_Entry]]:
    """Validate a header against a buffer of ``buffer_len`` bytes; entries come in offset order."""

    def fail(reason: str, tensor: str | None = None) -> ModelFileError:
        # Names come from the peer: keep the message short whatever they hold.
        return ModelFileError(reason, path=path, tensor=None if tensor is None else tensor[:120])

    if not raw.startswith(b"{"):
        raise fail("header does not start with '{'")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise fail(f"header is not UTF-8 (byte {exc.start})") from None
    try:
        header = json.loads(text, object_pairs_hook=_no_duplicates, parse_constant=_reject_constant)
    except (ValueError, RecursionError) as exc:
        raise fail(f"header is not valid JSON: {exc}") from None
    if not isinstance(header, dict):
        raise fail("header is not a JSON object")

    metadata = header.pop(_METADATA_KEY, {})
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise fail("__metadata__ is not an object of strings")

    entries: list[_Entry] = []
    for name, info in header.items():
        if not isinstance(info, dict) or set(info) != _TENSOR_KEYS:
            raise fail("entry must have exactly dtype, shape and data_offsets", name)
        code, shape, offsets = info["dtype"], info["shape"], info["data_offsets"]
        if not isinstance(code, str) or code not in _DTYPES:
            raise fail(f"unknown or unsupported dtype {str(code)[:20]!r}", name)
        if (
            not isinstance(shape, list)
            or len(shape) > _MAX_NDIM
            or not all(_is_int(d) and 0 <= d <= _MAX_DIM for d in shape)
        ):
            raise fail("shape is not a list of at most 64 non-negative integers", name)
        if not (isinstance(offsets, list) and len(offsets) == 2 and all(map(_is_int, offsets))):
            raise fail("data_offsets is not a pair of integers", name)
        begin, end = offsets
        if not 0 <= begin <= end <= buffer_len:
            raise fail(f"data_offsets [{begin}, {end}] out of range [0, {buffer_len}]", name)
        expected = math.prod(shape) * _DTYPES[code].itemsize
        if end - begin != expected:
            raise fail(
                f"shape {shape} of {code} needs {expected} bytes, data_offsets span {end - begin}",
                name,
            )
        entries.append(_Entry(name, code, tuple(shape), begin, end))

    entries.sort(key=lambda e: (e.begin, e.end))
    position = 0
    for entry in entries:
        if entry.begin < position:
            raise fail(
                f"data_offsets [{entry.begin}, {entry.end}] overlap another tensor", entry.name
            )
        if entry.begin > position:
            raise fail(f"hole in the data buffer before offset {entry.begin}", entry.name)
        position = entry.end
    if position != buffer_len:
        raise fail(f"data buffer has {buffer_len - position} bytes that no tensor covers")
    return dict(metadata), entries


def _header_length(prefix: bytes, available: int, path: Path | None) -> int:
    if len(prefix) < 8:
        raise ModelFileError(f"{len(prefix)} bytes is too short for the header length", path=path)
    (length,) = struct.unpack("<Q", prefix[:8])
    if length > MAX_HEADER_BYTES:
        raise ModelFileError(f"header length {length} exceeds {MAX_HEADER_BYTES}", path=path)
    if length > available - 8:
        raise ModelFileError(
            f"header length {length} is beyond the end of the data ({available - 8} bytes)",
            path=path,
        )
    return int(length)


def _empty(entry: _Entry, path: Path | None) -> npt.NDArray[Any]:
    try:
        return np.empty(entry.shape, dtype=entry.dtype)
    except (ValueError, OverflowError, MemoryError):  # a zero-sized shape numpy cannot represent
        raise ModelFileError(
            f"shape {list(entry.shape)} cannot be represented", path=path, tensor=entry.name[:120]
        ) from None


def _native(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    return array.astype(array.dtype.newbyteorder("="), copy=False)


def _array(entry: _Entry, data: memoryview, path: Path | None) -> npt.NDArray[Any]:
    array = _empty(entry, path)
    if array.nbytes:
        array.data.cast("B")[:] = data
    return _native(array)


def decode_weights(data: bytes | bytearray | memoryview) -> Weights:
    """Decode safetensors bytes into a model. Every array is a fresh, writable, native-order copy.

    Raises :class:`~flrt.errors.ModelFileError`, and nothing else, for any malformed input.
    """
    view = memoryview(data).cast("B")
    length = _header_length(bytes(view[:8]), len(view), None)
    _, entries = _parse_header(bytes(view[8 : 8 + length]), len(view) - 8 - length, None)
    buffer = view[8 + length :]
    return {e.name: _array(e, buffer[e.begin : e.end], None) for e in entries}


def _read_header(file: io.BufferedIOBase, path: Path) -> tuple[int, dict[str, str], list[_Entry]]:
    size = os.fstat(file.fileno()).st_size
    length = _header_length(file.read(8), size, path)
    raw = file.read(length)
    metadata, entries = _parse_header(raw, size - 8 - length, path)
    return 8 + length, metadata, entries


def _read_exactly(file: io.BufferedIOBase, into: memoryview, path: Path) -> None:
    filled = 0
    while filled < len(into):
        count = file.readinto(into[filled:])
        if not count:
            raise ModelFileError("file shrank while it was read", path=path)
        filled += count


def load_weights(path: str | os.PathLike[str]) -> Weights:
    """Read a safetensors file written by us, by the ``safetensors`` library, or by a peer.

    Reads the header first and then each tensor straight into its own array, so memory stays at about
    the model's size. Raises :class:`~flrt.errors.ModelFileError` for a malformed file and
    :class:`OSError` when it cannot be read.
    """
    source = Path(path)
    with source.open("rb") as file:
        start, _, entries = _read_header(file, source)
        weights: Weights = {}
        for entry in entries:
            array = _empty(entry, source)
            if array.nbytes:
                file.seek(start + entry.begin)
                _read_exactly(file, array.data.cast("B"), source)
            weights[entry.name] = _native(array)
    return weights


def read_metadata(path: str | os.PathLike[str]) -> dict[str, str]:
    """Return a safetensors file's ``__metadata__`` (empty if none), validating the whole header.

    Raises :class:`~flrt.errors.ModelFileError` for a malformed file and :class:`OSError`.
    """
    source = Path(path)
    with source.open("rb") as file:
        _, metadata, _ = _read_header(file, source)
    return metadata


# --------------------------------------------------------------------------------------- helpers


def weights_digest(weights: Weights) -> str:
    """The SHA-256 (hex) of a model's canonical encoding: names, dtypes, shapes and bytes.

    The canonical encoding is :func:`encode_weights` without metadata, so the digest does not depend
    on the order of the mapping, the byte order or the memory layout of the arrays. Arrays equal bit
    for bit give equal digests (``-0.0`` and ``0.0`` differ; a NaN is hashed by its bits).

    Raises :class:`~flrt.errors.ModelFileError` for a name or dtype that cannot be encoded.
    """
    digest = hashlib.sha256()
    for chunk in _chunks(weights, None):
        digest.update(chunk)
    return digest.hexdigest()


#: Elements checked at a time by :func:`all_finite`.
_FINITE_ELEMENTS = 1 << 16


def all_finite(array: npt.NDArray[Any]) -> bool:
    """True when ``array`` holds no NaN and no infinity (always true for integers and booleans).

    A contiguous array is checked a slice at a time into one small reused mask, which stays in
    the CPU's cache: ``np.isfinite(array).all()`` on a large model first builds a mask of one byte
    per element in fresh memory, and faulting that in costs several times the check itself.
    """
    if array.dtype.kind not in "fc":
        return True
    if not array.flags.c_contiguous:
        return bool(np.isfinite(array).all())
    flat = array.reshape(-1)
    mask = np.empty(min(flat.size, _FINITE_ELEMENTS), dtype=np.bool_)
    for lo in range(0, flat.size, _FINITE_ELEMENTS):
        piece = mask[: min(flat.size - lo, _FINITE_ELEMENTS)]
        np.isfinite(flat[lo : lo + _FINITE_ELEMENTS], out=piece)
        if not piece.all():
            return False
    return True


def _describe(array: npt.NDArray[Any]) -> str:
    return f"{array.dtype} {tuple(array.shape)}"


def check_compatible(expected: Weights, got: Weights) -> None:
    """Check that two models have the same names, and per name the same dtype and shape.

    Raises :class:`~flrt.errors.IncompatibleWeightsError` naming the first difference (names in
    sorted order); values are never compared.
    """
    for name in sorted(expected.keys() | got.keys()):
        if name not in got:
            raise IncompatibleWeightsError(name, expected=_describe(expected[name]), got="missing")
        if name not in expected:
            raise IncompatibleWeightsError(name, expected="missing", got=_describe(got[name]))
        a, b = np.asarray(expected[name]), np.asarray(got[name])
        same_dtype = (a.dtype.kind, a.dtype.itemsize) == (b.dtype.kind, b.dtype.itemsize)
        if not same_dtype or a.shape != b.shape:
            raise IncompatibleWeightsError(name, expected=_describe(a), got=_describe(b))
