"""flrt.model: safetensors files written by us, read from anybody, never trusted."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import hypothesis.extra.numpy as hnp
import numpy as np
import numpy.typing as npt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flrt.errors import IncompatibleWeightsError, ModelFileError
from flrt.model import (
    all_finite,
    check_compatible,
    decode_weights,
    encode_weights,
    load_weights,
    read_metadata,
    save_weights,
    weights_digest,
)
from flrt.tasks import Weights

#: Written by the reference implementation (safetensors 0.8.0, ``safetensors.numpy.save``) for
#: :data:`GOLDEN_WEIGHTS` with metadata ``{"format": "flrt"}``.
GOLDEN = (
    b'\x10\x01\x00\x00\x00\x00\x00\x00{"__metadata__":{"format":"flrt"},'
    b'"count":{"dtype":"I64","shape":[1],"data_offsets":[0,8]},'
    b'"bias":{"dtype":"F32","shape":[2],"data_offsets":[8,16]},'
    b'"half":{"dtype":"F16","shape":[1,1],"data_offsets":[16,18]},'
    b'"mask":{"dtype":"BOOL","shape":[2],"data_offsets":[18,20]}}     '
    b"\x03\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00?\x00\x00\x80\xbf\x00>\x01\x00"
)
GOLDEN_WEIGHTS: Weights = {
    "bias": np.array([0.5, -1.0], np.float32),
    "count": np.array([3], np.int64),
    "mask": np.array([True, False]),
    "half": np.array([[1.5]], np.float16),
}

DTYPES = [
    np.dtype(name)
    for name in ("bool", "uint8", "int8", "int16", "uint16", "int32", "uint32", "int64", "uint64")
] + [np.dtype(name) for name in ("float16", "float32", "float64")]


def assert_same(a: Weights, b: Weights) -> None:
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype, name
        assert a[name].shape == b[name].shape, name
        assert a[name].tobytes() == b[name].tobytes(), name  # bit for bit, NaNs included


def frame(header: dict[str, Any] | bytes, data: bytes = b"") -> bytes:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    return struct.pack("<Q", len(raw)) + raw + data


def u8(begin: int, end: int, shape: list[int] | None = None) -> dict[str, Any]:
    return {
        "dtype": "U8",
        "shape": [end - begin] if shape is None else shape,
        "data_offsets": [begin, end],
    }


arrays = st.sampled_from(DTYPES).flatmap(
    lambda dtype: hnp.arrays(
        dtype, hnp.array_shapes(min_dims=0, max_dims=3, min_side=0, max_side=4)
    )
)
names = st.text(min_size=1, max_size=12).filter(lambda s: s != "__metadata__")
models = st.dictionaries(names, arrays, max_size=5)
metadatas = st.none() | st.dictionaries(st.text(max_size=8), st.text(max_size=8), max_size=3)


# --------------------------------------------------------------------------- interoperability


def test_reads_what_the_reference_implementation_wrote() -> None:
    assert_same(decode_weights(GOLDEN), GOLDEN_WEIGHTS)


def test_writes_what_the_reference_implementation_writes() -> None:
    assert encode_weights(GOLDEN_WEIGHTS, {"format": "flrt"}) == GOLDEN


def test_header_is_padded_to_eight_bytes_with_spaces() -> None:
    data = encode_weights({"a": np.zeros(1, np.uint8)})
    (length,) = struct.unpack("<Q", data[:8])
    assert (8 + length) % 8 == 0
    header = data[8 : 8 + length]
    assert header.startswith(b"{")
    assert header.rstrip(b" ").endswith(b"}")


def test_stores_c_order_little_endian_whatever_the_input_layout() -> None:
    transposed = np.arange(6, dtype=np.float64).reshape(2, 3).T
    big_endian = np.arange(3, dtype=">i4")
    data = encode_weights({"t": transposed, "b": big_endian})
    assert data.endswith(
        np.array([0, 3, 1, 4, 2, 5], "<f8").tobytes() + np.array([0, 1, 2], "<i4").tobytes()
    )
    back = decode_weights(data)
    assert np.array_equal(back["t"], transposed)
    assert np.array_equal(back["b"], big_endian)
    assert back["b"].dtype == np.dtype("=i4")


# --------------------------------------------------------------------------- round trips


@given(models, metadatas)
@settings(max_examples=200, deadline=None)
def test_encode_decode_round_trip(weights: Weights, metadata: dict[str, str] | None) -> None:
    back = decode_weights(encode_weights(weights, metadata))
    assert_same(back, weights)
    assert all(array.flags.writeable for array in back.values())


@given(models, metadatas)
@settings(max_examples=30, deadline=None)
def test_save_load_round_trip(
    tmp_path_factory: pytest.TempPathFactory, weights: Weights, metadata: dict[str, str] | None
) -> None:
    path = tmp_path_factory.mktemp("model") / "model.safetensors"
    save_weights(path, weights, metadata)
    assert_same(load_weights(path), weights)
    assert read_metadata(path) == (metadata or {})
    assert path.read_bytes() == encode_weights(weights, metadata)


def test_save_replaces_atomically_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    path = tmp_path / "global.safetensors"
    save_weights(path, {"w": np.ones(3, np.float32)})
    save_weights(path, {"w": np.full(3, 2.0, np.float32)})
    assert np.array_equal(load_weights(path)["w"], [2.0, 2.0, 2.0])
    assert [p.name for p in tmp_path.iterdir()] == ["global.safetensors"]


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "global.safetensors"
    save_weights(path, {"w": np.ones(3, np.float32)})
    before = path.read_bytes()

    def broken_fsync(fd: int) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        save_weights(path, {"w": np.zeros(3, np.float32)})
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["global.safetensors"]


@pytest.mark.parametrize(
    ("weights", "metadata", "reason"),
    [
        ({"c": np.zeros(2, np.complex64)}, None, "dtype complex64 cannot be stored"),
        ({"o": np.array([None], dtype=object)}, None, "dtype object cannot be stored"),
        ({"l": [1.0, 2.0]}, None, "not numpy.ndarray"),
        ({"__metadata__": np.zeros(1)}, None, "names must be"),
        ({"": np.zeros(1)}, None, "names must be"),
        ({"\ud800": np.zeros(1)}, None, "valid Unicode"),
        ({"a": np.zeros(1)}, {"k": 1}, "metadata keys and values must be strings"),
    ],
)
def test_refuses_to_write_what_it_cannot_store(
    tmp_path: Path, weights: Any, metadata: Any, reason: str
) -> None:
    with pytest.raises(ModelFileError, match=reason):
        encode_weights(weights, metadata)
    with pytest.raises(ModelFileError, match=reason):
        save_weights(tmp_path / "m.safetensors", weights, metadata)
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- malformed input


MALFORMED = {
    "too short for the header length": b"\x01\x00",
    "beyond the end of the data": struct.pack("<Q", 100) + b"{}",
    "exceeds": struct.pack("<Q", 2**63) + b"{}",
    "does not start with": frame(b' {"a":1}'),
    "not UTF-8": frame(b'{"\xff\xfe":1}'),
    "not valid JSON": frame(b"{not json}"),
    "duplicate key": frame(b'{"a":{},"a":{}}'),
    "NaN is not JSON": frame(b'{"a":NaN}'),
    "exactly dtype, shape and data_offsets": frame({"a": {**u8(0, 1), "extra": 1}}, b"x"),
    "must have exactly": frame({"a": 1}),
    "unknown or unsupported dtype 'BF16'": frame(
        {"a": {"dtype": "BF16", "shape": [1], "data_offsets": [0, 2]}}, b"xx"
    ),
    "shape is not a list": frame({"a": u8(0, 1, shape=[True])}, b"x"),
    "shape is not a list of": frame({"a": {**u8(0, 1), "shape": "1"}}, b"x"),
    "data_offsets is not a pair": frame({"a": {**u8(0, 1), "data_offsets": [0]}}, b"x"),
    "out of range": frame({"a": u8(0, 4)}, b"xx"),
    "needs 6 bytes, data_offsets span 4": frame({"a": u8(0, 4, shape=[2, 3])}, b"xxxx"),
    "overlap another tensor": frame({"a": u8(0, 2), "b": u8(1, 3)}, b"xxx"),
    "hole in the data buffer": frame({"a": u8(1, 2)}, b"xx"),
    "bytes that no tensor covers": frame({"a": u8(0, 1)}, b"xx"),
    "__metadata__ is not an object of strings": frame({"__metadata__": {"k": 1}}),
    "cannot be represented": frame({"a": u8(0, 0, shape=[0, 2**62, 2**62])}),
}


@pytest.mark.parametrize("reason", sorted(MALFORMED))
def test_malformed_input_names_the_problem(tmp_path: Path, reason: str) -> None:
    data = MALFORMED[reason]
    with pytest.raises(ModelFileError, match=reason) as caught:
        decode_weights(data)
    assert caught.value.path is None
    path = tmp_path / "peer.safetensors"
    path.write_bytes(data)
    with pytest.raises(ModelFileError, match=reason) as caught:
        load_weights(path)
    assert caught.value.path == path


def test_the_error_names_the_tensor() -> None:
    with pytest.raises(ModelFileError) as caught:
        decode_weights(MALFORMED["out of range"])
    assert caught.value.tensor == "a"


@given(st.binary(max_size=200))
@settings(max_examples=300)
def test_arbitrary_bytes_raise_only_model_file_error(data: bytes) -> None:
    with contextlib.suppress(ModelFileError):
        decode_weights(data)


@given(st.binary(max_size=120).map(lambda b: struct.pack("<Q", len(b)) + b), st.binary(max_size=16))
@settings(max_examples=300)
def test_arbitrary_headers_raise_only_model_file_error(framed: bytes, tail: bytes) -> None:
    with contextlib.suppress(ModelFileError):
        decode_weights(framed + tail)


@given(models, st.data())
@settings(max_examples=100, deadline=None)
def test_corrupted_files_decode_or_raise_model_file_error(
    weights: Weights, data: st.DataObject
) -> None:
    encoded = bytearray(encode_weights(weights))
    index = data.draw(st.integers(0, len(encoded) - 1))
    encoded[index] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(encoded)))
    with contextlib.suppress(ModelFileError):
        decode_weights(bytes(encoded[:cut]))


@given(models)
@settings(max_examples=50, deadline=None)
def test_every_truncation_is_refused(weights: Weights) -> None:
    encoded = encode_weights(weights)
    for cut in range(len(encoded)):
        with pytest.raises(ModelFileError):
            decode_weights(encoded[:cut])


# --------------------------------------------------------------------------- digest, compatibility


def test_digest_is_the_sha256_of_the_canonical_encoding() -> None:
    assert (
        weights_digest(GOLDEN_WEIGHTS) == hashlib.sha256(encode_weights(GOLDEN_WEIGHTS)).hexdigest()
    )


def test_digest_ignores_order_and_layout_but_not_content() -> None:
    a: Weights = {"w": np.arange(6, dtype=np.float32).reshape(2, 3), "b": np.zeros(2, np.float32)}
    reordered: Weights = {"b": np.zeros(2, ">f4"), "w": np.asfortranarray(a["w"])}
    assert weights_digest(a) == weights_digest(reordered)
    variants: list[Weights] = [
        {**a, "b": np.array([0.0, 1.0], np.float32)},  # value
        {**a, "b": np.array([0.0, -0.0], np.float32)},  # sign bit
        {**a, "b": np.zeros(2, np.float64)},  # dtype
        {**a, "w": a["w"].reshape(3, 2)},  # shape
        {"w": a["w"], "c": a["b"]},  # name
        {"w": a["w"]},  # missing tensor
    ]
    digests = {weights_digest(v) for v in variants} | {weights_digest(a)}
    assert len(digests) == len(variants) + 1


def describe(array: npt.NDArray[Any]) -> str:
    return f"{array.dtype} {tuple(array.shape)}"


def test_check_compatible_accepts_same_structure_different_values() -> None:
    check_compatible({"w": np.zeros((2, 3), "<f4")}, {"w": np.ones((2, 3), ">f4")})


@pytest.mark.parametrize(
    ("got", "tensor", "expected", "actual"),
    [
        ({"w": np.zeros((2, 3), np.float32)}, "b", "float32 (2,)", "missing"),
        (
            {**{"w": np.zeros((2, 3), np.float32)}, "b": np.zeros(2, np.float32), "x": np.zeros(1)},
            "x",
            "missing",
            "float64 (1,)",
        ),
        (
            {"w": np.zeros((2, 3), np.float64), "b": np.zeros(2, np.float32)},
            "w",
            "float32 (2, 3)",
            "float64 (2, 3)",
        ),
        (
            {"w": np.zeros((3, 2), np.float32), "b": np.zeros(2, np.float32)},
            "w",
            "float32 (2, 3)",
            "float32 (3, 2)",
        ),
    ],
)
def test_check_compatible_names_the_first_difference(
    got: Weights, tensor: str, expected: str, actual: str
) -> None:
    reference: Weights = {"w": np.zeros((2, 3), np.float32), "b": np.zeros(2, np.float32)}
    with pytest.raises(IncompatibleWeightsError) as caught:
        check_compatible(reference, got)
    assert (caught.value.tensor, caught.value.expected, caught.value.got) == (
        tensor,
        expected,
        actual,
    )


# ----------------------------------------------------------------------------- all_finite


@settings(max_examples=60, deadline=None)
@given(
    size=st.integers(0, 3 * (1 << 16) + 5),
    bad=st.sampled_from([np.nan, np.inf, -np.inf]),
    where=st.floats(0, 1),
    dtype=st.sampled_from([np.float16, np.float32, np.float64, np.complex64]),
)
def test_all_finite_finds_one_bad_value_anywhere(
    size: int, bad: float, where: float, dtype: type[np.generic]
) -> None:
    array = np.ones(size, dtype=dtype)
    assert all_finite(array)
    if size:
        array[min(int(where * size), size - 1)] = bad
        assert not all_finite(array)
        assert not all_finite(array.reshape(1, -1))


def test_all_finite_checks_non_contiguous_arrays_and_passes_integers() -> None:
    array = np.ones((4, 6), dtype=np.float32)
    array[3, 4] = np.nan
    assert not all_finite(array[:, ::2])  # column 4
    assert all_finite(array[:, 1::2])
    assert not all_finite(array.T)
    assert all_finite(array[:3].T)
    assert all_finite(np.arange(10))
    assert all_finite(np.zeros(3, dtype=bool))
