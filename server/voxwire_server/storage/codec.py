"""Values to bytes for the stores: msgpack plus numpy arrays, versioned so old entries fail cleanly.

Every payload starts with 0xC1 (a byte msgpack never emits) and a format version; an ndarray is an
ExtType holding [dtype.str, shape, C-order bytes]. This is the only module that imports msgpack.
"""

from __future__ import annotations

import math
from typing import Any

import msgpack  # type: ignore[import-untyped]
import numpy as np

__all__ = ["CodecError", "pack", "unpack"]

_HEADER = b"\xc1\x01"
_NDARRAY_EXT = 1


class CodecError(ValueError):
    """Bytes that are not a payload of this codec, or a value it cannot encode."""


def pack(value: Any) -> bytes:
    """None, bool, int, float, str, bytes, lists and tuples (read back as lists), dicts, ndarrays.

    Dict keys must be hashable once read back: str, bytes, int, float, bool or None.
    """
    try:
        body: bytes = msgpack.packb(value, default=_encode_ext, use_bin_type=True)
    except CodecError:
        raise
    except (TypeError, ValueError, OverflowError) as exc:
        raise CodecError(f"cannot encode the value: {exc}") from exc
    return _HEADER + body


def unpack(data: bytes) -> Any:
    """The value pack() was given (tuples come back as lists, arrays as writable arrays)."""
    if not data.startswith(_HEADER):
        raise CodecError(f"not a voxwire codec payload: expected header {_HEADER!r}, got {data[:2]!r}")
    try:
        return msgpack.unpackb(
            memoryview(data)[len(_HEADER) :], ext_hook=_decode_ext, raw=False, strict_map_key=False
        )
    except CodecError:
        raise
    except (ValueError, TypeError, msgpack.UnpackException) as exc:
        raise CodecError(f"corrupt voxwire codec payload: {str(exc) or type(exc).__name__}") from exc


def _encode_ext(value: object) -> msgpack.ExtType:
    if isinstance(value, int):
        raise CodecError(f"cannot encode the integer {value}: outside the 64-bit range")
    if not isinstance(value, np.ndarray):
        raise CodecError(f"cannot encode {type(value).__name__!r} values")
    dtype = value.dtype
    if dtype.hasobject or np.dtype(dtype.str) != dtype:
        raise CodecError(f"cannot encode an array of dtype {dtype!r}: dtype.str does not describe it")
    payload = msgpack.packb([dtype.str, list(value.shape), value.tobytes(order="C")], use_bin_type=True)
    return msgpack.ExtType(_NDARRAY_EXT, payload)


def _decode_ext(code: int, payload: bytes) -> np.ndarray[Any, np.dtype[Any]]:
    if code != _NDARRAY_EXT:
        raise CodecError(f"corrupt voxwire codec payload: unknown extension type {code}")
    fields = msgpack.unpackb(payload, raw=False)
    if not (isinstance(fields, list) and len(fields) == 3):
        raise CodecError("corrupt voxwire codec payload: bad array header")
    dtype_str, shape, buffer = fields
    if not (
        isinstance(dtype_str, str)
        and isinstance(shape, list)
        and all(type(n) is int and n >= 0 for n in shape)
        and isinstance(buffer, bytes)
    ):
        raise CodecError("corrupt voxwire codec payload: bad array header")
    dtype = np.dtype(dtype_str)
    if dtype.hasobject:
        raise CodecError("corrupt voxwire codec payload: object arrays are not accepted")
    if len(buffer) != math.prod(shape) * dtype.itemsize:
        raise CodecError("corrupt voxwire codec payload: array data does not match its shape")
    if dtype.itemsize == 0:
        return np.zeros(shape, dtype=dtype)
    # A writable copy: the payload's bytes are immutable and callers may hand arrays to native code.
    return np.frombuffer(buffer, dtype=dtype).reshape(shape).copy()
