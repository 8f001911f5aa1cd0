"""RecognitionStream's limits (idle, duration, audio) and load shedding, with a scripted recognizer."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator

import numpy as np
import numpy.typing as npt
import pytest

from tests.unit.test_endpointing import EnergyVad, pattern
from tests.unit.test_recognition_stream import ScriptedRecognizer, feed, options
from voxwire_server.domain import (
    RecognitionOptions,
    Result,
    SpeechEvent,
    SpeechEventType,
    StreamInput,
    StreamStart,
    StreamUpdate,
    Tier,
    UtteranceEnd,
)
from voxwire_server.engines.audio import StreamDecoder
from voxwire_server.errors import LimitExceeded, Unavailable
from voxwire_server.sessions.recognition import RecognitionLimits, RecognitionStream

# One utterance that ends (speech, then enough silence), then one still going when the audio stops.
ONE_ENDED_ONE_OPEN = pattern(("silence", 0.3), ("speech", 1.0), ("silence", 1.0), ("speech", 1.0))


async def then_stall(audio: npt.NDArray[np.int16], sent: asyncio.Event) -> AsyncIterator[StreamInput]:
    """The audio, then nothing: a client that keeps the stream open without sending."""
    async for item in feed(audio, end=False):
        yield item
    sent.set()
    await asyncio.Event().wait()
    raise AssertionError("unreachable: nothing sets the event")


class Shedding:
    def __init__(self, partials: bool = False, escalation: bool = False) -> None:
        self.partials, self.escalation = partials, escalation
        self.asked = {"partial": 0, "escalation": 0}
        self.states: list[bool] = []

    def shed_partial(self) -> bool:
        self.asked["partial"] += 1
        return self.partials

    def skip_escalation(self) -> bool:
        self.asked["escalation"] += 1
        return self.escalation

    def speaking(self, active: bool) -> None:
        self.states.append(active)


async def run_limited(
    inputs: AsyncIterator[StreamInput],
    limits: RecognitionLimits,
    opts: RecognitionOptions | None = None,
    recognizer: ScriptedRecognizer | None = None,
    shedding: Shedding | None = None,
) -> tuple[list[StreamUpdate], BaseException | None]:
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    stream = RecognitionStream(
        StreamStart(opts or options()),
        recognizer or ScriptedRecognizer(),
        lambda a: EnergyVad(),
        limits,
        emit,
        shedding=shedding,
    )
    try:
        await asyncio.wait_for(stream.run(inputs), timeout=30)
    except ExceptionGroup as group:
        return updates, group
    return updates, None


def limit_error(error: BaseException | None) -> LimitExceeded:
    assert isinstance(error, ExceptionGroup)
    matched, _ = error.split(LimitExceeded)
    assert matched is not None, f"no LimitExceeded in {error!r}"
    (leaf,) = matched.exceptions
    assert isinstance(leaf, LimitExceeded)
    return leaf


def finals(updates: list[StreamUpdate]) -> list[Result]:
    return [u.payload for u in updates if isinstance(u.payload, Result) and u.payload.is_final]


async def test_an_idle_stream_ends_out_of_range_after_its_finals() -> None:
    ended: list[str] = []
    sent = asyncio.Event()
    limits = RecognitionLimits(idle_timeout_s=0.3, on_limit=ended.append)
    updates, error = await run_limited(then_stall(ONE_ENDED_ONE_OPEN, sent), limits)
    assert sent.is_set()
    assert re.search(r"no audio for 0\.3 s: the stream's idle timeout is 0\.3 s", str(limit_error(error)))
    # The utterance that ended, and the one cut off by the limit: both finals were delivered.
    assert [f.utterance_index for f in finals(updates)] == [0, 1]
    assert ended == ["idle"]


async def test_a_decoder_failing_on_the_tail_still_ends_on_the_limit_with_its_finals(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(self: object) -> npt.NDArray[np.int16]:
        raise RuntimeError("a decoder bug")

    monkeypatch.setattr(StreamDecoder, "finish", broken)
    sent = asyncio.Event()
    updates, error = await run_limited(
        then_stall(ONE_ENDED_ONE_OPEN, sent), RecognitionLimits(idle_timeout_s=0.3)
    )
    assert "idle timeout" in str(limit_error(error))
    assert [f.utterance_index for f in finals(updates)] == [0, 1]


async def test_a_stream_ends_out_of_range_at_its_maximum_duration() -> None:
    ended: list[str] = []
    sent = asyncio.Event()
    limits = RecognitionLimits(max_stream_s=1.0, on_limit=ended.append)
    updates, error = await run_limited(then_stall(ONE_ENDED_ONE_OPEN, sent), limits)
    assert re.search(r"maximum duration of 1 s \(wall clock\)", str(limit_error(error)))
    assert finals(updates), "the finals of the audio received are delivered"
    assert ended == ["duration"]


async def test_a_stream_ends_out_of_range_at_its_maximum_audio() -> None:
    ended: list[str] = []
    audio = pattern(("silence", 0.3), ("speech", 1.0), ("silence", 1.0), ("speech", 2.0), ("silence", 1.0))
    limits = RecognitionLimits(max_stream_audio_s=2.5, on_limit=ended.append)
    updates, error = await run_limited(feed(audio), limits)
    assert re.search(r"maximum of 2\.5 s of audio", str(limit_error(error)))
    # The first utterance ended before the limit; the second was cut at it and flushed.
    assert [f.utterance_index for f in finals(updates)] == [0, 1]
    last = finals(updates)[-1]
    assert last.end_ms <= 2500
    assert ended == ["audio"]


async def test_a_stream_within_its_limits_ends_normally() -> None:
    audio = pattern(("silence", 0.3), ("speech", 1.0), ("silence", 1.0))
    limits = RecognitionLimits(idle_timeout_s=10.0, max_stream_s=60.0, max_stream_audio_s=60.0)
    updates, error = await run_limited(feed(audio), limits)
    assert error is None
    assert len(finals(updates)) == 1


async def test_partials_are_shed_while_the_decoder_is_behind() -> None:
    audio = pattern(("silence", 0.3), ("speech", 4.0), ("silence", 1.0))
    opts = options(interim_results=True)
    busy, recognizer = Shedding(partials=True), ScriptedRecognizer()
    updates, error = await run_limited(feed(audio), RecognitionLimits(), opts, recognizer, busy)
    assert error is None
    assert busy.asked["partial"] >= 3  # asked each time a partial was due
    assert all(u.payload.is_final for u in updates if isinstance(u.payload, Result))
    assert len(finals(updates)) == 1  # the final keeps coming
    assert recognizer.calls == 1
    idle = Shedding(partials=False)
    updates, _ = await run_limited(feed(audio), RecognitionLimits(), opts, ScriptedRecognizer(), idle)
    assert any(not u.payload.is_final for u in updates if isinstance(u.payload, Result))


async def test_a_stream_says_when_it_is_in_an_utterance() -> None:
    audio = pattern(("silence", 0.3), ("speech", 1.0), ("silence", 1.0), ("speech", 1.0), ("silence", 1.0))
    shedding = Shedding()
    _, error = await run_limited(feed(audio), RecognitionLimits(), shedding=shedding)
    assert error is None
    # In, out at each end of utterance (before its final is decoded), and out at the end.
    assert shedding.states == [True, False, True, False, False]


async def test_a_stream_cancelled_mid_utterance_is_no_longer_speaking() -> None:
    sent = asyncio.Event()
    shedding = Shedding()
    task = asyncio.create_task(
        run_limited(then_stall(pattern(("speech", 1.0)), sent), RecognitionLimits(), shedding=shedding)
    )
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert shedding.states == [True, False]


async def test_escalation_is_skipped_while_the_decoder_is_behind() -> None:
    audio = pattern(("silence", 0.3), ("speech", 1.0), ("silence", 1.0))
    limits = RecognitionLimits(escalation_confidence=0.5, escalation_max_waiting=10)
    for busy, tier in ((True, Tier.FAST), (False, Tier.ACCURATE)):
        recognizer = ScriptedRecognizer()
        recognizer.confidence = 0.2
        shedding = Shedding(escalation=busy)
        updates, error = await run_limited(feed(audio), limits, options(), recognizer, shedding)
        assert error is None
        assert [f.tier for f in finals(updates)] == [tier]
        assert shedding.asked["escalation"] == 1


@pytest.mark.parametrize("limit", ["idle_timeout_s", "max_stream_s"])
async def test_a_client_cancel_during_the_wait_is_not_a_limit(limit: str) -> None:
    sent = asyncio.Event()
    limits = RecognitionLimits(**{limit: 30.0})  # type: ignore[arg-type]
    task = asyncio.create_task(run_limited(then_stall(ONE_ENDED_ONE_OPEN, sent), limits))
    await sent.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_a_drain_finalizes_what_was_heard_and_ends_unavailable() -> None:
    sent, stop = asyncio.Event(), asyncio.Event()
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    stream = RecognitionStream(
        StreamStart(options()),
        ScriptedRecognizer(),
        lambda a: EnergyVad(),
        RecognitionLimits(),
        emit,
        stop=stop,
    )

    async def drain_when_sent() -> None:
        await sent.wait()
        stop.set()

    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(drain_when_sent())
            tg.create_task(asyncio.wait_for(stream.run(then_stall(ONE_ENDED_ONE_OPEN, sent)), timeout=30))
    matched, _ = info.value.split(Unavailable)
    assert matched is not None, info.value
    ends = [f.end for f in finals(updates)]
    # The utterance that ended on silence, then the open one, finalized by the drain.
    assert ends == [UtteranceEnd.SILENCE, UtteranceEnd.SHUTDOWN]
    # Every sample that arrived was decoded: the last final reaches the end of the audio sent.
    assert finals(updates)[-1].end_ms == round(ONE_ENDED_ONE_OPEN.size / 16)


async def test_a_drain_that_lands_as_a_single_utterance_ends_still_lets_the_stream_finish() -> None:
    """The drain is asked for in the same loop turn as the end of the one utterance, with a queue of
    one chunk: the reader (interrupted, or blocked putting the end into the queue) must not outlive
    the worker that already ended the stream."""
    sent, stop = asyncio.Event(), asyncio.Event()
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)
        if (
            isinstance(update.payload, SpeechEvent)
            and update.payload.type is SpeechEventType.END_OF_SINGLE_UTTERANCE
        ):
            stop.set()

    stream = RecognitionStream(
        StreamStart(options(single_utterance=True)),
        ScriptedRecognizer(),
        lambda a: EnergyVad(),
        RecognitionLimits(queue_chunks=1),
        emit,
        stop=stop,
    )
    await asyncio.wait_for(stream.run(then_stall(ONE_ENDED_ONE_OPEN, sent)), timeout=30)
    assert stop.is_set()
    assert [f.end for f in finals(updates)] == [UtteranceEnd.SILENCE]


async def test_a_chunk_read_in_the_same_turn_as_the_drain_is_decoded_not_lost() -> None:
    """The drain is asked for, and the client's next chunk arrives, in one loop turn: the chunk has
    been read, so it is part of the final the drain sends."""
    stop = asyncio.Event()
    arriving: asyncio.Queue[StreamInput] = asyncio.Queue()
    updates: list[StreamUpdate] = []

    async def emit(update: StreamUpdate) -> None:
        updates.append(update)

    async def inputs() -> AsyncIterator[StreamInput]:
        while True:
            yield await arriving.get()

    async def client() -> None:
        chunks = [item async for item in feed(ONE_ENDED_ONE_OPEN, end=False)]
        for chunk in chunks[:-1]:
            arriving.put_nowait(chunk)
            await asyncio.sleep(0.001)
        stop.set()
        arriving.put_nowait(chunks[-1])

    stream = RecognitionStream(
        StreamStart(options()),
        ScriptedRecognizer(),
        lambda a: EnergyVad(),
        RecognitionLimits(),
        emit,
        stop=stop,
    )
    with pytest.raises(ExceptionGroup) as info:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(client())
            tg.create_task(asyncio.wait_for(stream.run(inputs()), timeout=30))
    assert info.value.split(Unavailable)[0] is not None, info.value
    assert finals(updates)[-1].end is UtteranceEnd.SHUTDOWN
    assert finals(updates)[-1].end_ms == round(ONE_ENDED_ONE_OPEN.size / 16)
