"""Property-based fuzzing of every RPC through a real server: random protobuf bytes, random fields,
random and truncated audio and container headers, huge and empty chunks, config twice. Every call
must end with a status that is not INTERNAL, UNKNOWN or a deadline (a hang), and a stream of real
speech running alongside must get its transcript unchanged.

VOXWIRE_FUZZ_EXAMPLES sets the examples per test (default 100); VOXWIRE_FUZZ_REPORT names a JSON
file that receives the outcomes by RPC and status code (the README's reliability table)."""

from __future__ import annotations

import collections
import json
import os
import struct
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import RunningServer
from tests.helpers import SAMPLE_JFK, jfk_pcm
from voxwire import Client, RecognitionConfig, ResourceExhaustedError
from voxwire.v1 import cache_admin_pb2, common_pb2, recognizer_pb2, synthesizer_pb2

EXAMPLES = int(os.environ.get("VOXWIRE_FUZZ_EXAMPLES", "100"))
CALL_TIMEOUT_S = 60.0
FORBIDDEN = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN, grpc.StatusCode.DEADLINE_EXCEEDED}
OUTCOMES: collections.Counter[tuple[str, str]] = collections.Counter()

FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

UNARY = {
    "/voxwire.v1.Recognizer/Recognize": recognizer_pb2.RecognizeResponse,
    "/voxwire.v1.Synthesizer/Synthesize": synthesizer_pb2.SynthesizeResponse,
    "/voxwire.v1.Synthesizer/ListVoices": synthesizer_pb2.ListVoicesResponse,
    "/voxwire.v1.CacheAdmin/GetStats": cache_admin_pb2.GetStatsResponse,
    "/voxwire.v1.CacheAdmin/PurgeUser": cache_admin_pb2.PurgeUserResponse,
    "/voxwire.v1.CacheAdmin/Warmup": cache_admin_pb2.WarmupResponse,
    "/voxwire.v1.CacheAdmin/SubmitCorrection": cache_admin_pb2.SubmitCorrectionResponse,
    "/grpc.health.v1.Health/Check": None,
}
STREAM_OUT = ("/voxwire.v1.Synthesizer/SynthesizeStream",)
BIDI = (
    "/voxwire.v1.Recognizer/StreamingRecognize",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
)

# Chunks too big to draw byte by byte.
BIG = (b"", b"\0" * 1_000_000, bytes(range(256)) * 800, b"RIFF" + b"\xff" * 60_000)


