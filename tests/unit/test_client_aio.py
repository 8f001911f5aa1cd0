"""AsyncClient against small fake servicers on an in-process grpc.aio server (127.0.0.1:0).

The fakes only emulate the wire contract (request order, status codes); they recognise nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from voxwire import (
    AsyncClient,
    AudioEncoding,
    CachePolicy,
    CacheStatus,
    DeadlineExceededError,
    Endpointing,
    InvalidArgumentError,
    ModelTier,
    RecognitionConfig,
    ResourceExhaustedError,
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
SINGLE_UTTERANCE = RecognitionConfig(
    encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, single_utterance=True
)


def _final(text: str, start_ms: int = 0, end_ms: int = 0) -> recognizer_pb2.RecognitionResult:
    return recognizer_pb2.RecognitionResult(
        alternatives=[recognizer_pb2.SpeechRecognitionAlternative(transcript=text, confidence=0.9)],
        is_final=True,
        stability=1.0,
        audio_start_ms=start_ms,
        audio_end_ms=end_ms,
        cache_status=recognizer_pb2.CACHE_STATUS_EXACT,
    )


def _event(kind: recognizer_pb2.SpeechEvent.Type.ValueType, offset_ms: int = 0) -> Any:
    return recognizer_pb2.StreamingRecognizeResponse(
        speech_event=recognizer_pb2.SpeechEvent(type=kind, audio_offset_ms=offset_ms), stream_id="srv"
    )


@dataclass
class FakeRecognizer(recognizer_pb2_grpc.RecognizerServicer):
    mode: str = "echo"
    recognize_requests: list[recognizer_pb2.RecognizeRequest] = field(default_factory=list)
    stream_requests: list[recognizer_pb2.StreamingRecognizeRequest] = field(default_factory=list)
    stream_abandoned: asyncio.Event = field(default_factory=asyncio.Event)
    audio_seen: asyncio.Event = field(default_factory=asyncio.Event)
    never: asyncio.Event = field(default_factory=asyncio.Event)

    async def Recognize(self, request: Any, context: Any) -> Any:
        self.recognize_requests.append(request)
        if self.mode == "busy":
            status = _status_with_retry_delay(3)
            context.set_trailing_metadata((("grpc-status-details-bin", status),))
            await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too many requests")
        if self.mode == "hang":
            await self.never.wait()
        return recognizer_pb2.RecognizeResponse(
            results=[_final(" hello", 0, 500), _final("world ", 500, 900)],
            audio_duration_ms=len(request.audio) // 32,
            processing_latency_ms=12.5,
        )

    async def StreamingRecognize(self, request_iterator: Any, context: Any) -> AsyncIterator[Any]:
        # echo: a speech event after the config, a partial per audio chunk, a final on end_of_audio.
        # However the client goes away (cancel, or closing without end_of_audio), grpc.aio ends
        # this handler one of several ways; the finally block notes it.
        chunks = 0
        end_of_audio = False
        try:
            async for request in request_iterator:
                self.stream_requests.append(request)
                kind = request.WhichOneof("request")
                if kind == "config" and self.mode == "reject":
                    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "sample_rate_hz 3 is not supported")
                if kind == "config":
                    yield _event(recognizer_pb2.SpeechEvent.SPEECH_STARTED, 0)
                elif kind == "audio":
                    chunks += 1
                    self.audio_seen.set()
                    partial = recognizer_pb2.RecognitionResult(
                        alternatives=[
                            recognizer_pb2.SpeechRecognitionAlternative(transcript=f"partial {chunks}")
                        ]
                    )
                    yield recognizer_pb2.StreamingRecognizeResponse(result=partial, stream_id="srv")
                    if self.mode == "single":
                        yield recognizer_pb2.StreamingRecognizeResponse(result=_final("only this"))
                        yield _event(recognizer_pb2.SpeechEvent.END_OF_SINGLE_UTTERANCE, 100)
                        return
                else:
                    end_of_audio = True
                    yield recognizer_pb2.StreamingRecognizeResponse(
                        result=_final(f"{chunks} chunks", 0, 350),
                        committed_audio_offset_ms=350,
                        resume_token=b"t",
                    )
                    yield _event(recognizer_pb2.SpeechEvent.END_OF_UTTERANCE, 350)
                    return
            await context.abort(grpc.StatusCode.ABORTED, "stream closed without end_of_audio")
        finally:
            if not end_of_audio:
                self.stream_abandoned.set()


@dataclass
class FakeSynthesizer(synthesizer_pb2_grpc.SynthesizerServicer):
    requests: list[synthesizer_pb2.SynthesizeRequest] = field(default_factory=list)
    endless: bool = False
    stream_cancelled: asyncio.Event = field(default_factory=asyncio.Event)

    async def Synthesize(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return synthesizer_pb2.SynthesizeResponse(
            audio=b"RIFFfake",
            encoding=request.encoding,
            sample_rate_hz=22050,
            audio_duration_ms=1234,
            cache_status=synthesizer_pb2.SYNTHESIS_CACHE_STATUS_STITCHED,
            voice=request.voice or "default-voice",
        )

    async def SynthesizeStream(self, request: Any, context: Any) -> AsyncIterator[Any]:
        self.requests.append(request)
        completed = False
        try:
            for i in range(3):
                yield synthesizer_pb2.SynthesisChunk(
                    audio=bytes([i]) * 4,
                    sequence=i,
                    audio_offset_ms=100 * i,
                    last=i == 2 and not self.endless,
                )
                if self.endless:
                    await asyncio.Event().wait()
            completed = True
        finally:
            # A cancelled call ends this handler with CancelledError or GeneratorExit.
            if not completed:
                self.stream_cancelled.set()

    async def ListVoices(self, request: Any, context: Any) -> Any:
        voices = [
            synthesizer_pb2.Voice(name="amy", language="en-US", native_sample_rate_hz=22050, is_default=True),
            synthesizer_pb2.Voice(name="alan", language="en-GB", sample_rates_hz=[16000, 22050]),
        ]
        return synthesizer_pb2.ListVoicesResponse(
            voices=[v for v in voices if v.language.startswith(request.language)]
        )


@dataclass
class FakeAdmin(cache_admin_pb2_grpc.CacheAdminServicer):
    requests: list[Any] = field(default_factory=list)

    async def GetStats(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        tier = cache_admin_pb2.CacheTierStats(tier="asr.exact", entries=4, hits=9, misses=3, bytes=2048)
        return cache_admin_pb2.GetStatsResponse(
            tiers=[tier], uptime_s=60.0, active_streams=2, asr_model="tiny"
        )

    async def PurgeUser(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return cache_admin_pb2.PurgeUserResponse(entries_removed=7)

    async def Warmup(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return cache_admin_pb2.WarmupResponse(phrases_cached=len(request.phrases), templates_cached=1)

    async def SubmitCorrection(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return cache_admin_pb2.SubmitCorrectionResponse(accepted=True)


def _status_with_retry_delay(seconds: int) -> bytes:
    duration = b"\x08" + bytes([seconds])
    retry_info = b"\x0a" + bytes([len(duration)]) + duration
    type_url = b"type.googleapis.com/google.rpc.RetryInfo"
    any_msg = b"\x0a" + bytes([len(type_url)]) + type_url + b"\x12" + bytes([len(retry_info)]) + retry_info
    return b"\x08\x08\x1a" + bytes([len(any_msg)]) + any_msg


@dataclass
class Fakes:
    target: str
    recognizer: FakeRecognizer
    synthesizer: FakeSynthesizer
    admin: FakeAdmin


@pytest.fixture
async def fakes() -> AsyncIterator[Fakes]:
    server = grpc.aio.server()
    found = Fakes("", FakeRecognizer(), FakeSynthesizer(), FakeAdmin())
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(found.recognizer, server)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(found.synthesizer, server)
    cache_admin_pb2_grpc.add_CacheAdminServicer_to_server(found.admin, server)
    health_servicer = health.aio.HealthServicer()
    await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    await health_servicer.set("voxwire.v1.Recognizer", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    found.target = f"127.0.0.1:{server.add_insecure_port('127.0.0.1:0')}"
    await server.start()
    yield found
    await server.stop(0)


@pytest.fixture
async def client(fakes: Fakes) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(fakes.target, timeout_s=10) as c:
        yield c


def _kinds(requests: list[recognizer_pb2.StreamingRecognizeRequest]) -> list[str | None]:
    return [r.WhichOneof("request") for r in requests]


async def test_recognize_bytes_sends_the_config_and_maps_the_response(
    client: AsyncClient, fakes: Fakes
) -> None:
    config = RecognitionConfig(
        encoding=AudioEncoding.LINEAR16,
        sample_rate_hz=16000,
        hotwords=("voxwire",),
        endpointing=Endpointing(silence_ms=400),
        tenant_id="acme",
        user_id="u1",
        cache_policy=CachePolicy.BYPASS,
        model_tier=ModelTier.ACCURATE,
        request_id="req-1",
    )
    transcript = await client.recognize(PCM16K, config)
    assert transcript.text == "hello world"
    assert transcript.audio_duration_ms == len(PCM16K) // 32
    assert transcript.processing_latency_ms == pytest.approx(12.5)
    assert transcript.results[0].cache_status is CacheStatus.EXACT
    (request,) = fakes.recognizer.recognize_requests
    assert request.audio == PCM16K
    assert request.config.encoding == common_pb2.LINEAR16
    assert request.config.sample_rate_hz == 16000
    assert list(request.config.hotwords) == ["voxwire"]
    assert request.config.endpointing.silence_ms == 400
    assert request.config.model_tier == recognizer_pb2.MODEL_TIER_ACCURATE
    assert (request.config.context.tenant_id, request.config.context.user_id) == ("acme", "u1")
    assert request.config.context.cache_policy == common_pb2.CACHE_POLICY_BYPASS
    assert request.config.context.request_id == "req-1"


async def test_recognize_a_wav_path_sends_pcm_with_the_file_format(
    client: AsyncClient, fakes: Fakes, tmp_path: Path
) -> None:
    path = tmp_path / "clip.wav"
    write_wav(path, PCM16K[:3200], 8000)
    await client.recognize(str(path))
    (request,) = fakes.recognizer.recognize_requests
    assert request.audio == PCM16K[:3200]
    assert (request.config.encoding, request.config.sample_rate_hz, request.config.channels) == (
        common_pb2.LINEAR16,
        8000,
        1,
    )


async def test_recognize_bytes_without_an_encoding_fails_before_sending(
    client: AsyncClient, fakes: Fakes
) -> None:
    with pytest.raises(ValueError, match="encoding"):
        await client.recognize(PCM16K)
    assert fakes.recognizer.recognize_requests == []


async def test_server_status_becomes_a_voxwire_error(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recognizer.mode = "busy"
    with pytest.raises(ResourceExhaustedError) as caught:
        await client.recognize(PCM16K, LINEAR16_16K)
    err = caught.value
    assert (err.code, err.details, err.retryable) == ("RESOURCE_EXHAUSTED", "too many requests", True)
    assert err.retry_after_s == pytest.approx(3.0)
    assert isinstance(err.__cause__, grpc.RpcError)


async def test_deadline_is_passed_per_call(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recognizer.mode = "hang"
    with pytest.raises(DeadlineExceededError) as caught:
        await client.recognize(PCM16K, LINEAR16_16K, timeout_s=0.05)
    assert caught.value.retryable


async def test_stream_from_a_path_sends_config_chunks_then_end_of_audio(
    client: AsyncClient, fakes: Fakes, tmp_path: Path
) -> None:
    path = tmp_path / "clip.wav"
    write_wav(path, PCM16K, 16000)
    config = RecognitionConfig(interim_results=True)
    updates = [u async for u in client.stream(path, config, chunk_ms=100, stream_id="s-1")]

    requests = fakes.recognizer.stream_requests
    assert _kinds(requests) == ["config", "audio", "audio", "audio", "audio", "end_of_audio"]
    head = requests[0].config
    assert head.stream_id == "s-1"
    assert (head.config.encoding, head.config.sample_rate_hz) == (common_pb2.LINEAR16, 16000)
    assert head.config.interim_results
    assert [len(r.audio) for r in requests[1:5]] == [3200, 3200, 3200, 1600]
    assert b"".join(r.audio for r in requests[1:5]) == PCM16K

    assert updates[0].speech_event is not None
    assert updates[0].speech_event.type is SpeechEventType.SPEECH_STARTED
    assert [u.result.transcript for u in updates[1:5] if u.result] == [f"partial {i}" for i in range(1, 5)]
    final = updates[5].result
    assert final is not None and final.is_final and final.transcript == "4 chunks"
    assert (updates[5].committed_audio_offset_ms, updates[5].resume_token) == (350, b"t")
    assert updates[6].speech_event is not None
    assert updates[6].speech_event.type is SpeechEventType.END_OF_UTTERANCE
    assert len(updates) == 7


async def test_stream_from_an_async_iterable(client: AsyncClient, fakes: Fakes) -> None:
    async def mic() -> AsyncIterator[bytes]:
        for part in (b"\x01\x00" * 160, b"", b"\x02\x00" * 160):
            yield part

    updates = [u async for u in client.stream(mic(), LINEAR16_16K)]
    # The empty chunk is not sent.
    assert _kinds(fakes.recognizer.stream_requests) == ["config", "audio", "audio", "end_of_audio"]
    assert updates[-2].result is not None and updates[-2].result.transcript == "2 chunks"


async def test_stream_from_a_blocking_iterable_reads_it_off_the_loop(
    client: AsyncClient, fakes: Fakes
) -> None:
    def chunks() -> Any:
        yield b"\x01\x00" * 160
        yield bytearray(b"\x02\x00" * 160)

    updates = [u async for u in client.stream(chunks(), LINEAR16_16K)]
    assert _kinds(fakes.recognizer.stream_requests) == ["config", "audio", "audio", "end_of_audio"]
    assert fakes.recognizer.stream_requests[2].audio == b"\x02\x00" * 160
    assert updates[-1].speech_event is not None


async def test_stream_argument_errors_are_raised_before_any_call(client: AsyncClient, fakes: Fakes) -> None:
    with pytest.raises(ValueError, match="encoding"):
        client.stream([b"\x00\x00"])
    with pytest.raises(ValueError, match="realtime"):
        client.stream([b"\x00\x00"], LINEAR16_16K, realtime=True)
    with pytest.raises(ValueError, match="chunk_ms"):
        client.stream(PCM16K, LINEAR16_16K, chunk_ms=0)
    assert fakes.recognizer.stream_requests == []


async def test_a_server_error_mid_stream_is_raised_while_iterating(client: AsyncClient, fakes: Fakes) -> None:
    fakes.recognizer.mode = "reject"
    with pytest.raises(InvalidArgumentError, match="sample_rate_hz 3 is not supported"):
        async for _ in client.stream(PCM16K, LINEAR16_16K):
            pass


async def test_breaking_out_of_a_stream_cancels_the_call(client: AsyncClient, fakes: Fakes) -> None:
    async def live_mic() -> AsyncIterator[bytes]:
        yield b"\x00\x00" * 160
        await asyncio.Event().wait()  # a microphone that never ends
        yield b""

    async with asyncio.timeout(10):
        async with contextlib.aclosing(client.stream(live_mic(), LINEAR16_16K)) as updates:
            async for update in updates:
                if update.result is not None:
                    break
        await fakes.recognizer.stream_abandoned.wait()
    assert "end_of_audio" not in _kinds(fakes.recognizer.stream_requests)


async def test_cancelling_the_consuming_task_cancels_the_call(client: AsyncClient, fakes: Fakes) -> None:
    first = asyncio.Event()

    async def live_mic() -> AsyncIterator[bytes]:
        yield b"\x00\x00" * 160
        await asyncio.Event().wait()
        yield b""

    async def consume() -> None:
        async for _ in client.stream(live_mic(), LINEAR16_16K):
            first.set()

    async with asyncio.timeout(10):
        task = asyncio.create_task(consume())
        await first.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await fakes.recognizer.stream_abandoned.wait()


async def test_a_failing_source_is_reraised_and_abandons_the_stream(
    client: AsyncClient, fakes: Fakes
) -> None:
    async def broken_mic() -> AsyncIterator[bytes]:
        yield b"\x00\x00" * 160
        await fakes.recognizer.audio_seen.wait()  # fail once the server is surely in the stream
        raise OSError("microphone unplugged")

    async with asyncio.timeout(10):
        with pytest.raises(OSError, match="microphone unplugged"):
            async for _ in client.stream(broken_mic(), LINEAR16_16K):
                pass
        await fakes.recognizer.stream_abandoned.wait()
    assert "end_of_audio" not in _kinds(fakes.recognizer.stream_requests)


async def test_a_chunk_that_is_not_bytes_is_a_type_error(client: AsyncClient) -> None:
    async with asyncio.timeout(10):
        with pytest.raises(TypeError, match="bytes"):
            async for _ in client.stream(["not bytes"], LINEAR16_16K):  # type: ignore[list-item]
                pass


async def test_the_server_may_end_a_stream_while_audio_is_still_coming(
    client: AsyncClient, fakes: Fakes
) -> None:
    fakes.recognizer.mode = "single"

    async def live_mic() -> AsyncIterator[bytes]:
        yield b"\x00\x00" * 160
        await asyncio.Event().wait()
        yield b""

    async with asyncio.timeout(10):
        updates = [u async for u in client.stream(live_mic(), SINGLE_UTTERANCE)]
    assert updates[-1].speech_event is not None
    assert updates[-1].speech_event.type is SpeechEventType.END_OF_SINGLE_UTTERANCE
    assert updates[-2].result is not None and updates[-2].result.transcript == "only this"


async def test_synthesize_text_and_template(client: AsyncClient, fakes: Fakes) -> None:
    result = await client.synthesize("Hello.", voice="amy", speaking_rate=1.25, tenant_id="acme")
    assert (result.audio, result.sample_rate_hz, result.audio_duration_ms) == (b"RIFFfake", 22050, 1234)
    assert result.encoding is AudioEncoding.WAV
    assert result.cache_status is SynthesisCacheStatus.STITCHED
    assert result.voice == "amy"
    result = await client.synthesize(
        template="Next is {song}.",
        entities={"song": "Blue"},
        encoding=AudioEncoding.LINEAR16,
        sample_rate_hz=16000,
    )
    assert result.encoding is AudioEncoding.LINEAR16
    text_request, template_request = fakes.synthesizer.requests
    assert (text_request.text, text_request.voice, text_request.context.tenant_id) == (
        "Hello.",
        "amy",
        "acme",
    )
    assert text_request.speaking_rate == pytest.approx(1.25)
    assert text_request.encoding == common_pb2.WAV
    assert template_request.WhichOneof("input") == "template"
    assert dict(template_request.template.entities) == {"song": "Blue"}
    assert template_request.sample_rate_hz == 16000


async def test_synthesize_needs_exactly_one_input(client: AsyncClient, fakes: Fakes) -> None:
    with pytest.raises(ValueError):
        await client.synthesize()
    with pytest.raises(ValueError):
        await client.synthesize("a", ssml="<speak>a</speak>")
    with pytest.raises(ValueError):
        client.synthesize_stream(None)
    assert fakes.synthesizer.requests == []


async def test_synthesize_stream_yields_chunks_in_order(client: AsyncClient) -> None:
    chunks = [c async for c in client.synthesize_stream("Hello there.", encoding=AudioEncoding.LINEAR16)]
    assert [c.sequence for c in chunks] == [0, 1, 2]
    assert [c.audio for c in chunks] == [b"\x00" * 4, b"\x01" * 4, b"\x02" * 4]
    assert [c.last for c in chunks] == [False, False, True]
    assert all(c.encoding is AudioEncoding.LINEAR16 for c in chunks)  # unspecified in the reply


async def test_stopping_a_synthesis_stream_early_cancels_it(client: AsyncClient, fakes: Fakes) -> None:
    fakes.synthesizer.endless = True
    async with asyncio.timeout(10):
        async with contextlib.aclosing(client.synthesize_stream("A long story.")) as chunks:
            async for chunk in chunks:
                assert chunk.sequence == 0
                break
        await fakes.synthesizer.stream_cancelled.wait()


async def test_admin_methods(client: AsyncClient, fakes: Fakes, tmp_path: Path) -> None:
    voices = await client.list_voices("en-GB")
    assert [v.name for v in voices] == ["alan"]
    assert voices[0].sample_rates_hz == (16000, 22050)
    assert [v.name for v in await client.list_voices()] == ["amy", "alan"]

    stats = await client.stats("acme")
    assert (stats.active_streams, stats.asr_model, stats.uptime_s) == (2, "tiny", 60.0)
    assert stats.tiers[0].hit_ratio == pytest.approx(0.75)

    assert await client.purge_user("acme", "u1") == 7
    assert await client.warmup(["Hi.", "Bye."], ["Next is {song}."], voice="amy") == (2, 1)
    path = tmp_path / "wrong.wav"
    write_wav(path, PCM16K[:320], 16000)
    assert await client.submit_correction(path, "turn the lights on", tenant_id="acme", user_id="u1")

    stats_request, purge, warmup, correction = fakes.admin.requests
    assert stats_request.tenant_id == "acme"
    assert (purge.tenant_id, purge.user_id) == ("acme", "u1")
    assert (list(warmup.phrases), warmup.voice, warmup.encoding) == (["Hi.", "Bye."], "amy", common_pb2.WAV)
    assert correction.audio == PCM16K[:320]
    assert (correction.encoding, correction.sample_rate_hz) == (common_pb2.LINEAR16, 16000)
    assert correction.corrected_transcript == "turn the lights on"
    assert correction.context.user_id == "u1"


async def test_warmup_refuses_a_bare_string(client: AsyncClient) -> None:
    with pytest.raises(TypeError):
        await client.warmup("Hello.")


async def test_health(client: AsyncClient) -> None:
    assert await client.health() == "SERVING"
    assert await client.health("voxwire.v1.Recognizer") == "NOT_SERVING"
    assert await client.health("no.such.Service") == "SERVICE_UNKNOWN"


async def test_an_unreachable_server_is_unavailable() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    async with AsyncClient(f"127.0.0.1:{port}", timeout_s=10) as client:
        with pytest.raises(UnavailableError) as caught:
            await client.list_voices()
    assert caught.value.retryable


async def test_a_closed_client_refuses_calls(fakes: Fakes) -> None:
    client = AsyncClient(fakes.target)
    assert await client.health() == "SERVING"
    await client.aclose()
    with pytest.raises(RuntimeError, match="closed"):
        await client.health()
