"""The recognition cache's audio fingerprint on synthetic audio and the shipped JFK sample: copies match,
other audio does not, serialization is exact and strict, and empty audio never matches."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from tests.helpers import jfk_pcm
from voxwire_server.caches.fingerprint import (
    HOP_MS,
    Fingerprint,
    find_within,
    fingerprint,
    index_keys,
    match,
    probe_keys,
)

RATE_HZ = 16_000
Pcm = npt.NDArray[np.int16]


def jfk() -> Pcm:
    return np.frombuffer(jfk_pcm(), dtype="<i2").astype(np.int16)


def babble(seconds: float, seed: int) -> Pcm:
    """Speech-like synthetic audio: noise through a few moving resonances, syllable-rate envelope."""
    rng = np.random.default_rng(seed)
    n = int(seconds * RATE_HZ)
    t = np.arange(n) / RATE_HZ
    out = np.zeros(n)
    for _ in range(4):
        f0 = rng.uniform(300, 2800)
        sweep = f0 * (1 + 0.3 * np.sin(2 * np.pi * rng.uniform(0.5, 3) * t + rng.uniform(0, 6)))
        out += np.sin(2 * np.pi * np.cumsum(sweep) / RATE_HZ) * rng.uniform(0.2, 1)
    out += 0.3 * rng.standard_normal(n)
    envelope = np.clip(np.sin(2 * np.pi * rng.uniform(3, 5) * t + rng.uniform(0, 6)), 0, None) ** 2
    return np.clip(out * envelope * 6000, -32768, 32767).astype(np.int16)


def degrade(pcm: Pcm, seed: int) -> Pcm:
    """+4 dB, white noise at ~25 dB SNR, 30 ms later."""
    rng = np.random.default_rng(seed)
    louder = pcm.astype(np.float64) * 10 ** (4 / 20)
    noisy = louder + rng.standard_normal(pcm.size) * np.sqrt(np.mean(louder**2)) / 10 ** (25 / 20)
    shifted = np.concatenate([np.zeros(RATE_HZ * 30 // 1000), noisy])
    return np.clip(np.rint(shifted), -32768, 32767).astype(np.int16)


def test_a_degraded_copy_matches_and_shares_a_bucket() -> None:
    original = jfk()
    entry, copy = fingerprint(original), fingerprint(degrade(original, 1))
    found = match(copy, entry)
    assert found is not None
    assert found.bit_error_rate < 0.2
    assert abs(found.offset_frames + 30 / HOP_MS) <= 1  # the copy's frame 0 is ~2 frames before
    assert found.overlap > 0.95
    assert set(probe_keys(copy)) & set(index_keys(entry))


def test_float_and_int16_input_give_the_same_fingerprint() -> None:
    pcm = babble(2.0, 3)
    as_float = (pcm.astype(np.float32) / 32768).astype(np.float32)
    assert np.array_equal(fingerprint(pcm).frames, fingerprint(as_float).frames)
    assert fingerprint(pcm).duration_s == pytest.approx(2.0)


def test_different_audio_does_not_match() -> None:
    speech = fingerprint(jfk())
    other = babble(jfk().size / RATE_HZ, 7)
    assert match(fingerprint(other), speech) is None
    assert match(speech, fingerprint(other)) is None
    assert match(fingerprint(babble(5.0, 8)), fingerprint(babble(5.0, 9))) is None


def test_a_copy_cut_at_other_boundaries_matches_but_half_a_recording_does_not() -> None:
    original = jfk()
    edge = RATE_HZ * 150 // 1000
    entry = fingerprint(original)
    assert match(fingerprint(original[edge:-edge]), entry) is not None
    assert match(fingerprint(original[: original.size // 2]), entry) is None  # durations differ


def test_serialization_round_trips_and_rejects_garbage() -> None:
    fp = fingerprint(babble(3.0, 4))
    data = fp.to_bytes()
    back = Fingerprint.from_bytes(data)
    assert np.array_equal(back.frames, fp.frames) and back.frames.dtype == np.uint32
    assert back.duration_s == fp.duration_s
    assert len(data) < 16 + 4 * fp.frames.size + 1  # 250 bytes a second of audio
    for bad in (b"", b"garbage", data[:-1], data[:-4], b"XXXX" + data[4:], data + b"\0\0\0\0"):
        with pytest.raises(ValueError):
            Fingerprint.from_bytes(bad)
    empty = fingerprint(np.zeros(100, np.int16))
    assert Fingerprint.from_bytes(empty.to_bytes()).frames.size == 0


def test_empty_and_short_audio_never_match() -> None:
    empty = fingerprint(np.zeros(0, np.int16))
    short = fingerprint(babble(0.2, 5))
    assert empty.frames.size == 0 and short.frames.size == 0
    speech = fingerprint(jfk())
    for fp in (empty, short):
        assert match(fp, fp) is None and match(fp, speech) is None and match(speech, fp) is None
        assert find_within(speech, fp) is None and find_within(fp, speech) is None
        assert index_keys(fp) == [] and probe_keys(fp) == []
    silence = fingerprint(np.zeros(RATE_HZ * 3, np.int16))
    assert match(silence, silence) is None and index_keys(silence) == []


def test_keys_are_bounded_deterministic_and_probes_cover_the_index() -> None:
    fp = fingerprint(jfk())
    keys, probes = index_keys(fp), probe_keys(fp)
    assert 0 < len(keys) <= 24 and 0 < len(probes) <= 96
    assert all(0 <= k < 2**40 for k in keys + probes)
    assert set(keys) <= set(probes)
    assert keys == index_keys(fingerprint(jfk()))
    other = set(index_keys(fingerprint(babble(11.0, 6))))
    assert len(other & set(probes)) < len(keys) // 2


def test_find_within_finds_a_slice_of_a_longer_signal_and_not_a_foreign_one() -> None:
    reply = np.concatenate([babble(3.0, 10), jfk()[: RATE_HZ * 4]])
    piece = reply[int(3.6 * RATE_HZ) : int(5.6 * RATE_HZ)]
    quiet_noisy = np.clip(
        piece * 10 ** (-10 / 20) + np.random.default_rng(2).standard_normal(piece.size) * 60, -32768, 32767
    ).astype(np.int16)
    found = find_within(fingerprint(reply), fingerprint(quiet_noisy))
    assert found is not None
    assert abs(found.offset_frames - 3.6 * 1000 / HOP_MS) <= 2
    assert find_within(fingerprint(reply), fingerprint(jfk()[RATE_HZ * 6 : RATE_HZ * 8])) is None
    assert find_within(fingerprint(reply), fingerprint(babble(2.0, 11))) is None
