"""Recognition: whole clips, and bidirectional streams cut into utterances by the endpointer."""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from voxwire_server.caches.recognition import Probe, RecognitionCache
from voxwire_server.config import CLIP_BYTES_PER_S, REQUEST_OVERHEAD_BYTES
from voxwire_server.domain import (
    Alternative,
    AudioChunk,
    CacheStatus,
    DecodeOptions,
    Encoding,
    EndOfAudio,
    RecognitionOptions,
    RequestContext,
    Result,
    Resumability,
    Resumed,
    ResumeInfo,
    SpeechEvent,
    SpeechEventType,
    StreamInput,
    StreamStart,
    StreamUpdate,
    Tier,
    UtteranceEnd,
)
from voxwire_server.engines.audio import (
    ASR_SAMPLE_RATE_HZ,
    StreamDecoder,
    decode_clip,
    float_to_pcm16,
    pcm16_to_float,
)
from voxwire_server.engines.base import (
    DecoderState,
    PartialSkipped,
    SpeechRecognizer,
    VoiceActivityDetector,
    WindowRequest,
    WindowResult,
)
from voxwire_server.errors import (
    InvalidInput,
    LimitExceeded,
    NotFound,
    NotImplementedCapability,
    StreamAbandoned,
    Unavailable,
)
from voxwire_server.sessions.agreement import LocalAgreement
from voxwire_server.sessions.endpointing import Endpointer, SpeechStarted, UtteranceEnded
from voxwire_server.sessions.resumption import Resumption, StateWriter, StreamStates
from voxwire_server.sessions.stream_state import KeptFinal, StreamState

log = logging.getLogger(__name__)

Emit = Callable[[StreamUpdate], Awaitable[None]]
VadFactory = Callable[[int], VoiceActivityDetector]


# Clips up to this long are cut into utterances and decoded on short windows.
MAX_WINDOW_AUDIO_S = 29.0


@dataclass(frozen=True, slots=True)
class RecognitionLimits:
    max_clip_s: float = 600.0
    # The largest Recognize request's audio, in bytes (checked before anything is decoded); the
    # server sizes it from max_clip_s (ServerConfig.max_request_bytes).
    max_clip_bytes: int = 600 * CLIP_BYTES_PER_S + REQUEST_OVERHEAD_BYTES
    max_chunk_ms: int = 1000
    queue_chunks: int = 200
    partial_interval_ms: int = 500
    # Partials commit a word two of them agree on only if both gave it this probability (0: on
    # agreement alone).
    partial_commit_probability: float = 0.0
    # Finals of the fast tier under this confidence are re-decoded on the accurate tier (0: never).
    escalation_confidence: float = 0.0
    # ... unless more than this many finals are waiting for the decoder.
    escalation_max_waiting: int = 0
    # Fast-tier finals of utterances at least this long (seconds; 0: never) are decoded on the
    # accurate tier straight away, under the same spare-capacity rule as escalation.
    accurate_min_utterance_s: float = 0.0
    on_long_accurate: Callable[[], None] | None = None
    on_escalation: Callable[[], None] | None = None
    # A stream's earlier finals condition its next utterance (Whisper's previous text) unless the
    # pause before it is longer than this: a new topic, not a sentence split by a pause.
    context_gap_s: float = 10.0
    # Stream limits (0: none), each ending the stream with LimitExceeded once the finals of the audio
    # received are out: no audio for this long, this long since the stream opened, this much audio.
    idle_timeout_s: float = 0.0
    max_stream_s: float = 0.0
    max_stream_audio_s: float = 0.0
    # Called with the limit that ended a stream: "idle", "duration" or "audio".
    on_limit: Callable[[str], None] | None = None


class LoadShedding(Protocol):
    """What a stream asks before optional work: True means skip it (the decoder is behind)."""

    def shed_partial(self) -> bool: ...

    def skip_escalation(self) -> bool: ...


class StreamLoad(LoadShedding, Protocol):
    """A stream's side of admission: it also says when it is in an utterance (a final to come)."""

    def speaking(self, active: bool) -> None: ...


def _ms(samples: int) -> int:
    return samples * 1000 // ASR_SAMPLE_RATE_HZ


# The end of what was said before is enough: the recognizer keeps at most its last ~64 tokens.
_CONTEXT_CHARS = 1000


class PreviousText:
    """What a stream (or clip) said so far: the previous-text context of its next utterance, kept
    while the pauses between utterances are at most ``gap_s``."""

    def __init__(self, gap_s: float) -> None:
        self._gap = round(gap_s * ASR_SAMPLE_RATE_HZ)
        self._text = ""
        self._end = 0

    def before(self, start: int) -> str:
        """The context of an utterance (or of the part of it heard so far) starting at ``start``."""
        return self._text if self._text and start - self._end <= self._gap else ""

    def add(self, text: str, start: int, end: int) -> None:
        """The final of the utterance from ``start`` to ``end``."""
        self._text = f"{self.before(start)} {text.strip()}".strip()[-_CONTEXT_CHARS:]
        self._end = end

    @property
    def text(self) -> str:
        return self._text

    @property
    def end(self) -> int:
        return self._end

    def restore(self, text: str, end: int) -> None:
        """Continues from another stream's text and end (a resumed stream)."""
        self._text, self._end = text[-_CONTEXT_CHARS:], end


