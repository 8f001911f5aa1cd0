"""BatchWorker: urgency order, batching by key, dropping abandoned work."""

from __future__ import annotations

import asyncio
import threading

import pytest

from voxwire_server.engines.batching import FINAL, PARTIAL, BatchWorker, Expired


class Recorder:
    """A batch function that can be held closed, and remembers every batch it ran."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.entered = threading.Event()

    def __call__(self, jobs: list[str]) -> list[str]:
        self.entered.set()
        self.gate.wait(timeout=30)
        self.batches.append(list(jobs))
        return [job.upper() for job in jobs]


async def test_jobs_queued_together_share_batches_and_finals_go_first() -> None:
    recorder = Recorder()
    worker: BatchWorker[str, str] = BatchWorker(
        recorder, key=lambda j: j[0], max_batch=2, max_wait_s=0.0, name="t"
    )
    try:
        blocker = asyncio.create_task(worker.submit("x0", priority=FINAL, deadline=0))
        await asyncio.to_thread(recorder.entered.wait, 30)  # the worker is busy with x0
        jobs = [
            asyncio.create_task(worker.submit("p1", priority=PARTIAL, deadline=1)),
            asyncio.create_task(worker.submit("f2", priority=FINAL, deadline=5)),
            asyncio.create_task(worker.submit("f1", priority=FINAL, deadline=2)),
            asyncio.create_task(worker.submit("p2", priority=PARTIAL, deadline=2)),
            asyncio.create_task(worker.submit("f3", priority=FINAL, deadline=9)),
        ]
        await asyncio.sleep(0)  # each task runs up to its wait on the worker
        assert worker.pending == len(jobs)
        recorder.gate.set()
        results = await asyncio.gather(blocker, *jobs)
    finally:
        recorder.gate.set()
        worker.close()
    assert results == ["X0", "P1", "F2", "F1", "P2", "F3"]
    # Finals by deadline, two at a time, then the partials.
    assert recorder.batches == [["x0"], ["f1", "f2"], ["f3"], ["p1", "p2"]]


async def test_abandoned_jobs_are_dropped_before_they_run() -> None:
    recorder = Recorder()
    worker: BatchWorker[str, str] = BatchWorker(
        recorder, key=lambda j: 0, max_batch=8, max_wait_s=0.0, name="t"
    )
    try:
        blocker = asyncio.create_task(worker.submit("first", priority=FINAL, deadline=0))
        await asyncio.to_thread(recorder.entered.wait, 30)
        gone = asyncio.create_task(worker.submit("gone", priority=FINAL, deadline=1))
        kept = asyncio.create_task(worker.submit("kept", priority=FINAL, deadline=2))
        await asyncio.sleep(0)
        assert worker.pending == 2
        gone.cancel()
        with pytest.raises(asyncio.CancelledError):
            await gone
        recorder.gate.set()
        assert await kept == "KEPT"
        await blocker
    finally:
        recorder.gate.set()
        worker.close()
    assert recorder.batches == [["first"], ["kept"]]
    assert worker.jobs_dropped == 1


async def test_a_failing_batch_fails_its_jobs_only() -> None:
    def run(jobs: list[str]) -> list[str]:
        if "bad" in jobs:
            raise ValueError("boom")
        return jobs

    worker: BatchWorker[str, str] = BatchWorker(run, key=lambda j: j, max_batch=4, max_wait_s=0.0, name="t")
    try:
        with pytest.raises(ValueError, match="boom"):
            await worker.submit("bad", priority=FINAL, deadline=0)
        assert await worker.submit("good", priority=FINAL, deadline=0) == "good"
    finally:
        worker.close()


async def test_stale_partials_expire_instead_of_running_and_partial_batches_are_smaller() -> None:
    recorder = Recorder()
    worker: BatchWorker[str, str] = BatchWorker(
        recorder, key=lambda j: 0, max_batch=4, max_partial_batch=2, max_wait_s=0.0, name="t"
    )
    try:
        blocker = asyncio.create_task(worker.submit("first", priority=FINAL, deadline=0))
        await asyncio.to_thread(recorder.entered.wait, 30)
        stale = asyncio.create_task(worker.submit("stale", priority=PARTIAL, deadline=0.0, expires=True))
        fresh = [
            asyncio.create_task(worker.submit(f"p{i}", priority=PARTIAL, deadline=1e12, expires=True))
            for i in range(3)
        ]
        await asyncio.sleep(0)
        recorder.gate.set()
        with pytest.raises(Expired):
            await stale
        assert await asyncio.gather(*fresh) == ["P0", "P1", "P2"]
        await blocker
    finally:
        recorder.gate.set()
        worker.close()
    assert recorder.batches == [["first"], ["p0", "p1"], ["p2"]]
    assert worker.jobs_expired == 1


async def test_finals_do_not_share_a_batch_with_partials() -> None:
    recorder = Recorder()
    worker: BatchWorker[str, str] = BatchWorker(
        recorder, key=lambda j: 0, max_batch=8, max_wait_s=0.0, name="t"
    )
    try:
        blocker = asyncio.create_task(worker.submit("first", priority=FINAL, deadline=0))
        await asyncio.to_thread(recorder.entered.wait, 30)
        jobs = [
            asyncio.create_task(worker.submit("partial-a", priority=PARTIAL, deadline=0)),
            asyncio.create_task(worker.submit("final", priority=FINAL, deadline=5)),
            asyncio.create_task(worker.submit("partial-b", priority=PARTIAL, deadline=1)),
        ]
        await asyncio.sleep(0)
        recorder.gate.set()
        await asyncio.gather(blocker, *jobs)
    finally:
        recorder.gate.set()
        worker.close()
    assert recorder.batches == [["first"], ["final"], ["partial-a", "partial-b"]]


class Gates:
    """A batch function whose calls each wait for their own gate: several workers can be held at once."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: list[list[str]] = []
        self.started = threading.Semaphore(0)
        self.release: dict[str, threading.Event] = {}

    def gate(self, job: str) -> threading.Event:
        with self.lock:
            return self.release.setdefault(job, threading.Event())

    def __call__(self, jobs: list[str]) -> list[str]:
        with self.lock:
            self.running.append(list(jobs))
        self.started.release()
        self.gate(jobs[0]).wait(timeout=30)
        return [job.upper() for job in jobs]


