"""The background refresh of stale recognition cache entries: each utterance decoded once with the
current model and stored, live finals first, a full queue drops, a failure does not stop the worker."""

from __future__ import annotations

import asyncio
from dataclasses import replace

import numpy as np

from voxwire_server.caches.keyring import Keyring
from voxwire_server.caches.recognition import Probe, RecognitionCache
from voxwire_server.domain import Alternative, CacheStatus, DecodeOptions, RequestContext
from voxwire_server.engines.base import DecoderLoad, WindowRequest, WindowResult
from voxwire_server.sessions.recognition import RecognitionLimits
from voxwire_server.sessions.revalidation import Revalidator
from voxwire_server.storage import MemoryStore

CONTEXT = RequestContext(tenant_id="acme")
LIMITS = RecognitionLimits(accurate_min_utterance_s=0, escalation_confidence=0.0)


class FakeRecognizer:
    """Only what the refresh uses: decode, and how many finals wait."""

    model_name = "fake"
    model_version = "v2"

    def __init__(self) -> None:
        self.waiting = 0
        self.decoded: list[int] = []
        self.fail_next = False
        self.release = asyncio.Event()
        self.release.set()
        self.started = asyncio.Event()
        self.cancelled = False

    def pending_finals(self) -> int:
        return self.waiting

    def load(self) -> DecoderLoad:
        return DecoderLoad()

    async def decode(self, request: WindowRequest, *, final: bool, deadline: float) -> WindowResult:
        self.started.set()
        try:
            await self.release.wait()
        except asyncio.CancelledError:
            self.cancelled = True
            raise
        if self.fail_next:
            self.fail_next = False
            raise RuntimeError("the decoder broke")
        self.decoded.append(request.audio.size)
        return WindowResult((Alternative(f"heard {request.audio.size} samples", 0.9),))


def utterance(seconds: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).normal(0, 3000, int(seconds * 16000))).astype(np.int16)


async def probe_of(cache: RecognitionCache, audio: np.ndarray) -> Probe:
    return Probe(CONTEXT, DecodeOptions(), await cache.audio_key("acme", audio), audio.size / 16000, None)


class Outcomes(list[str]):
    """What the revalidator reported; wait() until there are so many."""

    def __init__(self) -> None:
        super().__init__()
        self._changed = asyncio.Event()

    def report(self, outcome: str) -> None:
        self.append(outcome)
        self._changed.set()

    async def wait(self, count: int) -> None:
        async with asyncio.timeout(10):
            while len(self) < count:
                self._changed.clear()
                await self._changed.wait()


async def test_each_stale_utterance_is_decoded_once_and_stored() -> None:
    recognizer = FakeRecognizer()
    cache = RecognitionCache(Keyring(MemoryStore(1 << 20), key_secret=b"0123456789abcdef"), "v2")
    outcomes = Outcomes()
    revalidator = Revalidator(recognizer, cache, LIMITS, on_outcome=outcomes.report)  # type: ignore[arg-type]
    audio = utterance(1.0, 1)
    probe = await probe_of(cache, audio)
    recognizer.waiting = 1  # a live final waits: the refresh does not start
    revalidator.start()
    revalidator.submit(probe, audio)
    revalidator.submit(probe, audio)  # the same utterance again while queued: once
    for _ in range(5):  # the worker looks several times (every 50 ms) and waits on
        await asyncio.sleep(0.06)
    assert recognizer.decoded == []
    recognizer.waiting = 0
    await outcomes.wait(1)
    assert outcomes == ["refreshed"] and recognizer.decoded == [16000]
    hit = await cache.lookup(audio, DecodeOptions(), CONTEXT)
    assert hit.status is CacheStatus.EXACT and hit.alternatives[0].text == "heard 16000 samples"
    await revalidator.aclose()


async def test_a_full_queue_drops_and_a_failure_does_not_stop_the_worker() -> None:
    recognizer = FakeRecognizer()
    cache = RecognitionCache(Keyring(MemoryStore(1 << 20), key_secret=b"0123456789abcdef"), "v2")
    outcomes = Outcomes()
    revalidator = Revalidator(recognizer, cache, LIMITS, max_pending=2, on_outcome=outcomes.report)  # type: ignore[arg-type]
    recognizer.release.clear()
    recognizer.fail_next = True
    audios = [utterance(0.5, seed) for seed in range(3)]
    for audio in audios:
        revalidator.submit(await probe_of(cache, audio), audio)
    assert outcomes == ["dropped"]
    revalidator.start()
    recognizer.release.set()
    await outcomes.wait(3)
    assert outcomes == ["dropped", "failed", "refreshed"]
    await revalidator.aclose()
    await revalidator.aclose()  # idempotent


async def test_closing_cancels_a_refresh_in_progress() -> None:
    recognizer = FakeRecognizer()
    cache = RecognitionCache(Keyring(MemoryStore(1 << 20), key_secret=b"0123456789abcdef"), "v2")
    revalidator = Revalidator(recognizer, cache, LIMITS)  # type: ignore[arg-type]
    recognizer.release.clear()
    revalidator.start()
    audio = utterance(0.5, 4)
    revalidator.submit(await probe_of(cache, audio), audio)
    async with asyncio.timeout(10):
        await recognizer.started.wait()
    await revalidator.aclose()
    assert recognizer.cancelled and recognizer.decoded == []


async def test_closing_a_revalidator_that_never_started() -> None:
    revalidator = Revalidator(FakeRecognizer(), RecognitionCache(Keyring(MemoryStore(1 << 20)), "v2"), LIMITS)  # type: ignore[arg-type]
    await revalidator.aclose()


async def test_work_of_a_purged_user_stores_nothing() -> None:
    recognizer = FakeRecognizer()
    cache = RecognitionCache(Keyring(MemoryStore(1 << 20), key_secret=b"0123456789abcdef"), "v2")
    outcomes = Outcomes()
    revalidator = Revalidator(recognizer, cache, LIMITS, on_outcome=outcomes.report)  # type: ignore[arg-type]
    alice = replace(CONTEXT, user_id="alice")
    queued, decoding, later = (utterance(0.5, seed) for seed in (5, 6, 7))
    recognizer.release.clear()
    revalidator.start()
    first = await probe_of(cache, decoding)
    revalidator.submit(replace(first, context=alice), decoding)
    async with asyncio.timeout(10):
        await recognizer.started.wait()  # being decoded
    second = await probe_of(cache, queued)
    revalidator.submit(replace(second, context=alice), queued)  # queued behind it
    revalidator.forget("acme", "alice")
    third = await probe_of(cache, later)
    revalidator.submit(replace(third, context=alice), later)  # after the purge: theirs again
    recognizer.release.set()
    await outcomes.wait(3)
    assert outcomes == ["purged", "purged", "refreshed"]
    assert (await cache.lookup(decoding, DecodeOptions(), alice)).status is CacheStatus.MISS
    assert (await cache.lookup(later, DecodeOptions(), alice)).status is CacheStatus.EXACT
    await revalidator.aclose()
