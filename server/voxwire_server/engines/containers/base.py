"""The shared part of streamed container decoding: buffering, sniffing, decoding and resampling."""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Final

import av
import numpy as np
import numpy.typing as npt
from av.audio.frame import AudioFrame

from voxwire_server.domain import AudioFormat
from voxwire_server.errors import InvalidInput

Int16Array = npt.NDArray[np.int16]

# A stream must show its container's header within this many bytes, so garbage fails fast.
MAX_SNIFF_BYTES: Final = 64 * 1024
# Rates a container header may declare (FLAC's STREAMINFO; Opus always decodes at 48 kHz).
MIN_RATE_HZ: Final = 8000
MAX_RATE_HZ: Final = 192000
AV_ERRORS: Final = (av.FFmpegError, ValueError, EOFError)
_MAGICS: Final = ((b"OggS", "ogg"), (b"fLaC", "flac"), (b"RIFF", "wav"), (b"\x1a\x45\xdf\xa3", "matroska"))


log = logging.getLogger(__name__)


def sniff_container(head: bytes) -> str:
    """The container that 8 bytes of audio start like ("" when none is known)."""
    return next((name for m, name in _MAGICS if head.startswith(m)), "mp4" if head[4:8] == b"ftyp" else "")


class ContainerStream:
    """Bytes in, 16-bit mono samples at the target rate out; every failure is an InvalidInput."""

    def __init__(self, fmt: AudioFormat, target_rate_hz: int, max_chunk_ms: int = 0) -> None:
        """max_chunk_ms: the most audio one fed chunk may decode to (0: unbounded), beyond the first
        frame it completes (a frame cut at the next frame's header ends with the following chunk)."""
        self._fmt = fmt
        self._max_chunk_ms = max_chunk_ms
        self._chunk_ms = 0.0
        self._chunk_frames = 0
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
        self._chunk_ms, self._chunk_frames = 0.0, 0
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
        except AV_ERRORS as exc:
            self._failed = True
            log.debug("decoding %s failed: %r", self._name, exc)
            raise InvalidInput(
                f"audio declared as {self._name} could not be decoded: it is not valid {self._name} data"
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
        found = sniff_container(head)
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

    def _count(self, frame: AudioFrame) -> None:
        """Bounds what one chunk decodes to: a few compressed bytes can hold minutes of silence."""
        self._chunk_frames += 1
        if self._chunk_frames > 1 and frame.sample_rate:
            self._chunk_ms += 1000 * frame.samples / frame.sample_rate
        if self._max_chunk_ms and self._chunk_ms > self._max_chunk_ms:
            raise InvalidInput(
                f"a {self._name} audio chunk decodes to over {self._max_chunk_ms} ms of audio, the limit "
                "per chunk; send smaller chunks"
            )

    def _resample(self, frames: list[AudioFrame] | None) -> None:
        for frame in frames if frames is not None else [None]:
            if frame is not None:
                self._count(frame)
            for out in self._resampler.resample(frame):
                if out is not None:  # a passthrough resampler answers a flush with [None]
                    self._out.append(np.asarray(out.to_ndarray(), dtype=np.int16).reshape(-1))

    def _take(self) -> Int16Array:
        out, self._out = self._out, []
        if not out:
            return np.zeros(0, np.int16)
        return out[0] if len(out) == 1 else np.concatenate(out)


# --- FLAC -------------------------------------------------------------------------------------------
