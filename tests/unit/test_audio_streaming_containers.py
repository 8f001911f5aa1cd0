"""StreamDecoder on FLAC and Ogg/Opus streams cut at arbitrary byte boundaries."""

from __future__ import annotations

import io
import itertools
from collections.abc import Iterable, Iterator

import av
import numpy as np
import numpy.typing as npt
import pytest

from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.audio import AudioEncoder, StreamDecoder, decode_clip
from voxwire_server.errors import InvalidInput

TONE_HZ = 440.0
_LAYOUTS = {1: "mono", 2: "stereo", 4: "quad"}


def signal(rate: int, seconds: float, channels: int) -> npt.NDArray[np.int16]:
    """A 440 Hz tone over low noise, interleaved: a spectrum peak to find and a waveform to correlate."""
    t = np.arange(int(rate * seconds)) / rate
    noise = np.random.default_rng(7).standard_normal(t.size) * 600
    mono = (np.sin(2 * np.pi * TONE_HZ * t) * 8000 + noise).astype(np.int16)
    return np.repeat(mono, channels)


def encode(encoding: Encoding, rate: int, channels: int, seconds: float = 3.0) -> bytes:
    container, codec = ("flac", "flac") if encoding is Encoding.FLAC else ("ogg", "libopus")
    return encode_with(container, codec, rate, channels, seconds)


def encode_with(container: str, codec: str, rate: int, channels: int, seconds: float = 3.0) -> bytes:
    pcm = signal(rate, seconds, channels).reshape(1, -1)
    buf = io.BytesIO()
    with av.open(buf, "w", format=container) as out:
        stream = out.add_stream(codec, rate=rate, layout=_LAYOUTS[channels])
        step = 960 * channels
        for start in range(0, pcm.shape[1], step):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(pcm[:, start : start + step]), format="s16", layout=_LAYOUTS[channels]
            )
            frame.sample_rate = rate
            frame.pts = start // channels
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buf.getvalue()


def chunks(data: bytes, sizes: Iterable[int]) -> Iterator[bytes]:
    pos = 0
    for size in sizes:
        if pos >= len(data):
            return
        yield data[pos : pos + size]
        pos += size


