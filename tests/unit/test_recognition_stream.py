"""RecognitionStream with a scripted recognizer: ordering, limits, cancellation."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from tests.unit.test_endpointing import EnergyVad, pattern
from voxwire_server.domain import (
    Alternative,
    AudioChunk,
    AudioFormat,
    DecodeOptions,
    Encoding,
    EndOfAudio,
    RecognitionOptions,
    Result,
    SpeechEvent,
    SpeechEventType,
    StreamInput,
    StreamStart,
    StreamUpdate,
    Tier,
    Word,
)
from voxwire_server.engines.base import WindowRequest, WindowResult
from voxwire_server.errors import InvalidInput, NotImplementedCapability, StreamAbandoned
from voxwire_server.sessions.recognition import RecognitionLimits, RecognitionStream


class ScriptedRecognizer:
    """Answers "utterance N"; can be held to test cancellation."""

    model_name = "scripted"

    def __init__(self) -> None:
        self.calls = 0
        self.finished = 0
        self.gate: asyncio.Event | None = None
        self.started = asyncio.Event()
        self.requests: list[WindowRequest] = []
        self.partial_requests: list[WindowRequest] = []
        self.confidence = 0.9
        self.waiting_finals = 0
        # Words answered with a low probability when words are asked for.
        self.unsure: set[str] = set()

    def check_language(self, language: str) -> str:
        if language != "en":
            raise InvalidInput(f"language {language!r} is not supported")
        return language

    def check_conditioning(self, options: DecodeOptions) -> None:
        pass

    async def decode(self, request: WindowRequest, *, final: bool, deadline: float) -> WindowResult:
        self.calls += 1
        self.requests.append(request)
        if not final:
            self.partial_requests.append(request)
        self.started.set()
        if self.gate is not None:
            await self.gate.wait()
        self.finished += 1
        # A growing hypothesis: one word per 0.5 s of audio, after the forced prefix.
        words = [f"w{i}" for i in range(int(request.audio.size / 8000))]
        prefix = request.prefix.split()
        text = " ".join([*prefix, *words[len(prefix) :]]) or "hm"
        aligned: tuple[Word, ...] = ()
        if request.options.word_timestamps:
            aligned = tuple(
                Word(w, i * 0.5, i * 0.5 + 0.4, 0.2 if w in self.unsure else 0.9)
                for i, w in enumerate(text.split())
            )
        return WindowResult((Alternative(text, self.confidence, aligned),))

    def pending_finals(self) -> int:
        return self.waiting_finals

    def close(self) -> None:
        pass


def options(**kw: object) -> RecognitionOptions:
    return RecognitionOptions(audio=AudioFormat(Encoding.LINEAR16, 16000, 1), **kw)  # type: ignore[arg-type]


async def feed(
    audio: npt.NDArray[np.int16], end: bool = True, chunk: int = 1600
) -> AsyncIterator[StreamInput]:
    data = audio.astype("<i2").tobytes()
    for i in range(0, len(data), chunk * 2):
        yield AudioChunk(data[i : i + chunk * 2])
        # Hand the loop over between chunks, as a live client's network reads do.
        await asyncio.sleep(0)
    if end:
        yield EndOfAudio()


async def run_stream(
    audio: npt.NDArray[np.int16],
    opts: RecognitionOptions,
    recognizer: ScriptedRecognizer,
    end: bool = True,
    limits: RecognitionLimits | None = None,
) -> list[StreamUpdate]:
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    stream = RecognitionStream(
        StreamStart(opts), recognizer, lambda a: EnergyVad(), limits or RecognitionLimits(), emit
    )
    await stream.run(feed(audio, end))
    return updates


TWO_UTTERANCES = pattern(
    ("silence", 0.5), ("speech", 1.0), ("silence", 1.0), ("speech", 1.0), ("silence", 0.2)
)


async def test_events_and_finals_come_in_order() -> None:
    updates = await run_stream(TWO_UTTERANCES, options(), ScriptedRecognizer())
    kinds = [u.payload.type if isinstance(u.payload, SpeechEvent) else "final" for u in updates]
    assert kinds == [
        SpeechEventType.SPEECH_STARTED,
        SpeechEventType.END_OF_UTTERANCE,
        "final",
        SpeechEventType.SPEECH_STARTED,
        SpeechEventType.END_OF_UTTERANCE,
        "final",
    ]
    finals = [u for u in updates if isinstance(u.payload, Result)]
    assert [f.payload.utterance_index for f in finals] == [0, 1]  # type: ignore[union-attr]
    # The committed offset grows with each final and never goes back.
    assert 0 < finals[0].committed_offset_ms < finals[1].committed_offset_ms
    assert all(u.committed_offset_ms <= finals[1].committed_offset_ms for u in updates)


async def test_single_utterance_ends_after_the_first() -> None:
    recognizer = ScriptedRecognizer()
    updates = await run_stream(TWO_UTTERANCES, options(single_utterance=True), recognizer)
    events = [u.payload.type for u in updates if isinstance(u.payload, SpeechEvent)]
    assert events == [SpeechEventType.SPEECH_STARTED, SpeechEventType.END_OF_SINGLE_UTTERANCE]
    assert sum(isinstance(u.payload, Result) for u in updates) == 1
    assert recognizer.calls == 1


async def test_closing_without_end_of_audio_abandons_the_stream() -> None:
    recognizer = ScriptedRecognizer()
    audio = pattern(("silence", 0.3), ("speech", 1.0))
    with pytest.raises(ExceptionGroup) as info:
        await run_stream(audio, options(), recognizer, end=False)
    assert info.group_contains(StreamAbandoned)
    assert recognizer.calls == 0  # the unfinished utterance was not decoded


async def test_oversized_chunks_are_rejected() -> None:
    audio = pattern(("speech", 1.5))

    async def one_big_chunk() -> AsyncIterator[StreamInput]:
        yield AudioChunk(audio.astype("<i2").tobytes())
        yield EndOfAudio()

    stream = RecognitionStream(
        StreamStart(options()), ScriptedRecognizer(), lambda a: EnergyVad(), RecognitionLimits(), _ignore
    )
    with pytest.raises(ExceptionGroup) as info:
        await stream.run(one_big_chunk())
    assert info.group_contains(InvalidInput, match="over the 1000 ms limit")


async def _ignore(update: StreamUpdate) -> None:
    pass


def test_resume_tokens_are_not_faked() -> None:
    with pytest.raises(NotImplementedCapability, match="stream resumption"):
        RecognitionStream(
            StreamStart(options(), resume_token=b"x"),
            ScriptedRecognizer(),
            lambda a: EnergyVad(),
            RecognitionLimits(),
            _ignore,
        )


async def test_cancelling_the_stream_cancels_its_decode() -> None:
    recognizer = ScriptedRecognizer()
    recognizer.gate = asyncio.Event()
    task = asyncio.create_task(run_stream(TWO_UTTERANCES, options(), recognizer))
    await recognizer.started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    recognizer.gate.set()
    await asyncio.sleep(0)
    assert recognizer.finished == 0


async def test_partials_never_follow_their_final() -> None:
    audio = pattern(("silence", 0.3), ("speech", 3.0), ("silence", 1.0), ("speech", 2.0), ("silence", 1.0))
    updates = await run_stream(audio, options(interim_results=True), ScriptedRecognizer())
    results = [u.payload for u in updates if isinstance(u.payload, Result)]
    assert any(not r.is_final for r in results)
    final_seen: set[int] = set()
    for r in results:
        if r.is_final:
            final_seen.add(r.utterance_index)
        else:
            assert r.utterance_index not in final_seen
            assert 0.0 <= r.stability <= 1.0


async def test_committed_words_never_change_and_are_forced_on_the_decoder() -> None:
    recognizer = ScriptedRecognizer()
    audio = pattern(("silence", 0.3), ("speech", 5.0), ("silence", 1.0))
    updates = await run_stream(audio, options(interim_results=True), recognizer)
    partials = [u.payload for u in updates if isinstance(u.payload, Result) and not u.payload.is_final]
    assert len(partials) >= 3
    committed: list[str] = []
    for p in partials:
        words = p.alternatives[0].text.split()
        assert words[: len(committed)] == committed  # what was committed is still there, unchanged
        committed = words[: round(p.stability * len(words))]
    assert committed, "two agreeing partials must commit words"
    assert any(r.prefix for r in recognizer.requests)  # later decodes continue from the committed words


async def test_partials_commit_only_words_the_decoder_was_sure_of_and_carry_no_words() -> None:
    audio = pattern(("silence", 0.3), ("speech", 5.0), ("silence", 1.0))
    gated = RecognitionLimits(partial_commit_probability=0.45)
    recognizer = ScriptedRecognizer()
    recognizer.unsure = {"w3"}
    updates = await run_stream(audio, options(interim_results=True), recognizer, limits=gated)
    partials = [u.payload for u in updates if isinstance(u.payload, Result) and not u.payload.is_final]
    assert len(partials) >= 4
    # One utterance: its first partial is not aligned (nothing can be committed yet), later ones are.
    assert [r.options.word_timestamps for r in recognizer.partial_requests] == [False] + [True] * (
        len(recognizer.partial_requests) - 1
    )
    assert all(not p.alternatives[0].words for p in partials)  # words are for the agreement only
    longest = max(round(p.stability * len(p.alternatives[0].text.split())) for p in partials)
    assert longest == 3  # w0 w1 w2: agreement stops at the unsure w3
    # Without the gate the same stream commits past it, and partials ask for no words.
    plain = ScriptedRecognizer()
    plain.unsure = {"w3"}
    updates = await run_stream(audio, options(interim_results=True), plain)
    partials = [u.payload for u in updates if isinstance(u.payload, Result) and not u.payload.is_final]
    assert max(round(p.stability * len(p.alternatives[0].text.split())) for p in partials) > 3
    assert plain.partial_requests
    assert not any(r.options.word_timestamps for r in plain.requests)


async def test_low_confidence_finals_escalate_to_the_accurate_tier() -> None:
    recognizer = ScriptedRecognizer()
    recognizer.confidence = 0.2
    escalations: list[int] = []
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    limits = RecognitionLimits(escalation_confidence=0.5, on_escalation=lambda: escalations.append(1))
    stream = RecognitionStream(StreamStart(options()), recognizer, lambda a: EnergyVad(), limits, emit)
    await stream.run(feed(TWO_UTTERANCES))
    finals = [u.payload for u in updates if isinstance(u.payload, Result)]
    assert [f.tier for f in finals] == [Tier.ACCURATE, Tier.ACCURATE]
    assert len(escalations) == 2
    assert [r.options.tier for r in recognizer.requests] == [Tier.FAST, Tier.ACCURATE] * 2


async def test_escalation_waits_for_spare_capacity() -> None:
    recognizer = ScriptedRecognizer()
    recognizer.confidence = 0.2
    recognizer.waiting_finals = 3  # other streams' finals are queued
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    limits = RecognitionLimits(escalation_confidence=0.5, escalation_max_waiting=0)
    stream = RecognitionStream(StreamStart(options()), recognizer, lambda a: EnergyVad(), limits, emit)
    await stream.run(feed(TWO_UTTERANCES))
    finals = [u.payload for u in updates if isinstance(u.payload, Result)]
    assert [f.tier for f in finals] == [Tier.FAST, Tier.FAST]
    assert [r.options.tier for r in recognizer.requests] == [Tier.FAST, Tier.FAST]


LONG_THEN_SHORT = pattern(
    ("silence", 0.5), ("speech", 3.0), ("silence", 1.0), ("speech", 1.0), ("silence", 1.0)
)


async def _finals_with(limits: RecognitionLimits, recognizer: ScriptedRecognizer) -> list[Result]:
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    stream = RecognitionStream(StreamStart(options()), recognizer, lambda a: EnergyVad(), limits, emit)
    await stream.run(feed(LONG_THEN_SHORT))
    return [u.payload for u in updates if isinstance(u.payload, Result)]


async def test_long_utterances_go_to_the_accurate_tier_at_once_and_short_ones_stay_fast() -> None:
    recognizer = ScriptedRecognizer()  # confident answers: nothing escalates
    counted: list[int] = []
    limits = RecognitionLimits(accurate_min_utterance_s=2.5, on_long_accurate=lambda: counted.append(1))
    finals = await _finals_with(limits, recognizer)
    assert [f.tier for f in finals] == [Tier.ACCURATE, Tier.FAST]
    # The long one is decoded once, on the accurate tier: no fast decode before it.
    assert [r.options.tier for r in recognizer.requests] == [Tier.ACCURATE, Tier.FAST]
    assert recognizer.requests[0].audio.size >= 2.5 * 16000 > recognizer.requests[1].audio.size
    assert counted == [1]


async def test_long_utterances_stay_on_the_fast_tier_without_spare_capacity_or_when_off() -> None:
    busy = ScriptedRecognizer()
    busy.waiting_finals = 3  # other streams' finals are queued
    finals = await _finals_with(RecognitionLimits(accurate_min_utterance_s=2.5), busy)
    assert [f.tier for f in finals] == [Tier.FAST, Tier.FAST]
    off = ScriptedRecognizer()
    finals = await _finals_with(RecognitionLimits(accurate_min_utterance_s=0), off)
    assert [r.options.tier for r in off.requests] == [Tier.FAST, Tier.FAST]


async def test_a_finals_latency_counts_from_the_arrival_of_the_chunk_that_ended_it() -> None:
    # The first final is held while the rest of the stream arrives and waits in the queue: the
    # second final's latency must include that wait, not start when the worker reached its chunk.
    recognizer = ScriptedRecognizer()
    recognizer.gate = asyncio.Event()
    all_sent = asyncio.Event()
    now = [100.0]  # the stream's clock: only this test moves it
    held_s = 5.0

    async def inputs() -> AsyncIterator[StreamInput]:
        async for item in feed(TWO_UTTERANCES, end=False):
            yield item
        all_sent.set()  # before end_of_audio: the reader stops pulling after it
        yield EndOfAudio()

    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    stream = RecognitionStream(
        StreamStart(options()),
        recognizer,
        lambda a: EnergyVad(),
        RecognitionLimits(),
        emit,
        clock=lambda: now[0],
    )
    task = asyncio.create_task(stream.run(inputs()))
    await all_sent.wait()  # every chunk has arrived, at time 100
    now[0] += held_s  # the decoder was busy this long
    recognizer.gate.set()
    await task
    finals = [u.payload for u in updates if isinstance(u.payload, Result)]
    assert [f.processing_latency_ms for f in finals] == [held_s * 1000, held_s * 1000]


async def test_later_utterances_are_decoded_with_the_text_before_them() -> None:
    recognizer = ScriptedRecognizer()
    audio = pattern(
        ("silence", 0.5), ("speech", 1.0), ("silence", 1.0), ("speech", 1.0), ("silence", 1.0),
        ("speech", 1.0), ("silence", 0.2),
    )  # fmt: skip
    updates = await run_stream(audio, options(interim_results=True), recognizer)
    finals = [
        u.payload.alternatives[0].text
        for u in updates
        if isinstance(u.payload, Result) and u.payload.is_final
    ]
    assert len(finals) == 3
    contexts = [r.context for r in recognizer.requests]
    # First utterance: nothing before it; then each one (its partials too) carries what was said.
    assert contexts[0] == ""
    assert finals[0] in contexts
    assert f"{finals[0]} {finals[1]}" in contexts
    assert set(contexts) == {"", finals[0], f"{finals[0]} {finals[1]}"}


async def test_a_long_pause_starts_a_new_context() -> None:
    recognizer = ScriptedRecognizer()
    audio = pattern(("speech", 1.0), ("silence", 3.0), ("speech", 1.0), ("silence", 0.2))
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    limits = RecognitionLimits(context_gap_s=2.0)
    stream = RecognitionStream(StreamStart(options()), recognizer, lambda a: EnergyVad(), limits, emit)
    await stream.run(feed(audio))
    assert [r.context for r in recognizer.requests] == ["", ""]
