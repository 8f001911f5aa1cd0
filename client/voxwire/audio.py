"""Audio helpers: read files to send, write WAV files, cut PCM into chunks, pace chunks at real time.

Only the standard library is used: 16-bit PCM WAV files are decoded with :mod:`wave` and sent as
LINEAR16; other WAV files (float, 24/32-bit, WAVE_FORMAT_EXTENSIBLE), FLAC and Ogg Opus files are
sent to the server as they are, with their sample rate, channel count and duration read from their
headers where possible.
"""

from __future__ import annotations

import asyncio
import math
import os
import time
import wave
from collections.abc import (
    AsyncGenerator,
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
)
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from voxwire.types import AudioEncoding

__all__ = [
    "AudioFile",
    "apaced",
    "chunk_bytes_for",
    "encoding_for_path",
    "finalize_streamed_wav",
    "iter_chunks",
    "paced",
    "pcm_duration_s",
    "read_audio_file",
    "write_wav",
]

T = TypeVar("T")

_SUFFIXES: dict[str, AudioEncoding] = {
    ".wav": AudioEncoding.WAV,
    ".flac": AudioEncoding.FLAC,
    ".ogg": AudioEncoding.OGG_OPUS,
    ".opus": AudioEncoding.OGG_OPUS,
    ".raw": AudioEncoding.LINEAR16,
    ".pcm": AudioEncoding.LINEAR16,
}
_SAMPLE_WIDTH = 2  # bytes per LINEAR16 sample
_OPUS_RATE_HZ = 48_000  # Opus always decodes at 48 kHz; Ogg granule positions count 48 kHz samples
_CONTAINER_CHUNK_BYTES = 16 * 1024  # for compressed audio of unknown duration


@dataclass(frozen=True, slots=True)
class AudioFile:
    """Audio read from a file, ready to send.

    ``data`` is LINEAR16 PCM for 16-bit PCM ``.wav``, ``.raw`` and ``.pcm`` files and the file's
    bytes (``encoding`` WAV, FLAC or OGG_OPUS) for other WAV files, FLAC and Ogg Opus.
    ``sample_rate_hz`` and ``channels`` are 0 when the header could not be read; ``duration_s`` is
    None when unknown.
    """

    data: bytes
    encoding: AudioEncoding
    sample_rate_hz: int
    channels: int
    duration_s: float | None

    def chunks(self, chunk_ms: int) -> list[bytes]:
        """Cuts ``data`` into pieces of about ``chunk_ms`` of audio each.

        LINEAR16 is cut on frame boundaries; compressed audio of known duration is cut into equal
        byte counts by its average bit rate, and of unknown duration into 16 KiB pieces.
        """
        if chunk_ms <= 0:
            raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
        if self.encoding is AudioEncoding.LINEAR16:
            return list(iter_chunks(self.data, chunk_bytes_for(self.sample_rate_hz, self.channels, chunk_ms)))
        if self.duration_s:
            size = math.ceil(len(self.data) * chunk_ms / (self.duration_s * 1000))
            return list(iter_chunks(self.data, max(1, size)))
        return list(iter_chunks(self.data, _CONTAINER_CHUNK_BYTES))

    @property
    def can_pace(self) -> bool:
        """Whether :meth:`chunks` pieces each hold a known duration, so they can be sent at real time."""
        if self.encoding is AudioEncoding.LINEAR16:
            return self.sample_rate_hz > 0
        return bool(self.duration_s)


def encoding_for_path(path: str | os.PathLike[str]) -> AudioEncoding:
    """The encoding of a file, from its suffix: .wav, .flac, .ogg/.opus, .raw/.pcm (case-insensitive)."""
    suffix = Path(path).suffix.lower()
    try:
        return _SUFFIXES[suffix]
    except KeyError:
        known = ", ".join(sorted(_SUFFIXES))
        raise ValueError(
            f"{os.fspath(path)}: unsupported audio file type {suffix!r} (known: {known})"
        ) from None