def varied_sizes(bytes_per_s: int) -> Iterator[int]:
    """1-byte then 7-byte pieces through the header, then 10 ms to 1 s of audio per chunk."""
    yield from [1] * 60
    yield from [7] * 40
    per_ms = max(bytes_per_s // 1000, 1)
    yield from itertools.cycle([10 * per_ms, 100 * per_ms, 1000 * per_ms, 37 * per_ms + 3, 1])


def stream(decoder: StreamDecoder, data: bytes, sizes: Iterable[int]) -> tuple[npt.NDArray[np.int16], int]:
    """All samples, and how many came out before finish()."""
    parts = [decoder.feed(chunk) for chunk in chunks(data, sizes)]
    before_finish = sum(p.size for p in parts)
    parts.append(decoder.finish())
    return np.concatenate(parts), before_finish


def flac_audio_offset(data: bytes) -> int:
    """Where the first frame starts: after "fLaC" and the metadata blocks."""
    pos, last = 4, False
    while not last:
        last = bool(data[pos] & 0x80)
        pos += 4 + int.from_bytes(data[pos + 1 : pos + 4], "big")
    return pos


def peak_hz(samples: npt.NDArray[np.int16], rate: int = 16000) -> float:
    spectrum = np.abs(np.fft.rfft(samples.astype(np.float64) * np.hanning(samples.size)))
    return float(np.argmax(spectrum)) * rate / samples.size


CASES = [
    *((Encoding.FLAC, rate, channels) for rate in (16000, 44100, 48000) for channels in (1, 2)),
    *((Encoding.OGG_OPUS, rate, channels) for rate in (16000, 48000) for channels in (1, 2)),
]


@pytest.mark.parametrize(("encoding", "rate", "channels"), CASES)
def test_streamed_containers_match_a_one_shot_decode(encoding: Encoding, rate: int, channels: int) -> None:
    data = encode(encoding, rate, channels)
    reference = decode_clip(data, AudioFormat(encoding))
    decoder = StreamDecoder(AudioFormat(encoding))
    assert decoder.chunk_duration_ms(4096) == 0.0  # compressed: unknown, bounded in bytes instead
    samples, before_finish = stream(decoder, data, varied_sizes(len(data) // 3))

    assert samples.dtype == np.int16
    # Within 1 ms: the end padding is trimmed (FLAC by block size, Opus by the last granule position).
    assert abs(samples.size - reference.size) <= 16
    assert before_finish >= samples.size * 0.9  # decoded as it arrived, not at the end
    n = min(samples.size, reference.size)
    assert np.corrcoef(samples[:n].astype(np.float64), reference[:n])[0, 1] > 0.999
    assert abs(peak_hz(samples) - TONE_HZ) < 2
    expected_rate = rate if encoding is Encoding.FLAC else 48000  # Opus always decodes at 48 kHz
    assert (decoder.sample_rate_hz, decoder.channels) == (expected_rate, channels)


@pytest.mark.parametrize("encoding", [Encoding.FLAC, Encoding.OGG_OPUS])
def test_samples_come_out_while_the_stream_arrives(encoding: Encoding) -> None:
    data = encode(encoding, 48000, 1, seconds=4.0)
    decoder = StreamDecoder(AudioFormat(encoding))
    out = [decoder.feed(chunk).size for chunk in chunks(data, itertools.repeat(len(data) // 40))]
    half = sum(out[:20])
    # Half of the bytes (a little less once the header is counted) hold about 2 s of audio.
    assert 16000 * 1.5 < half <= 16000 * 2.1


def test_declared_rate_and_channels_are_checked() -> None:
    flac = encode(Encoding.FLAC, 44100, 2, seconds=0.5)
    samples, _ = stream(StreamDecoder(AudioFormat(Encoding.FLAC, 44100, 2)), flac, itertools.repeat(100))
    assert samples.size == 8000
    with pytest.raises(InvalidInput, match=r"sample_rate_hz 16000 does not match the FLAC data \(44100 Hz\)"):
        StreamDecoder(AudioFormat(Encoding.FLAC, 16000)).feed(flac[:100])
    with pytest.raises(InvalidInput, match=r"channels 1 does not match the FLAC data \(2\)"):
        StreamDecoder(AudioFormat(Encoding.FLAC, channels=1)).feed(flac[:100])

    opus16k = encode(Encoding.OGG_OPUS, 16000, 1, seconds=0.5)
    # Opus decodes at 48 kHz; the rate it was encoded from (in its OpusHead) is accepted as well.
    for rate in (16000, 48000):
        decoder = StreamDecoder(AudioFormat(Encoding.OGG_OPUS, rate))
        assert stream(decoder, opus16k, itertools.repeat(50))[0].size > 7000
        assert decode_clip(opus16k, AudioFormat(Encoding.OGG_OPUS, rate)).size > 7000  # clips agree
    with pytest.raises(InvalidInput, match="sample_rate_hz 24000 does not match the OGG_OPUS data"):
        StreamDecoder(AudioFormat(Encoding.OGG_OPUS, 24000)).feed(opus16k[:200])
    with pytest.raises(InvalidInput, match="sample_rate_hz 24000 does not match the OGG_OPUS data"):
        decode_clip(opus16k, AudioFormat(Encoding.OGG_OPUS, 24000))


def test_more_than_two_channels_are_refused() -> None:
    quad = encode_with("flac", "flac", 16000, 4, seconds=0.2)
    with pytest.raises(InvalidInput, match="has 4 channels; send mono or stereo"):
        StreamDecoder(AudioFormat(Encoding.FLAC)).feed(quad[:200])
    with pytest.raises(InvalidInput, match="unsupported channel count 4"):
        StreamDecoder(AudioFormat(Encoding.OGG_OPUS, channels=4))


@pytest.mark.parametrize(
    ("declared", "data", "message"),
    [
        (Encoding.FLAC, encode(Encoding.OGG_OPUS, 48000, 1, 0.2), "declared as FLAC is a ogg container"),
        (Encoding.OGG_OPUS, encode(Encoding.FLAC, 16000, 1, 0.2), "declared as OGG_OPUS is a flac container"),
        (Encoding.FLAC, b"RIFF\x24\x00\x00\x00WAVEfmt ", "declared as FLAC is a wav container"),
        (Encoding.OGG_OPUS, bytes(range(256)) * 8, "declared as OGG_OPUS could not be decoded"),
        (Encoding.FLAC, bytes(range(256)) * 8, "declared as FLAC could not be decoded"),
    ],
)
def test_a_wrong_container_fails_within_its_first_bytes(
    declared: Encoding, data: bytes, message: str
) -> None:
    decoder = StreamDecoder(AudioFormat(declared))
    with pytest.raises(InvalidInput, match=message):
        for chunk in chunks(data[:16], itertools.repeat(1)):
            decoder.feed(chunk)


def test_an_ogg_stream_without_opus_is_named() -> None:
    ogg_flac = encode_with("ogg", "flac", 16000, 1, seconds=0.3)
    with pytest.raises(InvalidInput, match=r"holds no Opus stream \(found flac\)"):
        stream(StreamDecoder(AudioFormat(Encoding.OGG_OPUS)), ogg_flac, itertools.repeat(500))


@pytest.mark.parametrize("encoding", [Encoding.FLAC, Encoding.OGG_OPUS])
def test_garbage_after_a_valid_header_fails_within_a_bounded_number_of_bytes(encoding: Encoding) -> None:
    data = encode(encoding, 16000, 1, seconds=1.0)
    header = data[: flac_audio_offset(data) + 100 if encoding is Encoding.FLAC else 200]
    garbage = np.random.default_rng(3).integers(0, 256, 1 << 20, dtype=np.uint8).tobytes()
    decoder = StreamDecoder(AudioFormat(encoding))
    fed = 0
    with pytest.raises(InvalidInput, match=f"declared as {encoding.name} could not be decoded"):
        for chunk in chunks(header + garbage, itertools.repeat(4096)):
            decoder.feed(chunk)
            fed += len(chunk)
    assert fed <= len(header) + 128 * 1024
    with pytest.raises(InvalidInput, match="already failed"):
        decoder.feed(b"more")


@pytest.mark.parametrize("encoding", [Encoding.FLAC, Encoding.OGG_OPUS])
@pytest.mark.parametrize("keep", [0.5, 0.77])
def test_a_truncated_stream_fails_at_finish(encoding: Encoding, keep: float) -> None:
    data = encode(encoding, 48000, 2, seconds=1.0)
    decoder = StreamDecoder(AudioFormat(encoding))
    for chunk in chunks(data[: int(len(data) * keep)], itertools.repeat(999)):
        decoder.feed(chunk)
    with pytest.raises(InvalidInput, match="truncated"):
        decoder.finish()


def test_a_flac_stream_cut_on_a_frame_boundary_fails_against_its_sample_count() -> None:
    data = encode(Encoding.FLAC, 16000, 1, seconds=2.0)
    first = flac_audio_offset(data)
    # Frame 1's header: frame 0's sync and codes, then the coded frame number 1.
    second_frame = data.index(data[first : first + 4] + b"\x01", first + 2)
    decoder = StreamDecoder(AudioFormat(Encoding.FLAC))
    decoder.feed(data[:second_frame])
    with pytest.raises(InvalidInput, match="truncated: 1152 of its 32000 samples arrived"):
        decoder.finish()


@pytest.mark.parametrize(
    ("encoding", "message"), [(Encoding.FLAC, "FLAC header"), (Encoding.OGG_OPUS, "headers")]
)
def test_a_stream_that_ends_inside_its_header_fails(encoding: Encoding, message: str) -> None:
    decoder = StreamDecoder(AudioFormat(encoding))
    decoder.feed(encode(encoding, 16000, 1, 0.2)[:3])
    with pytest.raises(InvalidInput, match=message):
        decoder.finish()


def test_a_corrupt_ogg_page_fails_its_crc() -> None:
    data = bytearray(encode(Encoding.OGG_OPUS, 48000, 1, seconds=1.0))
    data[len(data) // 2] ^= 0x20
    with pytest.raises(InvalidInput, match="CRC"):
        stream(StreamDecoder(AudioFormat(Encoding.OGG_OPUS)), bytes(data), itertools.repeat(512))


def test_a_corrupt_flac_frame_fails() -> None:
    data = bytearray(encode(Encoding.FLAC, 16000, 1, seconds=1.0))
    data[len(data) // 2] ^= 0x20
    with pytest.raises(InvalidInput, match="declared as FLAC could not be decoded"):
        stream(StreamDecoder(AudioFormat(Encoding.FLAC)), bytes(data), itertools.repeat(512))


def test_an_id3_tag_before_the_flac_header_is_skipped() -> None:
    data = encode(Encoding.FLAC, 16000, 1, seconds=0.5)
    tagged = b"ID3\x04\x00\x00\x00\x00\x00\x0a" + b"\x00" * 10 + data
    samples, _ = stream(StreamDecoder(AudioFormat(Encoding.FLAC)), tagged, itertools.repeat(5))
    assert samples.size == 8000


def test_oversized_compressed_chunks_are_refused() -> None:
    decoder = StreamDecoder(AudioFormat(Encoding.OGG_OPUS))
    with pytest.raises(InvalidInput, match="over the 256 KiB limit"):
        decoder.feed(b"OggS" + bytes(256 * 1024))


def test_the_servers_own_opus_output_streams_back_in() -> None:
    audio = (np.sin(2 * np.pi * TONE_HZ * np.arange(48000) / 24000) * 0.3).astype(np.float32)  # 2 s at 24 kHz
    encoder = AudioEncoder(Encoding.OGG_OPUS, 24000, 24000)
    pieces = [encoder.encode(audio[i : i + 2400]) for i in range(0, audio.size, 2400)] + [encoder.finish()]
    decoder = StreamDecoder(AudioFormat(Encoding.OGG_OPUS, 24000, 1))
    samples = np.concatenate([decoder.feed(p) for p in pieces if p] + [decoder.finish()])
    assert abs(samples.size - 32000) <= 320
    assert abs(peak_hz(samples) - TONE_HZ) < 2
