"""Every request's audio cost is bounded: headers are checked before decoding, chunks are bounded in
what they decode to, and malformed WAV headers are InvalidInput, never another exception."""

from __future__ import annotations

import io
import random
import struct

import av
import numpy as np
import pytest

from tests.unit.test_audio_streaming_containers import encode
from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.audio import COMPRESSED_CHUNK_MAX_MS, StreamDecoder, decode_clip
from voxwire_server.errors import InvalidInput, LimitExceeded

KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def wav(
    body: bytes,
    *,
    tag: int = 1,
    channels: int = 1,
    rate: int = 16000,
    bits: int = 16,
    extra: bytes = b"",
    data_size: int | None = None,
    chunks_before: bytes = b"",
) -> bytes:
    block = bits // 8 * channels
    fmt = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits) + extra
    size = len(body) if data_size is None else data_size
    chunks = (
        b"fmt " + struct.pack("<I", len(fmt)) + fmt + chunks_before + b"data" + struct.pack("<I", size) + body
    )
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


def both(data: bytes) -> list[BaseException]:
    """What a clip decode and a stream decode (in 97-byte chunks) of data raise."""
    raised: list[BaseException] = []
    try:
        decode_clip(data, AudioFormat(Encoding.WAV), max_duration_s=600)
    except Exception as exc:
        raised.append(exc)
    decoder = StreamDecoder(AudioFormat(Encoding.WAV), max_chunk_ms=1000)
    try:
        for i in range(0, len(data), 97):
            decoder.feed(data[i : i + 97])
        decoder.finish()
    except Exception as exc:
        raised.append(exc)
    return raised


def test_a_wav_claiming_1_hz_is_refused_from_its_header() -> None:
    # The probe: 32 KB whose header claims 1 Hz took 27 s and 3.3 GB before its OUT_OF_RANGE.
    data = wav(bytes(32000), rate=1)
    with pytest.raises(InvalidInput, match="unsupported sample rate of 1 Hz"):
        decode_clip(data, AudioFormat(Encoding.WAV), max_duration_s=600)
    with pytest.raises(InvalidInput, match="1 Hz"):
        StreamDecoder(AudioFormat(Encoding.WAV)).feed(data)


def test_a_wav_clip_longer_than_the_limit_is_out_of_range_before_decoding() -> None:
    data = wav(bytes(8000 * 2 * 6), rate=8000)  # 6 s
    with pytest.raises(LimitExceeded, match="the clip is 6 s; Recognize takes at most 5 s"):
        decode_clip(data, AudioFormat(Encoding.WAV), max_duration_s=5)
    assert decode_clip(data, AudioFormat(Encoding.WAV), max_duration_s=7).size == 16000 * 6


def test_the_declared_data_size_bounds_a_clip_but_is_never_trusted_beyond_the_bytes_present() -> None:
    data = wav(bytes(3200), data_size=0xFFFFFFFF)
    assert decode_clip(data, AudioFormat(Encoding.WAV), max_duration_s=1).size == 1600
    trailing = wav(bytes(3200), data_size=1600) + b"LIST" + struct.pack("<I", 4) + b"INFO"
    assert decode_clip(trailing, AudioFormat(Encoding.WAV)).size == 800


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (wav(bytes(3200), tag=0), "format tag 0"),
        (wav(bytes(3200), tag=0xFFFE), "WAVE_FORMAT_EXTENSIBLE but its fmt chunk is 16 bytes"),
        (wav(bytes(3200), bits=0), "0 bits found"),
        (wav(bytes(3200), channels=0), "0 channels"),
        (wav(bytes(3200), channels=6), "6 channels"),
        (
            wav(bytes(3200), tag=0xFFFE, extra=struct.pack("<HHIH", 22, 16, 4, 1) + bytes(14)),
            "cannot decode",
        ),
        (
            wav(bytes(3200), chunks_before=b"LIST" + struct.pack("<I", 0xFFFFFFF0)),
            "declares 4294967280 bytes",
        ),
        (wav(b"")[:30], "truncated"),
        (wav(b"").replace(b"data", b"junk"), "data chunk"),
    ],
    ids=[
        "tag-0",
        "extensible-16-bytes",
        "0-bits",
        "0-channels",
        "6-channels",
        "unknown-guid",
        "huge-chunk",
        "truncated",
        "no-data-chunk",
    ],
)
def test_malformed_wav_headers_are_invalid_input_with_a_clear_message(data: bytes, message: str) -> None:
    raised = both(data)
    assert raised and all(isinstance(e, InvalidInput) for e in raised), raised
    assert any(message in str(e) for e in raised), [str(e) for e in raised]


