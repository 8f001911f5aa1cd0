"""Resumable streams on one real server (in-process state store): a connection cut mid-stream (a real
TCP reset) is resumed by the client library with its token, and the caller sees the same finals as
an uninterrupted stream, none lost and none twice. Tokens are checked: another tenant's, a finished
stream's and a purged user's are refused with clear statuses."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import wave
from collections.abc import AsyncIterator, Iterator

import grpc
import numpy as np
import pytest

from tests.conftest import RunningServer
from tests.helpers import jfk_pcm
from tests.tcp_proxy import TcpProxy
from voxwire import (
    AsyncClient,
    AudioEncoding,
    Client,
    RecognitionConfig,
    Resumability,
    StreamUpdate,
)
from voxwire.v1 import common_pb2, recognizer_pb2, recognizer_pb2_grpc

CHUNK_BYTES = 3200  # 100 ms of 16 kHz int16
CONFIG = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, interim_results=True)


def _two_utterances() -> bytes:
    """jfk twice with a second of silence between: a stream of several utterances."""
    pcm = jfk_pcm()
    return pcm + b"\x00\x00" * 16000 + pcm


def _chunks(audio: bytes) -> list[bytes]:
    return [audio[i : i + CHUNK_BYTES] for i in range(0, len(audio), CHUNK_BYTES)]


def _finals(updates: list[StreamUpdate]) -> list[tuple[int, str, int, int, str]]:
    return [
        (
            u.result.utterance_index,
            u.result.transcript,
            u.result.audio_start_ms,
            u.result.audio_end_ms,
            u.result.model_tier,
        )
        for u in updates
        if u.result is not None and u.result.is_final
    ]


def _resumes(server: RunningServer) -> float:
    registry = server.app.runtime.telemetry.registry
    return registry.get_sample_value("voxwire_stream_resumes_total", {"outcome": "resumed"}) or 0.0


@pytest.fixture
def proxy(server: RunningServer) -> Iterator[TcpProxy]:
    p = TcpProxy(server.target)
    yield p
    p.close()


async def _paced(chunks: list[bytes], cut_at: set[int], proxy: TcpProxy) -> AsyncIterator[bytes]:
    # Four times real time; the connection is reset as the chunks numbered in cut_at are read.
    for n, chunk in enumerate(chunks):
        if n in cut_at:
            await asyncio.to_thread(proxy.cut)
        await asyncio.sleep(0.025)
        yield chunk


async def _run(target: str, source: object) -> list[StreamUpdate]:
    async with AsyncClient(target) as client:
        return [u async for u in client.stream(source, CONFIG)]  # type: ignore[arg-type]


def test_a_cut_connection_resumes_with_the_same_finals(server: RunningServer, proxy: TcpProxy) -> None:
    chunks = _chunks(_two_utterances())
    reference = asyncio.run(_run(server.target, chunks))
    assert len(_finals(reference)) >= 2, "the clip must make several utterances"
    # Cuts in the first utterance, in the pause and in the second utterance.
    cuts = {30, 115, 170}
    resumed = asyncio.run(_run(proxy.address, _paced(chunks, cuts, proxy)))
    assert proxy.cuts >= 2 and proxy.connections >= 3
    assert _finals(resumed) == _finals(reference)
    # Every update says the stream is resumable, with a token.
    assert all(u.resumability is Resumability.RESUMABLE and u.resume_token for u in resumed)
    events = [(u.speech_event.type, u.speech_event.utterance_index) for u in resumed if u.speech_event]
    assert len(events) == len(set(events)), "a speech event was passed on twice"


def test_the_sync_client_resumes_too(server: RunningServer, proxy: TcpProxy) -> None:
    chunks = _chunks(jfk_pcm())
    reference = asyncio.run(_run(server.target, chunks))

    def paced() -> Iterator[bytes]:
        for n, chunk in enumerate(chunks):
            if n == 60:
                proxy.cut()
            time.sleep(0.025)
            yield chunk

    with Client(proxy.address) as client:
        resumed = list(client.stream(paced(), CONFIG))
    assert proxy.cuts >= 1
    assert _finals(resumed) == _finals(reference)


def test_the_sync_client_rolls_over_too(server: RunningServer) -> None:
    chunks = _chunks(jfk_pcm())
    reference = asyncio.run(_run(server.target, chunks))

    def paced() -> Iterator[bytes]:
        for chunk in chunks:
            time.sleep(0.025)
            yield chunk

    before = _resumes(server)
    with Client(server.target) as client:
        rolled = list(client.stream(paced(), CONFIG, rollover_s=0.7))
    assert _resumes(server) - before >= 2
    assert _finals(rolled) == _finals(reference)


def test_a_stream_rolls_over_to_new_calls(server: RunningServer, proxy: TcpProxy) -> None:
    chunks = _chunks(jfk_pcm())
    reference = asyncio.run(_run(server.target, chunks))

    async def run() -> list[StreamUpdate]:
        async with AsyncClient(proxy.address) as client:
            return [u async for u in client.stream(_paced(chunks, set(), proxy), CONFIG, rollover_s=0.8)]

    before = _resumes(server)
    rolled = asyncio.run(run())
    assert _resumes(server) - before >= 2
    assert proxy.connections == 1
    # One connection (a rollover is a new call on it, not a new connection), and the same finals.
    assert _finals(rolled) == _finals(reference)


def _head(
    token: bytes = b"", tenant: str = "acme", user: str = "alice"
) -> recognizer_pb2.StreamingRecognizeRequest:
    cfg = recognizer_pb2.RecognitionConfig(
        encoding=common_pb2.LINEAR16,
        sample_rate_hz=16000,
        context=common_pb2.RequestContext(tenant_id=tenant, user_id=user),
    )
    return recognizer_pb2.StreamingRecognizeRequest(
        config=recognizer_pb2.StreamingRecognitionConfig(config=cfg, resume_token=token)
    )


def _audio(data: bytes) -> list[recognizer_pb2.StreamingRecognizeRequest]:
    return [recognizer_pb2.StreamingRecognizeRequest(audio=c) for c in _chunks(data)]


def _token_of_abandoned_stream(stub: recognizer_pb2_grpc.RecognizerStub) -> bytes:
    """A stream sends 3 s of jfk and waits; once speech has started it is cancelled (as a client that
    went away): its latest token."""
    stop = threading.Event()

    def requests() -> Iterator[recognizer_pb2.StreamingRecognizeRequest]:
        yield _head()
        yield from _audio(jfk_pcm()[: 3 * 32000])
        stop.wait(30)

    call = stub.StreamingRecognize(requests())
    token = b""
    try:
        for response in call:
            token = response.resume_token or token
            if response.WhichOneof("response") == "speech_event":
                break
    finally:
        call.cancel()
        stop.set()
    assert token
    return token


def _first_response(
    stub: recognizer_pb2_grpc.RecognizerStub, head: recognizer_pb2.StreamingRecognizeRequest
) -> recognizer_pb2.StreamingRecognizeResponse | grpc.RpcError:
    call = stub.StreamingRecognize(iter([head]))
    try:
        return next(iter(call))
    except grpc.RpcError as exc:
        return exc
    finally:
        call.cancel()


@pytest.fixture
def stub(server: RunningServer) -> Iterator[recognizer_pb2_grpc.RecognizerStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def test_a_token_resumes_only_for_its_tenant_and_user(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    token = _token_of_abandoned_stream(stub)
    other = _first_response(stub, _head(token, tenant="globex"))
    assert isinstance(other, grpc.RpcError) and other.code() is grpc.StatusCode.PERMISSION_DENIED
    other_user = _first_response(stub, _head(token, user="mallory"))
    assert isinstance(other_user, grpc.RpcError) and other_user.code() is grpc.StatusCode.PERMISSION_DENIED
    first = _first_response(stub, _head(token))
    assert isinstance(first, recognizer_pb2.StreamingRecognizeResponse), first
    assert first.WhichOneof("response") == "resumed"
    assert first.resumability == recognizer_pb2.RESUMABILITY_RESUMABLE
    assert 0 <= first.resume_offset_bytes <= 3 * 32000 and first.resume_offset_bytes % 2 == 0


def test_a_finished_stream_cannot_be_resumed(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    end = recognizer_pb2.StreamingRecognizeRequest(end_of_audio=recognizer_pb2.EndOfAudio())
    responses = list(stub.StreamingRecognize(iter([_head(), *_audio(jfk_pcm()), end])))
    token = [r.resume_token for r in responses if r.resume_token][-1]
    gone = _first_response(stub, _head(token))
    assert isinstance(gone, grpc.RpcError) and gone.code() is grpc.StatusCode.NOT_FOUND


def test_purge_user_removes_the_users_stream_state(server: RunningServer) -> None:
    with grpc.insecure_channel(server.target) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        token = _token_of_abandoned_stream(stub)
    with Client(server.target) as client:
        assert client.purge_user("acme", "alice") >= 1
    with grpc.insecure_channel(server.target) as channel:
        gone = _first_response(recognizer_pb2_grpc.RecognizerStub(channel), _head(token))
    assert isinstance(gone, grpc.RpcError) and gone.code() is grpc.StatusCode.NOT_FOUND


def test_compressed_streams_say_they_cannot_be_resumed(server: RunningServer) -> None:
    from tests.helpers import SAMPLE_JFK

    with Client(server.target) as client:
        updates = list(client.stream(SAMPLE_JFK.read_bytes(), RecognitionConfig(encoding=AudioEncoding.FLAC)))
    assert updates and all(
        u.resumability is Resumability.NOT_RESUMABLE and not u.resume_token for u in updates
    )


def test_a_resampled_stream_resumes_with_its_audio_in_the_state(
    server: RunningServer, proxy: TcpProxy
) -> None:
    # 8 kHz: the server resamples, so the stream's bytes are not the endpointer's samples and its
    # state carries the endpointer's audio; the resampler starts afresh at the resume.
    samples = np.frombuffer(jfk_pcm(), "<i2")[::2].astype("<i2").tobytes()
    chunks = [samples[i : i + 1600] for i in range(0, len(samples), 1600)]
    config = RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=8000)

    async def run() -> list[StreamUpdate]:
        async with AsyncClient(proxy.address) as client:
            return [u async for u in client.stream(_paced(chunks, {60}, proxy), config)]

    before = _resumes(server)
    updates = asyncio.run(run())
    assert _resumes(server) - before >= 1
    text = " ".join(f[1] for f in _finals(updates)).lower()
    assert "ask not what your country can do for you" in text


def test_a_wav_stream_resumes_past_its_header(server: RunningServer, proxy: TcpProxy) -> None:
    # The header arrives once; a resume continues in the samples, as a decoder that has seen it.
    out = io.BytesIO()
    with wave.open(out, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(jfk_pcm())
    chunks = _chunks(out.getvalue())
    config = RecognitionConfig(encoding=AudioEncoding.WAV, interim_results=True)

    async def run(source: object) -> list[StreamUpdate]:
        async with AsyncClient(proxy.address) as client:
            return [u async for u in client.stream(source, config)]  # type: ignore[arg-type]

    reference = asyncio.run(run(chunks))
    before = _resumes(server)
    resumed = asyncio.run(run(_paced(chunks, {50}, proxy)))
    assert _resumes(server) - before >= 1
    assert _finals(resumed) == _finals(reference)
