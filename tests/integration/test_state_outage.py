"""A state store that goes away mid-stream costs resumability, never the stream: a real redis-server
is stopped while a stream runs; the stream goes on, says STORE_UNAVAILABLE, and gets its finals."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from tests.conftest import serve_in_thread
from tests.helpers import jfk_pcm
from tests.redis_server import redis_server
from voxwire import AsyncClient, AudioEncoding, RecognitionConfig, Resumability, StreamUpdate
from voxwire_server.config import ServerConfig

CONFIG = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, interim_results=True)


def test_a_stream_outlives_its_state_store(tmp_path_factory: pytest.TempPathFactory) -> None:
    pcm = jfk_pcm()
    chunks = [pcm[i : i + 3200] for i in range(0, len(pcm), 3200)]
    with redis_server(tmp_path_factory.mktemp("state-redis"), policy="noeviction") as (url, redis):
        config = ServerConfig(
            listen="127.0.0.1:0", state=url, resume_secret="outage-test-secret-0123", state_timeout_ms=50
        ).validate()
        handle = serve_in_thread(config)
        try:

            async def source() -> AsyncIterator[bytes]:
                for n, chunk in enumerate(chunks):
                    if n == 40:
                        redis.kill()
                        await asyncio.to_thread(redis.wait)
                    await asyncio.sleep(0.01)
                    yield chunk

            async def run(audio: object) -> list[StreamUpdate]:
                async with AsyncClient(handle.running.target) as client:
                    return [u async for u in client.stream(audio, CONFIG)]  # type: ignore[arg-type]

            updates = asyncio.run(run(source()))
            registry = handle.running.app.runtime.telemetry.registry
            failed = registry.get_sample_value(
                "voxwire_stream_state_writes_total", {"outcome": "unavailable"}
            )
            assert failed is not None and failed >= 1
        finally:
            handle.stop()
    finals = [u.result.transcript for u in updates if u.result is not None and u.result.is_final]
    assert finals and "ask not what your country can do for you" in finals[0].lower()
    states = [u.resumability for u in updates]
    assert states[0] is Resumability.RESUMABLE
    assert states[-1] is Resumability.STORE_UNAVAILABLE
