"""Client cancel, deadline, over-capacity and shutdown mid-stream free the stream's work."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable

import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import SAMPLE_JFK
from voxwire import (
    AsyncClient,
    DeadlineExceededError,
    ResourceExhaustedError,
    UnavailableError,
    VoxwireError,
)
from voxwire_server.config import ServerConfig


async def eventually(condition: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Waits for the server thread to reach a state (it runs on another loop)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def jfk() -> str:
    return str(SAMPLE_JFK)


async def test_client_cancel_mid_utterance_frees_the_stream(server: RunningServer) -> None:
    telemetry = server.app.runtime.telemetry
    async with AsyncClient(server.target) as client:
        stream = client.stream(jfk(), realtime=True, chunk_ms=50)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            async for update in stream:
                if update.speech_event is not None:
                    assert telemetry.active_streams >= 1
                    break
    await eventually(lambda: telemetry.active_streams == 0)


async def test_task_cancellation_mid_stream_frees_the_stream(server: RunningServer) -> None:
    telemetry = server.app.runtime.telemetry
    started = asyncio.Event()
    # Resolved here, not in the task: a skip (or a failure) raised inside the task would never set
    # `started`, and the test would wait for it for ever.
    path = jfk()

    async def consume() -> None:
        async with AsyncClient(server.target) as client:
            async for update in client.stream(path, realtime=True, chunk_ms=50):
                if update.speech_event is not None:
                    started.set()

    task = asyncio.create_task(consume())
    # If the task ends before the stream started, its exception is the test's failure.
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
    if task.done():
        waiter.cancel()
        task.result()
        pytest.fail("the stream ended before its first speech event")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await eventually(lambda: telemetry.active_streams == 0)


async def test_deadline_mid_utterance(server: RunningServer) -> None:
    telemetry = server.app.runtime.telemetry
    async with AsyncClient(server.target) as client:
        with pytest.raises(DeadlineExceededError) as info:
            async for _ in client.stream(jfk(), realtime=True, chunk_ms=50, timeout_s=1.5):
                pass
        assert info.value.retryable
    await eventually(lambda: telemetry.active_streams == 0)


async def test_over_capacity_is_resource_exhausted_with_retry_info() -> None:
    handle = serve_in_thread(ServerConfig(listen="127.0.0.1:0", max_streams=1, shutdown_grace_s=0.5))
    try:
        async with AsyncClient(handle.running.target) as client:
            first = client.stream(jfk(), realtime=True, chunk_ms=50)
            async with contextlib.aclosing(first):  # type: ignore[type-var]
                await anext(first)  # the first stream holds the only slot
                with pytest.raises(ResourceExhaustedError) as info:
                    async for _ in client.stream(jfk()):
                        pass
            assert info.value.retryable
            assert info.value.retry_after_s == pytest.approx(1.0)
    finally:
        await asyncio.to_thread(handle.stop)


async def test_shutdown_mid_stream_ends_it_and_refuses_new_work() -> None:
    handle = serve_in_thread(ServerConfig(listen="127.0.0.1:0", shutdown_grace_s=0.5))
    target = handle.running.target
    async with AsyncClient(target) as client:
        stream = client.stream(jfk(), realtime=True, chunk_ms=50)
        async with contextlib.aclosing(stream):  # type: ignore[type-var]
            await anext(stream)
            stopping = asyncio.create_task(asyncio.to_thread(handle.stop))
            with pytest.raises(VoxwireError) as info:
                async for _ in stream:
                    pass
            await stopping
        assert info.value.code in ("UNAVAILABLE", "CANCELLED", "ABORTED")
        assert not handle.thread.is_alive()
        with pytest.raises(UnavailableError):
            await client.health(timeout_s=2)
