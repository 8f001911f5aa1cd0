"""A reply's audio as it goes out: chunks with offsets and statuses, and the encoder that makes them."""

from __future__ import annotations

import math
import threading

import numpy as np
import numpy.typing as npt

from voxwire_server.caches.synthesis import CachedAudio
from voxwire_server.domain import EncodedAudio, Encoding, SynthesisCacheStatus, SynthesisRequest
from voxwire_server.engines.audio import AudioEncoder, wav_header
from voxwire_server.errors import LimitExceeded

Float32Array = npt.NDArray[np.float32]


class ReplyChunks:
    """The chunks of one reply as they go out: offsets, the streamed WAV header on the first one,
    and their raw data and statuses (what the phrase cache keeps and a unary reply joins)."""

    def __init__(self, encoding: Encoding, sample_rate_hz: int) -> None:
        self.encoding = encoding
        self.sample_rate_hz = sample_rate_hz
        self.data: list[bytes] = []
        self.durations_ms: list[int] = []
        self.statuses: list[SynthesisCacheStatus] = []

    def add(self, data: bytes, duration_ms: int, status: SynthesisCacheStatus, *, last: bool) -> EncodedAudio:
        header = (
            wav_header(self.sample_rate_hz, 1, None)
            if not self.data and self.encoding is Encoding.WAV
            else b""
        )
        offset_ms = sum(self.durations_ms)
        self.data.append(data)
        self.durations_ms.append(duration_ms)
        self.statuses.append(status)
        return EncodedAudio(
            data=header + data,
            encoding=self.encoding,
            sample_rate_hz=self.sample_rate_hz,
            offset_ms=offset_ms,
            duration_ms=duration_ms,
            last=last,
            cache_status=status,
        )

    def cached(self) -> CachedAudio:
        return CachedAudio(tuple(self.data), tuple(self.durations_ms), self.sample_rate_hz)


class ReplyEncoder(ReplyChunks):
    """Encodes native-rate audio into chunks of the requested format. encode() is CPU work
    (resampling, Opus): the session runs it on the synthesis workers, one call at a time per reply.

    A reply cancelled while a worker is still encoding for it is closed by that worker once it is
    done (the event loop never waits for it, and the encoder is never closed under it)."""

    def __init__(
        self,
        request: SynthesisRequest,
        source_rate_hz: int,
        sample_rate_hz: int,
        max_duration_s: float = math.inf,
    ) -> None:
        """max_duration_s: the longest reply; audio that would make it longer is refused
        (LimitExceeded) before it is encoded."""
        super().__init__(request.encoding, sample_rate_hz)
        self.encoder = AudioEncoder(request.encoding, source_rate_hz, sample_rate_hz)
        self._source_rate_hz = source_rate_hz
        self._max_duration_s = max_duration_s
        self._duration_s = 0.0
        self._state = threading.Lock()  # held only to read or flip the two flags below
        self._encoding = False
        self._close_requested = False

    def encode(self, audio: Float32Array, status: SynthesisCacheStatus, *, last: bool) -> EncodedAudio:
        with self._state:
            if self._close_requested:
                raise RuntimeError("the reply was closed")
            if self._encoding:
                raise RuntimeError("a reply is encoded one piece at a time")
            self._encoding = True
        try:
            self._duration_s += audio.size / self._source_rate_hz
            if self._duration_s > self._max_duration_s:
                raise LimitExceeded(
                    f"the reply is longer than {self._max_duration_s:g} s of audio, the limit per request "
                    "(max_synthesis_s): shorten the text or split it into several requests"
                )
            before = self.encoder.samples_out
            data = self.encoder.encode(audio)
            if last:
                data += self.encoder.finish()
            samples = self.encoder.samples_out - before
            return self.add(data, samples * 1000 // self.sample_rate_hz, status, last=last)
        finally:
            with self._state:
                self._encoding = False
                close_now = self._close_requested
            if close_now:
                self.encoder.close()

    def close(self) -> None:
        with self._state:
            self._close_requested = True
            if self._encoding:
                return  # the worker encoding now closes it when it is done
        self.encoder.close()


def encode_as(
    emitter: ReplyEncoder, status: SynthesisCacheStatus, last: bool, audio: Float32Array
) -> EncodedAudio:
    """ReplyEncoder.encode with the audio last: the step render_then runs after synthesis."""
    return emitter.encode(audio, status, last=last)
