"""SIGTERM under load: a real voxwire-server process is drained while streams are open. No final is
lost: streams that had ended their audio get every final and end OK; streams still speaking get a
final for what was heard, marked as cut by the shutdown, then UNAVAILABLE (reconnect elsewhere).
While it drains the port stays open: health says NOT_SERVING and new calls are UNAVAILABLE."""

from __future__ import annotations

import asyncio
import re
import select
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import SAMPLE_JFK
from voxwire import (
    AsyncClient,
    RecognitionConfig,
    SpeechEventType,
    StreamUpdate,
    UnavailableError,
    UtteranceEnd,
    VoxwireError,
)

START_TIMEOUT_S = 120.0


@pytest.fixture
def server_process() -> Iterator[tuple[subprocess.Popen[str], str]]:
    command = [
        str(Path(sys.executable).parent / "voxwire-server"),
        "--listen", "127.0.0.1:0",
        "--shutdown-grace-s", "20",
        "--drain-notice-s", "1",
        "--log-level", "WARNING",
        # Six streams must all be admitted however loaded the machine is: this tests the drain.
        "--admission-max-delay-s", "30",
        "--admission-ramp-per-s", "0",
    ]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    found = re.search(r"listening on (127\.0\.0\.1:\d+)", proc.stdout.readline()) if ready else None
    if found is None:
        proc.kill()
        proc.wait()
        pytest.fail("voxwire-server did not start")
    try:
        yield proc, found.group(1)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=30)


async def _run_stream(
    client: AsyncClient, *, paced: bool, started: asyncio.Event
) -> tuple[list[StreamUpdate], BaseException | None]:
    """Streams jfk (paced: in real time); `started` is set when speech starts (paced: it is then
    mid-speech) or when its utterance ends (unpaced: the server has read its end_of_audio, and its
    final is being decoded)."""
    wanted = SpeechEventType.SPEECH_STARTED if paced else SpeechEventType.END_OF_UTTERANCE
    updates: list[StreamUpdate] = []
    try:
        # Paced streams ask for partials: their shedding checks run while the server drains.
        config = RecognitionConfig(interim_results=paced)
        async for update in client.stream(str(SAMPLE_JFK), config, realtime=paced, chunk_ms=100):
            updates.append(update)
            if update.speech_event is not None and update.speech_event.type is wanted:
                started.set()
    except VoxwireError as exc:
        return updates, exc
    finally:
        started.set()
    return updates, None


def _finals(updates: list[StreamUpdate]) -> list[tuple[str, UtteranceEnd]]:
    return [
        (u.result.transcript, u.result.end) for u in updates if u.result is not None and u.result.is_final
    ]


async def _wait_serving(client: AsyncClient) -> None:
    for _ in range(int(START_TIMEOUT_S / 0.2)):
        try:
            if await client.health(timeout_s=2) == "SERVING":
                return
        except UnavailableError:
            pass
        await asyncio.sleep(0.2)  # polling a server that is loading its models
    pytest.fail("the server never became SERVING")


async def test_sigterm_under_load_loses_no_final(server_process: tuple[subprocess.Popen[str], str]) -> None:
    proc, target = server_process
    async with AsyncClient(target, timeout_s=30) as client:
        await _wait_serving(client)
        speaking_started = [asyncio.Event() for _ in range(3)]
        speaking = [asyncio.create_task(_run_stream(client, paced=True, started=e)) for e in speaking_started]
        for event in speaking_started:
            await event.wait()
        await asyncio.sleep(2.0)  # two more seconds of speech on the paced streams ("and so my fellow")
        finished_started = [asyncio.Event() for _ in range(3)]
        finished = [
            asyncio.create_task(_run_stream(client, paced=False, started=e)) for e in finished_started
        ]
        for event in finished_started:
            await event.wait()
        proc.send_signal(signal.SIGTERM)  # while those three finals are being decoded

        # The port stays open while it drains: health and new calls answer, they are not refused.
        async with AsyncClient(target, timeout_s=5) as late:
            assert await late.health() == "NOT_SERVING"
            with pytest.raises(UnavailableError):
                await late.synthesize("Too late.")

        for task in finished:
            updates, error = await task
            assert error is None, error
            text = " ".join(t for t, _ in _finals(updates)).lower()
            assert "fellow americans" in text and "your country" in text, text
            assert _finals(updates)[-1][1] is UtteranceEnd.END_OF_AUDIO
        for task in speaking:
            updates, error = await task
            assert isinstance(error, UnavailableError), (error, _finals(updates))
            finals = _finals(updates)
            assert finals, "a stream cut by the shutdown got no final for what it had said"
            assert finals[-1][1] is UtteranceEnd.SHUTDOWN
            assert " ".join(t for t, _ in finals).lower().startswith("and so"), finals
    assert proc.wait(timeout=30) == 0
