"""Stale-while-revalidate after a model upgrade: an exact entry of an older model version that the
operator allows (--asr-cache-stale-models) answers at once, and the utterance is decoded again with
the current model in the background, at a time when no final is waiting, so the entry is renewed
without any request waiting for it."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from voxwire_server.caches.recognition import Probe, RecognitionCache
from voxwire_server.engines.audio import pcm16_to_float
from voxwire_server.engines.base import SpeechRecognizer, WindowRequest
from voxwire_server.sessions.recognition import RecognitionLimits, decode_final

__all__ = ["Revalidator"]

log = logging.getLogger(__name__)

# How often the worker looks again whether the decoder has room for background work.
_IDLE_POLL_S = 0.05


@dataclass(frozen=True, slots=True)
class _Work:
    probe: Probe
    audio: npt.NDArray[np.int16]
    sequence: int


# Purged users remembered (so work queued before their purge stores nothing); the oldest go first.
_MAX_PURGED = 10_000


class Revalidator:
    """A bounded queue of utterances to decode again, and the one task that works it off."""

    def __init__(
        self,
        recognizer: SpeechRecognizer,
        cache: RecognitionCache,
        limits: RecognitionLimits,
        *,
        max_pending: int = 64,
        on_outcome: Callable[[str], None] | None = None,
    ) -> None:
        self._recognizer = recognizer
        self._cache = cache
        self._limits = limits
        self._queue: asyncio.Queue[_Work] = asyncio.Queue(max_pending)
        self._pending: set[str] = set()
        self._sequence = 0
        # (tenant, user) -> the sequence at its latest purge: work queued before it stores nothing.
        self._purged: dict[tuple[str, str], int] = {}
        self._on_outcome = on_outcome or (lambda outcome: None)
        self._task: asyncio.Task[None] | None = None

    def submit(self, probe: Probe, audio: npt.NDArray[np.int16]) -> None:
        """Queues the utterance (once per audio key); a full queue drops it (it stays stale, and the
        next hit asks again)."""
        if probe.audio_key in self._pending:
            return
        self._sequence += 1
        try:
            self._queue.put_nowait(_Work(probe, audio, self._sequence))
        except asyncio.QueueFull:
            self._on_outcome("dropped")
            return
        self._pending.add(probe.audio_key)

    def forget(self, tenant_id: str, user_id: str) -> None:
        """The user was purged: what was queued for them, or is being decoded, is not stored."""
        self._purged.pop((tenant_id, user_id), None)
        self._purged[(tenant_id, user_id)] = self._sequence
        while len(self._purged) > _MAX_PURGED:
            self._purged.pop(next(iter(self._purged)))

    def _purged_since(self, work: _Work) -> bool:
        context = work.probe.context
        return self._purged.get((context.tenant_id, context.user_id), 0) >= work.sequence

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name="asr-cache-revalidation")

    async def aclose(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # gather, not a suppressed await: a cancellation of the caller itself still propagates.
            await asyncio.gather(task, return_exceptions=True)

    async def _run(self) -> None:
        while True:
            work = await self._queue.get()
            if self._purged_since(work):
                self._pending.discard(work.probe.audio_key)
                self._on_outcome("purged")
                continue
            try:
                # Live finals first. The decoder signals nothing when its final queue empties, so
                # this looks again every 50 ms, and only while finals wait.
                while self._recognizer.pending_finals() > 0:  # noqa: ASYNC110
                    await asyncio.sleep(_IDLE_POLL_S)
                started = time.perf_counter()
                options = work.probe.options
                request = WindowRequest(pcm16_to_float(work.audio), options, final=True)
                # As a live final is decoded (a long utterance on the accurate tier, and so on).
                decoded, tier = await decode_final(self._recognizer, request, self._limits)
                if self._purged_since(work):
                    self._on_outcome("purged")
                    continue
                await self._cache.store(work.probe, decoded, tier, time.perf_counter() - started)
                self._on_outcome("refreshed")
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # one utterance's refresh; the worker goes on
                log.warning("refreshing a stale recognition cache entry failed: %s", type(exc).__name__)
                self._on_outcome("failed")
            finally:
                self._pending.discard(work.probe.audio_key)
