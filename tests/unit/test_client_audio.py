"""voxwire.audio: reading, writing and chunking audio, and real-time pacing (with a fake clock)."""

from __future__ import annotations

import io
import wave
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from voxwire.audio import (
    AudioFile,
    apaced,
    chunk_bytes_for,
    encoding_for_path,
    finalize_streamed_wav,
    iter_chunks,
    paced,
    read_audio_file,
    write_wav,
)
from voxwire.types import AudioEncoding


def _pcm(frames: int, channels: int = 1) -> bytes:
    return b"".join((i % 251).to_bytes(2, "little", signed=True) for i in range(frames * channels))


def test_wav_round_trip(tmp_path: Path) -> None:
    pcm = _pcm(11025, channels=2)
    path = tmp_path / "stereo.wav"
    write_wav(path, pcm, 22050, channels=2)
    af = read_audio_file(path)
    assert af == AudioFile(pcm, AudioEncoding.LINEAR16, 22050, 2, 0.5)


def test_wav_that_is_not_16_bit_goes_to_the_server_as_it_is(tmp_path: Path) -> None:
    path = tmp_path / "8bit.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(1)
        out.setframerate(8000)
        out.writeframes(b"\x80" * 800)
    audio = read_audio_file(path)
    assert audio.encoding is AudioEncoding.WAV
    assert audio.data == path.read_bytes()
    assert (audio.sample_rate_hz, audio.channels, audio.duration_s) == (8000, 1, 0.1)
    assert audio.can_pace


def test_garbage_wav_is_a_value_error(tmp_path: Path) -> None:
    path = tmp_path / "bad.wav"
    path.write_bytes(b"this is not a wav file at all")
    with pytest.raises(ValueError, match="bad.wav"):
        read_audio_file(path)


