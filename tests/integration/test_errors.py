"""Bad input gets a clear status and never disturbs other streams."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import grpc
import pytest

from tests.conftest import RunningServer, serve_in_thread
from tests.helpers import jfk_pcm, speech_clips, wer
from voxwire import (
    AudioEncoding,
    Client,
    FailedPreconditionError,
    InvalidArgumentError,
    NotFoundError,
    RecognitionConfig,
)
from voxwire.v1 import common_pb2, recognizer_pb2, recognizer_pb2_grpc
from voxwire_server.config import ServerConfig


@pytest.fixture(scope="module")
def client(server: RunningServer) -> Iterator[Client]:
    with Client(server.target, timeout_s=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(server: RunningServer) -> Iterator[recognizer_pb2_grpc.RecognizerStub]:
    with grpc.insecure_channel(server.target) as channel:
        yield recognizer_pb2_grpc.RecognizerStub(channel)


def raw_stream(
    stub: recognizer_pb2_grpc.RecognizerStub, *messages: recognizer_pb2.StreamingRecognizeRequest
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        list(stub.StreamingRecognize(iter(messages), timeout=30))
    return info.value  # type: ignore[return-value]


def config_message(**kw: object) -> recognizer_pb2.StreamingRecognizeRequest:
    cfg = recognizer_pb2.RecognitionConfig(encoding=common_pb2.LINEAR16, sample_rate_hz=16000, **kw)  # type: ignore[arg-type]
    return recognizer_pb2.StreamingRecognizeRequest(
        config=recognizer_pb2.StreamingRecognitionConfig(config=cfg)
    )


AUDIO = recognizer_pb2.StreamingRecognizeRequest(audio=b"\x00\x01" * 1600)
END = recognizer_pb2.StreamingRecognizeRequest(end_of_audio=recognizer_pb2.EndOfAudio())


def test_audio_before_config(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    err = raw_stream(stub, AUDIO, END)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "first message must be config" in (err.details() or "")


def test_config_twice(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    err = raw_stream(stub, config_message(), AUDIO, config_message(), END)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "only be sent once" in (err.details() or "")


def test_closing_without_end_of_audio_is_aborted(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    err = raw_stream(stub, config_message(), AUDIO)
    assert err.code() is grpc.StatusCode.ABORTED
    assert "without end_of_audio" in (err.details() or "")


def test_oversized_chunk(stub: recognizer_pb2_grpc.RecognizerStub) -> None:
    big = recognizer_pb2.StreamingRecognizeRequest(audio=b"\x00\x00" * 16000 * 2)
    err = raw_stream(stub, config_message(), big, END)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "2000 ms is over the 1000 ms limit" in (err.details() or "")


@pytest.mark.parametrize("token", [b"token", b"\x01" * 60, b"x" * 4096])
def test_a_forged_resume_token_is_refused(stub: recognizer_pb2_grpc.RecognizerStub, token: bytes) -> None:
    cfg = recognizer_pb2.RecognitionConfig(encoding=common_pb2.LINEAR16, sample_rate_hz=16000)
    first = recognizer_pb2.StreamingRecognizeRequest(
        config=recognizer_pb2.StreamingRecognitionConfig(config=cfg, resume_token=token)
    )
    err = raw_stream(stub, first, END)
    assert err.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "resume" in (err.details() or "")


@pytest.mark.parametrize(
    ("config", "audio", "message"),
    [
        (RecognitionConfig(encoding=AudioEncoding.WAV), b"\x13\x37garbage" * 500, "could not be decoded"),
        (RecognitionConfig(encoding=AudioEncoding.FLAC), b"\x13\x37garbage" * 500, "could not be decoded"),
        (RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=11025), b"\x00" * 4000, "11025"),
        (
            RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, language="fr"),
            b"\x00" * 4000,
            "'fr'",
        ),
        (RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000), b"", "audio is empty"),
        (
            RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000, channels=3),
            b"\x00" * 6000,
            "channel",
        ),
    ],
)
def test_recognize_rejects_bad_audio(
    client: Client, config: RecognitionConfig, audio: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message) as info:
        client.recognize(audio, config)
    assert not info.value.retryable


@pytest.mark.parametrize(
    ("config", "audio", "message"),
    [
        (RecognitionConfig(encoding=AudioEncoding.WAV), b"not a riff header at all" * 10, "RIFF"),
        (RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=12345), b"\x00" * 3200, "12345"),
        (
            RecognitionConfig(encoding=AudioEncoding.LINEAR16, sample_rate_hz=16000),
            b"\x00" * 3201,
            "middle of a sample",
        ),
    ],
)
def test_stream_rejects_bad_audio(
    client: Client, config: RecognitionConfig, audio: bytes, message: str
) -> None:
    with pytest.raises(InvalidArgumentError, match=message):
        list(client.stream(audio, config, chunk_ms=100))


def test_synthesize_rejects_bad_requests(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="text is empty"):
        client.synthesize("   ")
    with pytest.raises(InvalidArgumentError, match="nothing to speak"):
        client.synthesize("?!?! ... ;;")
    with pytest.raises(InvalidArgumentError, match="speaking_rate"):
        client.synthesize("hello", speaking_rate=5.0)
    with pytest.raises(InvalidArgumentError, match="11025"):
        client.synthesize("hello", sample_rate_hz=11025)
    with pytest.raises(InvalidArgumentError, match="OGG_OPUS output supports"):
        client.synthesize("hello", encoding=AudioEncoding.OGG_OPUS, sample_rate_hz=22050)
    with pytest.raises(NotFoundError, match="unknown voice 'nobody'"):
        client.synthesize("hello", voice="nobody")
    with pytest.raises(InvalidArgumentError, match=r"invalid SSML at line 1, column 21: <break> time"):
        client.synthesize(ssml='<speak>Hello <break time="5 parsecs"/></speak>')
    with pytest.raises(
        InvalidArgumentError, match=r"line 2, column 1: <speak> at line 1, column 1 is never closed"
    ):
        client.synthesize(ssml="<speak>Hello\n")
    with pytest.raises(InvalidArgumentError, match=r"line 1, column 8: <audio> is not supported"):
        client.synthesize(ssml='<speak><audio src="x.wav"/></speak>')
    with pytest.raises(InvalidArgumentError, match="missing a value for: artist"):
        client.synthesize(template="Coming up next is {song} by {artist}.", entities={"song": "Yesterday"})
    with pytest.raises(InvalidArgumentError, match="no slot named: mood"):
        client.synthesize(template="Playing {song}.", entities={"song": "Yesterday", "mood": "happy"})
    with pytest.raises(InvalidArgumentError, match="never closed"):
        client.synthesize(template="Playing {song.", entities={"song": "Yesterday"})


def test_voices_missing_offline_are_not_downloaded(client: Client) -> None:
    installed = {v.name for v in client.list_voices()}
    if "emma" in installed:
        pytest.skip("the emma voice is installed on this machine")
    with pytest.raises(FailedPreconditionError, match="never downloads"):
        client.synthesize("hello", voice="emma")


def test_bad_requests_do_not_disturb_a_running_stream(
    client: Client, stub: recognizer_pb2_grpc.RecognizerStub
) -> None:
    (clip,) = speech_clips(["librispeech_251-137823-0003"])
    outcome: dict[str, object] = {}

    def good_stream() -> None:
        try:
            updates = list(client.stream(str(clip.path), chunk_ms=100, realtime=True))
            outcome["text"] = " ".join(u.result.transcript for u in updates if u.result and u.result.is_final)
        except Exception as exc:  # reported below
            outcome["error"] = exc

    worker = threading.Thread(target=good_stream)
    worker.start()
    for _ in range(3):
        raw_stream(stub, AUDIO, END)
        raw_stream(
            stub, config_message(), recognizer_pb2.StreamingRecognizeRequest(audio=b"\x00" * 64000), END
        )
        with pytest.raises(InvalidArgumentError):
            client.recognize(b"garbage" * 100, RecognitionConfig(encoding=AudioEncoding.WAV))
        with pytest.raises(InvalidArgumentError):
            client.synthesize("")
    worker.join(timeout=120)
    assert "error" not in outcome, outcome
    assert wer([(clip.text, str(outcome["text"]))]) <= 0.15, outcome
    assert client.health() == "SERVING"


def test_synthesize_stream_rejects_bad_requests(client: Client) -> None:
    with pytest.raises(InvalidArgumentError, match="text is empty"):
        list(client.synthesize_stream(""))
    with pytest.raises(NotFoundError, match="unknown voice"):
        list(client.synthesize_stream("hello", voice="nobody"))
    with pytest.raises(InvalidArgumentError, match=r"invalid SSML at line 1, column 12: mismatched tag"):
        list(client.synthesize_stream(ssml="<speak>hi</s></speak>"))
    with pytest.raises(InvalidArgumentError, match="entity 'song' is empty"):
        list(client.synthesize_stream(template="Playing {song}.", entities={"song": " "}))


@pytest.fixture(scope="module")
def unshed_server() -> Iterator[RunningServer]:
    """Admission and shedding far above what 24 streams cause, so every stream is admitted and
    sends partials on any machine, however loaded."""
    handle = serve_in_thread(
        ServerConfig(
            listen="127.0.0.1:0",
            shutdown_grace_s=1.0,
            admission_max_delay_s=60.0,
            shed_partials_delay_s=60.0,
            shed_escalation_delay_s=60.0,
            admission_ramp_per_s=0.0,
        ).validate()
    )
    yield handle.running
    handle.stop()


def test_an_error_mid_stream_always_reaches_the_client(unshed_server: RunningServer) -> None:
    """A stream that fails while its responses are being written must still end with its status
    (a probe saw the abort race a write and the client wait for its deadline; the race is timing-
    dependent, and tests/unit/test_stream_writer.py checks the one-writer rule that prevents it).
    24 streams at once send speech with partials on, then a chunk that is not whole samples: every
    one ends with INVALID_ARGUMENT after its first responses, none with a deadline."""
    codes: list[grpc.StatusCode] = []
    responses: list[int] = []
    lock = threading.Lock()
    pcm = jfk_pcm()  # 2 s of it, in 100 ms chunks

    def one() -> None:
        received = 0
        with grpc.insecure_channel(unshed_server.target) as channel:
            stub = recognizer_pb2_grpc.RecognizerStub(channel)

            def messages() -> Iterator[recognizer_pb2.StreamingRecognizeRequest]:
                yield config_message(interim_results=True)
                for i in range(0, 64000, 3200):
                    yield recognizer_pb2.StreamingRecognizeRequest(audio=pcm[i : i + 3200])
                    time.sleep(0.05)  # twice real time, so partials are being written
                yield recognizer_pb2.StreamingRecognizeRequest(audio=b"\x01\x02\x03")
                yield END

            try:
                for _ in stub.StreamingRecognize(messages(), timeout=60):
                    received += 1
                code = grpc.StatusCode.OK
            except grpc.RpcError as exc:
                code = exc.code()
        with lock:
            codes.append(code)
            responses.append(received)

    threads = [threading.Thread(target=one) for _ in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert len(codes) == 24, "a stream never ended"
    assert codes == [grpc.StatusCode.INVALID_ARGUMENT] * 24, codes
    # Responses (speech events, partials) were being written when the error came.
    # Each was admitted and had responses (its speech event, partials as the decoder allows)
    # written before the error.
    assert min(responses) >= 1, responses
