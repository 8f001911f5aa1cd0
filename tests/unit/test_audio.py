from __future__ import annotations

import io
import struct
import wave

import av
import numpy as np
import pytest

from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.audio import (
    AudioEncoder,
    StreamDecoder,
    decode_clip,
    float_to_pcm16,
    pcm16_to_float,
    wav_header,
)
from voxwire_server.errors import InvalidInput


def tone(rate: int, seconds: float, channels: int = 1) -> bytes:
    t = np.arange(int(rate * seconds)) / rate
    mono = (np.sin(2 * np.pi * 440 * t) * 8000).astype("<i2")
    return np.repeat(mono, channels).tobytes()


def wav_bytes(pcm: bytes, rate: int, channels: int = 1) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes(pcm)
    return buf.getvalue()


@pytest.mark.parametrize("rate", [8000, 16000, 22050, 24000, 32000, 44100, 48000])
@pytest.mark.parametrize("channels", [1, 2])
def test_linear16_clips_are_resampled_to_16k(rate: int, channels: int) -> None:
    samples = decode_clip(tone(rate, 1.0, channels), AudioFormat(Encoding.LINEAR16, rate, channels))
    assert abs(samples.size - 16000) <= 16
    assert samples.dtype == np.float32
    assert 0.2 < float(np.abs(samples).max()) < 0.3


def test_16_bit_audio_comes_back_from_float_sample_for_sample() -> None:
    every = np.arange(-32768, 32768, dtype=np.int32).astype(np.int16)
    assert np.array_equal(float_to_pcm16(pcm16_to_float(every)), every)
    # Out of range is clipped, not wrapped; NaN-free input of either float width is accepted.
    loud = np.array([-2.0, -1.0, 1.0, 2.0], dtype=np.float64)
    assert float_to_pcm16(loud).tolist() == [-32768, -32768, 32767, 32767]


def test_a_16_bit_wav_clip_decodes_to_its_own_samples() -> None:
    # What Recognize hands the endpointer is what a stream of the same WAV hands it.
    pcm = (np.sin(np.arange(16000) / 7) * 12000).astype(np.int16)
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(pcm.tobytes())
    samples = decode_clip(out.getvalue(), AudioFormat(Encoding.WAV))
    assert np.array_equal(float_to_pcm16(samples), pcm)


def test_wav_clip_and_format_mismatches() -> None:
    data = wav_bytes(tone(24000, 0.5), 24000)
    assert abs(decode_clip(data, AudioFormat(Encoding.WAV)).size - 8000) <= 16
    with pytest.raises(InvalidInput, match="does not match"):
        decode_clip(data, AudioFormat(Encoding.WAV, sample_rate_hz=16000))
    with pytest.raises(InvalidInput, match="declared as FLAC is a wav container"):
        decode_clip(data, AudioFormat(Encoding.FLAC))


@pytest.mark.parametrize("encoding", [Encoding.WAV, Encoding.FLAC, Encoding.OGG_OPUS])
def test_garbage_is_invalid_input(encoding: Encoding) -> None:
    with pytest.raises(InvalidInput, match=f"declared as {encoding.name}"):
        decode_clip(bytes(range(256)) * 40, AudioFormat(encoding))


def test_unsupported_rate_and_ragged_pcm() -> None:
    with pytest.raises(InvalidInput, match="unsupported sample_rate_hz 11025"):
        decode_clip(tone(11025, 0.1), AudioFormat(Encoding.LINEAR16, 11025))
    with pytest.raises(InvalidInput, match="whole number"):
        decode_clip(b"\x00" * 3, AudioFormat(Encoding.LINEAR16, 16000))


def test_stream_decoder_reads_a_wav_header_split_across_chunks() -> None:
    data = wav_bytes(tone(48000, 1.0, 2), 48000, 2)
    decoder = StreamDecoder(AudioFormat(Encoding.WAV))
    total = sum(decoder.feed(data[i : i + 7]).size for i in range(0, len(data), 7))
    total += decoder.finish().size
    assert (decoder.sample_rate_hz, decoder.channels) == (48000, 2)
    assert abs(total - 16000) <= 16


def test_stream_decoder_rejects_bad_streams() -> None:
    with pytest.raises(InvalidInput, match="RIFF"):
        StreamDecoder(AudioFormat(Encoding.WAV)).feed(b"garbage bytes that are not a wav file")
    decoder = StreamDecoder(AudioFormat(Encoding.LINEAR16, 16000))
    decoder.feed(b"\x01\x02\x03")
    with pytest.raises(InvalidInput, match="middle of a sample"):
        decoder.finish()
    with pytest.raises(InvalidInput, match="complete WAV header"):
        StreamDecoder(AudioFormat(Encoding.WAV)).finish()
    # FLAC and OGG_OPUS stream too (tests/unit/test_audio_streaming_containers.py); the container is checked.
    with pytest.raises(InvalidInput, match="declared as FLAC is a wav container"):
        StreamDecoder(AudioFormat(Encoding.FLAC)).feed(wav_bytes(tone(16000, 0.1), 16000))
    twelve_bit = wav_bytes(b"", 16000).replace(b"\x10\x00data", b"\x0c\x00data")
    with pytest.raises(InvalidInput, match="must be 8/16/24/32-bit PCM or 32/64-bit float"):
        StreamDecoder(AudioFormat(Encoding.WAV)).feed(twelve_bit)
    adpcm = wav_bytes(b"", 16000).replace(b"fmt \x10\x00\x00\x00\x01\x00", b"fmt \x10\x00\x00\x00\x02\x00")
    with pytest.raises(InvalidInput, match="format tag 2"):
        StreamDecoder(AudioFormat(Encoding.WAV)).feed(adpcm)


