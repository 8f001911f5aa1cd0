"""Recognition through a real server and the real client: real speech, TTS round trip, streams."""

from __future__ import annotations

import io
import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import RunningServer
from tests.helpers import speech_clips, wer
from voxwire import (
    AudioEncoding,
    Client,
    ModelTier,
    RecognitionConfig,
    SpeechEventType,
    StreamUpdate,
)

CLIPS = [
    "jfk_inaugural_1961",
    "librispeech_251-137823-0003",
    "librispeech_6930-75918-0000",
    "harvard_sb_spk1_snt1",
    "harvard_sb_spk1_snt3",
    "arctic_slt_a0003",
    "vctk_p225_011",
    "voice2json_what_time_is_it",
    "riva_en-US_sample",
    "ljspeech_LJ001-0009",
]

SENTENCES = [
    "Turn on the kitchen lights.",
    "What is the weather like tomorrow morning?",
    "Set a timer for ten minutes.",
    "Play some relaxing music in the living room.",
    "Remind me to call my mother tonight.",
    "How long does it take to drive to the airport?",
    "Add milk and eggs to my shopping list.",
    "Turn the thermostat down two degrees.",
    "Who wrote the novel Pride and Prejudice?",
    "Send a message to Alex saying I am running late.",
]


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Client:
    with Client(server.target, timeout_s=60) as c:
        yield c  # type: ignore[misc]


def finals(updates: list[StreamUpdate]) -> list[str]:
    return [u.result.transcript for u in updates if u.result is not None and u.result.is_final]


def pcm_of(path: str) -> tuple[bytes, int]:
    with wave.open(path, "rb") as w:
        return w.readframes(w.getnframes()), w.getframerate()


def test_recognize_transcribes_jfk(client: Client) -> None:
    (clip,) = speech_clips(["jfk_inaugural_1961"])
    transcript = client.recognize(str(clip.path), RecognitionConfig(word_timestamps=True))
    assert "ask not what your country can do for you" in transcript.text.lower()
    assert 10_500 <= transcript.audio_duration_ms <= 11_500
    words = [w for r in transcript.results for w in r.alternatives[0].words]
    assert len(words) >= 20
    assert all(0 <= w.start_ms <= w.end_ms <= 11_500 for w in words)
    assert all(0.0 < w.confidence <= 1.0 for w in words)
    assert all(0.0 < r.alternatives[0].confidence <= 1.0 for r in transcript.results)


def test_recognize_wer_on_real_speech(client: Client) -> None:
    clips = speech_clips(CLIPS)
    pairs = [(c.text, client.recognize(str(c.path)).text) for c in clips]
    assert wer(pairs) <= 0.15, pairs


def test_streaming_wer_on_real_speech(client: Client) -> None:
    clips = speech_clips(CLIPS)
    pairs = [(c.text, " ".join(finals(list(client.stream(str(c.path), chunk_ms=100))))) for c in clips]
    assert wer(pairs) <= 0.15, pairs


def test_accurate_tier_answers_when_asked(client: Client) -> None:
    (clip,) = speech_clips(["harvard_sb_spk1_snt1"])
    transcript = client.recognize(str(clip.path), RecognitionConfig(model_tier=ModelTier.ACCURATE))
    assert {r.model_tier for r in transcript.results} == {ModelTier.ACCURATE}
    assert wer([(clip.text, transcript.text)]) <= 0.15


def test_tts_to_asr_round_trip(client: Client) -> None:
    pairs = []
    for sentence in SENTENCES:
        audio = client.synthesize(sentence, encoding=AudioEncoding.WAV).audio
        pairs.append((sentence, client.recognize(audio, RecognitionConfig(encoding=AudioEncoding.WAV)).text))
    assert wer(pairs) <= 0.10, pairs


def spoken_with_gap(client: Client, first: str, second: str, gap_s: float) -> tuple[bytes, int]:
    parts = []
    rate = 16000
    for text in (first, second):
        wav = client.synthesize(text, encoding=AudioEncoding.WAV, sample_rate_hz=rate).audio
        with wave.open(io.BytesIO(wav), "rb") as w:
            parts.append(w.readframes(w.getnframes()))
    silence = np.zeros(int(gap_s * rate), np.int16).tobytes()
    lead = np.zeros(int(0.5 * rate), np.int16).tobytes()
    return lead + parts[0] + silence + parts[1] + silence, rate


