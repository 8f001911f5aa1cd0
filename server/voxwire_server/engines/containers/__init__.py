"""Streaming FLAC and Ogg/Opus decoding: frames are cut from the byte stream here and decoded with PyAV.

Why not libavformat: a demuxer reading a growing buffer sees EOF (or blocks) whenever it reads past the
bytes received so far, and FFmpeg's FLAC parser holds about ten frames (~1 s) back before it emits one.
Cutting frames ourselves keeps the latency at one FLAC frame or one Opus packet and the cost per chunk
proportional to the chunk.
"""

from __future__ import annotations

from voxwire_server.domain import AudioFormat, Encoding
from voxwire_server.engines.containers.base import MAX_SNIFF_BYTES, ContainerStream
from voxwire_server.engines.containers.flac import FlacStream
from voxwire_server.engines.containers.ogg import OggOpusStream

__all__ = ["MAX_SNIFF_BYTES", "ContainerStream", "FlacStream", "OggOpusStream", "open_container_stream"]


def open_container_stream(fmt: AudioFormat, target_rate_hz: int, max_chunk_ms: int = 0) -> ContainerStream:
    if fmt.encoding is Encoding.FLAC:
        return FlacStream(fmt, target_rate_hz, max_chunk_ms)
    if fmt.encoding is Encoding.OGG_OPUS:
        return OggOpusStream(fmt, target_rate_hz, max_chunk_ms)
    raise ValueError(f"{fmt.encoding.name} is not a streamed container encoding")
