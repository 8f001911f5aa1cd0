"""Worker threads that run jobs in batches, most urgent first, and drop jobs nobody awaits."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from voxwire_server.engines.base import DecoderLoad, PartialSkipped

log = logging.getLogger(__name__)

J = TypeVar("J")
R = TypeVar("R")

# Priorities: lower runs first.
FINAL = 0
PARTIAL = 1
# Weight of the latest batch in the moving average of service time per job: about the last 10
# batches count, so the average follows a change of load within seconds.
SERVICE_EWMA_WEIGHT = 0.2


class Expired(PartialSkipped):
    """The job's deadline passed before the worker reached it, and the job said it can be skipped."""


@dataclass(order=True)
class _Entry(Generic[J, R]):
    priority: int
    deadline: float
    seq: int
    job: J = field(compare=False)
    future: asyncio.Future[R] = field(compare=False)
    loop: asyncio.AbstractEventLoop = field(compare=False)
    kind: Hashable = field(default=None, compare=False)
    expires: bool = field(default=False, compare=False)
    abandoned: bool = field(default=False, compare=False)
    queued_at: float = field(default=0.0, compare=False)
    submitted: float = field(default=0.0, compare=False)


def _resolve(future: asyncio.Future[R], result: R | BaseException) -> None:
    if future.done():
        return
    if isinstance(result, BaseException):
        future.set_exception(result)
    else:
        future.set_result(result)


