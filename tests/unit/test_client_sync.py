"""Client (blocking) against small fake servicers on an in-process grpc server (127.0.0.1:0).

The fakes only emulate the wire contract (request order, status codes); they recognise nothing.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from voxwire import (
    AudioEncoding,
    Client,
    InvalidArgumentError,
    NotFoundError,
    RecognitionConfig,
    SpeechEventType,
    SynthesisCacheStatus,
    UnavailableError,
)
from voxwire.audio import write_wav
from voxwire.v1 import (
    cache_admin_pb2,
    cache_admin_pb2_grpc,
    common_pb2,
    recognizer_pb2,
    recognizer_pb2_grpc,
    synthesizer_pb2,
    synthesizer_pb2_grpc,
)

PCM16K = b"".join(i.to_bytes(2, "little") for i in range(5600))  # 0.35 s of 16 kHz mono
LINEAR16_16K = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000)
WAIT_S = 10  # an upper bound for events that should happen at once, so a bug fails instead of hanging


@dataclass
class FakeRecognizer(recognizer_pb2_grpc.RecognizerServicer):
    mode: str = "echo"
    recognize_requests: list[Any] = field(default_factory=list)
    stream_requests: list[Any] = field(default_factory=list)
    stream_abandoned: threading.Event = field(default_factory=threading.Event)
    audio_seen: threading.Event = field(default_factory=threading.Event)

    def Recognize(self, request: Any, context: Any) -> Any:
        self.recognize_requests.append(request)
        if self.mode == "unknown-model":
            context.abort(grpc.StatusCode.NOT_FOUND, "no model for language 'xx'")
        result = recognizer_pb2.RecognitionResult(
            alternatives=[recognizer_pb2.SpeechRecognitionAlternative(transcript="hello")], is_final=True
        )
        return recognizer_pb2.RecognizeResponse(results=[result], audio_duration_ms=350)

    def StreamingRecognize(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        # A speech event after the config, a partial per audio chunk, a final on end_of_audio.
        context.add_callback(self._ended)
        chunks = 0
        for request in request_iterator:
            self.stream_requests.append(request)
            kind = request.WhichOneof("request")
            if kind == "config" and self.mode == "reject":
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, "unsupported encoding")
            if kind == "config":
                yield recognizer_pb2.StreamingRecognizeResponse(
                    speech_event=recognizer_pb2.SpeechEvent(type=recognizer_pb2.SpeechEvent.SPEECH_STARTED)
                )
            elif kind == "audio":
                chunks += 1
                self.audio_seen.set()
                alt = recognizer_pb2.SpeechRecognitionAlternative(transcript=f"partial {chunks}")
                yield recognizer_pb2.StreamingRecognizeResponse(
                    result=recognizer_pb2.RecognitionResult(alternatives=[alt])
                )
            else:
                alt = recognizer_pb2.SpeechRecognitionAlternative(transcript=f"{chunks} chunks")
                yield recognizer_pb2.StreamingRecognizeResponse(
                    result=recognizer_pb2.RecognitionResult(alternatives=[alt], is_final=True)
                )
                return
        context.abort(grpc.StatusCode.ABORTED, "stream closed without end_of_audio")

    def _ended(self) -> None:
        if not any(r.WhichOneof("request") == "end_of_audio" for r in self.stream_requests):
            self.stream_abandoned.set()


@dataclass
class FakeSynthesizer(synthesizer_pb2_grpc.SynthesizerServicer):
    requests: list[Any] = field(default_factory=list)
    stream_ended: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def Synthesize(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return synthesizer_pb2.SynthesizeResponse(
            audio=b"\x01\x00" * 10,
            encoding=request.encoding,
            sample_rate_hz=16000,
            cache_status=synthesizer_pb2.SYNTHESIS_CACHE_STATUS_HIT,
        )

    def SynthesizeStream(self, request: Any, context: Any) -> Iterator[Any]:
        self.requests.append(request)
        context.add_callback(self.stream_ended.set)
        for i in range(3):
            yield synthesizer_pb2.SynthesisChunk(audio=bytes([i]), sequence=i, last=i == 2)
            if request.text == "endless":
                self.release.wait(WAIT_S)

    def ListVoices(self, request: Any, context: Any) -> Any:
        return synthesizer_pb2.ListVoicesResponse(
            voices=[synthesizer_pb2.Voice(name="amy", language="en-US")]
        )


class FakeAdmin(cache_admin_pb2_grpc.CacheAdminServicer):
    def GetStats(self, request: Any, context: Any) -> Any:
        return cache_admin_pb2.GetStatsResponse(server_version="9.9", synthesize_requests=4)

    def PurgeUser(self, request: Any, context: Any) -> Any:
        return cache_admin_pb2.PurgeUserResponse(entries_removed=len(request.user_id))

    def Warmup(self, request: Any, context: Any) -> Any:
        return cache_admin_pb2.WarmupResponse(phrases_cached=len(request.phrases), templates_cached=0)

    def SubmitCorrection(self, request: Any, context: Any) -> Any:
        return cache_admin_pb2.SubmitCorrectionResponse(accepted=request.encoding == common_pb2.FLAC)


@dataclass
class Fakes:
    target: str
    recognizer: FakeRecognizer
    synthesizer: FakeSynthesizer


@pytest.fixture
def fakes() -> Iterator[Fakes]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    found = Fakes("", FakeRecognizer(), FakeSynthesizer())
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(found.recognizer, server)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(found.synthesizer, server)
    cache_admin_pb2_grpc.add_CacheAdminServicer_to_server(FakeAdmin(), server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    found.target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    server.start()
    yield found
    found.synthesizer.release.set()
    server.stop(0).wait()


@pytest.fixture
def client(fakes: Fakes) -> Iterator[Client]:
    with Client(fakes.target, timeout_s=WAIT_S) as c:
        yield c


def _kinds(requests: list[Any]) -> list[str | None]:
    return [r.WhichOneof("request") for r in requests]


def test_recognize_a_path(client: Client, fakes: Fakes, tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, PCM16K, 16000)
    assert client.recognize(path).text == "hello"
    (request,) = fakes.recognizer.recognize_requests
    assert request.audio == PCM16K
    assert (request.config.encoding, request.config.sample_rate_hz) == (common_pb2.LINEAR16, 16000)


def test_recognize_error_is_mapped(client: Client, fakes: Fakes) -> None:
    fakes.recognizer.mode = "unknown-model"
    with pytest.raises(NotFoundError) as caught:
        client.recognize(PCM16K, LINEAR16_16K)
    assert (caught.value.code, caught.value.details) == ("NOT_FOUND", "no model for language 'xx'")
    assert not caught.value.retryable


def test_stream_sends_config_chunks_then_end_of_audio(client: Client, fakes: Fakes) -> None:
    updates = list(client.stream(PCM16K, LINEAR16_16K, chunk_ms=200, stream_id="abc"))
    requests = fakes.recognizer.stream_requests
    assert _kinds(requests) == ["config", "audio", "audio", "end_of_audio"]
    assert requests[0].config.stream_id == "abc"
    assert [len(r.audio) for r in requests[1:3]] == [6400, 4800]
    assert updates[0].speech_event is not None
    assert updates[0].speech_event.type is SpeechEventType.SPEECH_STARTED
    assert [u.result.transcript for u in updates[1:] if u.result] == ["partial 1", "partial 2", "2 chunks"]
    assert updates[-1].result is not None and updates[-1].result.is_final


def test_stream_from_a_generator(client: Client, fakes: Fakes) -> None:
    def mic() -> Iterator[bytes]:
        yield b"\x00\x00" * 160
        yield b""
        yield memoryview(b"\x01\x00" * 160)  # type: ignore[misc]

    updates = list(client.stream(mic(), LINEAR16_16K))
    assert _kinds(fakes.recognizer.stream_requests) == ["config", "audio", "audio", "end_of_audio"]
    assert updates[-1].result is not None and updates[-1].result.transcript == "2 chunks"


def test_stream_argument_errors_are_raised_at_once(client: Client, fakes: Fakes, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="encoding"):
        client.stream(iter([b"\x00\x00"]))
    with pytest.raises(FileNotFoundError):
        client.stream(tmp_path / "missing.wav")
    assert fakes.recognizer.stream_requests == []


def test_a_server_error_mid_stream(client: Client, fakes: Fakes) -> None:
    fakes.recognizer.mode = "reject"
    with pytest.raises(InvalidArgumentError, match="unsupported encoding"):
        list(client.stream(PCM16K, LINEAR16_16K, chunk_ms=10))


def test_breaking_out_of_a_stream_cancels_it(client: Client, fakes: Fakes) -> None:
    unplug = threading.Event()

    def live_mic() -> Iterator[bytes]:
        yield b"\x00\x00" * 160
        unplug.wait(WAIT_S)

    try:
        with contextlib.closing(client.stream(live_mic(), LINEAR16_16K)) as updates:
            for update in updates:
                if update.result is not None:
                    break
        assert fakes.recognizer.stream_abandoned.wait(WAIT_S)
    finally:
        unplug.set()
    assert "end_of_audio" not in _kinds(fakes.recognizer.stream_requests)


def test_a_failing_source_is_reraised(client: Client, fakes: Fakes) -> None:
    def broken_mic() -> Iterator[bytes]:
        yield b"\x00\x00" * 160
        fakes.recognizer.audio_seen.wait(WAIT_S)  # fail once the server is surely in the stream
        raise OSError("microphone unplugged")

    with pytest.raises(OSError, match="microphone unplugged"):
        list(client.stream(broken_mic(), LINEAR16_16K))
    assert fakes.recognizer.stream_abandoned.wait(WAIT_S)
    assert "end_of_audio" not in _kinds(fakes.recognizer.stream_requests)


def test_synthesize(client: Client, fakes: Fakes) -> None:
    result = client.synthesize(ssml="<speak>Hi</speak>", encoding=AudioEncoding.LINEAR16, user_id="u")
    assert (result.audio, result.encoding, result.cache_status) == (
        b"\x01\x00" * 10,
        AudioEncoding.LINEAR16,
        SynthesisCacheStatus.HIT,
    )
    (request,) = fakes.synthesizer.requests
    assert (request.ssml, request.context.user_id, request.encoding) == (
        "<speak>Hi</speak>",
        "u",
        common_pb2.LINEAR16,
    )


def test_synthesize_stream_in_order_and_early_stop(client: Client, fakes: Fakes) -> None:
    assert [c.sequence for c in client.synthesize_stream("Hello.")] == [0, 1, 2]
    assert fakes.synthesizer.stream_ended.wait(WAIT_S)
    fakes.synthesizer.stream_ended.clear()
    with contextlib.closing(client.synthesize_stream("endless")) as chunks:
        assert next(chunks).sequence == 0
    assert fakes.synthesizer.stream_ended.wait(WAIT_S)


def test_admin_methods_and_health(client: Client, tmp_path: Path) -> None:
    assert [v.name for v in client.list_voices()] == ["amy"]
    stats = client.stats()
    assert (stats.server_version, stats.synthesize_requests) == ("9.9", 4)
    assert client.purge_user("t", "user") == 4
    assert client.warmup(("a", "b", "c")) == (3, 0)
    flac = tmp_path / "x.flac"
    flac.write_bytes(b"fLaC")
    assert client.submit_correction(flac, "right words") is True
    assert (
        client.submit_correction(b"\x00\x00", "pcm", encoding=AudioEncoding.LINEAR16, sample_rate_hz=8000)
        is False
    )
    assert client.health() == "NOT_SERVING"
    assert client.health("voxwire.v1.Nope") == "SERVICE_UNKNOWN"


def test_unreachable_server_and_closed_client() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = Client(f"127.0.0.1:{port}", timeout_s=WAIT_S)
    with pytest.raises(UnavailableError):
        client.list_voices()
    client.close()
    with pytest.raises(RuntimeError, match="closed"):
        client.list_voices()
    with pytest.raises(RuntimeError, match="closed"):
        client.stream(PCM16K, LINEAR16_16K)