def test_fuzzed_wav_headers_only_ever_raise_domain_errors() -> None:
    rng = random.Random(1234)
    base = wav(np.arange(1600, dtype="<i2").tobytes())
    for _ in range(400):
        data = bytearray(base[:80])
        for _ in range(rng.randrange(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        if rng.random() < 0.3:
            pos = rng.randrange(4, 44, 4)
            data[pos : pos + 4] = struct.pack("<I", rng.choice([0, 1, 3, 0x7FFFFFFF, 0xFFFFFFFF]))
        candidate = bytes(data[: rng.randrange(len(data) + 1)]) + base[80:]
        for exc in both(candidate):
            assert isinstance(exc, (InvalidInput, LimitExceeded)), (candidate[:48], exc)


def test_the_samples_that_come_with_a_wav_header_count_against_the_chunk_limit() -> None:
    decoder = StreamDecoder(AudioFormat(Encoding.WAV), max_chunk_ms=1000)
    with pytest.raises(InvalidInput, match="audio chunk of 2000 ms is over the 1000 ms limit"):
        decoder.feed(wav(bytes(16000 * 2 * 2)))
    ok = StreamDecoder(AudioFormat(Encoding.WAV), max_chunk_ms=1000)
    assert ok.feed(wav(bytes(16000 * 2))).size == 16000


def _silence(encoding: Encoding, rate: int, seconds: float) -> bytes:
    """Compressed silence: a few bytes that unpack into a lot of audio."""
    container, codec = ("flac", "flac") if encoding is Encoding.FLAC else ("ogg", "libopus")
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout="mono")
        for start in range(0, int(rate * seconds), 960):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 960), np.int16), format="s16", layout="mono")
            frame.sample_rate, frame.pts = rate, start
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


@pytest.mark.parametrize("encoding", [Encoding.FLAC, Encoding.OGG_OPUS])
def test_a_compressed_chunk_may_not_decode_to_more_than_a_minute(encoding: Encoding) -> None:
    # A client cannot know a compressed chunk's duration: seconds of it pass the 1 s chunk limit,
    # but no chunk unpacks into more than COMPRESSED_CHUNK_MAX_MS.
    rate = 16000 if encoding is Encoding.FLAC else 48000
    short = encode(encoding, rate, 1, seconds=3.0)
    assert StreamDecoder(AudioFormat(encoding), max_chunk_ms=1000).feed(short).size > 16000 * 2
    long = _silence(encoding, rate, seconds=COMPRESSED_CHUNK_MAX_MS / 1000 + 5)
    with pytest.raises(InvalidInput, match=f"decodes to over {COMPRESSED_CHUNK_MAX_MS} ms"):
        StreamDecoder(AudioFormat(encoding), max_chunk_ms=1000).feed(long)
    assert StreamDecoder(AudioFormat(encoding)).feed(long).size > 16000 * 60


def test_a_flac_header_with_an_absurd_rate_is_refused() -> None:
    data = bytearray(encode(Encoding.FLAC, 16000, 1, seconds=0.2))
    # STREAMINFO follows "fLaC" and its 4-byte block header; the rate is the 20 bits from its byte 10.
    info = 8 + 10
    packed = int.from_bytes(data[info : info + 8], "big")
    packed = (packed & ((1 << 44) - 1)) | (1 << 44)  # 1 Hz
    data[info : info + 8] = packed.to_bytes(8, "big")
    with pytest.raises(InvalidInput, match="1 Hz"):
        StreamDecoder(AudioFormat(Encoding.FLAC)).feed(bytes(data))


def test_a_flac_clip_is_out_of_range_once_decoding_passes_the_limit() -> None:
    data = encode(Encoding.FLAC, 16000, 1, seconds=3.0)
    with pytest.raises(LimitExceeded, match="at most 2 s"):
        decode_clip(data, AudioFormat(Encoding.FLAC), max_duration_s=2)