@dataclass(frozen=True, slots=True)
class Decoded:
    """An utterance's final as the model or a cache tier gave it."""

    result: WindowResult
    tier: Tier
    cache_status: CacheStatus = CacheStatus.NONE
    cache_key: str = ""

    @property
    def dropped(self) -> bool:
        """A cache tier dropped it before the model (its own voice heard back, or known noise)."""
        return self.cache_status in (CacheStatus.NEGATIVE, CacheStatus.SELF_ECHO)


class Utterances:
    """Decodes the utterances of one stream (or clip) in order, each with the text before it as
    context, answering from the recognition cache first when there is one."""

    def __init__(
        self,
        recognizer: SpeechRecognizer,
        options: DecodeOptions,
        limits: RecognitionLimits,
        shedding: LoadShedding | None = None,
        cache: RecognitionCache | None = None,
        context: RequestContext | None = None,
    ) -> None:
        self._recognizer = recognizer
        self._options = options
        self._limits = limits
        self._shedding = shedding
        self._cache = cache
        self._request = context or RequestContext()
        self.previous = PreviousText(limits.context_gap_s)

    def context(self, start: int) -> str:
        """The previous text of an utterance (or of the part heard so far) starting at ``start``."""
        return self.previous.before(start)

    async def final(
        self, event: UtteranceEnded, draft: tuple[int, ...] = (), search: DecoderState | None = None
    ) -> Decoded:
        """The utterance's final, the tier that decoded it and the cache tier that answered. draft and
        search: the stream's last partial of this utterance (its tokens, its decoder search), which an
        engine that can verify a draft or continue a search decodes the final from."""
        start, end = event.audio_start, event.audio_start + event.audio.size
        lookup = None
        if self._cache is not None:
            lookup = await self._cache.lookup(event.audio, self._options, self._request)
            if lookup.answered:
                if lookup.alternatives:
                    self.previous.add(lookup.alternatives[0].text, start, end)
                return Decoded(
                    WindowResult(lookup.alternatives), lookup.tier, lookup.status, lookup.audio_key
                )
        request = WindowRequest(
            pcm16_to_float(event.audio),
            self._options,
            context=self.context(start),
            draft=draft,
            decoder_state=search,
        )
        probe = None if lookup is None else lookup.probe
        encoder = None
        if self._cache is not None and probe is not None and self._cache.settings.component:
            encoder = _CachedEncoderOutputs(self._cache, probe)
        started = time.perf_counter()
        decoded, tier = await decode_final(self._recognizer, request, self._limits, self._shedding, encoder)
        if decoded.alternatives:
            self.previous.add(decoded.alternatives[0].text, start, end)
        if self._cache is None or probe is None:
            return Decoded(decoded, tier)
        # The exact entry before the final goes out (a retry right after it hits); the fingerprint's
        # buckets after.
        await self._cache.store(probe, decoded, tier, time.perf_counter() - started, index_later=True)
        status = CacheStatus.COMPONENT if decoded.encoder_reused else CacheStatus.MISS
        return Decoded(decoded, tier, status, probe.audio_key)


class _CachedEncoderOutputs:
    def __init__(self, cache: RecognitionCache, probe: Probe) -> None:
        self._cache, self._probe = cache, probe

    async def get(self, tier: Tier) -> npt.NDArray[np.float32] | None:
        return await self._cache.encoder_output(self._probe, tier)

    async def put(self, tier: Tier, output: npt.NDArray[np.float32]) -> None:
        await self._cache.store_encoder_output(self._probe, tier, output)


def check_options(recognizer: SpeechRecognizer, options: RecognitionOptions) -> None:
    """Rejects what cannot be served before any audio is processed."""
    recognizer.check_language(options.decode.language)
    recognizer.check_conditioning(options.decode)
    if options.decode.max_alternatives < 1:
        raise InvalidInput("max_alternatives must be at least 1")
    e = options.endpointing
    if not 0 <= e.vad_aggressiveness <= 3:
        raise InvalidInput(f"vad_aggressiveness must be 0..3, got {e.vad_aggressiveness}")
    if not 100 <= e.silence_ms <= 10_000:
        raise InvalidInput(f"silence_ms must be 100..10000, got {e.silence_ms}")
    if not 1.0 <= e.max_utterance_s <= MAX_WINDOW_AUDIO_S:
        raise InvalidInput(f"max_utterance_s must be 1..29, got {e.max_utterance_s}")
    if not 10 <= e.min_speech_ms <= 2000:
        raise InvalidInput(f"min_speech_ms must be 10..2000, got {e.min_speech_ms}")


def _shift(alt: Alternative, offset_s: float) -> Alternative:
    words = tuple(replace(w, start_s=w.start_s + offset_s, end_s=w.end_s + offset_s) for w in alt.words)
    return replace(alt, words=words)


