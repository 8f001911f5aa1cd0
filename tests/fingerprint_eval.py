"""The dev data, degraded copies of its recordings and the server's replies heard back: what the
fingerprint quality test (tests/integration/test_fingerprint_quality.py), benchmarks/fingerprint_quality.py
and benchmarks/cache_workload.py measure the recognition cache's fingerprint on."""

from __future__ import annotations

import asyncio
import functools
import io
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from tests.helpers import noise_clips, require_data
from voxwire_server.caches.fingerprint import (
    Fingerprint,
    fingerprint,
    index_keys,
    match,
    probe_keys,
)
from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.audio import Resampler, decode_clip, float_to_pcm16

Pcm = npt.NDArray[np.int16]
RATE_HZ = 16_000
SNR_DB = 20.0
SHIFT_MS = 30
BOUNDARY_MS = 150
CODEC_BIT_RATE = 32_000
PLAYBACK_GAIN_DB = -10.0

# ~20 short assistant replies for the self-echo check.
REPLIES = [
    "Sure, I set a timer for ten minutes.",
    "The weather in Paris is sunny, with a high of twenty two degrees.",
    "Okay, turning off the lights in the living room.",
    "Your next meeting is at three thirty with the design team.",
    "I added milk and eggs to your shopping list.",
    "It is currently seven fifteen in the evening.",
    "Playing your morning playlist now.",
    "The front door is locked.",
    "I could not find a restaurant open at this hour, sorry.",
    "Traffic is light; you should arrive in about twenty minutes.",
    "Reminder saved: call your mother on Sunday at noon.",
    "The thermostat is now set to twenty one degrees.",
    "Here is the news summary for today.",
    "Your package was delivered this morning at nine.",
    "Alarm set for six forty five tomorrow morning.",
    "I have paused the music.",
    "The garage door is already closed.",
    "Sorry, I did not catch that. Could you say it again?",
    "Tomorrow will be cloudy with a chance of rain in the afternoon.",
    "Your flight to Berlin leaves at eight in the morning from gate twelve.",
]


@dataclass(frozen=True)
class Recording:
    id: str
    pcm: Pcm


def load_pcm(path: Path) -> Pcm:
    return float_to_pcm16(decode_clip(path.read_bytes(), AudioFormat(Encoding.WAV)))


@functools.cache
def recordings(data_dir: Path) -> tuple[Recording, ...]:
    lines = (data_dir / "manifest.jsonl").read_text().splitlines()
    items = [json.loads(line) for line in lines]
    return tuple(Recording(item["id"], load_pcm(data_dir / item["audio"])) for item in items)


@functools.cache
def real_noises() -> tuple[Pcm, ...]:
    """The noise clips that carry sound (the -84 dBFS 'silence' one would add none)."""
    clips = [load_pcm(path) for path in noise_clips()]
    return tuple(c for c in clips if np.abs(c.astype(np.int32)).max() > 100)


@functools.cache
def same_recording_pairs() -> frozenset[frozenset[str]]:
    """Pairs of manifest ids that are (parts of) one recording: not 'different recordings'."""
    pairs = set()
    for line in (require_data() / "pairs" / "manifest.jsonl").read_text().splitlines():
        pair = json.loads(line)
        if pair["relation"].startswith("same_recording") or pair["relation"] == "a_is_contained_in_b":
            pairs.add(frozenset((pair["a"]["id"], pair["b"]["id"])))
    return frozenset(pairs)


def same_text_pairs() -> list[tuple[str, str]]:
    lines = (require_data() / "pairs" / "manifest.jsonl").read_text().splitlines()
    pairs = [json.loads(line) for line in lines]
    return [(p["a"]["id"], p["b"]["id"]) for p in pairs if p["relation"] == "same_text_different_speaker"]


# --- degradations -------------------------------------------------------------------------------------


def _clip16(x: npt.NDArray[np.floating]) -> Pcm:
    return np.clip(np.rint(x), -32768, 32767).astype(np.int16)


