"""Synthesis through a real server: formats, rates, streaming, voices."""

from __future__ import annotations

import io
import wave
from collections.abc import Iterator

import av
import pytest

from tests.conftest import RunningServer
from voxwire import AudioEncoding, CachePolicy, Client, SynthesisCacheStatus

TEXT = "Your timer for ten minutes is set. Enjoy your tea."


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=60) as c:
        yield c


def decoded_seconds(data: bytes) -> tuple[float, int]:
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        samples = sum(frame.samples for frame in container.decode(stream))
        return samples / stream.codec_context.sample_rate, stream.codec_context.sample_rate


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 48000])
def test_wav_at_each_rate(client: Client, rate: int) -> None:
    result = client.synthesize(
        TEXT, encoding=AudioEncoding.WAV, sample_rate_hz=rate, cache_policy=CachePolicy.BYPASS
    )
    with wave.open(io.BytesIO(result.audio), "rb") as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (rate, 1, 2)
        seconds = w.getnframes() / rate
    assert abs(seconds * 1000 - result.audio_duration_ms) <= 2
    assert 2.0 < seconds < 6.0
    assert result.voice == "heart"
    assert result.cache_status is SynthesisCacheStatus.NONE  # no cache consulted


def test_linear16_and_opus_match_the_wav_duration(client: Client) -> None:
    wav = client.synthesize(TEXT, encoding=AudioEncoding.WAV, sample_rate_hz=16000)
    raw = client.synthesize(TEXT, encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)
    opus = client.synthesize(TEXT, encoding=AudioEncoding.OGG_OPUS, sample_rate_hz=48000)
    assert len(raw.audio) == len(wav.audio) - 44
    assert raw.audio == wav.audio[44:]  # same seeded synthesis, same samples
    seconds, _ = decoded_seconds(opus.audio)
    assert abs(seconds - wav.audio_duration_ms / 1000) < 0.05


FORMATS = [
    (encoding, rate)
    for encoding in (AudioEncoding.LINEAR16, AudioEncoding.WAV, AudioEncoding.OGG_OPUS)
    for rate in (8000, 16000, 22050, 24000, 48000)
    if not (encoding is AudioEncoding.OGG_OPUS and rate == 22050)
]


def _decoded(data: bytes, encoding: AudioEncoding, rate: int) -> tuple[float, int]:
    """Seconds and sample rate of the audio; for Opus (decoded at 48 kHz) the rate its header
    declares for the encoded input."""
    if encoding is AudioEncoding.LINEAR16:
        return len(data) / 2 / rate, rate
    seconds, decoded_rate = decoded_seconds(data)
    if encoding is AudioEncoding.OGG_OPUS:
        head = data.index(b"OpusHead")
        decoded_rate = int.from_bytes(data[head + 12 : head + 16], "little")
    return seconds, decoded_rate


@pytest.mark.parametrize(("encoding", "rate"), FORMATS, ids=[f"{e.name}-{r}" for e, r in FORMATS])
def test_each_format_decodes_back_to_its_rate_and_duration(
    client: Client, encoding: AudioEncoding, rate: int
) -> None:
    # Fresh audio, a cached replay and a stream must all decode to what the response says (a user's:
    # a request without a user id has no personal cache tier).
    for policy in (CachePolicy.BYPASS, CachePolicy.USE, CachePolicy.USE):
        whole = client.synthesize(
            TEXT, encoding=encoding, sample_rate_hz=rate, cache_policy=policy, user_id="u1"
        )
        seconds, decoded_rate = _decoded(whole.audio, encoding, rate)
        assert decoded_rate == rate == whole.sample_rate_hz
        assert abs(seconds * 1000 - whole.audio_duration_ms) <= (
            40 if encoding is AudioEncoding.OGG_OPUS else 2
        )
        assert 2.0 < seconds < 6.0
    chunks = list(client.synthesize_stream(TEXT, encoding=encoding, sample_rate_hz=rate, user_id="u1"))
    assert {c.cache_status for c in chunks} == {SynthesisCacheStatus.HIT}
    seconds, decoded_rate = _decoded(b"".join(c.audio for c in chunks), encoding, rate)
    assert decoded_rate == rate
    assert abs(seconds - whole.audio_duration_ms / 1000) < 0.05


def test_speaking_rate_changes_the_duration(client: Client) -> None:
    slow = client.synthesize(TEXT, speaking_rate=0.75).audio_duration_ms
    fast = client.synthesize(TEXT, speaking_rate=1.5).audio_duration_ms
    assert slow > 1.5 * fast


def test_stream_sends_a_sentence_at_a_time(client: Client) -> None:
    chunks = list(client.synthesize_stream(TEXT, encoding=AudioEncoding.WAV, sample_rate_hz=24000))
    assert len(chunks) == 2
    assert [c.sequence for c in chunks] == [0, 1]
    assert [c.last for c in chunks] == [False, True]
    assert chunks[1].audio_offset_ms == chunks[0].audio_duration_ms
    whole = b"".join(c.audio for c in chunks)
    seconds, rate = decoded_seconds(whole)
    assert rate == 24000
    assert abs(seconds * 1000 - sum(c.audio_duration_ms for c in chunks)) <= 5
    unary = client.synthesize(TEXT, encoding=AudioEncoding.WAV, sample_rate_hz=24000)
    assert whole[44:] == unary.audio[44:]


def test_stream_of_opus_decodes_whole(client: Client) -> None:
    chunks = list(client.synthesize_stream(TEXT, encoding=AudioEncoding.OGG_OPUS, sample_rate_hz=24000))
    assert all(c.audio for c in chunks)
    seconds, _ = decoded_seconds(b"".join(c.audio for c in chunks))
    assert abs(seconds * 1000 - sum(c.audio_duration_ms for c in chunks)) < 50


def test_list_voices_shows_what_is_available_offline(client: Client) -> None:
    voices = client.list_voices()
    default = [v for v in voices if v.is_default]
    assert [v.name for v in default] == ["heart"]
    assert default[0].language == "en-US"
    assert default[0].native_sample_rate_hz == 24000
    assert 48000 in default[0].sample_rates_hz
    assert client.list_voices(language="fr") == []
