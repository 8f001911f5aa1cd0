"""Audio in and out: container decoding, stream decoding, resampling and encoding (PyAV / libswresample)."""

from __future__ import annotations

import io
import logging
import math
import struct
from dataclasses import dataclass
from typing import Any

import av
import numpy as np
import numpy.typing as npt

from voxwire_server.config import INPUT_SAMPLE_RATES_HZ
from voxwire_server.domain import AudioFormat, Encoding, PcmFormat
from voxwire_server.engines.containers import ContainerStream, open_container_stream
from voxwire_server.engines.containers.base import MAX_RATE_HZ, MIN_RATE_HZ, sniff_container
from voxwire_server.errors import InvalidInput, LimitExceeded

log = logging.getLogger(__name__)

ASR_SAMPLE_RATE_HZ = 16000
# The most audio one compressed (FLAC, Ogg/Opus) stream chunk may decode to.
COMPRESSED_CHUNK_MAX_MS = 60_000
Int16Array = npt.NDArray[np.int16]
Float32Array = npt.NDArray[np.float32]

# The container names PyAV reports for each encoding.
_CONTAINERS = {Encoding.WAV: "wav", Encoding.FLAC: "flac", Encoding.OGG_OPUS: "ogg"}
_MAX_WAV_HEADER_BYTES = 64 * 1024
# Compressed chunks carry no duration the session could check, so their size is bounded instead
# (and what they decode to, by the container stream).
MAX_COMPRESSED_CHUNK_BYTES = 256 * 1024


class Resampler:
    """Stateful resampler to mono 16-bit at a target rate; downmixes stereo. Feed chunks, then flush."""

    def __init__(self, sample_rate_hz: int, channels: int, target_rate_hz: int) -> None:
        self._rate = sample_rate_hz
        self._channels = channels
        self._target = target_rate_hz
        self._passthrough = sample_rate_hz == target_rate_hz and channels == 1
        self._swr: Any = None
        if not self._passthrough:
            self._swr = av.AudioResampler(format="s16", layout="mono", rate=target_rate_hz)

    def feed(self, interleaved: Int16Array) -> Int16Array:
        if self._passthrough:
            return interleaved
        if interleaved.size == 0:
            return np.zeros(0, np.int16)
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(interleaved.reshape(1, -1)),
            format="s16",
            layout="mono" if self._channels == 1 else "stereo",
        )
        frame.sample_rate = self._rate
        return self._collect(self._swr.resample(frame))

    def flush(self) -> Int16Array:
        if self._passthrough:
            return np.zeros(0, np.int16)
        return self._collect(self._swr.resample(None))

    @staticmethod
    def _collect(frames: list[Any]) -> Int16Array:
        if not frames:
            return np.zeros(0, np.int16)
        return np.concatenate([_samples(f) for f in frames])


def _samples(frame: Any) -> Int16Array:
    return np.asarray(frame.to_ndarray(), dtype=np.int16).reshape(-1)


def pcm16_to_float(samples: Int16Array) -> Float32Array:
    return (samples.astype(np.float32) / 32768.0).astype(np.float32, copy=False)


def float_to_pcm16(samples: npt.NDArray[np.floating[Any]]) -> Int16Array:
    """The inverse of pcm16_to_float (rounded, clipped to int16): 16-bit audio that went through
    float comes back sample for sample, so a clip sent to Recognize reaches the endpointer and the
    model exactly as the same audio streamed (scaling by 32767 and truncating took one step off
    almost every sample, which changed the finals of 30 of the 190 clips of both dev sets)."""
    pcm: Int16Array = np.clip(np.rint(samples * 32768.0), -32768, 32767).astype(np.int16)
    return pcm


def check_pcm_format(sample_rate_hz: int, channels: int) -> None:
    if sample_rate_hz not in INPUT_SAMPLE_RATES_HZ:
        allowed = ", ".join(str(r) for r in INPUT_SAMPLE_RATES_HZ)
        raise InvalidInput(f"unsupported sample_rate_hz {sample_rate_hz}; supported: {allowed}")
    if channels not in (1, 2):
        raise InvalidInput(f"unsupported channel count {channels}; send mono or stereo audio")


