"""Streaming FLAC and Ogg/Opus decoding: frames are cut from the byte stream here and decoded with PyAV.

Why not libavformat: a demuxer reading a growing buffer sees EOF (or blocks) whenever it reads past the
bytes received so far, and FFmpeg's FLAC parser holds about ten frames (~1 s) back before it emits one.
Cutting frames ourselves keeps the latency at one FLAC frame or one Opus packet and the cost per chunk
proportional to the chunk.
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Callable
from typing import Final, cast

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.errors import InvalidInput

__all__ = ["MAX_SNIFF_BYTES", "ContainerStream", "FlacStream", "OggOpusStream", "open_container_stream"]

Int16Array = npt.NDArray[np.int16]

# A stream must show its container's header within this many bytes, so garbage fails fast.
MAX_SNIFF_BYTES: Final = 64 * 1024
_MAX_FLAC_HEADER_BYTES: Final = 1024 * 1024
_MAX_OPUS_PACKET_BYTES: Final = 64 * 1024
_AV_ERRORS: Final = (av.FFmpegError, ValueError, EOFError)
_MAGICS: Final = ((b"OggS", "ogg"), (b"fLaC", "flac"), (b"RIFF", "wav"), (b"\x1a\x45\xdf\xa3", "matroska"))


class ContainerStream:
    """Bytes in, 16-bit mono samples at the target rate out; every failure is an InvalidInput."""

    def __init__(self, fmt: AudioFormat, target_rate_hz: int) -> None:
        self._fmt = fmt
        self._name = fmt.encoding.name
        self._buf = bytearray()
        self._pos = 0  # start of the unconsumed bytes in _buf
        self._consumed = 0  # bytes consumed before _buf[0]
        self._resampler = av.AudioResampler(format="s16", layout="mono", rate=target_rate_hz)
        self._out: list[Int16Array] = []
        self._failed = False
        # The decoded stream's parameters, known once its header has arrived.
        self.sample_rate_hz = 0
        self.channels = 0

    def feed(self, chunk: bytes) -> Int16Array:
        self._buf += chunk
        self._guarded(self._advance)
        if self._pos:
            self._consumed += self._pos
            del self._buf[: self._pos]
            self._rebase(self._pos)
            self._pos = 0
        return self._take()

    def finish(self) -> Int16Array:
        self._guarded(self._end)
        self._guarded(lambda: self._resample(None))
        return self._take()

    def _guarded(self, step: Callable[[], None]) -> None:
        if self._failed:
            raise InvalidInput(f"the {self._name} stream already failed to decode")
        try:
            step()
        except InvalidInput:
            self._failed = True
            raise
        except _AV_ERRORS as exc:
            self._failed = True
            raise InvalidInput(
                f"audio declared as {self._name} could not be decoded: {type(exc).__name__}"
            ) from None

    def _advance(self) -> None:
        raise NotImplementedError

    def _end(self) -> None:
        raise NotImplementedError

    def _rebase(self, shift: int) -> None:
        """Positions kept past _pos move back by shift when consumed bytes are dropped."""

    def _invalid(self, reason: str) -> InvalidInput:
        return InvalidInput(f"audio declared as {self._name} could not be decoded: {reason}")

    def _check_start(self, magic: bytes, what: str) -> bool:
        """True once the stream starts with magic; raises once 8 bytes show it does not."""
        head = bytes(self._buf[self._pos : self._pos + 8])
        if head.startswith(magic):
            return True
        if magic.startswith(head) or len(head) < 8:  # 8 bytes name the container the client sent instead
            return False
        found = next(
            (name for m, name in _MAGICS if head.startswith(m)), "mp4" if head[4:] == b"ftyp" else ""
        )
        if found:
            raise InvalidInput(f"audio declared as {self._name} is a {found} container")
        raise self._invalid(f"it does not start with {what}")

    def _check_format(
        self, rate_hz: int, channels: int, allowed_rates_hz: tuple[int, ...], rates: str
    ) -> None:
        fmt, name = self._fmt, self._name
        if channels > 2:
            raise InvalidInput(f"the {name} audio has {channels} channels; send mono or stereo")
        if fmt.sample_rate_hz and fmt.sample_rate_hz not in allowed_rates_hz:
            raise InvalidInput(
                f"sample_rate_hz {fmt.sample_rate_hz} does not match the {name} data ({rates})"
            )
        if fmt.channels and fmt.channels != channels:
            raise InvalidInput(f"channels {fmt.channels} does not match the {name} data ({channels})")
        self.sample_rate_hz, self.channels = rate_hz, channels

    def _resample(self, frames: list[AudioFrame] | None) -> None:
        for frame in frames if frames is not None else [None]:
            for out in self._resampler.resample(frame):
                if out is not None:  # a passthrough resampler answers a flush with [None]
                    self._out.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))

    def _take(self) -> Int16Array:
        out, self._out = self._out, []
        if not out:
            return np.zeros(0, np.int16)
        return out[0] if len(out) == 1 else np.concatenate(out)


# --- FLAC -------------------------------------------------------------------------------------------

_FLAC_MAX_FRAME_HEADER_BYTES: Final = 16
_FLAC_RATES_HZ: Final = (0, 88200, 176400, 192000, 8000, 16000, 22050, 24000, 32000, 44100, 48000, 96000)
_FLAC_SAMPLE_BITS: Final = (0, 8, 12, 0, 16, 20, 24, 32)


def _crc_table(poly: int, bits: int) -> tuple[int, ...]:
    table, mask = [], (1 << bits) - 1
    for byte in range(256):
        crc = byte << (bits - 8)
        for _ in range(8):
            crc = ((crc << 1) ^ (poly if crc >> (bits - 1) else 0)) & mask
        table.append(crc)
    return tuple(table)


_CRC8: Final = _crc_table(0x07, 8)  # FLAC frame headers
_CRC16: Final = _crc_table(0x8005, 16)  # whole FLAC frames


def _crc(data: bytes, table: tuple[int, ...], bits: int) -> int:
    """MSB-first CRC with a zero start; 0 over data that ends with its own CRC."""
    crc, shift, mask = 0, bits - 8, (1 << bits) - 1
    for byte in data:
        crc = ((crc << 8) & mask) ^ table[(crc >> shift) ^ byte]
    return crc


class FlacStream(ContainerStream):
    """Native FLAC: the metadata blocks, then frames cut at the next valid frame header."""

    def __init__(self, fmt: AudioFormat, target_rate_hz: int) -> None:
        super().__init__(fmt, target_rate_hz)
        self._header_done = False
        self._magic_seen = False
        self._last_block = False
        self._skip = 0  # bytes of an ID3 tag or metadata block still to drop
        self._rate = self._bits = self._max_block = 0
        self._total_samples = 0
        self._max_frame_bytes = 0
        self._ctx: AudioCodecContext | None = None
        self._sync = b""
        self._frame: tuple[int, int] | None = None  # (coded number, block size) of the frame at _pos
        self._scan = 0
        self._decoded = 0

    def _advance(self) -> None:
        if not self._header_done:
            self._read_header()
            if not self._header_done:
                return
        while True:
            buf, start = self._buf, self._pos
            if self._frame is None:
                if len(buf) - start < _FLAC_MAX_FRAME_HEADER_BYTES:
                    return
                self._frame = self._header_at(start, None)
                if self._frame is None:
                    raise self._invalid("no FLAC frame header where the audio should begin")
                self._sync = bytes(buf[start : start + 2])
                self._scan = start + 2
            found = buf.find(self._sync, self._scan)
            if found < 0 or len(buf) - found < _FLAC_MAX_FRAME_HEADER_BYTES:
                self._scan = max(self._scan, len(buf) - 1) if found < 0 else found
                if self._scan - start > self._max_frame_bytes:
                    raise self._invalid(f"no FLAC frame boundary within {self._max_frame_bytes} bytes")
                return
            number, block = self._frame
            expected = number + block if self._sync[1] & 1 else number + 1
            following = self._header_at(found, expected)
            if following is None:
                self._scan = found + 1
                continue
            self._decode(bytes(buf[start:found]))
            self._pos, self._frame, self._scan = found, following, found + 2

    def _rebase(self, shift: int) -> None:
        self._scan -= shift

    def _end(self) -> None:
        if not self._header_done:
            raise InvalidInput("the stream ended before a complete FLAC header arrived")
        last = bytes(self._buf[self._pos :])
        if last:
            if self._frame is None and self._header_at(self._pos, None) is None:
                raise InvalidInput("the FLAC stream is truncated: it ends inside a frame header")
            if _crc(last, _CRC16, 16):
                raise InvalidInput("the FLAC stream is truncated or corrupt: its last frame fails its CRC")
            self._decode(last)
            self._pos = len(self._buf)
        if self._total_samples and self._decoded != self._total_samples:
            raise InvalidInput(
                f"the FLAC stream is truncated: {self._decoded} of its {self._total_samples} samples arrived"
            )

    def _read_header(self) -> None:
        buf = self._buf
        while True:
            if self._skip:
                dropped = min(self._skip, len(buf) - self._pos)
                self._pos += dropped
                self._skip -= dropped
                if self._skip:
                    return
            if self._last_block:
                self._header_done = True
                return
            if not self._magic_seen:
                if self._consumed + self._pos == 0 and buf[:3] == b"ID3":
                    if len(buf) < 10:
                        return
                    size = (buf[6] << 21) | (buf[7] << 14) | (buf[8] << 7) | buf[9]
                    self._skip = 10 + size + (10 if buf[5] & 0x10 else 0)
                    if self._skip > MAX_SNIFF_BYTES:
                        raise self._invalid("an ID3 tag over 64 KiB precedes the FLAC header")
                    continue
                if self._consumed + self._pos == 0 and b"ID3".startswith(bytes(buf[:3])):
                    return  # "I" or "ID" could still be an ID3 tag
                if not self._check_start(b"fLaC", "a FLAC header"):
                    return
                self._pos += 4
                self._magic_seen = True
                continue
            if len(buf) - self._pos < 4:
                return
            kind, length = buf[self._pos] & 0x7F, int.from_bytes(buf[self._pos + 1 : self._pos + 4], "big")
            self._last_block = bool(buf[self._pos] & 0x80)
            if self._ctx is None:
                if kind != 0 or length != 34:
                    raise self._invalid("the FLAC header does not begin with a STREAMINFO block")
                if len(buf) - self._pos < 38:
                    self._last_block = False
                    return
                self._start_decoder(bytes(buf[self._pos + 4 : self._pos + 38]))
                self._pos += 38
                continue
            if kind == 127:
                raise self._invalid("invalid FLAC metadata block")
            self._pos += 4
            self._skip = length
            if self._consumed + self._pos + length > _MAX_FLAC_HEADER_BYTES:
                raise InvalidInput("the FLAC metadata is over 1 MiB (embedded pictures?); send plain audio")

    def _start_decoder(self, streaminfo: bytes) -> None:
        _, self._max_block = struct.unpack_from(">HH", streaminfo)
        max_frame = int.from_bytes(streaminfo[7:10], "big")
        packed = int.from_bytes(streaminfo[10:18], "big")
        rate, channels = packed >> 44, ((packed >> 41) & 7) + 1
        self._bits, self._total_samples = ((packed >> 36) & 31) + 1, packed & ((1 << 36) - 1)
        if not rate:
            raise self._invalid("the FLAC STREAMINFO block gives no sample rate")
        self._check_format(rate, channels, (rate,), f"{rate} Hz")
        self._rate = rate
        worst = max_frame or (self._max_block or 65535) * channels * self._bits // 8 + 1024
        self._max_frame_bytes = max(MAX_SNIFF_BYTES, 2 * worst)
        ctx = av.CodecContext.create("flac", "r")
        assert isinstance(ctx, AudioCodecContext)
        ctx.extradata = streaminfo
        ctx.options = {"err_detect": "crccheck+explode"}  # a corrupt frame fails instead of decoding noise
        self._ctx = ctx

    def _header_at(self, pos: int, number: int | None) -> tuple[int, int] | None:
        """(coded number, block size) of a frame header at pos that fits this stream, else None."""
        b = bytes(self._buf[pos : pos + _FLAC_MAX_FRAME_HEADER_BYTES])
        if len(b) < 6 or b[0] != 0xFF or b[1] & 0xFE != 0xF8 or (self._sync and b[1] != self._sync[1]):
            return None
        block_code, rate_code, channel_code, bits_code = b[2] >> 4, b[2] & 15, b[3] >> 4, (b[3] >> 1) & 7
        if not block_code or rate_code == 15 or channel_code > 10 or bits_code == 3 or b[3] & 1:
            return None
        if (2 if channel_code > 7 else channel_code + 1) != self.channels:
            return None
        if bits_code and _FLAC_SAMPLE_BITS[bits_code] != self._bits:
            return None
        ones = 8 - (~b[4] & 0xFF).bit_length()  # UTF-8-like coded number: leading ones = its length
        if ones == 1 or ones > (7 if b[1] & 1 else 6):
            return None
        value, i = b[4] & (0x7F >> ones), 5 + max(ones - 1, 0)
        if i > len(b):
            return None
        for c in b[5:i]:
            if c & 0xC0 != 0x80:
                return None
            value = (value << 6) | (c & 0x3F)
        if block_code == 1:
            block = 192
        elif block_code <= 5:
            block = 576 << (block_code - 2)
        elif block_code >= 8:
            block = 256 << (block_code - 8)
        else:
            size = block_code - 5
            block, i = int.from_bytes(b[i : i + size], "big") + 1, i + size
        if rate_code == 0:
            rate = self._rate
        elif rate_code < 12:
            rate = _FLAC_RATES_HZ[rate_code]
        else:
            size = 1 if rate_code == 12 else 2
            rate = int.from_bytes(b[i : i + size], "big") * (1000, 1, 10)[rate_code - 12]
            i += size
        if rate != self._rate or (self._max_block >= 16 and block > self._max_block) or i >= len(b):
            return None
        if _crc(b[: i + 1], _CRC8, 8) or (number is not None and value != number):
            return None
        return value, block

    def _decode(self, frame: bytes) -> None:
        assert self._ctx is not None
        frames = self._ctx.decode(av.Packet(frame))
        for f in frames:
            if f.sample_rate != self._rate or f.layout.nb_channels != self.channels:
                raise self._invalid("a FLAC frame changes the sample rate or channel count")
            self._decoded += f.samples
        self._resample(frames)


# --- Ogg / Opus -------------------------------------------------------------------------------------

_OPUS_DECODE_RATE_HZ: Final = 48000
_BIT_REVERSED: Final = bytes(int(f"{i:08b}"[::-1], 2) for i in range(256))
_OGG_CODECS: Final = ((b"\x01vorbis", "vorbis"), (b"\x7fFLAC", "flac"), (b"Speex   ", "speex"))


def _ogg_crc_update(state: int, data: bytes) -> int:
    """Ogg's CRC (polynomial 0x04C11DB7, MSB first, no reflection) computed by zlib on bit-reversed bytes."""
    return zlib.crc32(data.translate(_BIT_REVERSED), state)


