"""Perceptual audio fingerprints: the same recording arriving again (re-encoded, noisy, louder, shifted,
or the server's own reply heard back through a speaker), never another take of the same words.

Band-energy-difference fingerprints in the style of Haitsma and Kalker: 256 ms frames every 16 ms (their
band energies averaged over 64 ms blocks), 33 log-spaced bands between 300 and 3000 Hz, and one 32-bit
word per hop whose bit m is the sign of the change, from one frame to the next, of the energy difference
between bands m and m+1. The signs of such differences survive gain, codecs and moderate noise; the words
of two different takes of a sentence agree about as often as chance.

Lookup is min-hash LSH: per table, a fixed sample of bits from every (3-frame majority-smoothed) word
forms a key; an entry is stored under its smallest keys by a per-table hash, and a query probes its
few smallest. Two copies of a recording share most of their keys, so their minima tend to coincide;
the keys only choose candidates, and match / find_within decide.

Serialized layout (little-endian): b"VXFP" | version u16 | hop ms u16 | duration s f64 | words u32...
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

__all__ = [
    "HOP_MS",
    "Fingerprint",
    "Match",
    "find_within",
    "fingerprint",
    "index_keys",
    "lsh_keys",
    "match",
    "probe_keys",
]

SAMPLE_RATE_HZ = 16_000
HOP_MS = 16
HOP_SAMPLES = SAMPLE_RATE_HZ * HOP_MS // 1000
FRAME_SAMPLES = 4096  # 256 ms: long frames make the words change slowly, so a few ms of shift barely shows
# A frame's band energies are the tapered sum of those of 13 overlapping 64 ms blocks (Welch): a third
# of the FFT work of one 4096-point FFT per hop (0.6 ms per s of audio, 2 CPUs), and at
# 20 dB SNR the averaged energies flip fewer bits (same-recording BER p95 0.26 vs 0.28, both dev sets).
BLOCK_SAMPLES = 1024
BAND_COUNT = 33  # 32 differences between neighbouring bands: one 32-bit word per frame
BAND_LOW_HZ = 300.0
BAND_HIGH_HZ = 3000.0

# Whole-utterance verification (match).
# Same recording at 20 dB SNR (the worst degradation): p99 0.32-0.34, max 0.356 over both dev sets;
# different recordings of >= 80 compared frames never went below 0.395 (codecs, gain, shift: <= 0.24).
MATCH_MAX_BER = 0.35
# Under 80 frames (1.3 s) there are few independent bits: two takes of one word by one speaker reached
# 0.315 (same-recording p95 there: 0.30).
MATCH_SHORT_FRAMES = 80
MATCH_SHORT_MAX_BER = 0.29
# VAD ends differ by up to ~150 ms a side (0.3 s in all) plus slack; longer utterances scale.
MATCH_MAX_DURATION_DIFF_S = 0.4
MATCH_MAX_DURATION_DIFF_RATIO = 0.15
# The boundary changes leave >= ~0.85 of the shorter one covered on 1 s clips (the worst case).
MATCH_MIN_OVERLAP = 0.8
# Below ~0.3 s of words there are too few bits for the BER to tell recordings apart.
MIN_MATCH_FRAMES = 20

# Self-echo (find_within): every offset of a long reply is tried, so chance minima are lower and the
# threshold stricter. TTS replies heard back (-10 dB, 20 dB room noise, VAD cuts): max 0.18 over 20;
# 1.5 s pieces of dev speech inside those replies: min 0.374 over 7060.
WITHIN_MAX_BER = 0.3
# 0.5 s of query (words for ~31 hops): shorter pieces have too few bits to be trusted.
WITHIN_MIN_QUERY_FRAMES = 31
# A VAD cut may run a little past the reply's end into room noise: part of the query may overhang.
WITHIN_MAX_OVERHANG = 0.1

# LSH: TABLES tables of KEY_BITS bits; an entry is stored under its INDEX_PER_TABLE smallest keys per
# table and a query probes its PROBE_PER_TABLE smallest. Measured on both dev sets: 12 bits let 62 % of
# unrelated pairs share a key, 20 bits lose 5 % of copies at 20 dB SNR; 16 bits: 99 % recall, 11 %.
KEY_BITS = 16
TABLES = 24
INDEX_PER_TABLE = 1
PROBE_PER_TABLE = 4

_MAGIC = b"VXFP"
_VERSION = 1
_HEADER = struct.Struct("<4sHHd")
# The longest a serialized fingerprint may claim to be (a day): bounds what from_bytes accepts.
_MAX_DURATION_S = 86_400.0
_KEY_ID_BITS = 40  # bucket ids below 2**40: room for a store to prefix its own tag
_SCAN_CHUNK_WORDS = 1 << 20


@dataclass(frozen=True, slots=True)
class Fingerprint:
    frames: npt.NDArray[np.uint32]
    """One 32-bit sub-fingerprint per hop (HOP_MS)."""
    duration_s: float
    """Of the audio fingerprinted."""

    def to_bytes(self) -> bytes:
        header = _HEADER.pack(_MAGIC, _VERSION, HOP_MS, float(self.duration_s))
        return header + np.ascontiguousarray(self.frames, dtype="<u4").tobytes()

    @classmethod
    def from_bytes(cls, data: bytes) -> Fingerprint:
        if len(data) < _HEADER.size or (len(data) - _HEADER.size) % 4:
            raise ValueError("not a fingerprint: bad length")
        magic, version, hop_ms, duration_s = _HEADER.unpack_from(data)
        if magic != _MAGIC or version != _VERSION or hop_ms != HOP_MS:
            raise ValueError("not a fingerprint of this version")
        if not (math.isfinite(duration_s) and 0.0 <= duration_s <= _MAX_DURATION_S):
            raise ValueError("not a fingerprint: bad duration")
        frames = np.frombuffer(data, dtype="<u4", offset=_HEADER.size).astype(np.uint32)
        if frames.size != _word_count(round(duration_s * SAMPLE_RATE_HZ)):
            raise ValueError("not a fingerprint: frame count does not fit the duration")
        return cls(frames, float(duration_s))


@dataclass(frozen=True, slots=True)
class Match:
    bit_error_rate: float
    offset_frames: int
    """Where the query's frame 0 lies in the entry's (container's) frames; may be negative."""
    overlap: float
    """Fraction of the shorter fingerprint covered by the other."""


def _word_count(sample_count: int) -> int:
    if sample_count < FRAME_SAMPLES:
        return 0
    return (sample_count - FRAME_SAMPLES) // HOP_SAMPLES  # spectral frames - 1


def _band_edges_bins() -> npt.NDArray[np.intp]:
    edges_hz = np.geomspace(BAND_LOW_HZ, BAND_HIGH_HZ, BAND_COUNT + 1)
    return np.rint(edges_hz * BLOCK_SAMPLES / SAMPLE_RATE_HZ).astype(np.intp)


_EDGES = _band_edges_bins()
_BLOCK_WINDOW = np.hanning(BLOCK_SAMPLES)
_BLOCKS_PER_FRAME = (FRAME_SAMPLES - BLOCK_SAMPLES) // HOP_SAMPLES + 1
# A Hann taper over the blocks: together they weigh the 256 ms frame like one long Hann window would.
_FRAME_WEIGHTS = np.hanning(_BLOCKS_PER_FRAME + 2)[1:-1]
_BIT_WEIGHTS = (np.uint32(1) << np.arange(BAND_COUNT - 1, dtype=np.uint32)).astype(np.uint32)


def fingerprint(samples: npt.NDArray[np.int16] | npt.NDArray[np.float32]) -> Fingerprint:
    """16 kHz mono; int16 or float32 in [-1, 1]. Audio shorter than one frame gives an empty Fingerprint
    (frames.size == 0), which never matches anything."""
    if samples.ndim != 1:
        raise ValueError("fingerprint takes mono audio (a 1-D array)")
    scale = 1.0 / 32768.0 if samples.dtype == np.int16 else 1.0
    audio = samples.astype(np.float64) * scale
    duration_s = audio.size / SAMPLE_RATE_HZ
    words = _word_count(audio.size)
    if words == 0:
        return Fingerprint(np.zeros(0, np.uint32), duration_s)
    blocks = np.lib.stride_tricks.sliding_window_view(audio, BLOCK_SAMPLES)[::HOP_SAMPLES]
    spectrum = np.fft.rfft(blocks[: words + _BLOCKS_PER_FRAME] * _BLOCK_WINDOW, axis=1)[:, : _EDGES[-1]]
    power = spectrum.real**2 + spectrum.imag**2
    cumulative = np.zeros((power.shape[0], power.shape[1] + 1))
    np.cumsum(power, axis=1, out=cumulative[:, 1:])
    block_energy = cumulative[:, _EDGES[1:]] - cumulative[:, _EDGES[:-1]]
    energy = np.zeros((words + 1, BAND_COUNT))
    for j, weight in enumerate(_FRAME_WEIGHTS):
        energy += weight * block_energy[j : j + words + 1]
    band_diff = energy[:, :-1] - energy[:, 1:]
    bits = (band_diff[1:] - band_diff[:-1]) > 0
    return Fingerprint((bits.astype(np.uint32) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint32), duration_s)


def _popcount(words: npt.NDArray[np.uint32]) -> npt.NDArray[np.uint8]:
    return np.bitwise_count(words)


def _usable(fp: Fingerprint, min_frames: int) -> bool:
    # Digital silence gives all-zero words: a fingerprint of nothing but silence identifies nothing.
    return fp.frames.size >= min_frames and bool(np.count_nonzero(fp.frames) >= min_frames)


def _durations_compatible(a_s: float, b_s: float) -> bool:
    limit_s = max(MATCH_MAX_DURATION_DIFF_S, MATCH_MAX_DURATION_DIFF_RATIO * max(a_s, b_s))
    return abs(a_s - b_s) <= limit_s


def _scan(
    query: npt.NDArray[np.uint32], entry: npt.NDArray[np.uint32], offsets: range, min_compared: int
) -> tuple[float, int, int]:
    """The lowest bit error rate over offsets (query frame 0 at entry frame offset) that compare at least
    min_compared frames: (ber, offset, frames compared); ber is inf when no offset qualifies."""
    if not offsets:
        return math.inf, 0, 0
    # entry padded so that every offset is one window; the padding is masked out of the comparison.
    before, after = max(0, -offsets[0]), max(0, offsets[-1] + query.size - entry.size)
    padded = np.concatenate([np.zeros(before, np.uint32), entry, np.zeros(after, np.uint32)])
    valid = np.zeros(padded.size, np.uint8)
    valid[before : before + entry.size] = 1
    first_window = offsets[0] + before
    windows = np.lib.stride_tricks.sliding_window_view(padded, query.size)[first_window:]
    masks = np.lib.stride_tricks.sliding_window_view(valid, query.size)[first_window:]
    best = (math.inf, 0, 0)
    step = max(1, _SCAN_CHUNK_WORDS // query.size)  # bounds the temporaries to a few MB
    for first in range(0, len(offsets), step):
        mask = masks[first : min(first + step, len(offsets))]
        errors = (_popcount(windows[first : first + mask.shape[0]] ^ query) * mask).sum(
            axis=1, dtype=np.int64
        )
        compared = mask.sum(axis=1, dtype=np.int64)
        ber = np.where(compared >= min_compared, errors / np.maximum(32 * compared, 1), np.inf)
        i = int(np.argmin(ber))
        if ber[i] < best[0]:
            best = (float(ber[i]), offsets[first + i], int(compared[i]))
    return best


def _best_match(query: Fingerprint, entry: Fingerprint) -> Match | None:
    """The best whole-utterance alignment, whatever its BER; None when the two cannot be compared."""
    if not (_usable(query, MIN_MATCH_FRAMES) and _usable(entry, MIN_MATCH_FRAMES)):
        return None
    if not _durations_compatible(query.duration_s, entry.duration_s):
        return None
    q, e = query.frames, entry.frames
    shorter = min(q.size, e.size)
    min_common = math.ceil(MATCH_MIN_OVERLAP * shorter)
    # From q's end min_common frames into e, to q's start min_common frames before e's end.
    ber, offset, compared = _scan(q, e, range(min_common - q.size, e.size - min_common + 1), min_common)
    return None if math.isinf(ber) else Match(ber, offset, compared / shorter)


def match(query: Fingerprint, entry: Fingerprint) -> Match | None:
    """Whole-utterance verification: the same recording cut at slightly different boundaries. None when
    it is not the same recording (or either fingerprint is too short to tell)."""
    best = _best_match(query, entry)
    if best is None:
        return None
    compared = best.overlap * min(query.frames.size, entry.frames.size)
    limit = MATCH_SHORT_MAX_BER if compared < MATCH_SHORT_FRAMES else MATCH_MAX_BER
    return best if best.bit_error_rate <= limit else None


def _best_within(container: Fingerprint, query: Fingerprint) -> Match | None:
    """The best placement of query inside container, whatever its BER."""
    if not (_usable(query, WITHIN_MIN_QUERY_FRAMES) and _usable(container, WITHIN_MIN_QUERY_FRAMES)):
        return None
    q, c = query.frames, container.frames
    overhang = int(WITHIN_MAX_OVERHANG * q.size)
    ber, offset, compared = _scan(q, c, range(-overhang, c.size - q.size + overhang + 1), q.size - overhang)
    return None if math.isinf(ber) else Match(ber, offset, compared / q.size)


def find_within(container: Fingerprint, query: Fingerprint) -> Match | None:
    """Self-echo: whether query (>= 0.5 s) is a part of container (e.g. a synthesized reply), at any
    offset. None when it is not."""
    best = _best_within(container, query)
    return best if best is not None and best.bit_error_rate <= WITHIN_MAX_BER else None


def _table_weights() -> npt.NDArray[np.uint64]:
    """(32, TABLES): column t turns a word's bits into table t's key, KEY_BITS fixed bits spread over
    the bands (different per table), with the table id above them."""
    rng = np.random.default_rng(0x5EED)
    weights = np.zeros((BAND_COUNT - 1, TABLES), np.uint64)
    for table in range(TABLES):
        positions = np.sort(rng.choice(BAND_COUNT - 1, KEY_BITS, replace=False))
        weights[positions, table] = np.uint64(1) << np.arange(KEY_BITS, dtype=np.uint64)
    return weights


_TABLE_WEIGHTS = _table_weights()
_TABLE_WEIGHTS_F = _TABLE_WEIGHTS.astype(np.float64)
_TABLE_IDS = np.arange(TABLES, dtype=np.uint64) << np.uint64(KEY_BITS)
_BIT_SHIFTS = np.arange(BAND_COUNT - 1, dtype=np.uint32)
_MIX = np.uint64(0x9E3779B97F4A7C15)


def _mix(values: npt.NDArray[np.uint64]) -> npt.NDArray[np.uint64]:
    """A fixed 64-bit mixing function (splitmix64's finaliser): orders keys independently of their bits."""
    with np.errstate(over="ignore"):
        z = (values + np.uint64(1)) * _MIX
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def _smallest_keys(fp: Fingerprint, per_table: int) -> list[list[int]]:
    """Per table, its per_table smallest distinct keys, ascending (the first ones are the min-hash)."""
    words = fp.frames
    if not _usable(fp, MIN_MATCH_FRAMES):
        return []
    # Majority of each bit over three neighbouring words: a single flipped bit no longer changes a key.
    a, b, c = words[:-2], words[1:-1], words[2:]
    smoothed = (a & b) | (a & c) | (b & c)
    smoothed = smoothed[smoothed != 0]  # silence: a key every silent stretch would share
    if smoothed.size == 0:
        return []
    bits = ((smoothed[:, None] >> _BIT_SHIFTS) & np.uint32(1)).astype(np.float64)
    # Keys below 2**KEY_BITS are exact in float64, where the product runs on BLAS (an integer one does not).
    tables = (bits @ _TABLE_WEIGHTS_F).astype(np.uint64)
    hashed = np.sort(_mix(tables | _TABLE_IDS), axis=0)  # (words, TABLES); distinct keys stay distinct
    fresh = np.ones(hashed.shape, bool)
    fresh[1:] = hashed[1:] != hashed[:-1]
    # The top 40 bits of each hash.
    return [
        [int(h) >> (64 - _KEY_ID_BITS) for h in hashed[:, t][fresh[:, t]][:per_table]] for t in range(TABLES)
    ]


def lsh_keys(fp: Fingerprint) -> tuple[list[int], list[int]]:
    """(index_keys(fp), probe_keys(fp)) for the work of one."""
    tables = _smallest_keys(fp, max(INDEX_PER_TABLE, PROBE_PER_TABLE))
    index = [k for keys in tables for k in keys[:INDEX_PER_TABLE]]
    return index, [k for keys in tables for k in keys[:PROBE_PER_TABLE]]


def index_keys(fp: Fingerprint) -> list[int]:
    """LSH bucket ids (< 2**40, table id mixed in) an entry is stored under: at most TABLES *
    INDEX_PER_TABLE (24)."""
    return lsh_keys(fp)[0]


def probe_keys(fp: Fingerprint) -> list[int]:
    """The bucket ids a query looks up: its PROBE_PER_TABLE smallest per table (at most 96), a superset
    of its own index keys, so a copy whose minimum moved by a key or two still meets the entry."""
    return lsh_keys(fp)[1]