def clip_too_long(duration_s: float, max_duration_s: float) -> LimitExceeded:
    return LimitExceeded(
        f"the clip is {duration_s:.0f} s; Recognize takes at most {max_duration_s:.0f} s: "
        "send longer audio with StreamingRecognize"
    )


def decode_clip(data: bytes, fmt: AudioFormat, max_duration_s: float = math.inf) -> Float32Array:
    """A whole clip in any supported encoding → float32 mono at 16 kHz.

    LimitExceeded once the clip is longer than max_duration_s: for WAV from its header, before any
    sample is decoded; for FLAC and Ogg from the duration the container declares, and in any case
    as soon as decoding passes the limit (a container's header may lie)."""
    if not data:
        raise InvalidInput("audio is empty")
    if fmt.encoding is Encoding.WAV:
        return _decode_wav_clip(data, fmt, max_duration_s)
    if fmt.encoding is Encoding.LINEAR16:
        channels = fmt.channels or 1
        check_pcm_format(fmt.sample_rate_hz, channels)
        if len(data) % (2 * channels):
            raise InvalidInput(
                f"LINEAR16 audio length {len(data)} is not a whole number of {channels}-channel samples"
            )
        resampler = Resampler(fmt.sample_rate_hz, channels, ASR_SAMPLE_RATE_HZ)
        pcm = np.frombuffer(data, dtype="<i2").astype(np.int16)
        return pcm16_to_float(np.concatenate([resampler.feed(pcm), resampler.flush()]))
    return _decode_container(data, fmt, max_duration_s)


def _decode_wav_clip(data: bytes, fmt: AudioFormat, max_duration_s: float) -> Float32Array:
    """WAV read with the same header parser as streams: the declared format and duration are checked
    before any sample is converted, and what is decoded is bounded by the bytes present."""
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        found = sniff_container(data[:8])
        if found:
            raise InvalidInput(f"audio declared as WAV is a {found} container")
        raise InvalidInput(
            "audio declared as WAV could not be decoded: it does not start with a RIFF/WAVE header"
        )
    header = _parse_wav_header(data)
    if header is None:
        raise InvalidInput("the WAV data ends before its data chunk (a truncated or incomplete header)")
    _check_declared_format(fmt, header)
    check_pcm_format(header.rate, header.channels)
    body = memoryview(data)[header.data_offset :]
    if 0 < header.data_bytes < len(body):
        body = body[: header.data_bytes]  # chunks after the samples (LIST, id3) are not audio
    frame_bytes = header.bits // 8 * header.channels
    frames = len(body) // frame_bytes
    duration_s = frames / header.rate
    if duration_s > max_duration_s:
        raise clip_too_long(duration_s, max_duration_s)
    if not frames:
        raise InvalidInput("the WAV data decoded to no samples")
    resampler = Resampler(header.rate, header.channels, ASR_SAMPLE_RATE_HZ)
    pcm = _to_pcm16(bytes(body[: frames * frame_bytes]), header.bits, header.floating)
    return pcm16_to_float(np.concatenate([resampler.feed(pcm), resampler.flush()]))


def _check_declared_format(fmt: AudioFormat, header: _WavFormat) -> None:
    if fmt.sample_rate_hz and fmt.sample_rate_hz != header.rate:
        raise InvalidInput(
            f"sample_rate_hz {fmt.sample_rate_hz} does not match the WAV header ({header.rate} Hz)"
        )
    if fmt.channels and fmt.channels != header.channels:
        raise InvalidInput(f"channels {fmt.channels} does not match the WAV header ({header.channels})")


def _check_container_rate(name: str, rate_hz: int) -> None:
    if not MIN_RATE_HZ <= rate_hz <= MAX_RATE_HZ:
        raise InvalidInput(
            f"the {name} data declares {rate_hz} Hz; supported rates are {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz"
        )