def test_stream_cuts_utterances_at_silence_with_events(client: Client) -> None:
    pcm, rate = spoken_with_gap(client, "Turn on the kitchen lights.", "Set a timer for ten minutes.", 1.5)
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=rate)
    updates = list(client.stream(pcm, config, chunk_ms=20))
    events = [(u.speech_event.type, u.speech_event.utterance_index) for u in updates if u.speech_event]
    assert events == [
        (SpeechEventType.SPEECH_STARTED, 0),
        (SpeechEventType.END_OF_UTTERANCE, 0),
        (SpeechEventType.SPEECH_STARTED, 1),
        (SpeechEventType.END_OF_UTTERANCE, 1),
    ]
    results = [u.result for u in updates if u.result is not None]
    assert [r.utterance_index for r in results] == [0, 1]
    assert wer([("Turn on the kitchen lights.", results[0].transcript)]) == 0
    assert wer([("Set a timer for ten minutes.", results[1].transcript)]) <= 0.2
    started = [
        u.speech_event.audio_offset_ms
        for u in updates
        if u.speech_event and u.speech_event.type is SpeechEventType.SPEECH_STARTED
    ]
    # The event lands within 150 ms of where the waveform first gets loud.
    samples = np.abs(np.frombuffer(pcm, np.int16))
    onset_ms = int(np.argmax(samples > 1000)) * 1000 // rate
    assert abs(started[0] - onset_ms) <= 150, (started[0], onset_ms)
    assert started[1] > results[0].audio_end_ms
    assert updates[-1].committed_audio_offset_ms >= results[1].audio_end_ms - 400


def test_single_utterance_stops_after_the_first(client: Client) -> None:
    pcm, rate = spoken_with_gap(client, "What time is it?", "Play some music.", 1.5)
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=rate, single_utterance=True)
    updates = list(client.stream(pcm, config, chunk_ms=20))
    events = [u.speech_event.type for u in updates if u.speech_event]
    assert events == [SpeechEventType.SPEECH_STARTED, SpeechEventType.END_OF_SINGLE_UTTERANCE]
    assert [r.lower() for r in finals(updates)] == ["what time is it?"]


@pytest.mark.parametrize(("rate", "channels"), [(8000, 1), (44100, 2), (48000, 1)])
def test_streams_at_other_rates_and_stereo(client: Client, rate: int, channels: int) -> None:
    (clip,) = speech_clips(["harvard_sb_spk1_snt3"])
    pcm16, _ = pcm_of(str(clip.path))
    import av

    resampler = av.AudioResampler(format="s16", layout="stereo" if channels == 2 else "mono", rate=rate)
    frame = av.AudioFrame.from_ndarray(
        np.frombuffer(pcm16, np.int16).reshape(1, -1), format="s16", layout="mono"
    )
    frame.sample_rate = 16000
    out = b"".join(f.to_ndarray().tobytes() for f in [*resampler.resample(frame), *resampler.resample(None)])
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=rate, channels=channels)
    text = " ".join(finals(list(client.stream(out, config, chunk_ms=50))))
    assert wer([(clip.text, text)]) <= 0.15, text


def test_interim_results_commit_words_that_never_change(client: Client) -> None:
    (clip,) = speech_clips(["ljspeech_LJ001-0009"])
    config = RecognitionConfig(interim_results=True)
    updates = list(client.stream(str(clip.path), config, chunk_ms=100, realtime=True))
    results = [u.result for u in updates if u.result is not None]
    partials = [r for r in results if not r.is_final]
    assert len(partials) >= 3, "a 7.6 s utterance streamed in real time yields a partial every 500 ms"
    finals = [r for r in results if r.is_final]
    assert results.index(finals[0]) > results.index(partials[-1])  # partials come before their final
    committed: list[str] = []
    for partial in partials:
        words = partial.transcript.split()
        assert words[: len(committed)] == committed, (committed, words)
        assert 0.0 <= partial.stability <= 1.0
        committed = words[: round(partial.stability * len(words))]
    assert committed, "consecutive partials agree on a prefix"
    assert wer([(clip.text, finals[0].transcript)]) <= 0.15


# The KSDATAFORMAT_SUBTYPE_* GUIDs of WAVE_FORMAT_EXTENSIBLE after their first two bytes (the tag).
KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def wav_of_layout(pcm16: bytes, rate: int, layout: str) -> bytes:
    """The same speech as a 32-bit float WAV, or a 16-bit WAV in WAVE_FORMAT_EXTENSIBLE form: files
    Python's wave module cannot read."""
    samples = np.frombuffer(pcm16, np.int16)
    if layout == "float32":
        tag, bits, body = 3, 32, (samples.astype("<f4") / 32768).tobytes()
    else:
        tag, bits, body = 1, 16, samples.astype("<i2").tobytes()
    fmt = struct.pack(
        "<HHIIHH", 0xFFFE if layout == "extensible" else tag, 1, rate, rate * bits // 8, bits // 8, bits
    )
    if layout == "extensible":
        fmt += struct.pack("<HHIH", 22, bits, 4, tag) + KSDATAFORMAT_GUID_TAIL
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize("layout", ["float32", "extensible"])
def test_wav_files_the_wave_module_cannot_read_are_transcribed_and_streamed(
    client: Client, tmp_path: Path, layout: str
) -> None:
    (clip,) = speech_clips(["harvard_sb_spk1_snt3"])
    pcm16, rate = pcm_of(str(clip.path))
    path = tmp_path / f"{layout}.wav"
    path.write_bytes(wav_of_layout(pcm16, rate, layout))
    with pytest.raises(wave.Error):
        wave.open(str(path)).close()
    assert wer([(clip.text, client.recognize(str(path)).text)]) <= 0.15
    streamed = " ".join(finals(list(client.stream(str(path), chunk_ms=100))))
    assert wer([(clip.text, streamed)]) <= 0.15, streamed