async def test_workers_run_batches_side_by_side() -> None:
    gates = Gates()
    worker: BatchWorker[str, str] = BatchWorker(
        gates, key=lambda j: j, max_batch=4, max_wait_s=0.0, name="t", workers=2
    )
    try:
        a = asyncio.create_task(worker.submit("a", priority=FINAL, deadline=0))
        b = asyncio.create_task(worker.submit("b", priority=FINAL, deadline=1))
        for _ in range(2):  # both start before either is released
            assert await asyncio.to_thread(gates.started.acquire, True, 30)
        assert sorted(map(tuple, gates.running)) == [("a",), ("b",)]
        gates.gate("b").set()
        assert await b == "B"
        gates.gate("a").set()
        assert await a == "A"
    finally:
        for job in ("a", "b"):
            gates.gate(job).set()
        worker.close()
    assert worker.workers == 2


async def test_with_two_workers_one_stays_free_of_partials_for_finals() -> None:
    gates = Gates()
    worker: BatchWorker[str, str] = BatchWorker(
        gates, key=lambda j: j, max_batch=4, max_wait_s=0.0, name="t", workers=2
    )
    try:
        p1 = asyncio.create_task(worker.submit("p1", priority=PARTIAL, deadline=0))
        assert await asyncio.to_thread(gates.started.acquire, True, 30)
        # A second partial must wait although a worker is idle: that worker is kept for finals.
        p2 = asyncio.create_task(worker.submit("p2", priority=PARTIAL, deadline=1))
        final = asyncio.create_task(worker.submit("f", priority=FINAL, deadline=2))
        assert await asyncio.to_thread(gates.started.acquire, True, 30)
        assert gates.running == [["p1"], ["f"]]
        gates.gate("f").set()
        assert await final == "F"
        assert not p2.done()
        gates.gate("p1").set()
        assert await p1 == "P1"
        gates.gate("p2").set()
        assert await p2 == "P2"
    finally:
        for job in ("p1", "p2", "f"):
            gates.gate(job).set()
        worker.close()
    assert gates.running == [["p1"], ["f"], ["p2"]]