@pytest.fixture(scope="module")
def channel(server: RunningServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(
        server.target,
        options=[("grpc.max_receive_message_length", 256 << 20), ("grpc.max_send_message_length", 256 << 20)],
    ) as ch:
        yield ch
    if report := os.environ.get("VOXWIRE_FUZZ_REPORT"):
        rows = [
            {"rpc": rpc, "code": code, "calls": n, "messages": DETAILS[(rpc, code)].most_common(6)}
            for (rpc, code), n in sorted(OUTCOMES.items())
        ]
        with open(report, "w") as f:
            json.dump(rows, f, indent=1)


DETAILS: dict[tuple[str, str], collections.Counter[str]] = collections.defaultdict(collections.Counter)


def _record(method: str, code: grpc.StatusCode, details: str | None) -> None:
    OUTCOMES[(method.rsplit("/", 1)[-1], code.name)] += 1
    DETAILS[(method.rsplit("/", 1)[-1], code.name)][(details or "")[:70]] += 1
    assert code not in FORBIDDEN, f"{method} answered {code.name}: {details}"


def _unary(channel: grpc.Channel, method: str, payload: bytes) -> None:
    call = channel.unary_unary(method, request_serializer=None, response_deserializer=None)
    try:
        call(payload, timeout=CALL_TIMEOUT_S)
    except grpc.RpcError as exc:
        _record(method, exc.code(), exc.details())
    else:
        _record(method, grpc.StatusCode.OK, None)


def _streaming(channel: grpc.Channel, method: str, payloads: list[bytes], *, bidi: bool) -> None:
    if bidi:
        call = channel.stream_stream(method, request_serializer=None, response_deserializer=None)
        responses = call(iter(payloads), timeout=CALL_TIMEOUT_S)
    else:
        call = channel.unary_stream(method, request_serializer=None, response_deserializer=None)
        responses = call(payloads[0] if payloads else b"", timeout=CALL_TIMEOUT_S)
    try:
        for _ in responses:
            pass
    except grpc.RpcError as exc:
        _record(method, exc.code(), exc.details())
    else:
        _record(method, grpc.StatusCode.OK, None)


@contextmanager
def canary(target: str) -> Iterator[None]:
    """Streams real speech over and over while the fuzzing runs; each transcript must be right."""
    stop = threading.Event()
    failures: list[str] = []
    runs = [0]

    def run() -> None:
        with Client(target, timeout_s=CALL_TIMEOUT_S) as client:
            while not stop.is_set():
                try:
                    finals = [
                        u.result.transcript
                        for u in client.stream(str(SAMPLE_JFK), RecognitionConfig(), chunk_ms=100)
                        if u.result is not None and u.result.is_final
                    ]
                except ResourceExhaustedError as exc:
                    # Admission refusing a new stream while the fuzzer floods it is the server
                    # protecting itself; a client waits as told and comes back.
                    stop.wait(exc.retry_after_s or 1.0)
                    continue
                except Exception as exc:
                    failures.append(repr(exc))
                    return
                text = " ".join(finals).lower()
                if "fellow americans" not in text or "your country" not in text:
                    failures.append(text)
                runs[0] += 1

    thread = threading.Thread(target=run, name="fuzz-canary", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=CALL_TIMEOUT_S * 2)
    assert not thread.is_alive(), "the canary stream hung"
    assert not failures, f"the canary stream was disturbed: {failures[:3]}"
    assert runs[0] >= 1


def _wav(draw: st.DrawFn) -> bytes:
    """A RIFF/WAVE header with hostile fields, some payload, perhaps cut short."""
    tag = draw(st.sampled_from([0, 1, 3, 6, 7, 0xFFFE, 0x55]) | st.integers(0, 0xFFFF))
    channels = draw(st.sampled_from([0, 1, 2, 8]) | st.integers(0, 0xFFFF))
    rate = draw(st.sampled_from([0, 1, 8000, 16000, 44100, 48000, 2**31 - 1]) | st.integers(0, 2**32 - 1))
    bits = draw(st.sampled_from([0, 1, 8, 16, 24, 32, 64]) | st.integers(0, 0xFFFF))
    fmt_size = draw(st.sampled_from([14, 16, 18, 40]) | st.integers(0, 2**32 - 1))
    block = (channels * bits // 8) & 0xFFFF
    fmt = struct.pack("<HHIIHH", tag, channels, rate, (rate * block) & 0xFFFFFFFF, block, bits)
    if fmt_size == 40:
        fmt += struct.pack("<HHI16s", 22, bits, 0, draw(st.binary(min_size=16, max_size=16)))
    body = draw(st.binary(max_size=4000))
    data_size = draw(st.sampled_from([len(body), 0, 2**32 - 1]) | st.integers(0, 2**32 - 1))
    riff = (
        b"WAVE" + b"fmt " + struct.pack("<I", fmt_size) + fmt + b"data" + struct.pack("<I", data_size) + body
    )
    wav = b"RIFF" + struct.pack("<I", len(riff)) + riff
    cut = draw(st.none() | st.integers(0, len(wav)))
    return wav if cut is None else wav[:cut]


SPEECH = jfk_pcm()  # real speech for the fuzzer to cut, so decodes really run


@st.composite
def speech(draw: st.DrawFn) -> bytes:
    """A slice of real speech, whole samples, perhaps with a few bytes flipped."""
    start = draw(st.integers(0, len(SPEECH) // 2 - 1)) * 2
    length = draw(st.integers(1, 4 * 16000)) * 2
    data = bytearray(SPEECH[start : start + length])
    for _ in range(draw(st.integers(0, 3))):
        if data:
            data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data)


@st.composite
def audio(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["raw", "wav", "flac", "ogg", "big", "speech", "speech"]))
    if kind == "speech":
        return draw(speech())
    if kind == "wav":
        return _wav(draw)
    if kind == "flac":
        return b"fLaC" + draw(st.binary(max_size=2000))
    if kind == "ogg":
        return b"OggS\x00\x02" + draw(st.binary(max_size=2000))
    if kind == "big":
        return draw(st.sampled_from(BIG))
    return draw(st.binary(max_size=6000))


texts = st.text(max_size=300) | st.sampled_from(["9" * 60, "1," * 300, "\u00b2a", "<break/>" * 50, ""])


@st.composite
def request_context(draw: st.DrawFn) -> common_pb2.RequestContext:
    return common_pb2.RequestContext(
        tenant_id=draw(st.text(max_size=150)),
        user_id=draw(st.text(max_size=150)),
        cache_policy=draw(st.integers(-1, 5)),
        request_id=draw(st.text(max_size=80)),
    )


@st.composite
def recognition_config(draw: st.DrawFn) -> recognizer_pb2.RecognitionConfig:
    """A third hostile in every field, the rest a config a client would send (so audio gets decoded)."""
    if draw(st.integers(0, 2)) > 0:
        encoding = draw(st.sampled_from([1, 1, 1, 2, 3, 4]))  # LINEAR16 (mostly), WAV, FLAC, OGG_OPUS
        return recognizer_pb2.RecognitionConfig(
            encoding=encoding,
            sample_rate_hz=draw(st.sampled_from([16000, 16000, 8000, 48000])) if encoding == 1 else 0,
            interim_results=draw(st.booleans()),
            single_utterance=draw(st.booleans()),
            word_timestamps=draw(st.booleans()),
            max_alternatives=draw(st.integers(0, 3)),
            hotwords=draw(st.lists(st.text(max_size=20), max_size=3)),
        )
    endpointing = recognizer_pb2.EndpointingConfig()
    if draw(st.booleans()):
        endpointing.silence_ms = draw(st.integers(-(2**31), 2**31 - 1))
        endpointing.max_utterance_s = draw(st.floats(allow_nan=True, allow_infinity=True, width=32))
        endpointing.vad_aggressiveness = draw(st.integers(-5, 10))
        endpointing.min_speech_ms = draw(st.integers(-(2**31), 2**31 - 1))
    return recognizer_pb2.RecognitionConfig(
        encoding=draw(st.integers(0, 6)),
        sample_rate_hz=draw(st.sampled_from([0, 8000, 16000, 48000]) | st.integers(-(2**31), 2**31 - 1)),
        channels=draw(st.integers(-1, 12)),
        language=draw(st.sampled_from(["", "en", "en-US", "fr"]) | st.text(max_size=20)),
        interim_results=draw(st.booleans()),
        single_utterance=draw(st.booleans()),
        endpointing=endpointing,
        max_alternatives=draw(st.integers(-5, 100)),
        word_timestamps=draw(st.booleans()),
        hotwords=draw(st.lists(st.text(max_size=200), max_size=120)),
        prompt=draw(st.text(max_size=1200)),
        context=draw(request_context()),
        model_tier=draw(st.integers(0, 4)),
    )


@st.composite
def unary_request(draw: st.DrawFn) -> tuple[str, bytes]:
    method = draw(st.sampled_from(sorted(UNARY)))
    if draw(st.integers(0, 4)) == 0:
        return method, draw(st.binary(max_size=300))  # not a message at all, mostly
    msg: object
    if method.endswith("/Recognize"):
        msg = recognizer_pb2.RecognizeRequest(config=draw(recognition_config()), audio=draw(audio()))
    elif method.endswith("/Synthesize"):
        msg = _synthesize_request(draw)
    elif method.endswith("/Warmup"):
        msg = cache_admin_pb2.WarmupRequest(
            phrases=draw(st.lists(texts, max_size=5)),
            templates=draw(st.lists(st.text(max_size=80), max_size=3)),
            voice=draw(st.text(max_size=30)),
            speaking_rate=draw(st.floats(width=32)),
            encoding=draw(st.integers(0, 6)),
            sample_rate_hz=draw(st.integers(-(2**31), 2**31 - 1)),
        )
    elif method.endswith("/PurgeUser"):
        msg = cache_admin_pb2.PurgeUserRequest(
            tenant_id=draw(st.text(max_size=150)), user_id=draw(st.text(max_size=150))
        )
    elif method.endswith("/SubmitCorrection"):
        msg = cache_admin_pb2.SubmitCorrectionRequest(
            context=draw(request_context()), audio=draw(audio()), corrected_transcript=draw(texts)
        )
    elif method.endswith("/GetStats"):
        msg = cache_admin_pb2.GetStatsRequest(tenant_id=draw(st.text(max_size=50)))
    elif method.endswith("/ListVoices"):
        msg = synthesizer_pb2.ListVoicesRequest(language=draw(st.text(max_size=50)))
    else:
        return method, draw(st.binary(max_size=100))
    return method, msg.SerializeToString()  # type: ignore[attr-defined]


def _synthesize_request(draw: st.DrawFn) -> synthesizer_pb2.SynthesizeRequest:
    if draw(st.integers(0, 2)) > 0:  # a plausible request around hostile text
        req = synthesizer_pb2.SynthesizeRequest(
            encoding=draw(st.sampled_from([0, 1, 2, 4])), sample_rate_hz=draw(st.sampled_from([0, 16000]))
        )
    else:
        req = synthesizer_pb2.SynthesizeRequest(
            voice=draw(st.sampled_from(["", "heart"]) | st.text(max_size=40)),
            speaking_rate=draw(st.floats(width=32)),
            encoding=draw(st.integers(0, 6)),
            sample_rate_hz=draw(st.sampled_from([0, 8000, 16000, 24000]) | st.integers(-(2**31), 2**31 - 1)),
            context=draw(request_context()),
        )
    kind = draw(st.sampled_from(["text", "ssml", "template", "none"]))
    if kind == "text":
        req.text = draw(texts)
    elif kind == "ssml":
        inner = draw(st.text(max_size=200))
        req.ssml = draw(
            st.sampled_from([f"<speak>{inner}</speak>", inner, f'<speak><break time="{inner}"/></speak>'])
        )
    elif kind == "template":
        req.template.template = draw(st.text(max_size=120))
        for k, v in draw(st.dictionaries(st.text(max_size=10), st.text(max_size=40), max_size=4)).items():
            req.template.entities[k] = v
    return req


@st.composite
def synthesize_payload(draw: st.DrawFn) -> bytes:
    if draw(st.booleans()):
        return draw(st.binary(max_size=200))
    return _synthesize_request(draw).SerializeToString()


@st.composite
def stream_messages(draw: st.DrawFn) -> list[bytes]:
    def config() -> bytes:
        return recognizer_pb2.StreamingRecognizeRequest(
            config=recognizer_pb2.StreamingRecognitionConfig(
                config=draw(recognition_config()),
                stream_id=draw(st.sampled_from(["", "", "kitchen-1"]) | st.text(max_size=80)),
                resume_token=draw(st.sampled_from([b"", b"", b"", b"x"])),
            )
        ).SerializeToString()

    messages = [config() if draw(st.integers(0, 5)) else draw(st.binary(max_size=200))]
    for _ in range(draw(st.integers(0, 8))):
        kind = draw(st.sampled_from(["audio", "audio", "audio", "config", "end", "empty", "bytes"]))
        if kind == "audio":
            messages.append(recognizer_pb2.StreamingRecognizeRequest(audio=draw(audio())).SerializeToString())
        elif kind == "config":
            messages.append(config())
        elif kind == "end":
            messages.append(recognizer_pb2.StreamingRecognizeRequest(end_of_audio={}).SerializeToString())
        elif kind == "empty":
            messages.append(b"")
        else:
            messages.append(draw(st.binary(max_size=200)))
    return messages


def test_unary_rpcs_never_answer_internal_or_hang(server: RunningServer, channel: grpc.Channel) -> None:
    @FUZZ
    @given(unary_request())
    def check(case: tuple[str, bytes]) -> None:
        _unary(channel, *case)

    with canary(server.target):
        check()


def test_streams_never_answer_internal_or_hang(server: RunningServer, channel: grpc.Channel) -> None:
    @FUZZ
    @given(stream_messages())
    def check(messages: list[bytes]) -> None:
        _streaming(channel, BIDI[0], messages, bidi=True)

    with canary(server.target):
        check()


def test_server_streams_and_reflection_never_answer_internal_or_hang(channel: grpc.Channel) -> None:
    @FUZZ
    @given(st.sampled_from(["synth", "reflect"]), st.data())
    def check(kind: str, data: st.DataObject) -> None:
        if kind == "synth":
            _streaming(channel, STREAM_OUT[0], [data.draw(synthesize_payload())], bidi=False)
        else:
            _streaming(channel, BIDI[1], data.draw(st.lists(st.binary(max_size=100), max_size=3)), bidi=True)

    check()
