"""Failover for real: HAProxy in front of two voxwire-server processes sharing one Redis (state only,
noeviction). 20 streams of real speech, paced in real time, lose their replica mid-utterance three
ways: kill -9, SIGTERM (the drain) and their client connections reset. Every client resumes through
the same address and gets the finals of an uninterrupted run: no stream lost, no word missing or
twice."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pytest

from tests.helpers import DATA_DIR, jfk_pcm
from tests.redis_server import redis_server
from tests.replicas import HaProxy, Replica, haproxy_binary
from tests.tcp_proxy import TcpProxy
from voxwire import AsyncClient, AudioEncoding, RecognitionConfig, StreamUpdate, VoxwireError

STREAMS = 20
# Into the streams when the replica goes: every clip is longer, so every stream is mid-speech.
FAIL_AT_S = 2.5
RESUMED = "voxwire_stream_resumes_total"

Finals = list[tuple[int, str, int, int]]


@dataclass
class Cluster:
    replicas: list[Replica]
    balancer: HaProxy

    @property
    def serving(self) -> Replica:
        return self.replicas[0]

    @property
    def standby(self) -> Replica:
        return self.replicas[1]


def _engines() -> list[object]:
    torch_missing = importlib.util.find_spec("torch") is None
    skip = pytest.mark.skip(reason="the torch engine needs PyTorch (pip install 'voxwire[torch]')")
    return ["ctranslate2", pytest.param("torch", marks=[skip] if torch_missing else [])]


# Both decoder engines: the torch engine's streams carry its decoder search in their state.
@pytest.fixture(scope="module", params=_engines())
def cluster(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    haproxy_binary()
    logs = tmp_path_factory.mktemp("failover")
    with redis_server(logs, policy="noeviction") as (url, _):
        args = [
            "--state", url,
            "--resume-secret", "failover-test-secret-shared",
            "--cache", "off",
            "--log-level", "WARNING",
            "--drain-notice-s", "0.5",
            "--shutdown-grace-s", "30",
            # All 20 streams are admitted however loaded the machine is: this tests failover.
            "--admission-max-delay-s", "60",
            "--admission-ramp-per-s", "0",
            # The tier of a final must not depend on the load at the moment it is decoded, or an
            # interrupted run could differ from the reference for that reason alone.
            "--accurate-min-utterance-s", "0",
            "--escalation-confidence", "0",
            "--asr-engine", request.param,
        ]  # fmt: skip
        replicas = [Replica("r1", args, logs), Replica("r2", args, logs)]
        balancer: HaProxy | None = None
        try:
            for replica in replicas:
                replica.start()
            balancer = HaProxy(replicas, logs)
            for replica in replicas:
                balancer.wait_until(replica.name, "UP")
            yield Cluster(replicas, balancer)
        finally:
            if balancer is not None:
                balancer.stop()
            for replica in replicas:
                replica.stop()


def _sources() -> list[tuple[object, RecognitionConfig]]:
    """20 clips of 4-9 s from speech-dev (read sentences of several speakers); without the data set,
    jfk (public domain, in the repository) 20 times."""
    manifest = DATA_DIR / "manifest.jsonl"
    if manifest.is_file():
        rows = [json.loads(line) for line in manifest.read_text().splitlines()]
        chosen = sorted((r for r in rows if 4 <= r["duration_s"] <= 9), key=lambda r: r["id"])[:STREAMS]
        assert len(chosen) == STREAMS
        return [(DATA_DIR / r["audio"], RecognitionConfig()) for r in chosen]
    if os.environ.get("VOXWIRE_REQUIRE_DATA") == "1":
        pytest.fail(f"speech-dev data not found at {DATA_DIR} and VOXWIRE_REQUIRE_DATA=1")
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)
    return [(jfk_pcm(), config)] * STREAMS


async def _stream(address: str, source: object, config: RecognitionConfig) -> Finals:
    finals: Finals = []
    last: StreamUpdate | None = None
    async with AsyncClient(address) as client:
        updates = client.stream(source, config, realtime=True, resume_attempts=8)  # type: ignore[arg-type]
        try:
            async for u in updates:
                last = u
                if u.result is not None and u.result.is_final:
                    r = u.result
                    finals.append((r.utterance_index, r.transcript, r.audio_start_ms, r.audio_end_ms))
        except VoxwireError as exc:
            said = "nothing" if last is None else f"{last.resumability}, token {bool(last.resume_token)}"
            raise AssertionError(f"the stream of {source} failed; its last update said {said}") from exc
    return finals


def _run(address: str, fail: Callable[[], object] | None = None) -> list[Finals]:
    async def run() -> list[Finals]:
        streams = [asyncio.create_task(_stream(address, s, c)) for s, c in _sources()]
        if fail is not None:
            await asyncio.sleep(FAIL_AT_S)
            await asyncio.to_thread(fail)
        return await asyncio.gather(*streams)

    return asyncio.run(run())


@pytest.fixture(scope="module")
def reference(cluster: Cluster) -> list[Finals]:
    finals = _run(cluster.balancer.address)
    assert all(finals), "every stream must have finals"
    return finals


def _check(got: list[Finals], reference: list[Finals]) -> None:
    assert len(got) == len(reference) == STREAMS
    for n, (a, b) in enumerate(zip(got, reference, strict=True)):
        assert a == b, f"stream {n}: {a} != {b}"


def test_a_dropped_client_connection(cluster: Cluster, reference: list[Finals]) -> None:
    proxy = TcpProxy(cluster.balancer.address)
    try:
        before = cluster.serving.counter(RESUMED, outcome="resumed")
        got = _run(proxy.address, proxy.cut)
        # gRPC shares one connection between the clients of one process: that one is reset.
        assert proxy.cuts >= 1
        # Resumed where they were: the replica is still up.
        assert cluster.serving.counter(RESUMED, outcome="resumed") - before >= STREAMS
    finally:
        proxy.close()
    _check(got, reference)


def _resumed_on_standby(cluster: Cluster, fail: Callable[[], None]) -> list[Finals]:
    before = cluster.standby.counter(RESUMED, outcome="resumed")
    got = _run(cluster.balancer.address, fail)
    assert cluster.standby.counter(RESUMED, outcome="resumed") - before >= STREAMS
    cluster.serving.start()
    cluster.balancer.wait_until(cluster.serving.name, "UP")
    return got


def test_a_clean_restart_sigterm(cluster: Cluster, reference: list[Finals]) -> None:
    _check(_resumed_on_standby(cluster, cluster.serving.terminate), reference)


def test_kill_9_of_the_serving_replica(cluster: Cluster, reference: list[Finals]) -> None:
    _check(_resumed_on_standby(cluster, cluster.serving.kill), reference)
