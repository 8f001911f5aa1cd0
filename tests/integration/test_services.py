"""Health, reflection, stats and cache administration on a real server."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from tests.conftest import RunningServer
from tests.helpers import speech_clips
from voxwire import AudioEncoding, Client, InvalidArgumentError

SERVICES = {
    "voxwire.v1.Recognizer",
    "voxwire.v1.Synthesizer",
    "voxwire.v1.CacheAdmin",
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
}


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=30) as c:
        yield c


def test_health_is_serving_for_the_server_and_each_service(client: Client) -> None:
    assert client.health() == "SERVING"
    for name in ("voxwire.v1.Recognizer", "voxwire.v1.Synthesizer", "voxwire.v1.CacheAdmin"):
        assert client.health(name) == "SERVING"
    assert client.health("no.such.Service") == "SERVICE_UNKNOWN"


def test_reflection_lists_the_services(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        (response,) = list(stub.ServerReflectionInfo(iter([request]), timeout=10))
        names = {s.name for s in response.list_services_response.service}
        assert names == SERVICES
        file_request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="voxwire.v1.Recognizer")
        (described,) = list(stub.ServerReflectionInfo(iter([file_request]), timeout=10))
        assert described.file_descriptor_response.file_descriptor_proto


def test_stats_count_requests(client: Client) -> None:
    before = client.stats()
    (clip,) = speech_clips(["voice2json_what_time_is_it"])
    client.recognize(str(clip.path))
    list(client.stream(str(clip.path)))
    client.synthesize("Okay.")
    after = client.stats()
    assert after.recognize_requests == before.recognize_requests + 1
    assert after.streaming_requests == before.streaming_requests + 1
    assert after.synthesize_requests == before.synthesize_requests + 1
    assert after.active_streams == 0
    assert after.uptime_s > before.uptime_s
    assert "tiny.en" in after.asr_model
    assert after.tts_model.startswith("hibari")
    synthesis = {t.tier for t in after.tiers if t.tier.startswith("tts.")}
    assert synthesis == {
        "tts.phrase.global",
        "tts.phrase.personal",
        "tts.prefix.global",
        "tts.prefix.personal",
    }
    # The recognition tiers on by default, with this (anonymous) tenant's counters.
    anonymous = {t.tier for t in after.tiers if t.tier.startswith("asr.") and t.tenant_id == ""}
    assert anonymous == {"asr.correction", "asr.exact", "asr.negative"}
    assert len(after.asr_model_version) == 16


def test_a_correction_of_silence_is_invalid(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="silent"):
        client.submit_correction(
            b"\x00" * 3200, "hello", encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000
        )