async def recognize_clip(
    recognizer: SpeechRecognizer,
    vad_factory: VadFactory,
    audio: bytes,
    options: RecognitionOptions,
    limits: RecognitionLimits,
    shedding: LoadShedding | None = None,
    cache: RecognitionCache | None = None,
) -> tuple[list[Result], int]:
    """Decodes a whole clip; returns one final per utterance and the clip's duration in ms.

    A clip of any length is cut into utterances by the same endpointer as a stream, with the same
    quiet cuts at max_utterance_s, and each utterance is decoded like a stream's final, after the
    one before it and with its text as context: a clip and a stream of the same audio get the same
    finals. (Measured on the long-form reads of both dev sets, this made fewer word errors than
    faster-whisper's own sliding 30 s windows: 94 against 100.)"""
    check_options(recognizer, options)
    _check_clip_size(audio, options, limits)
    samples = await asyncio.to_thread(decode_clip, audio, options.audio, limits.max_clip_s)
    duration_s = samples.size / ASR_SAMPLE_RATE_HZ
    duration_ms = round(duration_s * 1000)
    if duration_s > limits.max_clip_s:
        raise LimitExceeded(
            f"the clip is {duration_s:.0f} s; Recognize takes at most {limits.max_clip_s:.0f} s: "
            "send longer audio with StreamingRecognize"
        )
    started = time.perf_counter()
    endpointer = _endpointer(vad_factory, options)
    # Up to max_clip_s of audio through the endpointer: work for a thread, not the event loop.
    utterances = await asyncio.to_thread(_utterances, endpointer, samples)
    # One after another: each utterance is decoded with what was said before it.
    decoder = Utterances(recognizer, options.decode, limits, shedding, cache, options.context)
    decoded = [await decoder.final(u) for u in utterances]
    latency_ms = (time.perf_counter() - started) * 1000
    results = [
        _result(
            d,
            offset_samples=u.audio_start,
            end_samples=u.audio_start + u.audio.size,
            index=i,
            latency_ms=latency_ms,
            end=u.end,
        )
        for i, (u, d) in enumerate(zip(utterances, decoded, strict=True))
        if d.result.alternatives or d.dropped
    ]
    return [replace(r, utterance_index=i) for i, r in enumerate(results)], duration_ms


def _check_clip_size(audio: bytes, options: RecognitionOptions, limits: RecognitionLimits) -> None:
    """OUT_OF_RANGE before any decoding: a request over the byte limit, or raw audio whose length
    alone says it is longer than max_clip_s."""
    if len(audio) > limits.max_clip_bytes:
        raise LimitExceeded(
            f"the clip is {len(audio) / 2**20:.1f} MiB; Recognize takes at most "
            f"{limits.max_clip_bytes / 2**20:.1f} MiB: send audio this large with StreamingRecognize"
        )
    fmt = options.audio
    if fmt.encoding is Encoding.LINEAR16 and fmt.sample_rate_hz > 0:
        duration_s = len(audio) / (2 * (fmt.channels or 1) * fmt.sample_rate_hz)
        if duration_s > limits.max_clip_s:
            raise LimitExceeded(
                f"the clip is {duration_s:.0f} s; Recognize takes at most {limits.max_clip_s:.0f} s: "
                "send longer audio with StreamingRecognize"
            )


def _endpointer(vad_factory: VadFactory, options: RecognitionOptions) -> Endpointer:
    """A clip's or a stream's endpointer, its VAD renewed as the endpointer goes (so that a stream's
    state can rebuild it)."""
    aggressiveness = options.endpointing.vad_aggressiveness
    return Endpointer(
        vad_factory(aggressiveness),
        options.endpointing,
        renew_vad=functools.partial(vad_factory, aggressiveness),
    )


def _utterances(endpointer: Endpointer, samples: npt.NDArray[np.float32]) -> list[UtteranceEnded]:
    events = endpointer.push(float_to_pcm16(samples)) + endpointer.flush()
    return [e for e in events if isinstance(e, UtteranceEnded)]


_END = object()
# The drain of a resumable stream: write its state and end, to be resumed elsewhere.
_SUSPEND = object()


# The _LimitReached of a server that drains.
SHUTDOWN = "shutdown"


class _LimitReached(Exception):
    """A stream limit ended the reading; the audio received so far is still decoded."""

    def __init__(self, limit: str, message: str) -> None:
        super().__init__(message)
        self.limit = limit