def _decode_container(data: bytes, fmt: AudioFormat, max_duration_s: float) -> Float32Array:
    expected = _CONTAINERS[fmt.encoding]
    name = fmt.encoding.name
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            found = container.format.name.split(",")
            if expected not in found:
                raise InvalidInput(f"audio declared as {name} is a {container.format.name} container")
            if not container.streams.audio:
                raise InvalidInput(f"the {name} data holds no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context is None:
                raise InvalidInput(f"the {name} data holds audio in a format this server cannot decode")
            rate, channels = stream.codec_context.sample_rate, stream.codec_context.channels
            _check_container_rate(name, rate)
            if not 1 <= channels <= 2:
                raise InvalidInput(f"the {name} audio has {channels} channels; send mono or stereo")
            # The duration the container declares (FLAC: STREAMINFO's sample count), when it does.
            if container.duration is not None and container.duration / 1e6 > max_duration_s:
                raise clip_too_long(container.duration / 1e6, max_duration_s)
            rates = {rate}
            head = stream.codec_context.extradata or b""
            # Opus decodes at 48 kHz; the rate it was encoded from (OpusHead) is accepted too, as in streams.
            if head.startswith(b"OpusHead") and len(head) >= 16:
                rates.add(struct.unpack_from("<I", head, 12)[0])
            if fmt.sample_rate_hz and fmt.sample_rate_hz not in rates:
                raise InvalidInput(
                    f"sample_rate_hz {fmt.sample_rate_hz} does not match the {name} data ({rate} Hz)"
                )
            if fmt.channels and fmt.channels != channels:
                raise InvalidInput(f"channels {fmt.channels} does not match the {name} data ({channels})")
            swr = av.AudioResampler(format="s16", layout="mono", rate=ASR_SAMPLE_RATE_HZ)
            parts: list[Int16Array] = []
            # Decoding stops as soon as the clip is over the limit, whatever its header said.
            max_samples = max_duration_s * ASR_SAMPLE_RATE_HZ
            total = 0
            for frame in container.decode(stream):
                for f in swr.resample(frame):
                    parts.append(_samples(f))
                    total += parts[-1].size
                if total > max_samples:
                    raise clip_too_long(total / ASR_SAMPLE_RATE_HZ, max_duration_s)
            parts.extend(_samples(f) for f in swr.resample(None))
    except (InvalidInput, LimitExceeded):
        raise
    except (av.FFmpegError, ValueError, IndexError) as exc:
        log.debug("decoding %s failed: %r", name, exc)
        raise InvalidInput(
            f"audio declared as {name} could not be decoded: it is not valid {name} data"
        ) from None
    if not parts:
        raise InvalidInput(f"the {name} data decoded to no samples")
    return pcm16_to_float(np.concatenate(parts))


class StreamDecoder:
    """Turns a stream's audio chunks into 16 kHz mono int16 samples as they arrive."""

    def __init__(self, fmt: AudioFormat, max_chunk_ms: int = 0) -> None:
        """max_chunk_ms: the most audio one chunk may carry (0: unbounded); checked here for the chunk
        that completes a WAV header and for compressed chunks, whose durations the session cannot see."""
        self._fmt = fmt
        self._max_chunk_ms = max_chunk_ms
        self._pending = b""
        self._resampler: Resampler | None = None
        self._frame_bytes = 0
        self._bits, self._floating = 16, False
        self._container: ContainerStream | None = None
        # The source stream's rate and channels once known (Opus: its 48 kHz decoding rate).
        self.sample_rate_hz = 0
        self.channels = 0
        if fmt.encoding is Encoding.LINEAR16:
            self._start_pcm(fmt.sample_rate_hz, fmt.channels or 1)
        elif fmt.encoding is not Encoding.WAV:
            if fmt.channels not in (0, 1, 2):
                check_pcm_format(ASR_SAMPLE_RATE_HZ, fmt.channels)
            # A client cannot know how long a compressed chunk is (the client library sends 16 KiB,
            # 20 s of low-bitrate Opus): the bound is against decompression bombs, not pacing.
            bound_ms = max(max_chunk_ms, COMPRESSED_CHUNK_MAX_MS) if max_chunk_ms else 0
            self._container = open_container_stream(fmt, ASR_SAMPLE_RATE_HZ, bound_ms)
        elif fmt.sample_rate_hz or fmt.channels:
            # WAV: the header tells the format; declared values must at least be valid ones.
            check_pcm_format(fmt.sample_rate_hz or ASR_SAMPLE_RATE_HZ, fmt.channels or 1)

    def _start_pcm(self, sample_rate_hz: int, channels: int, bits: int = 16, floating: bool = False) -> None:
        check_pcm_format(sample_rate_hz, channels)
        self.sample_rate_hz, self.channels = sample_rate_hz, channels
        self._bits, self._floating = bits, floating
        self._frame_bytes = bits // 8 * channels
        self._resampler = Resampler(sample_rate_hz, channels, ASR_SAMPLE_RATE_HZ)

    @property
    def pcm(self) -> PcmFormat | None:
        """The PCM being decoded (None for compressed audio, and for WAV until its header arrived)."""
        if self._container is not None or self._resampler is None:
            return None
        return PcmFormat(self.sample_rate_hz, self.channels, self._bits, self._floating)

    @property
    def pending_bytes(self) -> int:
        """Bytes fed but not yet decoded: a sample frame split across chunks, or a partial WAV header."""
        return len(self._pending)

    def resume(self, pcm: PcmFormat) -> None:
        """Continues a PCM or WAV stream at a sample frame after its start (a resumed stream), as a
        decoder that has seen its header (for WAV) would. The resampler starts afresh."""
        if self._container is not None:
            raise InvalidInput(f"{self._fmt.encoding.name} streams cannot be resumed")
        self._pending = b""
        self._start_pcm(pcm.sample_rate_hz, pcm.channels, pcm.bits, pcm.floating)

    @property
    def compressed(self) -> bool:
        """FLAC or Ogg/Opus: decoding a chunk is codec work (PCM and WAV only convert samples)."""
        return self._container is not None

    def chunk_duration_ms(self, nbytes: int) -> float:
        """Duration of a PCM chunk; 0 when unknown: while a WAV header is awaited, and always for FLAC and
        OGG_OPUS, whose chunks feed() bounds in bytes (MAX_COMPRESSED_CHUNK_BYTES) instead."""
        if not self._frame_bytes:
            return 0.0
        return 1000.0 * nbytes / (self._frame_bytes * self.sample_rate_hz)

    def feed(self, chunk: bytes) -> Int16Array:
        if self._container is not None:
            if len(chunk) > MAX_COMPRESSED_CHUNK_BYTES:
                raise InvalidInput(
                    f"{self._fmt.encoding.name} audio chunk of {len(chunk)} bytes is over the "
                    f"{MAX_COMPRESSED_CHUNK_BYTES // 1024} KiB limit; send smaller chunks"
                )
            samples = self._container.feed(chunk)
            self.sample_rate_hz, self.channels = self._container.sample_rate_hz, self._container.channels
            return samples
        data = self._pending + chunk
        self._pending = b""
        if self._resampler is None:
            header = _parse_wav_header(data)
            if header is None:
                if len(data) > _MAX_WAV_HEADER_BYTES:
                    raise InvalidInput("no WAV data chunk within the first 64 KiB of the stream")
                self._pending = data
                return np.zeros(0, np.int16)
            _check_declared_format(self._fmt, header)
            self._start_pcm(header.rate, header.channels, header.bits, header.floating)
            data = data[header.data_offset :]
            # The samples that came with the header count like any chunk's.
            chunk_ms = self.chunk_duration_ms(len(data))
            if self._max_chunk_ms and chunk_ms > self._max_chunk_ms:
                raise InvalidInput(
                    f"audio chunk of {chunk_ms:.0f} ms is over the {self._max_chunk_ms} ms limit "
                    "(the samples after the WAV header count); send smaller chunks"
                )
        usable = len(data) - len(data) % self._frame_bytes
        self._pending = data[usable:]
        assert self._resampler is not None
        return self._resampler.feed(_to_pcm16(data[:usable], self._bits, self._floating))

    def finish(self) -> Int16Array:
        """The samples still held back; raises InvalidInput when the stream is truncated."""
        if self._container is not None:
            return self._container.finish()
        if self._resampler is None:
            raise InvalidInput("the stream ended before a complete WAV header arrived")
        if self._pending:
            raise InvalidInput("the audio ended in the middle of a sample frame")
        return self._resampler.flush()


@dataclass(frozen=True, slots=True)
class _WavFormat:
    rate: int
    channels: int
    bits: int
    floating: bool
    data_offset: int
    # As the header declares it: 0 or 0xFFFFFFFF in headers written before the length was known.
    data_bytes: int


_WAVE_FORMAT_PCM = 1
_WAVE_FORMAT_IEEE_FLOAT = 3
_WAVE_FORMAT_EXTENSIBLE = 0xFFFE
_PCM_BITS = (8, 16, 24, 32)
_FMT_BYTES = 16
_EXTENSIBLE_FMT_BYTES = 40
# The KSDATAFORMAT_SUBTYPE_* GUIDs after their first two bytes (which are the format tag).
_KSDATAFORMAT_GUID_TAIL = bytes.fromhex("000000001000800000aa00389b71")
_FORMATS = "8/16/24/32-bit PCM or 32/64-bit float"


def _parse_wav_header(data: bytes) -> _WavFormat | None:
    """The stream's sample format and where its samples start; None if more bytes are needed.

    Every declared value is checked before it is used (InvalidInput otherwise), and no declared size
    is trusted further than _MAX_WAV_HEADER_BYTES: the samples must start within it."""
    if len(data) < 12:
        if data and not b"RIFF".startswith(data[:4]):
            raise InvalidInput("WAV audio must start with a RIFF header")
        return None
    if data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise InvalidInput("WAV audio must start with a RIFF/WAVE header")
    pos, fmt = 12, None
    while pos + 8 <= len(data):
        chunk_id, size = data[pos : pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        body = pos + 8
        if chunk_id == b"data":
            if fmt is None:
                raise InvalidInput("WAV data chunk comes before its fmt chunk")
            return _WavFormat(*fmt, data_offset=body, data_bytes=size)
        if body + size > _MAX_WAV_HEADER_BYTES:
            name = chunk_id.decode("latin-1").strip() or "unnamed"
            raise InvalidInput(
                f"the WAV {name!r} chunk before the samples declares {size} bytes; the samples must "
                f"start within the first {_MAX_WAV_HEADER_BYTES // 1024} KiB"
            )
        if chunk_id == b"fmt ":
            if fmt is not None:
                raise InvalidInput("the WAV header has more than one fmt chunk")
            if body + size > len(data):
                return None
            fmt = _wav_format(data[body : body + size])
        pos = body + size + (size & 1)
    return None


def _wav_format(chunk: bytes) -> tuple[int, int, int, bool]:
    """(rate, channels, bits, floating) of a fmt chunk that this server can decode."""
    if len(chunk) < _FMT_BYTES:
        raise InvalidInput(f"the WAV fmt chunk is {len(chunk)} bytes; it must have at least {_FMT_BYTES}")
    tag, channels, rate, _, block_align, bits = struct.unpack_from("<HHIIHH", chunk)
    if tag == _WAVE_FORMAT_EXTENSIBLE:
        if len(chunk) < _EXTENSIBLE_FMT_BYTES:
            raise InvalidInput(
                f"the WAV header says WAVE_FORMAT_EXTENSIBLE but its fmt chunk is {len(chunk)} bytes, "
                f"not {_EXTENSIBLE_FMT_BYTES}"
            )
        tag = struct.unpack_from("<H", chunk, 24)[0]
        if chunk[26:40] != _KSDATAFORMAT_GUID_TAIL:
            raise InvalidInput(
                "the WAV WAVE_FORMAT_EXTENSIBLE sub-format is not PCM or float: this server cannot decode it"
            )
    if tag not in (_WAVE_FORMAT_PCM, _WAVE_FORMAT_IEEE_FLOAT):
        raise InvalidInput(f"WAV audio must be {_FORMATS} (format tag {tag}, {bits} bits found)")
    floating = tag == _WAVE_FORMAT_IEEE_FLOAT
    if bits not in ((32, 64) if floating else _PCM_BITS):
        raise InvalidInput(f"WAV audio must be {_FORMATS} (format tag {tag}, {bits} bits found)")
    if not 1 <= channels <= 2:
        raise InvalidInput(f"the WAV header gives {channels} channels; send mono or stereo audio")
    if rate not in INPUT_SAMPLE_RATES_HZ:
        allowed = ", ".join(str(r) for r in INPUT_SAMPLE_RATES_HZ)
        raise InvalidInput(
            f"the WAV header gives an unsupported sample rate of {rate} Hz; supported: {allowed}"
        )
    if block_align != bits // 8 * channels:
        raise InvalidInput(
            f"the WAV header's block align is {block_align} bytes, not {bits // 8 * channels} "
            f"({channels} channels of {bits} bits)"
        )
    return rate, channels, bits, floating


def _to_pcm16(data: bytes, bits: int, floating: bool) -> Int16Array:
    """Little-endian WAV samples of any supported format as int16."""
    if floating:
        real = np.frombuffer(data, "<f4" if bits == 32 else "<f8").astype(np.float64)
        return float_to_pcm16(np.nan_to_num(real))
    if bits == 16:
        return np.frombuffer(data, "<i2").astype(np.int16)
    if bits == 8:
        return ((np.frombuffer(data, np.uint8).astype(np.int16) - 128) << 8).astype(np.int16)
    if bits == 24:
        raw = np.frombuffer(data, np.uint8).reshape(-1, 3).astype(np.int32)
        ints = raw[:, 0] | (raw[:, 1] << 8) | (raw[:, 2] << 16)
        ints = np.where(ints >= 1 << 23, ints - (1 << 24), ints)
        return (ints >> 8).astype(np.int16)
    return (np.frombuffer(data, "<i4").astype(np.int32) >> 16).astype(np.int16)


def wav_header(sample_rate_hz: int, channels: int, data_bytes: int | None) -> bytes:
    """A 44-byte PCM16 header; data_bytes None marks an open-ended stream (sizes 0xFFFFFFFF)."""
    data_size = 0xFFFFFFFF if data_bytes is None else data_bytes
    riff_size = 0xFFFFFFFF if data_bytes is None else 36 + data_bytes
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack(
            "<IHHIIHH", 16, 1, channels, sample_rate_hz, sample_rate_hz * channels * 2, channels * 2, 16
        )
        + b"data"
        + struct.pack("<I", data_size)
    )


OPUS_SAMPLE_RATES_HZ = (8000, 12000, 16000, 24000, 48000)


def check_output_format(encoding: Encoding, sample_rate_hz: int) -> None:
    """InvalidInput unless AudioEncoder can produce this encoding at this rate."""
    if encoding is Encoding.OGG_OPUS and sample_rate_hz not in OPUS_SAMPLE_RATES_HZ:
        allowed = ", ".join(str(r) for r in OPUS_SAMPLE_RATES_HZ)
        raise InvalidInput(f"OGG_OPUS output supports sample rates {allowed}, not {sample_rate_hz}")
    if encoding is Encoding.FLAC:
        raise InvalidInput("FLAC is not an output encoding; use LINEAR16, WAV or OGG_OPUS")


def pcm_to_opus(pcm: Int16Array, sample_rate_hz: int, bit_rate: int) -> bytes:
    """An Ogg/Opus stream of 16-bit mono PCM at the Opus rate at or above sample_rate_hz (the phrase
    cache's compressed form of a PCM reply). CPU work: call it off the event loop."""
    rate = min((r for r in OPUS_SAMPLE_RATES_HZ if r >= sample_rate_hz), default=OPUS_SAMPLE_RATES_HZ[-1])
    resampler = Resampler(sample_rate_hz, 1, rate)
    samples = np.concatenate([resampler.feed(pcm), resampler.flush()])
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="ogg") as out:
        stream = out.add_stream("libopus", rate=rate, layout="mono")
        stream.bit_rate = bit_rate
        if samples.size:
            frame = av.AudioFrame.from_ndarray(samples.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = rate
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode(None):
            out.mux(packet)
    return buffer.getvalue()


def opus_to_pcm(data: bytes, sample_rate_hz: int, samples: int) -> Int16Array:
    """pcm_to_opus's stream decoded back to 16-bit mono PCM at sample_rate_hz, exactly `samples` long
    (the codec's padding cut, a short end filled with silence). CPU work."""
    parts: list[Int16Array] = []
    with av.open(io.BytesIO(data), mode="r") as source:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=sample_rate_hz)
        for frame in source.decode(audio=0):
            parts += [np.asarray(f.to_ndarray(), np.int16).reshape(-1) for f in resampler.resample(frame)]
        parts += [np.asarray(f.to_ndarray(), np.int16).reshape(-1) for f in resampler.resample(None)]
    pcm = np.concatenate(parts) if parts else np.zeros(0, np.int16)
    if pcm.size >= samples:
        return pcm[:samples]
    return np.concatenate([pcm, np.zeros(samples - pcm.size, np.int16)])


