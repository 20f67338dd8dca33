"""Large objects: a dict of named numpy arrays, announced once and streamed as raw bytes.

Theory of operation
-------------------

An object's bytes are its arrays' bytes laid end to end, in manifest order, each array C-contiguous
and little-endian. The manifest (names, dtypes, shapes, total bytes) travels in the header of the
message that carries the object; the bytes follow in CHUNK frames addressed by their offset in that
concatenation. A chunk never spans two arrays, so both ends work on one array at a time:

- the sender slices a view of the source array (:meth:`OutgoingObject.view`): nothing is
  concatenated or copied before TLS encrypts it;
- the receiver preallocates every array (:class:`IncomingArrays`) and copies each piece straight to
  its place. A large object gets one anonymous mapping advised for transparent huge pages. Fresh
  memory is expensive on a virtual machine: the first touch of each page costs a fault in the
  guest and often one in the host (measured here: 0.25 to 1.4 GB/s, depending on what the host
  still backs), so the I/O layer hands out mappings again once their arrays are gone
  (:class:`transport.objects.RegionPool`).

The SHA-256 digest of the concatenation travels in the header of the last chunk, computed as the
chunks are sent (so no separate pass over a gigabyte delays the first byte) and checked by the
receiver as the bytes arrive.
"""

from __future__ import annotations

import bisect
import hashlib
import mmap
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from transport.errors import LocalProtocolError, RemoteProtocolError

__all__ = [
    "ALLOWED_DTYPES",
    "ArrayInfo",
    "IncomingArrays",
    "Manifest",
    "OutgoingObject",
    "allocate_arrays",
    "check_destinations",
    "new_region",
    "region_size",
]

#: numpy 1.x arrays have at most 32 dimensions (2.x: 64).
_MAX_DIMENSIONS = 32

#: The only dtypes that may cross the wire: plain numbers and booleans, never Python objects.
ALLOWED_DTYPES = frozenset(
    {"bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64"}
    | {"float16", "float32", "float64", "complex64", "complex128"}
)


@dataclass(frozen=True, slots=True)
class ArrayInfo:
    name: str
    dtype: str
    shape: tuple[int, ...]
    nbytes: int


@dataclass(frozen=True, slots=True)
class Manifest:
    """What an object holds, in wire order, and where each array starts."""

    arrays: tuple[ArrayInfo, ...]
    starts: tuple[int, ...]
    total: int

    @classmethod
    def build(cls, arrays: tuple[ArrayInfo, ...]) -> Manifest:
        starts: list[int] = []
        total = 0
        for info in arrays:
            starts.append(total)
            total += info.nbytes
        return cls(arrays, tuple(starts), total)

    def to_wire(self) -> dict[str, Any]:
        return {
            "n": [a.name for a in self.arrays],
            "d": [a.dtype for a in self.arrays],
            "sh": [list(a.shape) for a in self.arrays],
            "t": self.total,
        }

    @classmethod
    def from_wire(cls, raw: object, *, max_total: int) -> Manifest:
        """Validate a peer's manifest. Raises :class:`RemoteProtocolError` naming the problem."""
        if not isinstance(raw, dict):
            raise RemoteProtocolError("object manifest is not a map")
        names, dtypes, shapes, total = raw.get("n"), raw.get("d"), raw.get("sh"), raw.get("t")
        if not (isinstance(names, list) and isinstance(dtypes, list) and isinstance(shapes, list)):
            raise RemoteProtocolError("object manifest lacks names, dtypes or shapes")
        if not len(names) == len(dtypes) == len(shapes):
            raise RemoteProtocolError("object manifest lists differ in length")
        if len(set(map(str, names))) != len(names):
            raise RemoteProtocolError("object manifest repeats an array name")
        infos: list[ArrayInfo] = []
        for name, dtype, shape in zip(names, dtypes, shapes, strict=True):
            if not isinstance(name, str):
                raise RemoteProtocolError("object manifest: array name is not a string")
            if not isinstance(dtype, str):  # a list or map is not even hashable
                raise RemoteProtocolError("object manifest: dtype is not a string")
            if dtype not in ALLOWED_DTYPES:
                raise RemoteProtocolError(f"object manifest: dtype {dtype!r} is not allowed")
            if (
                not isinstance(shape, list)
                or len(shape) > _MAX_DIMENSIONS
                or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
            ):
                raise RemoteProtocolError(f"object manifest: bad shape for {name!r}")
            count = 1
            extent = np.dtype(dtype).itemsize  # numpy refuses an empty (0, 2**62) array too
            for dim in shape:
                count *= dim
                extent *= max(dim, 1)
            if extent > max_total:
                raise RemoteProtocolError(f"object manifest: shape of {name!r} is too large")
            nbytes = count * np.dtype(dtype).itemsize
            infos.append(ArrayInfo(name, dtype, tuple(shape), nbytes))
        manifest = cls.build(tuple(infos))
        if manifest.total != total:
            raise RemoteProtocolError("object manifest: total does not match the arrays")
        if manifest.total > max_total:
            raise RemoteProtocolError(
                f"object of {manifest.total} bytes exceeds the limit of {max_total} bytes"
            )
        return manifest

    def locate(self, offset: int) -> tuple[int, int]:
        """The array index holding byte ``offset`` and the offset inside that array."""
        index = bisect.bisect_right(self.starts, offset) - 1
        # Skip empty arrays that share a start with the next one.
        while index + 1 < len(self.starts) and self.starts[index + 1] == offset:
            index += 1
        return index, offset - self.starts[index]


