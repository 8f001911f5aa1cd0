"""Ogg/Opus: pages parsed and checked here, each Opus packet decoded as soon as it is complete."""

from __future__ import annotations

import struct
import zlib
from typing import Final, cast

import av
import numpy as np
import numpy.typing as npt
from av.audio.codeccontext import AudioCodecContext
from av.audio.frame import AudioFrame

from voxwire_server.domain import AudioFormat
from voxwire_server.engines.containers.base import MAX_SNIFF_BYTES, ContainerStream
from voxwire_server.errors import InvalidInput

_MAX_OPUS_PACKET_BYTES: Final = 64 * 1024
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

    def __init__(self, fmt: AudioFormat, target_rate_hz: int, max_chunk_ms: int = 0) -> None:
        super().__init__(fmt, target_rate_hz, max_chunk_ms)
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