class AudioEncoder:
    """Encodes float32 mono audio at the engine's rate into one output encoding, chunk by chunk.

    Cheap to make: the Ogg/Opus muxer is opened by the first encode, so all codec work happens
    where encode() is called (a worker thread, not the event loop)."""

    def __init__(self, encoding: Encoding, source_rate_hz: int, target_rate_hz: int) -> None:
        check_output_format(encoding, target_rate_hz)
        self.encoding = encoding
        self.sample_rate_hz = target_rate_hz
        self._resampler = Resampler(source_rate_hz, 1, target_rate_hz)
        self._samples_out = 0
        self._buffer: io.BytesIO | None = None
        self._container: Any = None
        self._stream: Any = None
        self._read_pos = 0
        self._finished = False

    def _open_ogg(self) -> None:
        self._buffer = io.BytesIO()
        # Short Ogg pages so a streamed reply flushes audio with each chunk.
        self._container = av.open(self._buffer, mode="w", format="ogg", options={"page_duration": "60000"})
        self._stream = self._container.add_stream("libopus", rate=self.sample_rate_hz, layout="mono")

    @property
    def samples_out(self) -> int:
        return self._samples_out

    def encode(self, audio: Float32Array) -> bytes:
        return self._encode(self._resampler.feed(float_to_pcm16(audio)), final=False)

    def finish(self) -> bytes:
        return self._encode(self._resampler.flush(), final=True)

    def _encode(self, pcm: Int16Array, final: bool) -> bytes:
        self._samples_out += pcm.size
        if self.encoding is not Encoding.OGG_OPUS:
            return pcm.astype("<i2").tobytes()
        if self._container is None and not self._finished:
            self._open_ogg()
        if pcm.size and self._container is not None:
            frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = self.sample_rate_hz
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        if final and self._container is not None:
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self.close()
        return self._drain()

    def _drain(self) -> bytes:
        if self._buffer is None:
            return b""
        data = self._buffer.getvalue()[self._read_pos :]
        self._read_pos += len(data)
        return data

    def close(self) -> None:
        self._finished = True
        if self._container is not None:
            container, self._container = self._container, None
            container.close()