def active_rms(pcm: Pcm) -> float:
    """RMS of the louder half of 20 ms frames: the speech level, not diluted by pauses."""
    usable = pcm[: pcm.size // 320 * 320].astype(np.float64).reshape(-1, 320)
    energy = np.sort((usable**2).mean(axis=1))
    return float(np.sqrt(energy[energy.size // 2 :].mean())) if energy.size else 0.0


def add_noise(pcm: Pcm, noise: npt.NDArray[np.floating] | Pcm, snr_db: float) -> Pcm:
    looped = np.resize(noise.astype(np.float64), pcm.size)
    noise_rms = max(float(np.sqrt((looped**2).mean())), 1e-9)
    return _clip16(pcm + looped * active_rms(pcm) / 10 ** (snr_db / 20) / noise_rms)


def gain(pcm: Pcm, db: float) -> Pcm:
    return _clip16(pcm.astype(np.float64) * 10 ** (db / 20))


def low_noise(samples: int, seed: int) -> Pcm:
    """-70 dBFS white noise: the floor a VAD's extra margin carries."""
    return _clip16(np.random.default_rng(seed).standard_normal(samples) * 10)


def encoder_name(*names: str) -> str:
    for name in names:
        try:
            av.Codec(name, "w")
        except Exception:
            continue
        return name
    raise RuntimeError(f"none of the encoders {names} is available in PyAV's ffmpeg")


def codec_round_trip(pcm: Pcm, codec: str, container: str, bit_rate: int) -> Pcm:
    """Encoded with PyAV's ffmpeg, decoded back and resampled to 16 kHz mono."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=container) as out:
        stream = out.add_stream(codec, rate=RATE_HZ, layout="mono")
        stream.bit_rate = bit_rate
        to_codec = av.AudioResampler(format=stream.format.name, layout="mono", rate=stream.rate)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(pcm.reshape(1, -1)), format="s16", layout="mono"
        )
        frame.sample_rate = RATE_HZ
        for converted in [*to_codec.resample(frame), *to_codec.resample(None)]:
            for packet in stream.encode(converted):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    buffer.seek(0)
    chunks = []
    with av.open(buffer) as source:
        to_pcm = av.AudioResampler(format="s16", layout="mono", rate=RATE_HZ)
        for decoded in source.decode(audio=0):
            chunks += [f.to_ndarray().reshape(-1) for f in to_pcm.resample(decoded)]
        chunks += [f.to_ndarray().reshape(-1) for f in to_pcm.resample(None)]
    return np.concatenate(chunks).astype(np.int16)


def _real_noise(pcm: Pcm, seed: int) -> Pcm:
    noises = real_noises()
    noise = noises[seed % len(noises)]
    start = int(np.random.default_rng(seed).integers(0, max(1, noise.size // 2)))
    return add_noise(pcm, noise[start:], SNR_DB)


_EDGE = RATE_HZ * BOUNDARY_MS // 1000

DEGRADATIONS: dict[str, Callable[[Pcm, int], Pcm]] = {
    "white noise 20 dB": lambda x, s: add_noise(x, np.random.default_rng(s).standard_normal(x.size), SNR_DB),
    "real noise 20 dB": _real_noise,
    "mp3 32 kbit/s": lambda x, s: codec_round_trip(
        x, encoder_name("libmp3lame", "mp3"), "mp3", CODEC_BIT_RATE
    ),
    "opus 32 kbit/s": lambda x, s: codec_round_trip(
        x, encoder_name("libopus", "opus"), "ogg", CODEC_BIT_RATE
    ),
    "gain +6 dB": lambda x, s: gain(x, 6.0),
    "gain -6 dB": lambda x, s: gain(x, -6.0),
    "shift 30 ms": lambda x, s: np.concatenate([low_noise(RATE_HZ * SHIFT_MS // 1000, s), x]),
    "trim 150 ms both ends": lambda x, s: x[_EDGE:-_EDGE],
    "pad 150 ms both ends": lambda x, s: np.concatenate([low_noise(_EDGE, s), x, low_noise(_EDGE, s + 1)]),
    "trim start, pad end 150 ms": lambda x, s: np.concatenate([x[_EDGE:], low_noise(_EDGE, s)]),
}
# The degraded queries the cross-pair check runs besides the clean ones.
CROSS_DEGRADATIONS = ("real noise 20 dB", "opus 32 kbit/s", "trim 150 ms both ends")


@dataclass(frozen=True)
class Entry:
    id: str
    fp: Fingerprint
    keys: frozenset[int]


def entry(recording_id: str, pcm: Pcm) -> Entry:
    fp = fingerprint(pcm)
    return Entry(recording_id, fp, frozenset(index_keys(fp)))


def hits(stored: Entry, query: Fingerprint, probes: frozenset[int] | None = None) -> bool:
    """What the cache would do: a candidate through a shared bucket, then verified."""
    shared = stored.keys & (probes if probes is not None else frozenset(probe_keys(query)))
    return bool(shared) and match(query, stored.fp) is not None


_DEGRADED: dict[tuple[str, str, int], Fingerprint] = {}


def degraded(recording: Recording, name: str, seed: int) -> Fingerprint:
    """Cached: the codecs are the slow part of these tests, and several tests query the same copies."""
    key = (recording.id, name, seed)
    if key not in _DEGRADED:
        _DEGRADED[key] = fingerprint(DEGRADATIONS[name](recording.pcm, seed))
    return _DEGRADED[key]


CODECS = ("mp3 32 kbit/s", "opus 32 kbit/s")
# The tests re-encode every third clip of <= 12 s (encoding all 21 min takes ~1 min on 2 CPUs);
# benchmarks/fingerprint_quality.py encodes them all.
CODEC_SAMPLE_STEP = 3
CODEC_SAMPLE_MAX_S = 12.0


def degraded_sample(clips: tuple[Recording, ...] | list[Recording], name: str) -> list[int]:
    """Indexes of the clips a test degrades with name."""
    if name not in CODECS:
        return list(range(len(clips)))
    short = [i for i, r in enumerate(clips) if r.pcm.size <= CODEC_SAMPLE_MAX_S * RATE_HZ]
    return short[::CODEC_SAMPLE_STEP]


# --- self-echo ----------------------------------------------------------------------------------------


def synthesize_replies() -> list[Pcm]:
    """REPLIES through the project's TTS (default voice), resampled 24 kHz → 16 kHz."""
    from voxwire_server.engines.tts import HibariSynthesizer

    synthesizer = HibariSynthesizer()

    async def render_all() -> list[npt.NDArray[np.float32]]:
        voice = synthesizer.default_voice
        out = []
        for text in REPLIES:
            units = await synthesizer.plan(voice, text)
            out.append(np.concatenate([await synthesizer.render(voice, u, 1.0) for u in units]))
        return out

    try:
        audio = asyncio.run(render_all())
    finally:
        synthesizer.close()
    replies = []
    for reply in audio:
        resampler = Resampler(synthesizer.sample_rate_hz, 1, RATE_HZ)
        pcm = float_to_pcm16(reply)
        replies.append(np.concatenate([resampler.feed(pcm), resampler.flush()]))
    return replies


def played_back(reply: Pcm, seed: int) -> Pcm:
    """The reply from a speaker: -10 dB, room noise at 20 dB SNR, and cut where a VAD might (a random
    0-600 ms missing at the start and 0-600 ms at the end, keeping at least 0.5 s)."""
    rng = np.random.default_rng(seed)
    lead, tail = (int(rng.integers(0, RATE_HZ * 6 // 10)) for _ in range(2))
    if reply.size - lead - tail < RATE_HZ // 2:
        lead = tail = max(0, (reply.size - RATE_HZ // 2) // 2)
    quiet = gain(reply, PLAYBACK_GAIN_DB)
    return _real_noise(quiet, seed)[lead : reply.size - tail]


def speech_pieces(recording: Recording, piece_s: float = 1.5) -> list[Pcm]:
    """VAD-sized pieces of a speech clip (its start and its middle) to look for inside replies."""
    n = int(piece_s * RATE_HZ)
    if recording.pcm.size <= n:
        return [recording.pcm]
    middle = (recording.pcm.size - n) // 2
    return [recording.pcm[:n], recording.pcm[middle : middle + n]]
