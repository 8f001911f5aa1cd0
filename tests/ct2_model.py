"""Writes CTranslate2 model.bin files for tests: the format (binary version 6) as ctranslate2's spec
serializer lays it out, and a tiny Whisper decoder with random weights in it."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

_TYPE_IDS = {
    np.dtype(np.float32): 0,
    np.dtype(np.int8): 1,
    np.dtype(np.int16): 2,
    np.dtype(np.int32): 3,
    np.dtype(np.float16): 4,
}


def _string(value: str) -> bytes:
    data = value.encode()
    return struct.pack("<H", len(data) + 1) + data + b"\0"


def write_model_bin(
    directory: Path,
    variables: dict[str, np.ndarray],
    aliases: dict[str, str] | None = None,
    *,
    spec: str = "WhisperSpec",
    revision: int = 3,
    version: int = 6,
    type_ids: dict[str, int] | None = None,
) -> Path:
    """type_ids: a dtype id to write for some variables instead of their own (raw bytes kept)."""
    out = [
        struct.pack("<I", version),
        _string(spec),
        struct.pack("<I", revision),
        struct.pack("<I", len(variables)),
    ]
    for name, value in variables.items():
        array = np.array(value, copy=True, order="C")  # ascontiguousarray would make scalars 1-d
        out.append(_string(name))
        out.append(struct.pack("<B", array.ndim))
        out.extend(struct.pack("<I", d) for d in array.shape)
        type_id = (type_ids or {}).get(name, _TYPE_IDS.get(array.dtype, 0))
        out.append(struct.pack("<B", type_id))
        out.append(struct.pack("<I", array.nbytes))
        out.append(array.tobytes())
    out.append(struct.pack("<I", len(aliases or {})))
    for alias, target in (aliases or {}).items():
        out.append(_string(alias) + _string(target))
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "model.bin"
    path.write_bytes(b"".join(out))
    return path


# Special tokens of the tiny model (the last ids of its vocabulary).
TINY_VOCAB = 96
EOT, SOT, NO_TIMESTAMPS, NO_SPEECH = TINY_VOCAB - 1, TINY_VOCAB - 2, TINY_VOCAB - 3, TINY_VOCAB - 4
BLANK = 5


def tiny_whisper(
    directory: Path,
    *,
    width: int = 16,
    heads: int = 2,
    layers: int = 2,
    ffn: int = 32,
    positions: int = 64,
    seed: int = 0,
) -> Path:
    """A Whisper-shaped decoder with random float16 weights (what a converted model holds)."""
    rng = np.random.default_rng(seed)

    def w(*shape: int, scale: float = 0.5) -> np.ndarray:
        return (rng.standard_normal(shape) * scale).astype(np.float16)

    v: dict[str, np.ndarray] = {
        "decoder/embeddings/weight": w(TINY_VOCAB, width, scale=1.0),
        "decoder/position_encodings/encodings": w(positions, width, scale=0.3),
        "decoder/num_heads": np.array(heads, np.int16),
        "decoder/scale_embeddings": np.array(0, np.int8),
        "decoder/pre_norm": np.array(1, np.int8),
        "decoder/layer_norm/gamma": np.ones(width, np.float16),
        "decoder/layer_norm/beta": np.zeros(width, np.float16),
    }
    for i in range(layers):
        p = f"decoder/layer_{i}"
        for norm in ("self_attention", "attention", "ffn"):
            v[f"{p}/{norm}/layer_norm/gamma"] = (1 + w(width, scale=0.1)).astype(np.float16)
            v[f"{p}/{norm}/layer_norm/beta"] = w(width, scale=0.1)
        for name, rows, cols in (
            ("self_attention/linear_0", 3 * width, width),
            ("self_attention/linear_1", width, width),
            ("attention/linear_0", width, width),
            ("attention/linear_1", 2 * width, width),
            ("attention/linear_2", width, width),
            ("ffn/linear_0", ffn, width),
            ("ffn/linear_1", width, ffn),
        ):
            v[f"{p}/{name}/weight"] = w(rows, cols, scale=1 / np.sqrt(cols))
            v[f"{p}/{name}/bias"] = w(rows, scale=0.1)
    return write_model_bin(directory, v, {"decoder/projection/weight": "decoder/embeddings/weight"})