class RecognitionStream:
    """One bidirectional stream: a reader task feeds a bounded queue (a full queue is backpressure on the
    client), a worker task runs the endpointer and decodes each utterance; interim results run as one
    extra task at a time and never outlive their utterance."""

    def __init__(
        self,
        start: StreamStart,
        recognizer: SpeechRecognizer,
        vad_factory: VadFactory,
        limits: RecognitionLimits,
        emit: Emit,
        clock: Callable[[], float] = time.perf_counter,
        shedding: StreamLoad | None = None,
        stop: asyncio.Event | None = None,
        states: StreamStates | None = None,
        resumed: Resumption | None = None,
        cache: RecognitionCache | None = None,
    ) -> None:
        """clock: what arrival times and result latencies are measured with; shedding: asked before
        each partial (and escalation) whether to skip it; stop: set when the server drains: the
        stream stops reading and ends with Unavailable, after writing its state if it is resumable
        (to be resumed elsewhere) or else sending the finals of what it heard; states: where the
        stream's state is written (None: not resumable); resumed: the state it goes on from; cache:
        the recognition cache its finals are looked up in first."""
        if start.resume_token and resumed is None:
            raise NotImplementedCapability(
                "stream resumption: this server keeps no stream state (--state off)"
            )
        options = resumed.state.options if resumed is not None else start.options
        check_options(recognizer, options)
        self._options = options
        self._recognizer = recognizer
        self._limits = limits
        self._emit = emit
        self._decoder = StreamDecoder(options.audio, limits.max_chunk_ms)
        self._endpointer = _endpointer(vad_factory, options)
        # Decoded samples (or _END) with the time their message arrived: a final's latency counts
        # from the arrival of the chunk that ended its utterance, queueing included.
        # Each with the offset (bytes of audio messages) the worker has taken in once it takes it.
        self._queue: asyncio.Queue[tuple[npt.NDArray[np.int16] | object, float, int]] = asyncio.Queue(
            limits.queue_chunks
        )
        self._committed_ms = 0
        self._partial: asyncio.Task[None] | None = None
        self._last_partial_at = 0
        self._partial_interval = limits.partial_interval_ms * ASR_SAMPLE_RATE_HZ // 1000
        self._agreement = LocalAgreement(min_probability=limits.partial_commit_probability)
        # The last partial of the utterance in progress: its tokens (the next decode's draft) and the
        # decoder's search (continued when the next decode is over the same window).
        self._draft: tuple[int, ...] = ()
        self._search: DecoderState | None = None
        self._utterances = Utterances(recognizer, options.decode, limits, shedding, cache, options.context)
        self._clock = clock
        self._shedding = shedding
        self._limit: _LimitReached | None = None
        self._audio_samples = 0
        self._stop = stop
        # The drain: set once the server stops; the reader is interrupted only while it still waits
        # for the client (a chunk whose read has completed is queued, never lost).
        self._stop_requested = False
        self._awaiting_input = False
        self._interrupted = False
        self._stream_id = start.stream_id
        self._model = recognizer.model_name
        # Bytes of audio messages read, and those the worker has taken in (a split frame excluded).
        self._bytes_in = 0
        self._covered_bytes = 0
        self._kept: list[KeptFinal] = []
        self._resend_from = 0
        self._resumed = resumed
        self._writer: StateWriter | None = None
        self._states = states
        self._written_at = -math.inf
        # Chunks were taken in since the last write.
        self._dirty = False
        if states is not None and not self._decoder.compressed:
            context = options.context
            self._writer = states.writer(context.tenant_id, context.user_id, resumed)
        # A resumed state whose endpointer's audio comes back from the client: until it has.
        self._pending: _PendingRestore | None = None
        self._ended = False
        if resumed is not None:
            self._restore(resumed.state)

    @property
    def resumability(self) -> Resumability:
        return Resumability.NOT_RESUMABLE if self._writer is None else self._writer.status

    def _restore(self, state: StreamState) -> None:
        try:
            if "heard" in state.endpointer:
                self._endpointer.restore(state.endpointer)
            else:
                self._pending = _PendingRestore(state)
            self._agreement.restore(state.agreement)
        except (ValueError, KeyError, TypeError) as exc:
            raise NotFound(f"the stored state of this stream does not fit this server: {exc}") from None
        if state.pcm is not None:
            self._decoder.resume(state.pcm)
        self._utterances.previous.restore(state.previous_text, state.previous_end)
        self._stream_id = state.stream_id
        self._committed_ms = state.committed_ms
        self._last_partial_at = state.last_partial_at
        self._bytes_in = self._covered_bytes = state.replay_from_bytes
        self._kept = list(state.finals)
        self._resend_from = state.resend_from
        self._draft, self._search = state.draft, state.search

    def _state(self, sequence: int) -> StreamState:
        assert self._writer is not None
        if self._pending is not None:
            return replace(self._pending.state, sequence=sequence)
        endpointer = self._endpointer.snapshot()
        received_samples = int(endpointer["position"]) + int(endpointer["leftover"].size)
        replay_from = self._covered_bytes
        width = self._sample_bytes()
        if width:
            heard, leftover = endpointer.pop("heard"), endpointer.pop("leftover")
            endpointer["heard_samples"], endpointer["leftover_samples"] = heard.size, leftover.size
            replay_from -= width * (heard.size + leftover.size)
        return StreamState(
            key=self._writer.key,
            stream_id=self._stream_id,
            sequence=sequence,
            model=self._model,
            options=self._options,
            endpointer=endpointer,
            received_samples=received_samples,
            received_bytes=self._covered_bytes,
            replay_from_bytes=replay_from,
            # Until the worker has taken bytes in, a WAV stream's header is still to be sent again.
            pcm=self._decoder.pcm if self._covered_bytes else None,
            committed_ms=self._committed_ms,
            previous_text=self._utterances.previous.text,
            previous_end=self._utterances.previous.end,
            agreement=self._agreement.snapshot(),
            last_partial_at=self._last_partial_at,
            finals=tuple(self._kept),
            resend_from=self._resend_from,
            draft=self._draft,
            search=self._search,
        )

    def _sample_bytes(self) -> int:
        """Bytes per sample of a stream whose bytes are the endpointer's samples one to one (16 kHz
        mono PCM, no resampling): its state leaves the endpointer's audio to the client; else 0."""
        pcm = self._decoder.pcm if self._covered_bytes else None
        if pcm is None or pcm.sample_rate_hz != ASR_SAMPLE_RATE_HZ or pcm.channels != 1:
            return 0
        return pcm.bits // 8

    def _push(self, samples: npt.NDArray[np.int16]) -> list[SpeechStarted | UtteranceEnded]:
        pending = self._pending
        if pending is None:
            return self._endpointer.push(samples)
        audio = pending.take(samples)
        if audio is None:
            return []
        try:
            rest = pending.restore(self._endpointer, audio)
        except (ValueError, KeyError, TypeError) as exc:
            raise NotFound(f"the stored state of this stream does not fit this server: {exc}") from None
        self._pending = None
        return self._endpointer.push(rest)

    async def _write_state(self, *, force: bool = False) -> None:
        """Writes the stream's state when due (``force``: now). StateConflict ends the stream."""
        if self._writer is None:
            return
        now = asyncio.get_running_loop().time()
        if not force and now - self._written_at < self._interval_s():
            return
        self._written_at = now
        self._dirty = False
        await self._writer.write(self._state)

    def _interval_s(self) -> float:
        return 0.0 if self._states is None else self._states.settings.interval_s

    def _info(self, token: bytes | None = None) -> ResumeInfo:
        if self._writer is None:
            return ResumeInfo(Resumability.NOT_RESUMABLE)
        return self._writer.info(token)

    async def _update(self, payload: Result | SpeechEvent | Resumed, token: bytes | None = None) -> None:
        await self._emit(StreamUpdate(payload, self._committed_ms, self._info(token)))

    def _keep(self, result: Result) -> None:
        """Keeps a final for resumes whose token predates it (it is sent with the next write's token)."""
        assert self._states is not None and self._writer is not None
        self._kept.append(KeptFinal(self._writer.next_sequence, result))
        excess = len(self._kept) - self._states.settings.max_kept_finals
        if excess > 0:
            self._resend_from = max(self._resend_from, self._kept[excess - 1].sequence)
            del self._kept[:excess]

    async def _begin(self) -> None:
        """A resumable stream writes first (a resumed one thereby fences off the connection it
        replaces); a resumed one then says where to send audio from and sends the finals its client's
        token predates."""
        if self._writer is None:
            return
        await self._write_state(force=True)
        resumed = self._resumed
        if resumed is None:
            return
        if self._writer.status is not Resumability.RESUMABLE:
            raise Unavailable("the stream-state store is unavailable: retry the resume shortly")
        missed = [k.result for k in self._kept if k.sequence > resumed.token_sequence]
        # Until the last missed final is out, responses carry the client's own token: a connection
        # lost in between leaves it with a token that still gets them all again.
        await self._update(Resumed(len(missed)), None if not missed else resumed.token)
        for n, result in enumerate(missed, 1):
            await self._update(result, None if n == len(missed) else resumed.token)

    async def run(self, inputs: AsyncIterator[StreamInput]) -> None:
        try:
            await self._begin()
            async with asyncio.TaskGroup() as tg:
                reader = tg.create_task(self._read(inputs))
                watcher = tg.create_task(self._watch_stop(reader)) if self._stop is not None else None
                tg.create_task(self._work(tg, reader, watcher))
        except BaseException as exc:
            # The state stays for a resume after a drain, a store or connection gone (a client
            # killed mid-stream looks like a cancel or a stream closed without end_of_audio) and a
            # resume elsewhere (StateConflict, an Unavailable); any other end is the stream's last,
            # and so is a drain that finalized the stream.
            retired = self._writer is not None and self._writer.retired
            if retired or not _leaves_of(exc, (asyncio.CancelledError, Unavailable, StreamAbandoned)):
                await self._forget()
            raise
        self._ended = True

    async def close(self) -> None:
        """After a stream that ended well has had its last responses written: its state goes. (Not
        before: a connection lost before the last final left would find nothing to resume.)"""
        if self._ended:
            await self._forget()

    async def _forget(self) -> None:
        if self._writer is not None:
            await self._writer.delete()

    async def _watch_stop(self, reader: asyncio.Task[None]) -> None:
        assert self._stop is not None
        await self._stop.wait()
        self._stop_requested = True
        # A read that completed in this same loop turn has its wake-up already scheduled: yield once
        # so the reader takes its chunk (and clears _awaiting_input) before it can be cancelled.
        await asyncio.sleep(0)
        if self._awaiting_input and not reader.done():
            self._interrupted = True
            reader.cancel()

    def _shutdown(self) -> _LimitReached:
        return _LimitReached(
            SHUTDOWN, "the server is shutting down: the open utterance was finalized; reconnect"
        )

    async def _read(self, inputs: AsyncIterator[StreamInput]) -> None:
        try:
            await self._receive(inputs)
        except asyncio.CancelledError:
            task = asyncio.current_task()
            # Only the drain's own interruption becomes a shutdown; any other cancel goes on.
            if not self._interrupted or task is None or task.uncancel() > 0:
                raise
            await self._end_reading(self._shutdown())
        except _LimitReached as limit:
            await self._end_reading(limit)

    def _left_to_another_replica(self) -> bool:
        shared = self._states is not None and self._states.shared
        return shared and self.resumability is Resumability.RESUMABLE

    async def _end_reading(self, limit: _LimitReached) -> None:
        """As if the client had sent end_of_audio: the worker sends the finals of what arrived, then
        ends the stream with the limit's error. At a drain, a stream another replica can resume is
        left to it: the worker writes its state and ends it, its utterance not cut."""
        if limit.limit == SHUTDOWN:
            if self._left_to_another_replica():
                await self._queue.put((_SUSPEND, self._clock(), self._bytes_in))
                return
            if self._writer is not None:
                # Finalized here: nothing is left to resume, and no response may say otherwise.
                self._writer.retire()
        self._limit = limit
        arrived = self._clock()
        try:
            tail = await self._decode_input(None)
        except InvalidInput:
            # Cut off mid-frame (a compressed stream, a sample split across chunks): what was
            # decoded so far stands.
            tail = np.zeros(0, np.int16)
        except Exception:
            # The stream is ending on a limit or the drain either way: a decoder that fails on its
            # tail costs that tail, not the finals of what was heard or the limit's status.
            log.warning("the audio decoder failed on a stream's last bytes", exc_info=True)
            tail = np.zeros(0, np.int16)
        await self._queue.put((tail, arrived, self._bytes_in))
        await self._queue.put((_END, arrived, self._bytes_in))

    async def _next_or_stop(self, items: AsyncIterator[StreamInput], opened_at: float) -> StreamInput | None:
        """The client's next message, unless the server has started draining."""
        if self._stop_requested:
            raise self._shutdown()
        self._awaiting_input = True
        try:
            return await self._next(items, opened_at)
        finally:
            self._awaiting_input = False

    async def _next(self, items: AsyncIterator[StreamInput], opened_at: float) -> StreamInput | None:
        """The client's next message (None at its end), within the idle and duration limits."""
        limits = self._limits
        waits: list[tuple[float, str]] = []
        if limits.idle_timeout_s > 0:
            waits.append((limits.idle_timeout_s, "idle"))
        if limits.max_stream_s > 0:
            waits.append((opened_at + limits.max_stream_s - asyncio.get_running_loop().time(), "duration"))
        if not waits:
            return await anext(items, None)
        wait_s, limit = min(waits)
        if wait_s > 0:
            timeout = asyncio.timeout(wait_s)
            try:
                async with timeout:
                    return await anext(items, None)
            except TimeoutError:
                if not timeout.expired():
                    raise
        if limit == "idle":
            raise _LimitReached(
                "idle",
                f"no audio for {limits.idle_timeout_s:g} s: the stream's idle timeout is "
                f"{limits.idle_timeout_s:g} s; send end_of_audio to end a stream",
            )
        raise _LimitReached(
            "duration", f"the stream reached its maximum duration of {limits.max_stream_s:g} s (wall clock)"
        )

    async def _receive(self, inputs: AsyncIterator[StreamInput]) -> None:
        items = aiter(inputs)
        opened_at = asyncio.get_running_loop().time()
        max_samples = round(self._limits.max_stream_audio_s * ASR_SAMPLE_RATE_HZ)
        while (item := await self._next_or_stop(items, opened_at)) is not None:
            arrived = self._clock()
            if isinstance(item, EndOfAudio):
                await self._queue.put((await self._decode_input(None), arrived, self._bytes_in))
                await self._queue.put((_END, arrived, self._bytes_in))
                return
            assert isinstance(item, AudioChunk)
            if not item.data:
                raise InvalidInput("an audio message carried no bytes")
            chunk_ms = self._decoder.chunk_duration_ms(len(item.data))
            if chunk_ms > self._limits.max_chunk_ms:
                raise InvalidInput(
                    f"audio chunk of {chunk_ms:.0f} ms is over the {self._limits.max_chunk_ms} ms limit; "
                    "send smaller chunks"
                )
            self._bytes_in += len(item.data)
            samples = await self._decode_input(item.data)
            self._audio_samples += samples.size
            if max_samples and self._audio_samples > max_samples:
                raise _LimitReached(
                    "audio",
                    f"the stream reached its maximum of {self._limits.max_stream_audio_s:g} s of audio",
                )
            await self._queue.put((samples, arrived, self._bytes_in - self._decoder.pending_bytes))
        raise StreamAbandoned(
            "the request stream closed without end_of_audio; the unfinished utterance was discarded"
        )

    async def _decode_input(self, data: bytes | None) -> npt.NDArray[np.int16]:
        """The chunk's samples (None: what the decoder still holds at the end). Compressed audio is
        decoded on a thread: one at a time per stream, since only this reader calls it, so in order."""
        if not self._decoder.compressed:
            return self._decoder.finish() if data is None else self._decoder.feed(data)
        if data is None:
            return await asyncio.to_thread(self._decoder.finish)
        return await asyncio.to_thread(self._decoder.feed, data)

    async def _work(
        self, tg: asyncio.TaskGroup, reader: asyncio.Task[None], watcher: asyncio.Task[None] | None
    ) -> None:
        try:
            while True:
                item, arrived, offset = await self._next_item()
                if item is _SUSPEND:
                    await self._write_state(force=True)
                    if self.resumability is Resumability.RESUMABLE:
                        raise Unavailable(
                            "the server is shutting down: resume the stream with its latest resume_token"
                        )
                    # The state could not be written: finalize what was heard instead, for good.
                    if self._writer is not None:
                        self._writer.retire()
                    self._limit = self._shutdown()
                    item = _END
                if item is _END:
                    if self._pending is not None:
                        raise InvalidInput(
                            "the audio ended before the resumed stream had its audio again: send it "
                            "from the resumed response's resume_offset_bytes"
                        )
                    events = self._endpointer.flush()
                else:
                    assert isinstance(item, np.ndarray)
                    events = self._push(item)
                self._covered_bytes = offset
                self._dirty = True
                if await self._handle(events, arrived):
                    return
                if item is _END:
                    if self._limit is not None:
                        if self._limits.on_limit is not None:
                            self._limits.on_limit(self._limit.limit)
                        if self._limit.limit == SHUTDOWN:
                            raise Unavailable(str(self._limit))
                        raise LimitExceeded(str(self._limit))
                    return
                await self._write_state()
                self._maybe_start_partial(tg)
        finally:
            if self._shedding is not None:
                self._shedding.speaking(False)
            await self._stop_partial()
            reader.cancel()
            if watcher is not None:
                watcher.cancel()

    async def _next_item(self) -> tuple[npt.NDArray[np.int16] | object, float, int]:
        """The next chunk. While none comes, the state of the chunks taken in is written when due,
        and rewritten now and then, so that a long pause does not let it expire."""
        if self._writer is None or self._states is None:
            return await self._queue.get()
        while True:
            wait_s = self._interval_s() if self._dirty else self._states.settings.ttl_s / 3
            due = self._written_at + wait_s - asyncio.get_running_loop().time()
            try:
                async with asyncio.timeout(max(0.0, due)):
                    return await self._queue.get()
            except TimeoutError:
                await self._write_state(force=True)

    async def _handle(self, events: list[SpeechStarted | UtteranceEnded], arrived: float) -> bool:
        """Sends the events of one chunk and the finals of the utterances it ended; True when the
        stream is over (single-utterance mode). The finals go out after the state that holds them is
        written: once for the chunk, as it is the chunk the state has taken in."""
        ends = sum(isinstance(e, UtteranceEnded) for e in events)
        finals: list[Result] = []
        for event in events:
            if isinstance(event, SpeechStarted):
                if self._shedding is not None:
                    self._shedding.speaking(True)
                await self._send_event(
                    SpeechEventType.SPEECH_STARTED, event.speech_start, event.utterance_index
                )
                continue
            ends -= 1
            result = await self._finish_utterance(event, arrived)
            if result is not None:
                finals.append(result)
            single = self._options.single_utterance
            if ends == 0 or single:
                await self._commit(finals)
                finals = []
            if single:
                return True
        return False

    async def _commit(self, finals: list[Result]) -> None:
        """Writes the state holding these finals, then sends them: a connection lost in between leaves
        the client a token older than each final it did not get (a resume sends those again)."""
        if not finals:
            return
        before = None
        if self._writer is not None:
            before = self._writer.token()
            for result in finals:
                self._keep(result)
            await self._write_state(force=True)
        for n, result in enumerate(finals, 1):
            token = None if n == len(finals) else before
            await self._emit(StreamUpdate(result, result.end_ms, self._info(token)))

    async def _finish_utterance(self, event: UtteranceEnded, arrived: float) -> Result | None:
        """Decodes the final (None when nothing was said). ``arrived``: when the message that ended
        the utterance reached the server."""
        if self._shedding is not None:
            # From here the final is the decoder's queue's to count.
            self._shedding.speaking(False)
        await self._stop_partial()
        single = self._options.single_utterance
        kind = SpeechEventType.END_OF_SINGLE_UTTERANCE if single else SpeechEventType.END_OF_UTTERANCE
        await self._send_event(kind, event.speech_end, event.utterance_index)
        # The final decodes freely and replaces the partials: committed words steady the partials,
        # but forcing them on the final cost accuracy.
        self._agreement.reset()
        draft, search = self._draft, self._search
        self._draft, self._search = (), None
        decoded = await self._utterances.final(event, draft, search)
        end = event.audio_start + event.audio.size
        self._committed_ms = _ms(end)
        if not (decoded.result.alternatives or decoded.dropped):
            return None
        return _result(
            decoded,
            offset_samples=event.audio_start,
            end_samples=end,
            index=event.utterance_index,
            latency_ms=(self._clock() - arrived) * 1000,
            end=self._end_of(event),
        )

    def _end_of(self, event: UtteranceEnded) -> UtteranceEnd:
        """Why the utterance ended: an end of audio that a limit or the shutdown made says which."""
        if event.end is not UtteranceEnd.END_OF_AUDIO or self._limit is None:
            return event.end
        return UtteranceEnd.SHUTDOWN if self._limit.limit == SHUTDOWN else UtteranceEnd.STREAM_LIMIT

    def _maybe_start_partial(self, tg: asyncio.TaskGroup) -> None:
        if not (self._options.interim_results and self._endpointer.speaking):
            return
        if self._partial is not None and not self._partial.done():
            return
        position = self._endpointer.position
        if position - self._last_partial_at < self._partial_interval:
            return
        audio, start = self._endpointer.current_audio()
        if audio.size < self._partial_interval:
            return
        self._last_partial_at = position
        if self._shedding is not None and self._shedding.shed_partial():
            return
        self._partial = tg.create_task(self._run_partial(audio, start, self._endpointer.utterance_index))

    async def _run_partial(self, audio: npt.NDArray[np.int16], start: int, index: int) -> None:
        started = self._clock()
        # Words (with their probabilities) only for the agreement: partials are sent without them.
        options = replace(
            self._options.decode,
            tier=Tier.FAST,
            word_timestamps=self._agreement.needs_words,
            max_alternatives=1,
        )
        request = WindowRequest(
            pcm16_to_float(audio),
            options,
            prefix=self._agreement.prefix,
            context=self._utterances.context(start),
            draft=self._draft,
            decoder_state=self._search,
            keep_decoder_state=True,
        )
        deadline = time.monotonic() + self._limits.partial_interval_ms / 1000
        try:
            decoded = await self._recognizer.decode(request, final=False, deadline=deadline)
        except PartialSkipped:
            return
        if index != self._endpointer.utterance_index:
            return
        self._draft, self._search = decoded.tokens, decoded.decoder_state
        if not decoded.alternatives:
            return
        text, stability = self._agreement.update(decoded.alternatives[0])
        best = replace(decoded.alternatives[0], text=text, words=())
        result = _result(
            Decoded(replace(decoded, alternatives=(best,)), Tier.FAST),
            offset_samples=start,
            end_samples=start + audio.size,
            index=index,
            latency_ms=(self._clock() - started) * 1000,
            end=None,
        )
        await self._update(replace(result, is_final=False, stability=stability))

    async def _stop_partial(self) -> None:
        if self._partial is not None and not self._partial.done():
            self._partial.cancel()
            # asyncio.wait does not re-raise the partial's CancelledError into this task.
            await asyncio.wait([self._partial])
        self._partial = None

    async def _send_event(self, kind: SpeechEventType, offset_samples: int, index: int) -> None:
        await self._update(SpeechEvent(kind, _ms(offset_samples), index))


