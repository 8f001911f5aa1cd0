"""An endpointer restored from a snapshot, taken anywhere in real speech, goes on with the same utterances.

webrtcvad adapts to what it hears and its state cannot be stored; the endpointer renews it so that
a snapshot's audio rebuilds it. These tests use the real VAD on real speech."""

from __future__ import annotations

import functools
import json
import random

import numpy as np
import numpy.typing as npt

from tests.helpers import jfk_pcm, require_data, speech_clips
from voxwire_server.domain import AudioFormat, Encoding, Endpointing
from voxwire_server.engines.audio import decode_clip, float_to_pcm16
from voxwire_server.engines.vad import WebRtcVad
from voxwire_server.sessions.endpointing import Endpointer, EndpointEvent, UtteranceEnded
from voxwire_server.storage.codec import pack, unpack

CHUNK = 320  # 20 ms, a microphone client's chunk


def _endpointer(config: Endpointing) -> Endpointer:
    vad = functools.partial(WebRtcVad, config.vad_aggressiveness)
    return Endpointer(vad(), config, renew_vad=vad)


def _push(endpointer: Endpointer, audio: npt.NDArray[np.int16]) -> list[EndpointEvent]:
    events: list[EndpointEvent] = []
    for i in range(0, audio.size, CHUNK):
        events += endpointer.push(audio[i : i + CHUNK])
    return events


def _shape(events: list[EndpointEvent]) -> list[tuple[object, ...]]:
    return [
        (e.utterance_index, e.audio_start, e.speech_end, e.audio.tobytes())
        if isinstance(e, UtteranceEnded)
        else (e.utterance_index, e.speech_start)
        for e in events
    ]


def _resumed_at(config: Endpointing, audio: npt.NDArray[np.int16], cut: int) -> list[EndpointEvent]:
    first = _endpointer(config)
    events = _push(first, audio[:cut])
    resumed = _endpointer(config)
    resumed.restore(unpack(pack(first.snapshot())))
    return events + _push(resumed, audio[cut:]) + resumed.flush()


def _check(config: Endpointing, audio: npt.NDArray[np.int16], cuts: list[int], name: str) -> None:
    whole = _endpointer(config)
    expected = _shape(_push(whole, audio) + whole.flush())
    assert any(isinstance(e, tuple) and len(e) == 4 for e in expected), f"{name}: no utterance at all"
    for cut in cuts:
        assert _shape(_resumed_at(config, audio, cut)) == expected, f"{name} resumed at sample {cut}"


def test_jfk_resumed_anywhere_cuts_the_same_utterances() -> None:
    audio = np.frombuffer(jfk_pcm(), "<i2").astype(np.int16)
    # Short pauses and a short limit: several utterances, quiet cuts and renewals along the clip.
    config = Endpointing(silence_ms=300, max_utterance_s=4.0)
    _check(config, audio, list(range(0, audio.size, audio.size // 23)), "jfk")


def test_every_speech_dev_clip_resumed_at_random_points_cuts_the_same_utterances() -> None:
    data = require_data()
    ids = [json.loads(line)["id"] for line in (data / "manifest.jsonl").read_text().splitlines()]
    rng = random.Random(7)
    for clip in speech_clips(ids):
        audio = float_to_pcm16(decode_clip(clip.path.read_bytes(), AudioFormat(Encoding.WAV), 600.0))
        _check(Endpointing(), audio, [rng.randrange(audio.size) for _ in range(3)], clip.id)