def _ogg_crc_value(state: int) -> int:
    return int(f"{state ^ 0xFFFFFFFF:032b}"[::-1], 2)


_OGG_CRC_START: Final = 0xFFFFFFFF  # zlib's state for a CRC register of 0


class _Page:
    __slots__ = ("crc", "eos", "granule", "lacing", "segment", "seq", "serial", "stored_crc", "wanted")

    def __init__(self, header: bytes, wanted: bool) -> None:
        self.crc = _ogg_crc_update(_OGG_CRC_START, header[:22] + b"\0\0\0\0" + header[26:])
        self.eos = bool(header[5] & 4)
        self.granule, self.serial, self.seq, self.stored_crc = struct.unpack_from("<qIII", header, 6)
        self.lacing = header[27:]
        self.segment = 0
        self.wanted = wanted  # its packets are collected (the Opus stream, or a stream's first page)


class OggOpusStream(ContainerStream):
    """Ogg pages are parsed as they arrive; each Opus packet is decoded once its last segment is in.

    A page's CRC is checked when the page is complete, so a corrupt page may already have yielded audio
    before the stream fails. A stream that stops on a page boundary without its end-of-stream page is
    accepted (a live encoder cut off looks the same); one that stops inside a page or packet is not.
    """

    def __init__(self, fmt: AudioFormat, target_rate_hz: int) -> None:
        super().__init__(fmt, target_rate_hz)
        self._page: _Page | None = None
        self._pages = 0
        self._headers_done = False  # a page that starts no stream arrived: no new streams may begin
        self._others: list[str] = []
        self._serial: int | None = None
        self._next_seq = 0
        self._packet = bytearray()
        self._open_packet = False
        self._packets = 0
        self._ctx: AudioCodecContext | None = None
        self._preskip = 0
        self._decoded = 0
        self._ended = False

    def _advance(self) -> None:
        while True:
            if self._page is None and not self._read_page_header():
                return
            if not self._read_segments():
                return

    def _read_page_header(self) -> bool:
        buf, pos = self._buf, self._pos
        if not self._pages:
            if not self._check_start(b"OggS", "an Ogg page"):
                return False
        elif not b"OggS".startswith(bytes(buf[pos : pos + 4])):
            raise self._invalid(f"lost Ogg page sync at byte {self._consumed + pos}")
        if self._serial is None and self._consumed + pos > MAX_SNIFF_BYTES:
            raise self._invalid("no Opus stream header within the first 64 KiB")
        if len(buf) - pos < 27 or len(buf) - pos < 27 + buf[pos + 26]:
            return False
        header = bytes(buf[pos : pos + 27 + buf[pos + 26]])
        flags, (serial, seq) = header[5], struct.unpack_from("<II", header, 14)
        if header[4] != 0 or flags & ~7:
            raise self._invalid(f"corrupt Ogg page header at byte {self._consumed + pos}")
        if flags & 2:
            if self._headers_done:
                raise self._invalid("chained or late-starting Ogg streams are not supported")
        elif not self._pages:
            raise self._invalid("the first Ogg page does not begin a stream")
        else:
            self._headers_done = True
            if self._serial is None:
                found = ", ".join(self._others) or "no codec"
                raise InvalidInput(f"the Ogg container holds no Opus stream (found {found})")
        ours = serial == self._serial
        if ours:
            if self._ended:
                raise self._invalid("Ogg pages follow the end of the Opus stream")
            if seq != self._next_seq:
                raise self._invalid(f"Ogg pages are missing (page {seq} follows page {self._next_seq - 1})")
            if bool(flags & 1) != self._open_packet:
                raise self._invalid("an Ogg page breaks the packet continuity")
            self._next_seq = seq + 1
        self._page = _Page(header, ours or bool(flags & 2))
        self._pages += 1
        self._pos += len(header)
        return True

    def _read_segments(self) -> bool:
        page, buf = self._page, self._buf
        assert page is not None
        while page.segment < len(page.lacing):
            size = page.lacing[page.segment]
            if len(buf) - self._pos < size:
                return False
            data = bytes(buf[self._pos : self._pos + size])
            self._pos += size
            page.crc = _ogg_crc_update(page.crc, data)
            page.segment += 1
            if not page.wanted:
                continue
            if self._packets != 1 or len(self._packet) < 8:  # the tags packet is only checked, not kept
                self._packet += data
            if len(self._packet) > _MAX_OPUS_PACKET_BYTES:
                raise self._invalid("an Ogg packet is over 64 KiB")
            self._open_packet = size == 255
            if not self._open_packet:
                packet, self._packet = bytes(self._packet), bytearray()
                self._on_packet(page, packet)
        if _ogg_crc_value(page.crc) != page.stored_crc:
            raise self._invalid("an Ogg page fails its CRC check (corrupt data)")
        if page.serial == self._serial:
            self._ended = page.eos
        if page.serial != self._serial and page.wanted and self._open_packet:
            raise self._invalid("an Ogg stream's first packet does not end on its first page")
        self._page = None
        return True

    def _on_packet(self, page: _Page, packet: bytes) -> None:
        if page.serial != self._serial:
            if self._serial is None and packet.startswith(b"OpusHead"):
                self._start_decoder(packet)
                self._serial, self._next_seq, self._packets = page.serial, page.seq + 1, 1
            else:
                self._others.append(next((n for m, n in _OGG_CODECS if packet.startswith(m)), "unknown"))
            return
        self._packets += 1
        if self._packets == 2:
            if not packet.startswith(b"OpusTags"):
                raise self._invalid("the Opus header is not followed by an OpusTags packet")
            return
        assert self._ctx is not None
        frames = self._ctx.decode(av.Packet(packet))
        if page.eos and page.granule >= 0:  # the last page's granule position trims the end padding
            frames = _trim(frames, page.granule - self._preskip - self._decoded)
        self._decoded += sum(f.samples for f in frames)
        self._resample(frames)

    def _start_decoder(self, head: bytes) -> None:
        if len(head) < 19 or head[8] >> 4:
            raise self._invalid("invalid OpusHead packet")
        channels, self._preskip, input_rate = head[9], *struct.unpack_from("<HI", head, 10)
        if not channels:
            raise self._invalid("the OpusHead packet gives no channel count")
        # Opus always decodes at 48 kHz; the rate the audio was encoded from is accepted too.
        rates = f"{_OPUS_DECODE_RATE_HZ} Hz, encoded from {input_rate} Hz"
        self._check_format(_OPUS_DECODE_RATE_HZ, channels, (_OPUS_DECODE_RATE_HZ, input_rate), rates)
        ctx = av.CodecContext.create("opus", "r")
        assert isinstance(ctx, AudioCodecContext)
        ctx.extradata = head
        self._ctx = ctx

    def _end(self) -> None:
        if self._ctx is None or self._packets < 2:
            raise InvalidInput(f"the stream ended before the {self._name} headers were complete")
        if self._page is not None or self._pos < len(self._buf):
            raise InvalidInput(f"the {self._name} stream is truncated: it ends inside an Ogg page")
        if self._open_packet:
            raise InvalidInput(f"the {self._name} stream is truncated: it ends inside an Opus packet")
        self._resample(self._ctx.decode(None))


def _trim(frames: list[AudioFrame], keep: int) -> list[AudioFrame]:
    kept: list[AudioFrame] = []
    for frame in frames:
        if keep <= 0:
            break
        if frame.samples > keep:
            # Same sample format as the decoder's frames (float32 for Opus), as the resampler requires.
            planes = cast("npt.NDArray[np.float32]", frame.to_ndarray())
            width = keep if frame.format.is_planar else keep * frame.layout.nb_channels
            short = AudioFrame.from_ndarray(
                np.ascontiguousarray(planes[:, :width]), format=frame.format.name, layout=frame.layout.name
            )
            short.sample_rate = frame.sample_rate
            frame = short
        kept.append(frame)
        keep -= frame.samples
    return kept


def open_container_stream(fmt: AudioFormat, target_rate_hz: int) -> ContainerStream:
    if fmt.encoding is Encoding.FLAC:
        return FlacStream(fmt, target_rate_hz)
    if fmt.encoding is Encoding.OGG_OPUS:
        return OggOpusStream(fmt, target_rate_hz)
    raise ValueError(f"{fmt.encoding.name} is not a streamed container encoding")