class _PendingRestore:
    """A resumed state whose endpointer's audio (heard_samples, then leftover_samples) the client
    sends again first."""

    def __init__(self, state: StreamState) -> None:
        self.state = state
        self.heard = int(state.endpointer["heard_samples"])
        self.leftover = int(state.endpointer["leftover_samples"])
        if min(self.heard, self.leftover) < 0:
            raise ValueError("negative sample counts")
        self._audio: list[npt.NDArray[np.int16]] = []
        self._have = 0

    def take(self, samples: npt.NDArray[np.int16]) -> npt.NDArray[np.int16] | None:
        """The audio so far once it covers the endpointer's (None before)."""
        self._audio.append(samples)
        self._have += samples.size
        if self._have < self.heard + self.leftover:
            return None
        return np.concatenate(self._audio)

    def restore(self, endpointer: Endpointer, audio: npt.NDArray[np.int16]) -> npt.NDArray[np.int16]:
        """Restores the endpointer with its audio; returns the audio after it, new to it."""
        counts = ("heard_samples", "leftover_samples")
        snapshot = {k: v for k, v in self.state.endpointer.items() if k not in counts}
        split = self.heard + self.leftover
        snapshot["heard"], snapshot["leftover"] = audio[: self.heard], audio[self.heard : split]
        endpointer.restore(snapshot)
        return audio[split:]


