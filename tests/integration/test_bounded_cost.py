"""The attacker probe's findings, against a real server: every request's cost is bounded and odd
input gets a domain status, never INTERNAL."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import RunningServer
from voxwire import (
    AudioEncoding,
    Client,
    InvalidArgumentError,
    NotFoundError,
    OutOfRangeError,
    RecognitionConfig,
)
from voxwire.v1 import common_pb2, recognizer_pb2, recognizer_pb2_grpc


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=120) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[recognizer_pb2_grpc.RecognizerStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def wav(body: bytes, *, tag: int = 1, rate: int = 16000, bits: int = 16) -> bytes:
    block = max(1, bits // 8)
    fmt = struct.pack("<HHIIHH", tag, 1, rate, rate * block, block, bits)
    chunks = b"fmt " + struct.pack("<I", len(fmt)) + fmt + b"data" + struct.pack("<I", len(body)) + body
    return b"RIFF" + struct.pack("<I", 4 + len(chunks)) + b"WAVE" + chunks


WAV = RecognitionConfig(encoding=AudioEncoding.WAV)


def test_a_wav_claiming_1_hz_is_refused_before_decoding(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="1 Hz"):
        client.recognize(wav(bytes(32000), rate=1), WAV)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (wav(bytes(3200), tag=0), "format tag 0"),
        (wav(bytes(3200), tag=0xFFFE), "WAVE_FORMAT_EXTENSIBLE"),
        (wav(bytes(3200), bits=0), "0 bits"),
    ],
    ids=["tag-0", "extensible-16-bytes", "0-bits"],
)
def test_wav_headers_that_answered_internal_are_invalid_argument(
    client: Client, data: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        client.recognize(data, WAV)
    with pytest.raises(InvalidArgumentError, match=message):
        list(client.stream([data], WAV))


def test_the_chunk_carrying_a_wav_header_is_held_to_max_chunk_ms(
    stub: recognizer_pb2_grpc.RecognizerStub,
) -> None:
    cfg = recognizer_pb2.RecognitionConfig(encoding=common_pb2.WAV)
    messages = [
        recognizer_pb2.StreamingRecognizeRequest(
            config=recognizer_pb2.StreamingRecognitionConfig(config=cfg)
        ),
        recognizer_pb2.StreamingRecognizeRequest(audio=wav(bytes(16000 * 2 * 3))),
        recognizer_pb2.StreamingRecognizeRequest(end_of_audio=recognizer_pb2.EndOfAudio()),
    ]
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamingRecognize(iter(messages), timeout=60))
    assert info.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "3000 ms is over the 1000 ms limit" in (info.value.details() or "")


def recognize_error(stub: recognizer_pb2_grpc.RecognizerStub, **config: object) -> grpc.RpcError:
    cfg = recognizer_pb2.RecognitionConfig(encoding=common_pb2.LINEAR16, sample_rate_hz=16000, **config)  # type: ignore[arg-type]
    with pytest.raises(grpc.RpcError) as info:
        stub.Recognize(recognizer_pb2.RecognizeRequest(config=cfg, audio=bytes(3200)), timeout=60)
    return info.value  # type: ignore[return-value]


def test_hotwords_and_prompt_are_capped_in_characters_then_in_tokens(
    stub: recognizer_pb2_grpc.RecognizerStub,
) -> None:
    # The probe: 100 hotwords of 100 KB took 56 s and lost the speech.
    err = recognize_error(stub, hotwords=["x" * 100_000] * 100)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "the limit is 100" in (err.details() or "")
    assert len(err.details() or "") < 200
    # Under the character caps, but more tokens than Whisper's prompt has room for.
    err = recognize_error(stub, prompt="7 " * 450)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "tokens together; the limit is 159" in (err.details() or "")


@pytest.mark.parametrize(
    "text", ["1" * 40, "1," * 300, "²a", "x ①a and ¹b²c"], ids=["40-digits", "1-comma", "sup-a", "mixed"]
)
def test_text_numbers_that_answered_internal_are_spoken(client: Client, text: str) -> None:
    assert client.synthesize(text).audio_duration_ms > 0


@pytest.mark.parametrize(
    "ssml",
    ["<speak>Hi." + "<break/>" * 600 + "</speak>", "<speak>Hi." + '<break time="10s"/>' * 260 + "</speak>"],
    ids=["600-breaks", "260-ten-second-breaks"],
)
def test_breaks_past_the_reply_limit_are_out_of_range(client: Client, ssml: str) -> None:
    with pytest.raises(OutOfRangeError, match="a reply may be at most 120 s"):
        client.synthesize(ssml=ssml)
    with pytest.raises(OutOfRangeError):
        list(client.synthesize_stream(ssml=ssml))


def test_caller_text_in_errors_is_cut(client: Client) -> None:
    with pytest.raises(NotFoundError, match="unknown voice") as info:
        client.synthesize("hello", voice="v" * 20_000)
    assert len(info.value.details) < 300


def test_warmup_is_capped_at_once(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="at most 100 phrases"):
        client.warmup(["x" * 5000] * 1000)
    with pytest.raises(InvalidArgumentError, match="20000 characters in all"):
        client.warmup(["word " * 1000] * 5)


def test_a_cancelled_stream_leaves_the_synthesis_workers_idle(client: Client, server: RunningServer) -> None:
    telemetry = server.app.runtime.telemetry
    synthesizer = server.app.runtime.synthesizer
    workers = server.app.config.effective_tts_workers

    def units() -> float:
        return float(telemetry.tts_units._value.get())

    def workers_idle() -> None:
        """Returns once every synthesis worker ran a job submitted now: all earlier jobs are done."""
        barrier = threading.Barrier(workers)

        async def all_workers() -> None:
            await asyncio.gather(
                *(synthesizer.run(lambda: barrier.wait(timeout=120)) for _ in range(workers))
            )

        asyncio.run_coroutine_threadsafe(all_workers(), server.loop).result(timeout=180)

    # The probe's shape: ~4.9 KB without a sentence break (about 13 units of 400 characters).
    text = " ".join(f"word{i % 50} and" for i in range(420))
    before = units()
    chunks = client.synthesize_stream(text, encoding=AudioEncoding.LINEAR16)
    first = next(iter(chunks))
    chunks.close()  # cancels the call
    # Work comes in bounded units: the first is a piece of the sentence, not all of it (~5 min).
    assert first.audio_duration_ms < 60_000
    # The cancel reaches the server on its own time: wait through the workers (no sleeps) until
    # the stream has ended, then for whatever it had started.
    for _ in range(30):
        workers_idle()
        if telemetry.tts_streams._value.get() == 0:
            break
    workers_idle()
    done = units()
    workers_idle()
    assert units() == done  # nothing runs for the cancelled stream any more
    assert done - before <= 2 + workers  # the unit in each worker, not the 13 of the text
