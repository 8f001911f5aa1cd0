from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from voxwire_server.storage import CodecError, pack, unpack


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**64 - 1,
        1.5,
        float("inf"),
        "",
        "héllo ✓",
        b"",
        b"\x00\xff",
        [],
        [1, "two", b"three", None],
        {},
        {"a": 1, "b": [1.0, {"c": b"d"}], 3: "int key"},
    ],
)
def test_plain_values_round_trip(value: Any) -> None:
    assert unpack(pack(value)) == value


def test_types_survive_the_round_trip() -> None:
    value = unpack(pack([True, 1, 1.0, "1", b"1"]))
    assert [type(item) for item in value] == [bool, int, float, str, bytes]


def test_tuples_come_back_as_lists() -> None:
    assert unpack(pack((1, (2, 3), {"k": (4,)}))) == [1, [2, 3], {"k": [4]}]


def test_nan_round_trips() -> None:
    assert np.isnan(unpack(pack(float("nan"))))


@pytest.mark.parametrize(
    "array",
    [
        np.linspace(-1, 1, 12, dtype=np.float16).reshape(3, 4),
        np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
        np.array([-32768, -1, 0, 32767], dtype=np.int16),
        np.array([-(2**63), 2**63 - 1], dtype=np.int64),
        np.arange(6, dtype=">u4").reshape(2, 3),  # big-endian stays big-endian
        np.array([True, False]),
        np.array([1 + 2j, -3.5j], dtype=np.complex64),
        np.array(["ab", "c"]),
        np.array(["2024-01-01", "2024-12-31"], dtype="datetime64[D]"),
        np.array(3.25, dtype=np.float32),  # 0-d
        np.array(7, dtype=np.int16),  # 0-d
        np.zeros((0,), dtype=np.float32),  # empty
        np.zeros((3, 0, 2), dtype=np.int64),  # empty, several axes
    ],
    ids=lambda array: f"{array.dtype.str}{list(array.shape)}",
)
def test_arrays_round_trip_with_dtype_and_shape(array: np.ndarray[Any, Any]) -> None:
    back = unpack(pack(array))
    assert isinstance(back, np.ndarray)
    assert back.dtype == array.dtype and back.dtype.str == array.dtype.str
    assert back.shape == array.shape
    assert back.tobytes() == array.tobytes()


def test_arrays_that_are_not_c_contiguous_come_back_equal() -> None:
    array = np.arange(24, dtype=np.float32).reshape(4, 6)
    for view in (array.T, array[:, ::2], array[::-1]):
        assert np.array_equal(unpack(pack(view)), view)


def test_decoded_arrays_are_writable() -> None:
    back = unpack(pack(np.zeros(4, dtype=np.float32)))
    back[0] = 1.0
    assert back[0] == 1.0


def test_nested_structures_with_arrays() -> None:
    keys = np.arange(8, dtype=np.float16).reshape(2, 4)
    value = {"layers": [{"k": keys, "v": keys * 2}], "tokens": (1, 2, 3), "meta": {"lang": "en"}}
    back = unpack(pack(value))
    assert back["tokens"] == [1, 2, 3] and back["meta"] == {"lang": "en"}
    assert np.array_equal(back["layers"][0]["k"], keys)
    assert np.array_equal(back["layers"][0]["v"], keys * 2)
    assert back["layers"][0]["v"].dtype == np.float16


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello world",
        b"\x93\x01\x02\x03",  # plain msgpack without the codec's header
        b"\xc1\x01",  # header, no body
        b"\xc1\x02\x01",  # a format version this code does not know
        b"\xc1\x01\xc1",  # a byte msgpack never uses
        b"\xc1\x01\x93\x01",  # truncated list
        b"\xc1\x01\x01\x02",  # trailing bytes
        b"\xc1\x01\xd4\x05\x00",  # unknown extension type
        b"\xc1\x01\xc7\x03\x01abc",  # array extension with a garbage payload
    ],
)
def test_garbage_raises_codec_error(data: bytes) -> None:
    with pytest.raises(CodecError, match="voxwire codec payload"):
        unpack(data)


def test_truncated_payload_raises_codec_error() -> None:
    data = pack({"a": np.arange(10, dtype=np.int64)})
    for cut in (3, len(data) // 2, len(data) - 1):
        with pytest.raises(CodecError):
            unpack(data[:cut])


def test_array_whose_data_does_not_match_its_shape_raises() -> None:
    data = pack(np.arange(4, dtype=np.int32))
    assert data.count(b"\x91\x04") == 1  # the msgpack list [4]: the shape
    with pytest.raises(CodecError, match="does not match"):
        unpack(data.replace(b"\x91\x04", b"\x91\x05"))


def test_codec_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        unpack(b"nope")


@pytest.mark.parametrize(
    "value",
    [
        object(),
        {1, 2},
        np.float32(1.0),
        2**64,
        np.array([object()]),
        np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),  # dtype.str would lose the fields
    ],
    ids=["object", "set", "numpy-scalar", "int-overflow", "object-array", "structured-array"],
)
def test_unsupported_values_raise_codec_error(value: Any) -> None:
    with pytest.raises(CodecError, match="cannot encode"):
        pack(value)