def _leaves_of(exc: BaseException, kinds: tuple[type[BaseException], ...]) -> bool:
    """Whether ``exc``, or any exception of the group it is, is one of ``kinds``."""
    if isinstance(exc, BaseExceptionGroup):
        return any(_leaves_of(e, kinds) for e in exc.exceptions)
    return isinstance(exc, kinds)


class EncoderOutputs(Protocol):
    """Encoder outputs of one utterance's audio kept between requests (the component cache tier)."""

    async def get(self, tier: Tier) -> npt.NDArray[np.float32] | None: ...

    async def put(self, tier: Tier, output: npt.NDArray[np.float32]) -> None: ...


async def decode_final(
    recognizer: SpeechRecognizer,
    request: WindowRequest,
    limits: RecognitionLimits,
    shedding: LoadShedding | None = None,
    encoder: EncoderOutputs | None = None,
) -> tuple[WindowResult, Tier]:
    """Decodes an utterance. While the decoder has spare capacity (no more finals waiting than
    escalation_max_waiting, escalation not shed), a fast-tier final of a long utterance goes to the
    accurate tier at once, and a fast-tier answer under the confidence threshold is re-decoded there:
    the accurate tier spends spare capacity; it must not make other streams fall behind. encoder:
    where each tier's encoder output of this audio is looked up first and kept after."""

    async def run(tier: Tier) -> WindowResult:
        on = replace(request, options=replace(request.options, tier=tier))
        if encoder is not None:
            cached = await encoder.get(tier)
            on = replace(on, encoder_output=cached, keep_encoder_output=cached is None)
        decoded = await recognizer.decode(on, final=True, deadline=time.monotonic())
        if encoder is not None and decoded.encoder_output is not None:
            await encoder.put(tier, decoded.encoder_output)
            decoded = replace(decoded, encoder_output=None)
        return decoded

    options = request.options
    if options.tier is Tier.FAST and _is_long(request, limits) and _has_spare(recognizer, limits, shedding):
        if limits.on_long_accurate is not None:
            limits.on_long_accurate()
        log.debug("a %.1f s utterance decoded on the accurate tier", request.audio.size / ASR_SAMPLE_RATE_HZ)
        return await run(Tier.ACCURATE), Tier.ACCURATE
    decoded = await run(options.tier)
    confidence = decoded.alternatives[0].confidence if decoded.alternatives else 1.0
    if (
        options.tier is Tier.FAST
        and confidence < limits.escalation_confidence
        and _has_spare(recognizer, limits, shedding)
    ):
        second = await run(Tier.ACCURATE)
        if limits.on_escalation is not None:
            limits.on_escalation()
        log.debug("escalated a final of confidence %.2f", confidence)
        return second, Tier.ACCURATE
    return decoded, options.tier