def read_audio_file(
    path: str | os.PathLike[str], *, sample_rate_hz: int | None = None, channels: int = 1
) -> AudioFile:
    """Reads an audio file to send to the server.

    Args:
        path: a ``.wav`` (16-bit PCM is sent as LINEAR16, other WAV as it is), ``.flac``,
            ``.ogg``/``.opus`` or ``.raw``/``.pcm`` file.
        sample_rate_hz: the sample rate of a raw PCM file (required for ``.raw``/``.pcm``, ignored
            otherwise).
        channels: the channel count of a raw PCM file.

    Raises:
        OSError: the file cannot be read.
        ValueError: the file type is not supported or its content does not match it.
    """
    encoding = encoding_for_path(path)
    name = os.fspath(path)
    if encoding is AudioEncoding.WAV:
        return _read_wav(path)
    if encoding is AudioEncoding.LINEAR16:
        if not sample_rate_hz or sample_rate_hz <= 0:
            raise ValueError(f"{name}: raw PCM needs a sample rate (e.g. --sample-rate 16000)")
        if channels <= 0:
            raise ValueError(f"{name}: channels must be positive, got {channels}")
        data = Path(path).read_bytes()
        if len(data) % (_SAMPLE_WIDTH * channels):
            raise ValueError(f"{name}: {len(data)} bytes is not a whole number of 16-bit frames")
        return AudioFile(
            data, encoding, sample_rate_hz, channels, pcm_duration_s(len(data), sample_rate_hz, channels)
        )
    data = Path(path).read_bytes()
    if encoding is AudioEncoding.FLAC:
        rate, chans, duration = _flac_info(data, name)
    else:
        rate, chans, duration = _ogg_opus_info(data, name)
    return AudioFile(data, encoding, rate, chans, duration)


def pcm_duration_s(num_bytes: int, sample_rate_hz: int, channels: int) -> float:
    """Duration of ``num_bytes`` of LINEAR16 audio."""
    if sample_rate_hz <= 0 or channels <= 0:
        raise ValueError("sample_rate_hz and channels must be positive")
    return num_bytes / (_SAMPLE_WIDTH * channels * sample_rate_hz)


def chunk_bytes_for(sample_rate_hz: int, channels: int, chunk_ms: int) -> int:
    """Bytes of LINEAR16 audio in ``chunk_ms`` (whole frames, at least one)."""
    if sample_rate_hz <= 0 or channels <= 0 or chunk_ms <= 0:
        raise ValueError("sample_rate_hz, channels and chunk_ms must be positive")
    frames = max(1, sample_rate_hz * chunk_ms // 1000)
    return frames * channels * _SAMPLE_WIDTH


def iter_chunks(data: bytes, chunk_bytes: int) -> Iterator[bytes]:
    """Yields consecutive ``chunk_bytes``-long pieces of ``data`` (the last one may be shorter)."""
    if chunk_bytes <= 0:
        raise ValueError(f"chunk_bytes must be positive, got {chunk_bytes}")
    for start in range(0, len(data), chunk_bytes):
        yield data[start : start + chunk_bytes]


def write_wav(path: str | os.PathLike[str], pcm: bytes, sample_rate_hz: int, channels: int = 1) -> None:
    """Writes LINEAR16 PCM as a WAV file."""
    if sample_rate_hz <= 0 or channels <= 0:
        raise ValueError("sample_rate_hz and channels must be positive")
    if len(pcm) % (_SAMPLE_WIDTH * channels):
        raise ValueError(f"{len(pcm)} bytes is not a whole number of 16-bit frames of {channels} channel(s)")
    with wave.open(os.fspath(path), "wb") as out:
        out.setnchannels(channels)
        out.setsampwidth(_SAMPLE_WIDTH)
        out.setframerate(sample_rate_hz)
        out.writeframes(pcm)


def finalize_streamed_wav(data: bytes) -> bytes:
    """Fills in the sizes of a WAV streamed with unknown sizes (0xFFFFFFFF), e.g. joined synthesis chunks.

    Anything that is not such a WAV is returned unchanged.
    """
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return data
    out = bytearray(data)
    out[4:8] = min(len(data) - 8, 0xFFFFFFFF).to_bytes(4, "little")
    pos = 12
    while pos + 8 <= len(out):
        chunk_id, size = bytes(out[pos : pos + 4]), int.from_bytes(out[pos + 4 : pos + 8], "little")
        if chunk_id == b"data":
            if size == 0xFFFFFFFF:
                out[pos + 4 : pos + 8] = min(len(out) - pos - 8, 0xFFFFFFFE).to_bytes(4, "little")
            break
        pos += 8 + size + (size & 1)
    return bytes(out)


def paced(
    chunks: Iterable[T],
    seconds_per_chunk: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], object] = time.sleep,
) -> Iterator[T]:
    """Yields ``chunks`` no faster than real time, as a microphone would deliver them.

    Chunk ``i`` is released at ``start + (i + 1) * seconds_per_chunk`` on ``clock``, ``start`` being
    the moment the first chunk is asked for; time the consumer spends between chunks counts toward
    the schedule, so pacing does not drift. ``clock`` and ``sleep`` can be replaced (e.g. in tests).
    """
    if seconds_per_chunk < 0:
        raise ValueError("seconds_per_chunk must not be negative")
    start = clock()
    for index, chunk in enumerate(chunks):
        delay = start + (index + 1) * seconds_per_chunk - clock()
        if delay > 0:
            sleep(delay)
        yield chunk