class BatchWorker(Generic[J, R]):
    """Jobs with the same ``key`` and priority share batches (a final is never slowed down by partials
    batched with it). The worker takes the most urgent job (priority, then earliest deadline), waits
    up to ``max_wait_s`` for up to ``max_batch - 1`` more of its kind, and runs them together.
    Batches of PARTIAL jobs hold at most ``max_partial_batch``, so a final arriving meanwhile waits
    little. A job whose awaiting task was cancelled is skipped if it has not started, and so is a job
    submitted with ``expires=True`` whose deadline has passed (it fails with :class:`Expired`): under
    overload, stale partials give way instead of piling up. ``workers`` threads take batches from the
    same queue, each the most urgent work left, so ``run_batch`` must be safe to call concurrently. With
    more than one worker, at most ``workers - 1`` of them run partials at a time: a final never waits
    behind partials for a worker."""

    def __init__(
        self,
        run_batch: Callable[[list[J]], list[R]],
        *,
        key: Callable[[J], Hashable],
        max_batch: int,
        max_wait_s: float,
        name: str,
        max_partial_batch: int | None = None,
        workers: int = 1,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        self._run_batch = run_batch
        self._key = key
        self._max_batch = max_batch
        self._max_partial_batch = max_batch if max_partial_batch is None else max_partial_batch
        self._max_wait_s = max_wait_s
        self._heap: list[_Entry[J, R]] = []
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._closed = False
        self.batches_run = 0
        self.jobs_run = 0
        self.jobs_dropped = 0
        self.jobs_expired = 0
        # Called on the worker thread as a batch starts, with its priority and how long each of its
        # jobs waited since submit (metrics.Telemetry.watch_decoder); it must be quick and not raise.
        self.on_batch: Callable[[int, list[float]], None] | None = None
        self._max_partial_running = max(1, workers - 1)
        self._partial_running = 0
        # Jobs being run, and the moving average of seconds per job, by priority.
        self._running: dict[int, int] = {}
        self._service_s: dict[int, float] = {}
        self._threads = [
            threading.Thread(target=self._loop, name=f"{name}-{i}" if workers > 1 else name, daemon=True)
            for i in range(workers)
        ]
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        return len(self._threads)

    @property
    def pending(self) -> int:
        with self._cond:
            return sum(not e.abandoned for e in self._heap)

    def pending_at(self, priority: int) -> int:
        with self._cond:
            return sum(not e.abandoned and e.priority == priority for e in self._heap)

    def load(self) -> DecoderLoad:
        """The queue's state for admission and load shedding (one pass over the queue)."""
        with self._cond:
            now = time.monotonic()
            waiting = {FINAL: 0, PARTIAL: 0}
            oldest = now
            for e in self._heap:
                if e.abandoned:
                    continue
                waiting[PARTIAL if e.priority == PARTIAL else FINAL] += 1
                if e.priority != PARTIAL:
                    oldest = min(oldest, e.queued_at)
            return DecoderLoad(
                workers=len(self._threads),
                waiting_finals=waiting[FINAL],
                waiting_partials=waiting[PARTIAL],
                running_finals=sum(n for p, n in self._running.items() if p != PARTIAL),
                running_partials=self._running.get(PARTIAL, 0),
                final_service_s=self._service_s.get(FINAL, 0.0),
                partial_service_s=self._service_s.get(PARTIAL, 0.0),
                oldest_final_wait_s=now - oldest,
            )

    def seed_service_s(self, seconds: float) -> None:
        """A first service time per job (measured at warm-up), until jobs of each kind have run."""
        with self._cond:
            for priority in (FINAL, PARTIAL):
                self._service_s.setdefault(priority, seconds)

    async def submit(self, job: J, *, priority: int, deadline: float, expires: bool = False) -> R:
        """``deadline`` is a time.monotonic() value."""
        loop = asyncio.get_running_loop()
        entry: _Entry[J, R] = _Entry(
            priority, deadline, next(self._seq), job, loop.create_future(), loop, self._key(job), expires
        )
        entry.queued_at = time.monotonic()
        entry.submitted = time.monotonic()
        with self._cond:
            if self._closed:
                raise RuntimeError("the worker is closed")
            heapq.heappush(self._heap, entry)
            self._cond.notify_all()
        try:
            return await entry.future
        except asyncio.CancelledError:
            entry.abandoned = True
            raise

    def close(self) -> None:
        with self._cond:
            self._closed = True
            for entry in self._heap:
                if not entry.loop.is_closed():
                    entry.loop.call_soon_threadsafe(entry.future.cancel)
            self._heap.clear()
            self._cond.notify_all()
        for thread in self._threads:
            thread.join(timeout=30)

    def _take_batch(self) -> list[_Entry[J, R]] | None:
        with self._cond:
            while True:
                top = self._most_urgent()
                if top is None:
                    return None
                kind, priority = top.kind, top.priority
                limit = self._max_partial_batch if priority == PARTIAL else self._max_batch
                give_up_at = time.monotonic() + self._max_wait_s
                while self._count(kind, priority) < limit and not self._closed:
                    remaining = give_up_at - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                # Another worker may have started partials while this one waited for the batch to fill.
                if priority == PARTIAL and self._partial_running >= self._max_partial_running:
                    continue
                batch = self._pop(kind, priority, limit)
                if batch and priority == PARTIAL:
                    self._partial_running += 1
                if batch:
                    self._running[priority] = self._running.get(priority, 0) + len(batch)
                return batch

    def _most_urgent(self) -> _Entry[J, R] | None:
        """Waits for a job this worker may start; None once closed."""
        while True:
            while self._heap and self._heap[0].abandoned:
                heapq.heappop(self._heap)
                self.jobs_dropped += 1
            if self._closed:
                return None
            # Finals sort first: a partial on top means no final is waiting.
            if self._heap and (
                self._heap[0].priority != PARTIAL or self._partial_running < self._max_partial_running
            ):
                return self._heap[0]
            self._cond.wait()

    def _pop(self, kind: Hashable, priority: int, limit: int) -> list[_Entry[J, R]]:
        batch: list[_Entry[J, R]] = []
        rest: list[_Entry[J, R]] = []
        now = time.monotonic()
        while self._heap and len(batch) < limit:
            entry = heapq.heappop(self._heap)
            if entry.abandoned:
                self.jobs_dropped += 1
            elif entry.expires and entry.deadline < now:
                self.jobs_expired += 1
                entry.loop.call_soon_threadsafe(_resolve, entry.future, Expired())
            elif entry.kind == kind and entry.priority == priority:
                batch.append(entry)
            else:
                rest.append(entry)
        for entry in rest:
            heapq.heappush(self._heap, entry)
        return batch

    def _count(self, kind: Hashable, priority: int) -> int:
        return sum(1 for e in self._heap if not e.abandoned and e.kind == kind and e.priority == priority)

    def _loop(self) -> None:
        while (batch := self._take_batch()) is not None:
            if not batch:
                continue
            if self.on_batch is not None:
                started = time.monotonic()
                try:
                    self.on_batch(batch[0].priority, [started - e.submitted for e in batch])
                except Exception:  # a metrics hook must never stop a decoder worker
                    log.exception("the batch hook failed")
            started = time.monotonic()
            try:
                results: list[R | BaseException] = list(self._run_batch([e.job for e in batch]))
            except Exception as exc:
                results = [exc] * len(batch)
            per_job_s = (time.monotonic() - started) / len(batch)
            with self._cond:
                priority = batch[0].priority
                self._running[priority] -= len(batch)
                last = self._service_s.get(priority)
                self._service_s[priority] = (
                    per_job_s if last is None else last + SERVICE_EWMA_WEIGHT * (per_job_s - last)
                )
                self.batches_run += 1
                self.jobs_run += len(batch)
                if batch[0].priority == PARTIAL:
                    self._partial_running -= 1
                    self._cond.notify_all()
            for entry, result in zip(batch, results, strict=True):
                entry.loop.call_soon_threadsafe(_resolve, entry.future, result)