def _is_long(request: WindowRequest, limits: RecognitionLimits) -> bool:
    """Whether the utterance is long enough for the accurate tier: on the long-form reads of both dev
    sets, its 30 s window with beam search made 15 % fewer word errors than the fast tier's short
    window (beam search alone or the 30 s window alone did not), while on utterances of a few seconds
    neither tier was better."""
    minimum = limits.accurate_min_utterance_s
    return minimum > 0 and request.audio.size >= minimum * ASR_SAMPLE_RATE_HZ


def _has_spare(
    recognizer: SpeechRecognizer, limits: RecognitionLimits, shedding: LoadShedding | None
) -> bool:
    return recognizer.pending_finals() <= limits.escalation_max_waiting and not (
        shedding is not None and shedding.skip_escalation()
    )


def _result(
    decoded: Decoded,
    *,
    offset_samples: int,
    end_samples: int,
    index: int,
    latency_ms: float,
    end: UtteranceEnd | None,
) -> Result:
    offset_s = offset_samples / ASR_SAMPLE_RATE_HZ
    return Result(
        alternatives=tuple(_shift(a, offset_s) for a in decoded.result.alternatives),
        is_final=True,
        utterance_index=index,
        start_ms=_ms(offset_samples),
        end_ms=_ms(end_samples),
        tier=decoded.tier,
        processing_latency_ms=latency_ms,
        end=end,
        cache_status=decoded.cache_status,
        cache_key=decoded.cache_key,
    )
