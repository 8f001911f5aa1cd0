"""FLAC: metadata parsed here, frames cut at verified frame headers, each decoded as it completes."""

from __future__ import annotations

import struct
from typing import Final

import av
from av.audio.codeccontext import AudioCodecContext

from voxwire_server.domain import AudioFormat
from voxwire_server.engines.containers.base import MAX_RATE_HZ, MAX_SNIFF_BYTES, MIN_RATE_HZ, ContainerStream
from voxwire_server.errors import InvalidInput

_MAX_FLAC_HEADER_BYTES: Final = 1024 * 1024
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

    def __init__(self, fmt: AudioFormat, target_rate_hz: int, max_chunk_ms: int = 0) -> None:
        super().__init__(fmt, target_rate_hz, max_chunk_ms)
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
        if not MIN_RATE_HZ <= rate <= MAX_RATE_HZ:
            # Resampling an absurd rate (1 Hz) up to 16 kHz turns a few bytes into hours of audio.
            raise InvalidInput(
                f"the FLAC header declares {rate} Hz; supported rates are {MIN_RATE_HZ}..{MAX_RATE_HZ} Hz"
            )
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