async def apaced(
    chunks: Iterable[T] | AsyncIterable[T],
    seconds_per_chunk: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
) -> AsyncGenerator[T, None]:
    """Asynchronous :func:`paced`: the same schedule, waiting with ``await sleep(...)``."""
    if seconds_per_chunk < 0:
        raise ValueError("seconds_per_chunk must not be negative")
    start = clock()
    index = 0
    async for chunk in _aiter(chunks):
        delay = start + (index + 1) * seconds_per_chunk - clock()
        if delay > 0:
            await sleep(delay)
        index += 1
        yield chunk


async def _aiter(items: Iterable[T] | AsyncIterable[T]) -> AsyncIterator[T]:
    if isinstance(items, AsyncIterable):
        async for item in items:
            yield item
    else:
        for item in items:
            yield item


def _read_wav(path: str | os.PathLike[str]) -> AudioFile:
    """16-bit PCM WAV as LINEAR16 samples; any other WAV (float, 24/32-bit, WAVE_FORMAT_EXTENSIBLE)
    is sent as it is, for the server to decode."""
    name = os.fspath(path)
    try:
        with wave.open(name, "rb") as wav:
            width, rate, channels = wav.getsampwidth(), wav.getframerate(), wav.getnchannels()
            if width == _SAMPLE_WIDTH:
                frames = wav.readframes(wav.getnframes())
                return AudioFile(
                    frames,
                    AudioEncoding.LINEAR16,
                    rate,
                    channels,
                    pcm_duration_s(len(frames), rate, channels),
                )
    except wave.Error:
        pass  # a format the wave module does not know: the server may
    except EOFError as exc:
        raise ValueError(f"{name}: truncated WAV file") from exc
    data = Path(path).read_bytes()
    rate, channels, duration = _wav_info(data, name)
    return AudioFile(data, AudioEncoding.WAV, rate, channels, duration)


def _wav_info(data: bytes, name: str) -> tuple[int, int, float | None]:
    """Rate, channels and duration from a RIFF/WAVE header (fmt and data chunks)."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise ValueError(f"{name}: not a WAV file (no RIFF/WAVE header)")
    pos, rate, channels, block_align = 12, 0, 0, 0
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], int.from_bytes(data[pos + 4 : pos + 8], "little")
        body = pos + 8
        if chunk_id == b"fmt " and body + 16 <= len(data):
            channels = int.from_bytes(data[body + 2 : body + 4], "little")
            rate = int.from_bytes(data[body + 4 : body + 8], "little")
            block_align = int.from_bytes(data[body + 12 : body + 14], "little")
        elif chunk_id == b"data":
            available = min(size, len(data) - body)
            duration = available / (block_align * rate) if block_align and rate else None
            return rate, channels, duration
        pos = body + size + (size & 1)
    raise ValueError(f"{name}: a WAV file without a data chunk")


def _flac_info(data: bytes, name: str) -> tuple[int, int, float | None]:
    # "fLaC", then the STREAMINFO block: 4-byte block header, 34 bytes of which bytes 10..17 hold
    # 20 bits rate, 3 bits channels-1, 5 bits bits-per-sample-1, 36 bits total samples.
    if data[:4] != b"fLaC":
        raise ValueError(f"{name}: not a FLAC file (no fLaC marker)")
    if len(data) < 8 + 34 or data[4] & 0x7F != 0:
        return 0, 0, None
    packed = int.from_bytes(data[8 + 10 : 8 + 18], "big")
    rate = packed >> 44
    channels = ((packed >> 41) & 0x7) + 1
    total_samples = packed & ((1 << 36) - 1)
    duration = total_samples / rate if rate and total_samples else None
    return rate, channels, duration


def _ogg_opus_info(data: bytes, name: str) -> tuple[int, int, float | None]:
    # First page carries "OpusHead" (version, channels, pre-skip); the last page's granule
    # position is the count of 48 kHz samples decoded, pre-skip included.
    if data[:4] != b"OggS":
        raise ValueError(f"{name}: not an Ogg file (no OggS marker)")
    head = data.find(b"OpusHead", 0, 4096)
    if head < 0 or len(data) < head + 12:
        raise ValueError(f"{name}: an Ogg file without an Opus stream")
    channels = data[head + 9]
    pre_skip = int.from_bytes(data[head + 10 : head + 12], "little")
    duration: float | None = None
    last_page = data.rfind(b"OggS", max(0, len(data) - 65_536))
    if last_page >= 0 and last_page + 14 <= len(data):
        granule = int.from_bytes(data[last_page + 6 : last_page + 14], "little", signed=True)
        if granule > pre_skip:
            duration = (granule - pre_skip) / _OPUS_RATE_HZ
    return _OPUS_RATE_HZ, channels, duration
