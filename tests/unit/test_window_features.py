"""The window decoder's features equal extracting the whole zero-padded window."""

from __future__ import annotations

import numpy as np
import pytest
from faster_whisper.feature_extractor import FeatureExtractor

from voxwire_server.engines.whisper import _features


@pytest.mark.parametrize("seconds", [0.0, 0.3, 2.5, 6.9])
@pytest.mark.parametrize("window_s", [8, 30])
def test_features_match_the_padded_window(seconds: float, window_s: int) -> None:
    extractor = FeatureExtractor()
    rng = np.random.default_rng(7)
    t = np.arange(int(seconds * 16000)) / 16000
    audio = (0.3 * np.sin(2 * np.pi * 220 * t) + 0.05 * rng.standard_normal(t.size)).astype(np.float32)
    window = window_s * 16000
    padded = np.zeros(window, np.float32)
    padded[: audio.size] = audio
    expected = extractor(padded, padding=0)
    got = _features(extractor, audio, window)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, atol=1e-5)
