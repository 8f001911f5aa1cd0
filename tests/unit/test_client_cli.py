"""The voxwire command line, run in-process against a small fake server on 127.0.0.1:0."""

from __future__ import annotations

import io
import json
import socket
import struct
import wave
from collections.abc import Iterator
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from voxwire.audio import write_wav
from voxwire.cli import _StreamPrinter, main
from voxwire.types import Alternative, CacheStatus, ModelTier, RecognitionResult, StreamUpdate
from voxwire.v1 import (
    cache_admin_pb2,
    cache_admin_pb2_grpc,
    common_pb2,
    recognizer_pb2,
    recognizer_pb2_grpc,
    synthesizer_pb2,
    synthesizer_pb2_grpc,
)


def _wav_bytes(pcm: bytes, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with wave.open(buf, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm)
    return buf.getvalue()


def _alt(text: str, words: list[Any] | None = None) -> Any:
    return recognizer_pb2.SpeechRecognitionAlternative(transcript=text, words=words or [])


@dataclass
class FakeServer(
    recognizer_pb2_grpc.RecognizerServicer,
    synthesizer_pb2_grpc.SynthesizerServicer,
    cache_admin_pb2_grpc.CacheAdminServicer,
):
    requests: list[Any] = field(default_factory=list)
    fail_with: tuple[grpc.StatusCode, str] | None = None

    def Recognize(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if self.fail_with:
            context.abort(*self.fail_with)
        words = [recognizer_pb2.WordInfo(word=" Hi", start_ms=100, end_ms=420)]
        results = [
            recognizer_pb2.RecognitionResult(alternatives=[_alt(" Hi there.", words)], is_final=True),
            recognizer_pb2.RecognitionResult(alternatives=[_alt("Bye.")], is_final=True),
        ]
        return recognizer_pb2.RecognizeResponse(results=results, audio_duration_ms=2000)

    def StreamingRecognize(self, request_iterator: Any, context: Any) -> Iterator[Any]:
        for request in request_iterator:
            self.requests.append(request)
            if request.WhichOneof("request") == "end_of_audio":
                break
        started = recognizer_pb2.SpeechEvent(
            type=recognizer_pb2.SpeechEvent.SPEECH_STARTED, audio_offset_ms=120
        )
        ended = recognizer_pb2.SpeechEvent(
            type=recognizer_pb2.SpeechEvent.END_OF_UTTERANCE, audio_offset_ms=3400
        )
        yield recognizer_pb2.StreamingRecognizeResponse(speech_event=started, stream_id="s1")
        yield recognizer_pb2.StreamingRecognizeResponse(
            result=recognizer_pb2.RecognitionResult(alternatives=[_alt(" turn on")]), stream_id="s1"
        )
        final = recognizer_pb2.RecognitionResult(
            alternatives=[_alt(" Turn on the lights.")], is_final=True, audio_start_ms=1200, audio_end_ms=3400
        )
        yield recognizer_pb2.StreamingRecognizeResponse(
            result=final, stream_id="s1", resume_token=b"\x00\x01"
        )
        yield recognizer_pb2.StreamingRecognizeResponse(speech_event=ended, stream_id="s1")

    def Synthesize(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        if self.fail_with:
            context.abort(*self.fail_with)
        pcm = b"\x05\x00" * 1600
        audio = _wav_bytes(pcm) if request.encoding == common_pb2.WAV else pcm
        return synthesizer_pb2.SynthesizeResponse(
            audio=audio, encoding=request.encoding, sample_rate_hz=16000, audio_duration_ms=100, voice="amy"
        )

    def SynthesizeStream(self, request: Any, context: Any) -> Iterator[Any]:
        self.requests.append(request)
        header = bytearray(_wav_bytes(b""))
        header[4:8] = header[40:44] = b"\xff\xff\xff\xff"  # a streamed WAV: sizes unknown
        parts = [bytes(header) + b"\x01\x00" * 800, b"\x02\x00" * 800]
        for i, part in enumerate(parts):
            yield synthesizer_pb2.SynthesisChunk(
                audio=part,
                encoding=common_pb2.WAV,
                sample_rate_hz=16000,
                audio_offset_ms=50 * i,
                audio_duration_ms=50,
                sequence=i,
                last=i == 1,
            )

    def ListVoices(self, request: Any, context: Any) -> Any:
        voices = [
            synthesizer_pb2.Voice(name="amy", language="en-US", gender="female", native_sample_rate_hz=22050),
            synthesizer_pb2.Voice(
                name="alan", language="en-GB", native_sample_rate_hz=16000, is_default=True
            ),
        ]
        return synthesizer_pb2.ListVoicesResponse(
            voices=[v for v in voices if v.language.lower().startswith(request.language.lower())]
        )

    def GetStats(self, request: Any, context: Any) -> Any:
        tier = cache_admin_pb2.CacheTierStats(tier="tts.phrase", entries=3, hits=1, misses=3, bytes=4096)
        return cache_admin_pb2.GetStatsResponse(tiers=[tier], server_version="0.1.0", active_streams=1)

    def PurgeUser(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return cache_admin_pb2.PurgeUserResponse(entries_removed=7)

    def Warmup(self, request: Any, context: Any) -> Any:
        self.requests.append(request)
        return cache_admin_pb2.WarmupResponse(
            phrases_cached=len(request.phrases), templates_cached=len(request.templates)
        )

    def SubmitCorrection(self, request: Any, context: Any) -> Any:
        context.abort(grpc.StatusCode.UNIMPLEMENTED, "not in this fake")


@pytest.fixture
def server() -> Iterator[tuple[str, FakeServer]]:
    grpc_server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    fake = FakeServer()
    recognizer_pb2_grpc.add_RecognizerServicer_to_server(fake, grpc_server)
    synthesizer_pb2_grpc.add_SynthesizerServicer_to_server(fake, grpc_server)
    cache_admin_pb2_grpc.add_CacheAdminServicer_to_server(fake, grpc_server)
    health_servicer = health.HealthServicer()
    health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
    health_servicer.set("voxwire.v1.Synthesizer", health_pb2.HealthCheckResponse.NOT_SERVING)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, grpc_server)
    port = grpc_server.add_insecure_port("127.0.0.1:0")
    grpc_server.start()
    yield f"127.0.0.1:{port}", fake
    grpc_server.stop(0).wait()


@pytest.fixture
def wav(tmp_path: Path) -> Path:
    path = tmp_path / "speech.wav"
    write_wav(path, b"\x00\x00" * 8000, 16000)
    return path


def test_transcribe_prints_the_text(
    server: tuple[str, FakeServer], wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    code = main(
        ["--server", target, "transcribe", "--hotword", "lights", str(wav), "--tier", "accurate", "--hotword",
         "living room lamp"]
    )  # fmt: skip
    assert code == 0
    assert capsys.readouterr().out == "Hi there. Bye.\n"
    (request,) = fake.requests
    assert request.config.model_tier == recognizer_pb2.MODEL_TIER_ACCURATE
    assert list(request.config.hotwords) == ["lights", "living room lamp"]
    assert request.config.sample_rate_hz == 16000


def test_transcribe_words_and_json(
    server: tuple[str, FakeServer], wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    assert main(["--server", target, "transcribe", str(wav), "--words"]) == 0
    assert capsys.readouterr().out.splitlines() == ["Hi there. Bye.", "     0.10-0.42s  Hi"]
    assert fake.requests[0].config.word_timestamps
    assert main(["--server", target, "transcribe", str(wav), "--json"]) == 0
    body = json.loads(capsys.readouterr().out)
    assert body["text"] == "Hi there. Bye."
    assert body["audio_duration_ms"] == 2000
    assert body["results"][0]["alternatives"][0]["words"][0]["start_ms"] == 100


def test_stream_prints_partials_finals_and_events_in_order(
    server: tuple[str, FakeServer], wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    args = ["--server", target, "stream", str(wav), "--interim", "--silence-ms", "300", "--chunk-ms", "250"]
    assert main(args) == 0
    assert capsys.readouterr().out.splitlines() == [
        "[speech started 0.12s]",
        "[partial] turn on",
        "[final  1.20-3.40s] Turn on the lights.",
        "[end of utterance 3.40s]",
    ]
    kinds = [r.WhichOneof("request") for r in fake.requests]
    assert kinds == ["config", "audio", "audio", "end_of_audio"]
    config = fake.requests[0].config.config
    assert config.interim_results
    assert config.endpointing.silence_ms == 300
    assert not config.endpointing.HasField("max_utterance_s")


def test_stream_json_prints_one_object_per_update(
    server: tuple[str, FakeServer], wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = server
    assert main(["--server", target, "stream", str(wav), "--json"]) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(lines) == 4
    assert lines[0]["speech_event"]["type"] == "speech_started"
    assert lines[0]["result"] is None
    assert lines[2]["result"]["transcript"] == " Turn on the lights."
    assert lines[2]["resume_token"] == "AAE="
    assert {line["stream_id"] for line in lines} == {"s1"}


def test_stream_printer_rewrites_partials_in_place_on_a_terminal() -> None:
    out = io.StringIO()
    printer = _StreamPrinter(out, in_place=True, as_json=False)

    def result(text: str, final: bool) -> StreamUpdate:
        r = RecognitionResult(
            (Alternative(text, 1.0),), final, 0.5, 0, 0, 1500, CacheStatus.NONE, ModelTier.FAST, 0.0
        )
        return StreamUpdate(r, None, "s", 0)

    printer.show(result("hel", False))
    printer.show(result("hello", False))
    printer.show(result("hello.", True))
    printer.show(result("next", False))
    printer.finish()
    assert out.getvalue() == (
        "\r\x1b[K[partial] hel"
        "\r\x1b[K[partial] hello"
        "\r\x1b[K[final  0.00-1.50s] hello.\n"
        "\r\x1b[K[partial] next"
        "\n"
    )


def test_say_writes_the_wav_the_server_returns(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    out = tmp_path / "hi.wav"
    assert (
        main(["--server", target, "say", "Hello there.", "-o", str(out), "--voice", "amy", "--rate", "1.5"])
        == 0
    )
    with wave.open(str(out), "rb") as wav:
        assert (wav.getframerate(), wav.getnframes()) == (16000, 1600)
    assert capsys.readouterr().err.startswith(f"wrote {out}: 0.10 s of audio at 16000 Hz, wav, voice amy")
    (request,) = fake.requests
    assert (request.text, request.voice, request.speaking_rate) == ("Hello there.", "amy", 1.5)


def test_say_a_template_for_a_user(server: tuple[str, FakeServer], tmp_path: Path) -> None:
    target, fake = server
    out = tmp_path / "next.wav"
    argv = ["--server", target, "say", "Next is {song} by {artist}.", "-o", str(out), "--template"]
    argv += ["--entity", "song=Let It Be", "--entity", "artist=the Beatles", "--user", "u1", "--tenant", "t1"]
    assert main([*argv, "--cache", "do_not_store"]) == 0
    (request,) = fake.requests
    assert request.WhichOneof("input") == "template"
    assert request.template.template == "Next is {song} by {artist}."
    assert dict(request.template.entities) == {"song": "Let It Be", "artist": "the Beatles"}
    assert (request.context.tenant_id, request.context.user_id) == ("t1", "u1")
    assert request.context.cache_policy == common_pb2.CACHE_POLICY_DO_NOT_STORE


def test_say_rejects_an_entity_without_a_template(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    assert main(["--server", target, "say", "Hi", "-o", str(tmp_path / "x.wav"), "--entity", "a=b"]) != 0
    assert "--entity needs --template" in capsys.readouterr().err
    assert main(["--server", target, "say", "{a}", "-o", str(tmp_path / "x.wav"), "--template",
                 "--entity", "novalue"]) != 0  # fmt: skip
    assert "NAME=VALUE" in capsys.readouterr().err
    assert fake.requests == []


def test_warmup_and_purge(server: tuple[str, FakeServer], capsys: pytest.CaptureFixture[str]) -> None:
    target, fake = server
    argv = [
        "--server",
        target,
        "warmup",
        "--phrase",
        "Okay.",
        "--phrase",
        "Sure.",
        "--template",
        "Hi {name}.",
    ]
    assert main([*argv, "--encoding", "ogg_opus", "--sample-rate", "48000"]) == 0
    assert capsys.readouterr().out.strip() == "cached 2 phrases and 1 template prefixes"
    warmup = fake.requests[0]
    assert (list(warmup.phrases), list(warmup.templates)) == (["Okay.", "Sure."], ["Hi {name}."])
    assert (warmup.encoding, warmup.sample_rate_hz) == (common_pb2.OGG_OPUS, 48000)
    assert main(["--server", target, "purge", "u1", "--tenant", "t1"]) == 0
    assert capsys.readouterr().out.strip() == "removed 7 cache entries"
    assert (fake.requests[1].tenant_id, fake.requests[1].user_id) == ("t1", "u1")


def test_say_linear16_writes_raw_samples(server: tuple[str, FakeServer], tmp_path: Path) -> None:
    target, fake = server
    out = tmp_path / "hi.raw"
    assert main(["--server", target, "say", "Hi", "-o", str(out), "--encoding", "linear16"]) == 0
    assert out.read_bytes() == b"\x05\x00" * 1600
    assert fake.requests[0].encoding == common_pb2.LINEAR16


def test_say_stream_joins_chunks_into_a_valid_wav(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = server
    out = tmp_path / "streamed.wav"
    assert main(["--server", target, "say", "Hi", "-o", str(out), "--stream"]) == 0
    with wave.open(str(out), "rb") as wav:
        assert wav.getnframes() == 1600
        assert wav.readframes(1600) == b"\x01\x00" * 800 + b"\x02\x00" * 800
    assert "2 chunks" in capsys.readouterr().err


def test_voices_and_stats(server: tuple[str, FakeServer], capsys: pytest.CaptureFixture[str]) -> None:
    target, _ = server
    assert main(["--server", target, "voices"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["amy", "en-US", "-", "female", "22050", "Hz"]
    assert lines[1].split() == ["alan", "en-GB", "-", "-", "16000", "Hz", "default"]
    assert main(["--server", target, "voices", "--json"]) == 0
    assert [v["name"] for v in json.loads(capsys.readouterr().out)] == ["amy", "alan"]
    assert main(["--server", target, "stats"]) == 0
    out = capsys.readouterr().out
    assert "server version      0.1.0" in out
    assert "tts.phrase" in out and "25.0" in out  # hit ratio 1 / 4


def test_health_exit_status(
    server: tuple[str, FakeServer], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    target, _ = server
    monkeypatch.setenv("VOXWIRE_SERVER", target)
    assert main(["health"]) == 0
    assert capsys.readouterr().out == "SERVING\n"
    assert main(["health", "--service", "voxwire.v1.Synthesizer"]) == 1
    assert capsys.readouterr().out == "NOT_SERVING\n"


def test_rpc_errors_are_printed_with_their_code(
    server: tuple[str, FakeServer], wav: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    fake.fail_with = (grpc.StatusCode.INVALID_ARGUMENT, "unsupported sample rate")
    assert main(["--server", target, "transcribe", str(wav)]) == 2
    assert capsys.readouterr().err == "voxwire: error: INVALID_ARGUMENT: unsupported sample rate\n"


def test_missing_file_and_bad_audio(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    assert main(["--server", target, "transcribe", str(tmp_path / "nope.wav")]) == 2
    assert capsys.readouterr().err == f"voxwire: error: no such file or directory: {tmp_path / 'nope.wav'}\n"
    raw = tmp_path / "a.raw"
    raw.write_bytes(b"\x00\x00" * 10)
    assert main(["--server", target, "stream", str(raw)]) == 2
    assert "raw PCM needs a sample rate" in capsys.readouterr().err
    assert fake.requests == []


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_exits_1_and_says_how_to_start_one(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--server", f"127.0.0.1:{_closed_port()}", "--timeout", "10", "voices"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("voxwire: error: UNAVAILABLE: ")
    assert "make serve" in err and "--server" in err
    assert err.count("\n") == 1


def test_usage_errors_exit_2_with_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["say", "hi"]) == 2  # -o is required
    err = capsys.readouterr().err
    assert "-o/--output" in err
    assert err.count("\n") == 1 and err.startswith("voxwire: error: ")


def test_server_and_timeout_go_before_or_after_the_command(
    server: tuple[str, FakeServer],
    wav: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    target, fake = server
    monkeypatch.setenv("VOXWIRE_SERVER", f"127.0.0.1:{_closed_port()}")
    assert main(["transcribe", str(wav), "--server", target, "--timeout", "30"]) == 0
    assert main(["--server", target, "transcribe", str(wav)]) == 0
    # Given in both places, the one after the command wins.
    assert main(["--server", f"127.0.0.1:{_closed_port()}", "health", "--server", target]) == 0
    assert len(fake.requests) == 2
    assert main(["voices", "--timeout", "5"]) == 1  # $VOXWIRE_SERVER: nothing listens there


def test_say_to_standard_output(
    server: tuple[str, FakeServer], capsysbinary: pytest.CaptureFixture[bytes]
) -> None:
    target, _ = server
    assert main(["--server", target, "say", "Hi", "-o", "-"]) == 0
    out, err = capsysbinary.readouterr()
    assert out == _wav_bytes(b"\x05\x00" * 1600)
    assert err.startswith(b"wrote standard output: 0.10 s of audio")
    assert main(["--server", target, "say", "Hi", "-o", "-", "--stream"]) == 0
    streamed = capsysbinary.readouterr().out
    with wave.open(io.BytesIO(streamed), "rb") as played:  # the sizes filled in, as in a file
        assert played.readframes(1600) == b"\x01\x00" * 800 + b"\x02\x00" * 800


def test_an_unwritable_output_is_refused_before_synthesis(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    missing = tmp_path / "no" / "such" / "dir" / "x.wav"
    assert main(["--server", target, "say", "Hi", "-o", str(missing)]) == 2
    assert capsys.readouterr().err == f"voxwire: error: no such file or directory: {missing}\n"
    assert main(["--server", target, "say", "Hi", "-o", str(tmp_path)]) == 2
    assert "is a directory" in capsys.readouterr().err
    assert fake.requests == []


def test_a_failed_synthesis_leaves_no_empty_file(
    server: tuple[str, FakeServer], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target, fake = server
    out = tmp_path / "x.wav"
    fake.fail_with = (grpc.StatusCode.INVALID_ARGUMENT, "bad SSML")
    assert main(["--server", target, "say", "Hi", "-o", str(out)]) == 2
    assert not out.exists()
    existing = tmp_path / "kept.wav"
    existing.write_bytes(b"old")
    assert main(["--server", target, "say", "Hi", "-o", str(existing)]) == 2
    assert existing.read_bytes() == b"old"


def test_voices_for_a_language_nobody_speaks_say_so(
    server: tuple[str, FakeServer], capsys: pytest.CaptureFixture[str]
) -> None:
    target, _ = server
    assert main(["--server", target, "voices", "--language", "xx"]) == 1
    assert (
        capsys.readouterr().err
        == "voxwire: error: no voice for language 'xx'; this server speaks: en-GB, en-US\n"
    )


def test_wav_files_the_wave_module_cannot_read_go_to_the_server_as_they_are(
    server: tuple[str, FakeServer], tmp_path: Path
) -> None:
    target, fake = server
    pcm = struct.pack("<1600f", *([0.25] * 1600))
    fmt = struct.pack("<HHIIHH", 3, 1, 16000, 64000, 4, 32)
    body = b"fmt " + struct.pack("<I", 16) + fmt + b"data" + struct.pack("<I", len(pcm)) + pcm
    path = tmp_path / "float.wav"
    path.write_bytes(b"RIFF" + struct.pack("<I", 4 + len(body)) + b"WAVE" + body)
    assert main(["--server", target, "transcribe", str(path)]) == 0
    (request,) = fake.requests
    assert request.config.encoding == common_pb2.WAV
    assert request.audio == path.read_bytes()
    assert main(["--server", target, "stream", str(path), "--realtime", "--chunk-ms", "50"]) == 0
    streamed = [r for r in fake.requests[1:] if r.WhichOneof("request") == "audio"]
    assert b"".join(r.audio for r in streamed) == path.read_bytes()
    assert len(streamed) == 2  # 0.1 s in 50 ms pieces


@pytest.mark.parametrize(
    "argv",
    [
        ["transcribe"],
        ["transcribe", "{wav}", "--tier", "huge"],
        ["transcribe", "{tmp}/missing.flac"],
        ["transcribe", "{tmp}/notes.txt"],
        ["stream", "{wav}", "--chunk-ms", "0"],
        ["say", "Hi", "-o", "{tmp}/none/x.wav"],
        ["say", "Hi", "-o", "{tmp}/x.wav", "--entity", "a=b"],
        ["voices", "--language", "xx"],
        ["warmup"],
        ["nosuchcommand"],
        ["--server", "127.0.0.1:{closed}", "--timeout", "5", "health"],
    ],
)
def test_every_error_is_one_line_and_a_non_zero_exit(
    server: tuple[str, FakeServer],
    wav: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
) -> None:
    target, _ = server
    (tmp_path / "notes.txt").write_text("not audio")
    filled = [a.format(wav=wav, tmp=tmp_path, closed=_closed_port()) for a in argv]
    if "--server" not in filled:
        filled = ["--server", target, *filled]
    assert main(filled) != 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("voxwire: error: "), err
    assert "Traceback" not in err