def test_missing_file_is_an_os_error(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        read_audio_file(tmp_path / "nope.wav")


def test_raw_pcm_needs_a_rate_and_whole_frames(tmp_path: Path) -> None:
    path = tmp_path / "speech.raw"
    path.write_bytes(_pcm(8000))
    with pytest.raises(ValueError, match="sample rate"):
        read_audio_file(path)
    af = read_audio_file(path, sample_rate_hz=16000)
    assert (af.encoding, af.sample_rate_hz, af.channels, af.duration_s) == (
        AudioEncoding.LINEAR16,
        16000,
        1,
        0.5,
    )
    odd = tmp_path / "odd.pcm"
    odd.write_bytes(b"\x00\x00\x00")
    with pytest.raises(ValueError, match="whole number"):
        read_audio_file(odd, sample_rate_hz=16000)


def test_encoding_for_path() -> None:
    assert encoding_for_path("a.WAV") is AudioEncoding.WAV
    assert encoding_for_path(Path("x/y.flac")) is AudioEncoding.FLAC
    assert encoding_for_path("b.opus") is AudioEncoding.OGG_OPUS
    assert encoding_for_path("b.ogg") is AudioEncoding.OGG_OPUS
    assert encoding_for_path("c.pcm") is AudioEncoding.LINEAR16
    with pytest.raises(ValueError, match="unsupported audio file type '.mp3'"):
        encoding_for_path("song.mp3")


def _flac(rate: int, channels: int, total_samples: int) -> bytes:
    packed = (rate << 44) | ((channels - 1) << 41) | (15 << 36) | total_samples
    streaminfo = b"\x10\x00\x10\x00" + b"\x00" * 6 + packed.to_bytes(8, "big") + b"\x00" * 16
    return b"fLaC" + b"\x80" + len(streaminfo).to_bytes(3, "big") + streaminfo + b"frames..."


def test_flac_header_gives_rate_channels_and_duration(tmp_path: Path) -> None:
    path = tmp_path / "a.flac"
    path.write_bytes(_flac(44100, 2, 88200))
    af = read_audio_file(path)
    assert (af.encoding, af.sample_rate_hz, af.channels, af.duration_s) == (AudioEncoding.FLAC, 44100, 2, 2.0)
    assert af.data == path.read_bytes()
    path.write_bytes(b"RIFF....")
    with pytest.raises(ValueError, match="not a FLAC file"):
        read_audio_file(path)


def _ogg_page(granule: int, payload: bytes, header_type: int) -> bytes:
    return (
        b"OggS\x00"
        + bytes([header_type])
        + granule.to_bytes(8, "little", signed=True)
        + b"\x01\x00\x00\x00"
        + b"\x00\x00\x00\x00"
        + b"\x00\x00\x00\x00"
        + bytes([1, len(payload)])
        + payload
    )


def test_ogg_opus_header_gives_channels_and_duration(tmp_path: Path) -> None:
    opus_head = (
        b"OpusHead\x01\x02" + (312).to_bytes(2, "little") + (16000).to_bytes(4, "little") + b"\x00\x00\x00"
    )
    data = (
        _ogg_page(0, opus_head, 2) + _ogg_page(0, b"OpusTags", 0) + _ogg_page(72_000 + 312, b"\xfc" * 20, 4)
    )
    path = tmp_path / "a.opus"
    path.write_bytes(data)
    af = read_audio_file(path)
    assert (af.encoding, af.channels, af.sample_rate_hz) == (AudioEncoding.OGG_OPUS, 2, 48000)
    assert af.duration_s == pytest.approx(1.5)
    path.write_bytes(_ogg_page(0, b"vorbis", 2))
    with pytest.raises(ValueError, match="without an Opus stream"):
        read_audio_file(path)


def test_chunk_bytes_for() -> None:
    assert chunk_bytes_for(16000, 1, 100) == 3200
    assert chunk_bytes_for(8000, 2, 20) == 640
    assert chunk_bytes_for(100, 1, 1) == 2  # never less than one frame
    with pytest.raises(ValueError):
        chunk_bytes_for(0, 1, 100)


def test_iter_chunks() -> None:
    data = bytes(range(10))
    assert list(iter_chunks(data, 4)) == [data[:4], data[4:8], data[8:]]
    assert list(iter_chunks(b"", 4)) == []
    with pytest.raises(ValueError):
        list(iter_chunks(data, 0))


def test_audio_file_chunks() -> None:
    pcm = AudioFile(_pcm(3500), AudioEncoding.LINEAR16, 16000, 1, 3500 / 16000)
    chunks = pcm.chunks(100)
    assert [len(c) for c in chunks] == [3200, 3200, 600]
    assert b"".join(chunks) == pcm.data
    compressed = AudioFile(b"x" * 1000, AudioEncoding.FLAC, 16000, 1, 2.0)
    assert [len(c) for c in compressed.chunks(100)] == [50] * 20
    unknown = AudioFile(b"x" * 40_000, AudioEncoding.OGG_OPUS, 0, 0, None)
    assert [len(c) for c in unknown.chunks(100)] == [16384, 16384, 7232]
    assert pcm.can_pace and compressed.can_pace and not unknown.can_pace


def test_finalize_streamed_wav_fills_in_sizes() -> None:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(b"")
    header = bytearray(buf.getvalue())
    header[4:8] = b"\xff\xff\xff\xff"
    assert header[36:40] == b"data"
    header[40:44] = b"\xff\xff\xff\xff"
    pcm = _pcm(1000)
    fixed = finalize_streamed_wav(bytes(header) + pcm)
    with wave.open(io.BytesIO(fixed), "rb") as wav:
        assert wav.getnframes() == 1000
        assert wav.readframes(2000) == pcm
    assert int.from_bytes(fixed[4:8], "little") == len(fixed) - 8
    assert finalize_streamed_wav(b"OggS not a wav") == b"OggS not a wav"


class FakeClock:
    """A clock that only moves when slept on or told to."""

    def __init__(self) -> None:
        self.now = 100.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds

    async def asleep(self, seconds: float) -> None:
        self.sleep(seconds)


def test_paced_releases_chunks_on_a_schedule() -> None:
    clock = FakeClock()
    released = [(chunk, clock.now) for chunk in paced(["a", "b", "c"], 0.1, clock=clock, sleep=clock.sleep)]
    assert [c for c, _ in released] == ["a", "b", "c"]
    assert [t for _, t in released] == pytest.approx([100.1, 100.2, 100.3])


def test_paced_counts_consumer_time_toward_the_schedule() -> None:
    clock = FakeClock()
    work = iter([0.15, 0.0, 0.0])
    for _ in paced(range(3), 0.1, clock=clock, sleep=clock.sleep):
        clock.now += next(work)  # the consumer is slow after the first chunk
    # Chunk 1 is already late (no sleep); chunk 2 waits only for what is left of its slot.
    assert clock.sleeps == pytest.approx([0.1, 0.05])


async def test_apaced_follows_the_same_schedule_for_sync_and_async_sources() -> None:
    clock = FakeClock()
    got = [c async for c in apaced([1, 2, 3], 0.25, clock=clock, sleep=clock.asleep)]
    assert got == [1, 2, 3]
    assert clock.sleeps == pytest.approx([0.25, 0.25, 0.25])

    async def source() -> AsyncIterator[int]:
        for i in range(3):
            clock.now += 0.3  # a source slower than real time is never delayed further
            yield i

    clock.sleeps.clear()
    assert [c async for c in apaced(source(), 0.25, clock=clock, sleep=clock.asleep)] == [0, 1, 2]
    assert clock.sleeps == []
