"""Clip limits: Recognize takes what --max-clip-s allows and answers anything larger with OUT_OF_RANGE."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import RunningServer, serve_in_thread
from voxwire import AudioEncoding, Client, OutOfRangeError, RecognitionConfig
from voxwire.v1 import common_pb2, recognizer_pb2, recognizer_pb2_grpc
from voxwire_server.config import ServerConfig

MAX_CLIP_S = 5.0


@pytest.fixture(scope="module")
def small_server() -> Iterator[tuple[RunningServer, ServerConfig]]:
    config = ServerConfig(listen="127.0.0.1:0", max_clip_s=MAX_CLIP_S, shutdown_grace_s=1.0)
    handle = serve_in_thread(config)
    yield handle.running, config
    handle.stop()


def silence(seconds: float, rate: int = 16000, channels: int = 1) -> bytes:
    return b"\x00\x00" * int(seconds * rate) * channels


def pcm(rate: int = 16000, channels: int = 1) -> RecognitionConfig:
    return RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=rate, channels=channels)


def test_a_clip_of_max_clip_s_at_the_largest_raw_format_is_accepted(
    small_server: tuple[RunningServer, ServerConfig],
) -> None:
    server, _ = small_server
    with Client(server.target, timeout_s=60) as client:
        transcript = client.recognize(silence(MAX_CLIP_S - 0.1, 48000, 2), pcm(48000, 2))
    assert transcript.results == ()
    assert transcript.audio_duration_ms == pytest.approx((MAX_CLIP_S - 0.1) * 1000, abs=20)


def test_raw_audio_longer_than_max_clip_s_is_out_of_range_before_decoding(
    small_server: tuple[RunningServer, ServerConfig],
) -> None:
    server, _ = small_server
    with Client(server.target, timeout_s=60) as client, pytest.raises(OutOfRangeError) as info:
        client.recognize(silence(2 * MAX_CLIP_S), pcm())
    assert not info.value.retryable
    assert "at most 5 s" in info.value.details and "StreamingRecognize" in info.value.details


def test_a_request_over_the_size_limit_is_out_of_range_for_any_client(
    small_server: tuple[RunningServer, ServerConfig],
) -> None:
    server, config = small_server
    # Over the request limit but under gRPC's own: the server answers it, for a plain gRPC client too.
    data = b"\x00" * (config.max_request_bytes + 1024)
    assert len(data) < config.grpc_message_limit_bytes
    request = recognizer_pb2.RecognizeRequest(
        config=recognizer_pb2.RecognitionConfig(encoding=common_pb2.WAV), audio=data
    )
    with grpc.insecure_channel(server.target) as channel:
        stub = recognizer_pb2_grpc.RecognizerStub(channel)
        with pytest.raises(grpc.RpcError) as raw:
            stub.Recognize(request, timeout=60)
    assert raw.value.code() is grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]
    assert "StreamingRecognize" in (raw.value.details() or "")  # type: ignore[attr-defined]
    with Client(server.target, timeout_s=60) as client, pytest.raises(OutOfRangeError) as info:
        client.recognize(data, RecognitionConfig(encoding=AudioEncoding.WAV))
    assert not info.value.retryable


def test_a_request_over_grpcs_own_limit_is_not_retryable(
    small_server: tuple[RunningServer, ServerConfig],
) -> None:
    server, config = small_server
    data = b"\x00" * (config.grpc_message_limit_bytes + 1024)
    with Client(server.target, timeout_s=60) as client, pytest.raises(OutOfRangeError) as info:
        client.recognize(data, RecognitionConfig(encoding=AudioEncoding.WAV))
    assert not info.value.retryable
    assert info.value.retry_after_s is None


def test_the_default_server_takes_clips_larger_than_32_mib(server: RunningServer) -> None:
    # 200 s of 48 kHz stereo LINEAR16 is 36.6 MiB: over the 32 MiB that once was gRPC's limit.
    with Client(server.target, timeout_s=120) as client:
        transcript = client.recognize(silence(200, 48000, 2), pcm(48000, 2))
    assert transcript.audio_duration_ms == 200_000