# The KSDATAFORMAT_SUBTYPE_* GUIDs of WAVE_FORMAT_EXTENSIBLE after their first two bytes (the tag).
KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")


def any_wav(samples: np.ndarray, rate: int, tag: int, bits: int, *, extensible: bool = False) -> bytes:
    """A WAV of float samples in -1..1, in any PCM or float layout (the wave module writes 16-bit only)."""
    if tag == 3:
        body = samples.astype("<f4" if bits == 32 else "<f8").tobytes()
    elif bits == 8:
        body = (np.round(samples * 127) + 128).astype(np.uint8).tobytes()
    elif bits == 24:
        ints = np.round(samples * (2**23 - 1)).astype("<i4")
        body = b"".join(int(v).to_bytes(3, "little", signed=True) for v in ints)
    else:
        body = np.round(samples * (2 ** (bits - 1) - 1)).astype(f"<i{bits // 8}").tobytes()
    block = bits // 8
    fmt = struct.pack("<HHIIHH", 0xFFFE if extensible else tag, 1, rate, rate * block, block, bits)
    if extensible:
        fmt += struct.pack("<HHI", 22, bits, 4) + struct.pack("<H", tag) + KSDATAFORMAT_GUID_TAIL
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


@pytest.mark.parametrize(
    ("tag", "bits", "extensible"),
    [
        (1, 8, False),
        (1, 24, False),
        (1, 32, False),
        (3, 32, False),
        (3, 64, False),
        (3, 32, True),
        (1, 16, True),
    ],
)
def test_streamed_wav_of_any_pcm_or_float_layout_decodes_like_16_bit(
    tag: int, bits: int, extensible: bool
) -> None:
    t = np.arange(16000) / 16000
    samples = (np.sin(2 * np.pi * 440 * t) * 0.25).astype(np.float64)
    reference = np.round(samples * 32767).astype(np.int16)
    data = any_wav(samples, 16000, tag, bits, extensible=extensible)
    decoder = StreamDecoder(AudioFormat(Encoding.WAV))
    out = np.concatenate(
        [decoder.feed(data[i : i + 999]) for i in range(0, len(data), 999)] + [decoder.finish()]
    )
    assert out.size == reference.size
    tolerance = 300 if bits == 8 else 2
    assert int(np.abs(out.astype(np.int32) - reference).max()) <= tolerance


@pytest.mark.parametrize(
    ("encoding", "rate"),
    [
        (Encoding.LINEAR16, 8000),
        (Encoding.WAV, 22050),
        (Encoding.OGG_OPUS, 48000),
        (Encoding.OGG_OPUS, 16000),
    ],
)
def test_encoder_output_decodes_to_the_right_rate_and_duration(encoding: Encoding, rate: int) -> None:
    audio = (np.sin(np.arange(24000 * 2) / 7) * 0.3).astype(np.float32)  # 2 s at 24 kHz
    encoder = AudioEncoder(encoding, 24000, rate)
    data = encoder.encode(audio[:30000]) + encoder.encode(audio[30000:]) + encoder.finish()
    assert abs(encoder.samples_out - 2 * rate) <= rate // 100
    if encoding is Encoding.LINEAR16:
        assert len(data) == 2 * encoder.samples_out
        return
    if encoding is Encoding.WAV:
        data = wav_header(rate, 1, len(data)) + data
    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.audio[0]
        decoded_rate = stream.codec_context.sample_rate
        samples = sum(frame.samples for frame in container.decode(stream))
    # Opus decoders always run at 48 kHz; the encoded rate shows in the duration only.
    if encoding is not Encoding.OGG_OPUS:
        assert decoded_rate == rate
    assert abs(samples / decoded_rate - 2.0) < 0.03


def test_opus_refuses_rates_it_cannot_carry() -> None:
    with pytest.raises(InvalidInput, match="OGG_OPUS output supports"):
        AudioEncoder(Encoding.OGG_OPUS, 24000, 22050)


def test_a_wav_clip_of_an_unknown_codec_is_invalid_input() -> None:
    fmt = (
        struct.pack("<HHIIHH", 0xFFFE, 1, 16000, 32000, 2, 16)
        + struct.pack("<HHIH", 22, 16, 4, 1)
        + bytes(14)
    )
    body = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", 3200) + bytes(3200)
    data = b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body
    with pytest.raises(InvalidInput, match="cannot decode"):
        decode_clip(data, AudioFormat(Encoding.WAV))