def _byte_view(array: npt.NDArray[Any]) -> memoryview:
    flat: Any = array.reshape(-1).view(np.uint8)
    return memoryview(flat)


class OutgoingObject:
    """A dict of arrays ready to be streamed. The arrays must not change until it is sent.

    One object may go to many peers (a global model broadcast to every site): its SHA-256 digest is
    computed once, as the furthest sender gets to each byte, however many sessions send it.

    Raises :class:`LocalProtocolError` for an entry a peer would refuse: a name that is not a
    string, a value that is not a numpy array, a dtype not in :data:`ALLOWED_DTYPES`, or more than
    32 dimensions.
    """

    def __init__(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        prepared: list[npt.NDArray[Any]] = []
        infos: list[ArrayInfo] = []
        for name, array in arrays.items():
            # Whatever a peer's manifest check (Manifest.from_wire) would refuse is refused here:
            # sent, it would end the session rather than fail this one call.
            if not isinstance(name, str):
                raise LocalProtocolError(f"object entry {name!r}: a name must be a string")
            if not isinstance(array, np.ndarray):
                raise LocalProtocolError(f"object entry {name!r} is not a numpy array")
            dtype = array.dtype.newbyteorder("<") if array.dtype.byteorder == ">" else array.dtype
            if dtype.name not in ALLOWED_DTYPES:
                raise LocalProtocolError(f"object entry {name!r} has dtype {dtype.name}")
            if array.ndim > _MAX_DIMENSIONS:
                raise LocalProtocolError(
                    f"object entry {name!r} has {array.ndim} dimensions, more than"
                    f" {_MAX_DIMENSIONS}"
                )
            # Not ascontiguousarray(): it turns a 0-d array into shape (1,).
            contiguous = np.asarray(array, dtype=dtype, order="C")
            prepared.append(contiguous)
            infos.append(ArrayInfo(name, dtype.name, tuple(contiguous.shape), contiguous.nbytes))
        self.manifest = Manifest.build(tuple(infos))
        self.arrays: dict[str, npt.NDArray[Any]] = {
            info.name: array for info, array in zip(infos, prepared, strict=True)
        }
        self._views = [_byte_view(a) for a in prepared]
        self._hasher = hashlib.sha256()
        self._hashed = 0

    @property
    def total(self) -> int:
        return self.manifest.total

    def view(self, offset: int, max_len: int) -> memoryview:
        """Up to ``max_len`` bytes from ``offset``, never spanning two arrays (no copy)."""
        index, inner = self.manifest.locate(offset)
        view = self._views[index]
        return view[inner : inner + max_len]

    def hash_through(self, end: int) -> None:
        """Fold bytes up to ``end`` into the digest (bytes already folded are skipped)."""
        while self._hashed < end:
            piece = self.view(self._hashed, end - self._hashed)
            self._hasher.update(piece)
            self._hashed += len(piece)

    def digest(self) -> bytes:
        """The SHA-256 of the whole object (hashing whatever is left)."""
        self.hash_through(self.total)
        return self._hasher.digest()


#: Objects at least this large are received into one huge-page-advised anonymous mapping.
HUGE_PAGE_THRESHOLD = 4 * 1024 * 1024
_ALIGN = 64


def region_size(manifest: Manifest) -> int:
    """Bytes of the mapping that holds ``manifest``'s arrays, each aligned to 64 bytes."""
    return max(sum(-(-info.nbytes // _ALIGN) * _ALIGN for info in manifest.arrays), 1)


def new_region(size: int) -> mmap.mmap:
    """A fresh anonymous mapping of ``size`` bytes, advised for transparent huge pages."""
    region = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if hasattr(mmap, "MADV_HUGEPAGE"):
        region.madvise(mmap.MADV_HUGEPAGE)
    return region


def allocate_arrays(
    manifest: Manifest, region: mmap.mmap | None = None
) -> tuple[dict[str, npt.NDArray[Any]], mmap.mmap | None]:
    """Uninitialised arrays for ``manifest``, and the mapping they share if the object is large
    (None for small objects, which get ordinary arrays).

    A large object's arrays are laid out in ``region`` if given (at least
    :func:`region_size` bytes; whatever it held is overwritten), else in a new mapping.
    """
    arrays: dict[str, npt.NDArray[Any]] = {}
    if manifest.total < HUGE_PAGE_THRESHOLD:
        for info in manifest.arrays:
            arrays[info.name] = np.empty(info.shape, dtype=np.dtype(info.dtype))
        return arrays, None
    size = region_size(manifest)
    if region is None:
        region = new_region(size)
    elif len(region) < size:
        raise LocalProtocolError(f"region of {len(region)} bytes cannot hold {size}")
    offset = 0
    for info in manifest.arrays:
        dtype = np.dtype(info.dtype)
        count = info.nbytes // dtype.itemsize
        array = np.frombuffer(region, dtype=dtype, count=count, offset=offset)
        arrays[info.name] = array.reshape(info.shape)
        offset += -(-info.nbytes // _ALIGN) * _ALIGN
    return arrays, region


def check_destinations(
    manifest: Manifest, destinations: Mapping[str, npt.NDArray[Any]]
) -> dict[str, npt.NDArray[Any]]:
    """Check that ``destinations`` can receive ``manifest``'s arrays: one writable C-contiguous
    numpy array of the announced dtype and shape per array name, and nothing else. Returns them
    in manifest order.

    Raises :class:`LocalProtocolError` naming the first array that does not fit.
    """
    checked: dict[str, npt.NDArray[Any]] = {}
    for info in manifest.arrays:
        array = destinations.get(info.name)
        if array is None:
            raise LocalProtocolError(f"no destination for array {info.name!r}")
        if not isinstance(array, np.ndarray):
            raise LocalProtocolError(f"destination of {info.name!r} is not a numpy array")
        if array.dtype != np.dtype(info.dtype) or tuple(array.shape) != info.shape:
            raise LocalProtocolError(
                f"destination of {info.name!r} is {array.dtype}{list(array.shape)},"
                f" the object's array is {info.dtype}{list(info.shape)}"
            )
        if not array.flags.c_contiguous or not array.flags.writeable:
            raise LocalProtocolError(
                f"destination of {info.name!r} is not a writable C-contiguous array"
            )
        checked[info.name] = array
    unknown = sorted(set(destinations) - set(checked))
    if unknown:
        raise LocalProtocolError(f"the object has no array {unknown[0]!r}")
    return checked


class IncomingArrays:
    """Arrays that an object's chunks are copied into: preallocated here, or the caller's own
    (``destinations``, checked by :func:`check_destinations`)."""

    def __init__(
        self,
        manifest: Manifest,
        region: mmap.mmap | None = None,
        *,
        destinations: Mapping[str, npt.NDArray[Any]] | None = None,
    ) -> None:
        self.manifest = manifest
        #: The mapping behind a large object's arrays (None for small objects and for the
        #: caller's own arrays).
        self.region: mmap.mmap | None
        if destinations is None:
            self.arrays, self.region = allocate_arrays(manifest, region)
        else:
            self.arrays, self.region = check_destinations(manifest, destinations), None
        self._views = [_byte_view(self.arrays[info.name]) for info in manifest.arrays]

    def destination(self, offset: int, nbytes: int) -> memoryview:
        """The bytes of the array holding ``offset``, from there, at most ``nbytes`` long."""
        index, inner = self.manifest.locate(offset)
        return self._views[index][inner : inner + nbytes]

    def write(self, offset: int, data: memoryview) -> None:
        """Copy ``data`` to its place; it may span arrays only if the peer ignored the rule."""
        while len(data):
            index, inner = self.manifest.locate(offset)
            target = self._views[index]
            take = min(len(data), len(target) - inner)
            if take <= 0:
                raise RemoteProtocolError(f"chunk at offset {offset} is past the object's end")
            target[inner : inner + take] = data[:take]
            data = data[take:]
            offset += take
