"""Reads the variables of a CTranslate2 ``model.bin`` (binary format 6), so another runtime can load
the same weights. The layout follows ctranslate2's spec serializer: a version, the spec's name and
revision, the variables (name, shape, dtype, raw bytes), then aliases (a name standing for another
variable, e.g. a decoder projection tied to the embeddings)."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

__all__ = ["ModelFile", "WeightsError", "read_model_bin"]

SUPPORTED_VERSIONS = (5, 6)
# The order of ctranslate2's DataType enum.
_DTYPES: tuple[np.dtype[np.generic] | None, ...] = (
    np.dtype(np.float32),
    np.dtype(np.int8),
    np.dtype(np.int16),
    np.dtype(np.int32),
    np.dtype(np.float16),
    None,  # bfloat16: numpy has no such dtype; read as raw 16-bit words and widened below
)
_BFLOAT16 = 5


class WeightsError(ValueError):
    """A model.bin this reader cannot load (wrong format, truncated, or an unknown dtype)."""


@dataclass(frozen=True, slots=True)
class ModelFile:
    spec: str
    revision: int
    variables: dict[str, npt.NDArray[np.generic]]

    def get(self, name: str) -> npt.NDArray[np.generic]:
        try:
            return self.variables[name]
        except KeyError:
            raise WeightsError(f"model.bin has no variable {name!r}") from None


def _read(f: BinaryIO, fmt: str) -> tuple[int, ...]:
    size = struct.calcsize(fmt)
    data = f.read(size)
    if len(data) != size:
        raise WeightsError("model.bin is truncated")
    return struct.unpack("<" + fmt, data)


def _string(f: BinaryIO) -> str:
    (length,) = _read(f, "H")
    data = f.read(length)
    if len(data) != length:
        raise WeightsError("model.bin is truncated")
    if not data.endswith(b"\0"):
        raise WeightsError("model.bin has a malformed name")
    return data[:-1].decode("utf-8")


def read_model_bin(directory: str) -> ModelFile:
    """Every variable of ``directory/model.bin`` as a numpy array (aliases resolved to the same array)."""
    path = os.path.join(directory, "model.bin")
    with open(path, "rb") as f:
        (version,) = _read(f, "I")
        if version not in SUPPORTED_VERSIONS:
            raise WeightsError(
                f"model.bin has binary version {version}; this reader knows {SUPPORTED_VERSIONS}"
            )
        spec = _string(f)
        (revision,) = _read(f, "I")
        (count,) = _read(f, "I")
        variables: dict[str, npt.NDArray[np.generic]] = {}
        for _ in range(count):
            name = _string(f)
            (rank,) = _read(f, "B")
            shape = _read(f, "I" * rank) if rank else ()
            (type_id,) = _read(f, "B")
            (size,) = _read(f, "I")
            data = f.read(size)
            if len(data) != size:
                raise WeightsError(f"model.bin is truncated in {name!r}")
            variables[name] = _array(name, type_id, shape, data)
        (aliases,) = _read(f, "I")
        for _ in range(aliases):
            alias, target = _string(f), _string(f)
            if target not in variables:
                raise WeightsError(f"model.bin aliases {alias!r} to a missing {target!r}")
            variables[alias] = variables[target]
    return ModelFile(spec, revision, variables)


def _array(name: str, type_id: int, shape: tuple[int, ...], data: bytes) -> npt.NDArray[np.generic]:
    if type_id >= len(_DTYPES):
        raise WeightsError(f"model.bin variable {name!r} has an unknown dtype id {type_id}")
    count = int(np.prod(shape)) if shape else 1
    if type_id == _BFLOAT16:
        words = np.frombuffer(data, np.uint16)
        if words.size != count:
            raise WeightsError(f"model.bin variable {name!r} does not match its shape {shape}")
        return (words.astype(np.uint32) << 16).view(np.float32).reshape(shape)
    dtype = _DTYPES[type_id]
    assert dtype is not None
    if len(data) != count * dtype.itemsize:
        raise WeightsError(f"model.bin variable {name!r} does not match its shape {shape}")
    return np.frombuffer(data, dtype).reshape(shape)
