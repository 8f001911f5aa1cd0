"""Admission and load shedding under a paced overload, stream limits end to end, and a short client
stall outlasted: real servers on 127.0.0.1 with small limits, driven through the client library."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import ROOT, jfk_pcm
from voxwire import (
    AsyncClient,
    AudioEncoding,
    Client,
    OutOfRangeError,
    RecognitionConfig,
    ResourceExhaustedError,
    StreamUpdate,
    UtteranceEnd,
)
from voxwire_server.config import ServerConfig

PCM = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)
CHUNK_BYTES = 3200  # 100 ms


def finals(updates: list[StreamUpdate]) -> list[str]:
    return [u.result.alternatives[0].transcript for u in updates if u.result and u.result.is_final]


# --- stream limits -------------------------------------------------------------------------------

IDLE_S = 1.0
MAX_STREAM_S = 6.0


@pytest.fixture(scope="module")
def limited() -> Iterator[RunningServer]:
    config = ServerConfig(
        listen="127.0.0.1:0", stream_idle_timeout_s=IDLE_S, max_stream_s=MAX_STREAM_S, shutdown_grace_s=0.5
    )
    handle = serve_in_thread(config)
    yield handle.running
    handle.stop()


async def speech_then(stall: asyncio.Event | None, seconds: float) -> AsyncIterator[bytes]:
    """The first `seconds` of jfk in real time, then (with `stall`) nothing until it is set."""
    data = jfk_pcm()[: int(seconds * 32000)]
    loop = asyncio.get_running_loop()
    start = loop.time()
    for i, offset in enumerate(range(0, len(data), CHUNK_BYTES)):
        # Pacing the audio, as a microphone would: the server's limits are what the test checks.
        await asyncio.sleep(max(0.0, start + i * 0.1 - loop.time()))
        yield data[offset : offset + CHUNK_BYTES]
    if stall is not None:
        await stall.wait()


async def collect(client: AsyncClient, source: AsyncIterator[bytes]) -> tuple[list[StreamUpdate], Exception]:
    updates: list[StreamUpdate] = []
    with pytest.raises(Exception) as info:
        async for update in client.stream(source, PCM, timeout_s=60):
            updates.append(update)
    assert isinstance(info.value, Exception)
    return updates, info.value


async def test_an_idle_stream_is_out_of_range_and_keeps_its_finals(limited: RunningServer) -> None:
    stall = asyncio.Event()
    async with AsyncClient(limited.target) as client:
        updates, error = await collect(client, speech_then(stall, 4.5))
    stall.set()
    assert isinstance(error, OutOfRangeError), error
    assert not error.retryable
    assert "no audio for 1 s" in error.details and "idle timeout is 1 s" in error.details
    # The utterance under way when the client went quiet was decoded and delivered before the error.
    assert any("americans" in text.lower() for text in finals(updates)), finals(updates)
    last = [u.result for u in updates if u.result is not None and u.result.is_final][-1]
    assert last.end is UtteranceEnd.STREAM_LIMIT
    assert limited.app.runtime.telemetry.stream_limits.labels("idle")._value.get() >= 1


async def test_a_stream_past_its_maximum_duration_is_out_of_range(limited: RunningServer) -> None:
    async with AsyncClient(limited.target) as client:
        # Audio for longer than the limit, without pauses long enough to be idle.
        updates, error = await collect(client, speech_then(None, 11.0))
    assert isinstance(error, OutOfRangeError), error
    assert "maximum duration of 6 s (wall clock)" in error.details
    assert finals(updates), "the finals of the audio received are delivered"


def test_a_client_frozen_for_a_few_seconds_keeps_its_stream(server: RunningServer) -> None:
    # A separate process, so that SIGSTOP freezes the client's gRPC threads too: the server's HTTP/2
    # pings go unanswered for 3 s, more than the 2 s stall a stream must outlast.
    script = (
        "import time\n"
        "from voxwire import Client, RecognitionConfig, AudioEncoding\n"
        "cfg = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)\n"
        "def audio():\n"
        "    for i in range(250):\n"
        "        if i == 10:\n"
        "            print('streaming', flush=True)\n"
        "        time.sleep(0.02)\n"
        "        yield b'\\0\\0' * 320\n"
        f"with Client({server.target!r}) as c:\n"
        "    for u in c.stream(audio(), cfg):\n"
        "        pass\n"
        "print('completed', flush=True)\n"
    )
    child = subprocess.Popen(
        [sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout is not None
        assert child.stdout.readline().strip() == "streaming"
        os.kill(child.pid, signal.SIGSTOP)
        with contextlib.suppress(subprocess.TimeoutExpired):
            child.wait(timeout=3.0)  # the freeze itself, not a synchronisation
        os.kill(child.pid, signal.SIGCONT)
        out, err = child.communicate(timeout=60)
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert child.returncode == 0, err
    assert "completed" in out, err


# --- a paced overload ----------------------------------------------------------------------------

STREAMS = 24


@pytest.fixture(scope="module")
def slow() -> Iterator[RunningServer]:
    # One worker, no batching and 30 s windows: a decoder this slow falls behind within a dozen
    # real-time streams on any machine (a final takes 0.15-1.5 s). The admission threshold lets in at
    # least two streams, whose partials are then shed (each waits behind the other's final), and
    # refuses some of the 24 that arrive within the first utterance.
    config = ServerConfig(
        listen="127.0.0.1:0",
        asr_workers=1,
        max_batch=1,
        asr_min_window_s=30.0,
        escalation_confidence=0.0,
        admission_max_delay_s=2.0,
        shed_partials_delay_s=0.05,
        shed_escalation_delay_s=0.1,
        admission_ramp_per_s=0.0,
        shutdown_grace_s=0.5,
    )
    handle = serve_in_thread(config)
    yield handle.running
    handle.stop()


async def test_a_paced_overload_is_shed_then_refused_while_admitted_streams_finish(
    slow: RunningServer,
) -> None:
    audio = jfk_pcm()
    config = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, interim_results=True, tenant_id="load"
    )

    async def one(client: AsyncClient) -> list[StreamUpdate] | ResourceExhaustedError:
        updates: list[StreamUpdate] = []
        try:
            async for update in client.stream(audio, config, realtime=True, chunk_ms=100, timeout_s=120):
                updates.append(update)
        except ResourceExhaustedError as exc:
            assert not updates, "a refusal comes before any result"
            return exc
        return updates

    async with AsyncClient(slow.target) as client:
        tasks = []
        for _ in range(STREAMS):
            tasks.append(asyncio.create_task(one(client)))
            await asyncio.sleep(0.3)  # arrivals paced: a new stream every 0.3 s
        outcomes = await asyncio.gather(*tasks)

    refused = [o for o in outcomes if isinstance(o, ResourceExhaustedError)]
    accepted = [o for o in outcomes if not isinstance(o, ResourceExhaustedError)]
    assert refused, "an overloaded decoder must refuse new streams"
    assert accepted, "streams admitted before the overload are served"
    for error in refused:
        assert error.retryable and error.retry_after_s is not None and error.retry_after_s > 0
        assert "behind" in error.details
    # Every admitted stream got its finals: nothing admitted was dropped to make room.
    for updates in accepted:
        assert any("country" in text.lower() for text in finals(updates)), finals(updates)
    runtime = slow.app.runtime
    assert runtime.streams.refused.get("delay", 0) == len(refused)
    assert runtime.streams.shed.get("partial", 0) > 0, "partials are shed before streams are refused"
    telemetry = runtime.telemetry
    assert telemetry.admission_refused.labels("stream", "delay")._value.get() == len(refused)
    assert telemetry.asr_shed.labels("partial")._value.get() > 0
    assert runtime.streams.active == 0


def test_a_refused_synthesize_is_resource_exhausted_with_a_retry_delay() -> None:
    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0", synthesize_rate_per_s=0.01, synthesize_burst=1, shutdown_grace_s=0.5
        )
    )
    try:
        with Client(handle.running.target, timeout_s=60) as client:
            client.synthesize("Hello there.", tenant_id="t1")
            with pytest.raises(ResourceExhaustedError) as info:
                client.synthesize("Hello again.", tenant_id="t1")
            assert info.value.retry_after_s is not None and info.value.retry_after_s > 1
            assert "rate limit" in info.value.details
            # Another tenant has its own bucket.
            client.synthesize("Hello there.", tenant_id="t2")
    finally:
        handle.stop()
