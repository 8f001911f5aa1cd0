"""voxwire.types and the private pb <-> types conversion."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

import voxwire
from voxwire import _convert
from voxwire.audio import write_wav
from voxwire.types import (
    Alternative,
    AudioEncoding,
    CachePolicy,
    CacheStatus,
    CacheTierStats,
    Endpointing,
    ModelTier,
    RecognitionConfig,
    RecognitionResult,
    SpeechEventType,
    SynthesisCacheStatus,
    Transcript,
)
from voxwire.v1 import cache_admin_pb2, common_pb2, recognizer_pb2, synthesizer_pb2


def _result(text: str, *, final: bool = True) -> RecognitionResult:
    return RecognitionResult(
        alternatives=(Alternative(text, 0.9),),
        is_final=final,
        stability=1.0,
        utterance_index=0,
        audio_start_ms=0,
        audio_end_ms=10,
        cache_status=CacheStatus.NONE,
        model_tier=ModelTier.FAST,
        processing_latency_ms=1.0,
    )


def test_transcript_text_joins_finals_only() -> None:
    transcript = Transcript(
        results=(_result(" hello "), _result("ignored", final=False), _result(""), _result("world.")),
        audio_duration_ms=1000,
        processing_latency_ms=5.0,
    )
    assert transcript.text == "hello world."


def test_result_transcript_is_empty_without_alternatives() -> None:
    result = dataclasses.replace(_result("x"), alternatives=())
    assert result.transcript == ""
    assert _result("first").transcript == "first"


def test_values_are_frozen_and_slotted() -> None:
    config = RecognitionConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.language = "de"  # type: ignore[misc]
    assert not hasattr(config, "__dict__")


def test_hotwords_become_a_tuple_and_a_bare_string_is_refused() -> None:
    config = RecognitionConfig(hotwords=["voxwire", "hibari"])  # type: ignore[arg-type]
    assert config.hotwords == ("voxwire", "hibari")
    with pytest.raises(TypeError):
        RecognitionConfig(hotwords="voxwire")  # type: ignore[arg-type]


def test_cache_tier_hit_ratio() -> None:
    assert CacheTierStats("asr.exact", 1, 3, 1, 10).hit_ratio == pytest.approx(0.75)
    assert CacheTierStats("asr.exact", 0, 0, 0, 0).hit_ratio is None


def test_enum_values_are_json_strings() -> None:
    body = json.dumps(dataclasses.asdict(_result("hi")))
    assert '"cache_status": "none"' in body
    assert '"model_tier": "fast"' in body


def test_public_names_are_exported() -> None:
    for name in voxwire.__all__:
        assert hasattr(voxwire, name), name
    assert voxwire.__version__ == "0.1.0"
    assert {"Client", "AsyncClient", "VoxwireError", "read_audio_file", "StreamUpdate"} <= set(
        voxwire.__all__
    )


def test_config_to_pb_sets_every_field() -> None:
    config = RecognitionConfig(
        encoding=AudioEncoding.FLAC,
        sample_rate_hz=44100,
        channels=2,
        language="de",
        interim_results=True,
        single_utterance=True,
        endpointing=Endpointing(silence_ms=300, vad_aggressiveness=0),
        max_alternatives=3,
        word_timestamps=True,
        hotwords=("a", "b"),
        prompt="context",
        tenant_id="t",
        user_id="u",
        cache_policy=CachePolicy.DO_NOT_STORE,
        model_tier=ModelTier.ACCURATE,
        request_id="r1",
    )
    pb = _convert.recognition_config_to_pb(config)
    assert pb.encoding == common_pb2.FLAC
    assert (pb.sample_rate_hz, pb.channels, pb.language) == (44100, 2, "de")
    assert pb.interim_results and pb.single_utterance and pb.word_timestamps
    assert pb.max_alternatives == 3
    assert list(pb.hotwords) == ["a", "b"]
    assert pb.prompt == "context"
    assert pb.model_tier == recognizer_pb2.MODEL_TIER_ACCURATE
    assert (pb.context.tenant_id, pb.context.user_id, pb.context.request_id) == ("t", "u", "r1")
    assert pb.context.cache_policy == common_pb2.CACHE_POLICY_DO_NOT_STORE
    # Only the endpointing fields that were given are present (the rest keep server defaults).
    assert pb.HasField("endpointing")
    assert pb.endpointing.HasField("silence_ms") and pb.endpointing.silence_ms == 300
    assert pb.endpointing.HasField("vad_aggressiveness") and pb.endpointing.vad_aggressiveness == 0
    assert not pb.endpointing.HasField("max_utterance_s")
    assert not pb.endpointing.HasField("min_speech_ms")


def test_default_config_to_pb_leaves_server_defaults() -> None:
    pb = _convert.recognition_config_to_pb(RecognitionConfig())
    assert pb.encoding == common_pb2.AUDIO_ENCODING_UNSPECIFIED
    assert (pb.sample_rate_hz, pb.channels) == (0, 0)
    assert not pb.HasField("endpointing")
    assert pb.model_tier == recognizer_pb2.MODEL_TIER_UNSPECIFIED
    assert pb.context.cache_policy == common_pb2.CACHE_POLICY_USE


def test_stream_update_from_pb() -> None:
    event = recognizer_pb2.StreamingRecognizeResponse(
        speech_event=recognizer_pb2.SpeechEvent(
            type=recognizer_pb2.SpeechEvent.END_OF_UTTERANCE, audio_offset_ms=1200, utterance_index=2
        ),
        stream_id="s",
        committed_audio_offset_ms=1200,
        resume_token=b"tok",
    )
    update = _convert.stream_update_from_pb(event)
    assert update.result is None
    assert update.speech_event is not None
    assert update.speech_event.type is SpeechEventType.END_OF_UTTERANCE
    assert (update.speech_event.audio_offset_ms, update.speech_event.utterance_index) == (1200, 2)
    assert (update.stream_id, update.committed_audio_offset_ms, update.resume_token) == ("s", 1200, b"tok")

    result = recognizer_pb2.StreamingRecognizeResponse(
        result=recognizer_pb2.RecognitionResult(
            alternatives=[
                recognizer_pb2.SpeechRecognitionAlternative(
                    transcript="hi there",
                    confidence=0.5,
                    words=[recognizer_pb2.WordInfo(word="hi", start_ms=10, end_ms=200, confidence=0.25)],
                )
            ],
            is_final=True,
            cache_status=recognizer_pb2.CACHE_STATUS_FUZZY,
            model_tier=recognizer_pb2.MODEL_TIER_FAST,
        )
    )
    update = _convert.stream_update_from_pb(result)
    assert update.speech_event is None
    assert update.result is not None
    assert update.result.transcript == "hi there"
    assert update.result.cache_status is CacheStatus.FUZZY
    assert update.result.model_tier is ModelTier.FAST
    assert update.result.alternatives[0].words[0].word == "hi"
    assert update.result.alternatives[0].words[0].end_ms == 200


def test_unknown_enum_values_from_a_newer_server_do_not_break_conversion() -> None:
    pb = recognizer_pb2.RecognitionResult(cache_status=99, model_tier=42)  # type: ignore[arg-type]
    result = _convert.result_from_pb(pb)
    assert result.cache_status is CacheStatus.NONE
    assert result.model_tier is ModelTier.DEFAULT
    chunk = _convert.synthesis_chunk_from_pb(
        synthesizer_pb2.SynthesisChunk(encoding=77, cache_status=88),  # type: ignore[arg-type]
        AudioEncoding.OGG_OPUS,
    )
    assert chunk.encoding is AudioEncoding.OGG_OPUS
    assert chunk.cache_status is SynthesisCacheStatus.NONE


def _synth(**kwargs: object) -> synthesizer_pb2.SynthesizeRequest:
    defaults: dict[str, object] = {
        "text": None,
        "ssml": None,
        "template": None,
        "entities": None,
        "voice": "",
        "speaking_rate": 1.0,
        "encoding": AudioEncoding.WAV,
        "sample_rate_hz": 0,
        "tenant_id": "",
        "user_id": "",
        "cache_policy": CachePolicy.USE,
        "request_id": "",
    }
    defaults.update(kwargs)
    return _convert.synthesize_request(**defaults)  # type: ignore[arg-type]


def test_synthesize_request_needs_exactly_one_input() -> None:
    with pytest.raises(ValueError, match="none"):
        _synth()
    with pytest.raises(ValueError, match="text, ssml"):
        _synth(text="a", ssml="<speak/>")
    with pytest.raises(ValueError, match="entities"):
        _synth(text="a", entities={"x": "y"})


def test_synthesize_request_fills_the_oneof() -> None:
    assert _synth(text="").WhichOneof("input") == "text"  # empty text is the server's to refuse
    assert _synth(ssml="<speak>x</speak>").WhichOneof("input") == "ssml"
    pb = _synth(template="Next is {song}.", entities={"song": "Blue"}, encoding=AudioEncoding.LINEAR16)
    assert pb.WhichOneof("input") == "template"
    assert pb.template.template == "Next is {song}."
    assert dict(pb.template.entities) == {"song": "Blue"}
    assert pb.encoding == common_pb2.LINEAR16


def test_stats_and_voices_from_pb() -> None:
    stats = _convert.stats_from_pb(
        cache_admin_pb2.GetStatsResponse(
            tiers=[
                cache_admin_pb2.CacheTierStats(tier="tts.phrase", entries=2, hits=5, misses=1, bytes=1024)
            ],
            uptime_s=12.5,
            active_streams=3,
            server_version="0.1.0",
        )
    )
    assert stats.tiers[0].size_bytes == 1024
    assert (stats.uptime_s, stats.active_streams, stats.server_version) == (12.5, 3, "0.1.0")
    voices = _convert.voices_from_pb(
        synthesizer_pb2.ListVoicesResponse(
            voices=[synthesizer_pb2.Voice(name="amy", sample_rates_hz=[16000, 22050], is_default=True)]
        )
    )
    assert voices[0].sample_rates_hz == (16000, 22050)
    assert voices[0].is_default


def test_channel_options_defaults_and_overrides() -> None:
    options = dict(_convert.channel_options([("grpc.max_receive_message_length", 1024), ("grpc.x", "y")]))
    assert options["grpc.max_send_message_length"] == -1  # the server sets the request limit
    assert options["grpc.max_receive_message_length"] == 1024
    assert options["grpc.x"] == "y"


def test_load_audio_fills_unset_fields_from_a_wav(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, b"\x01\x00" * 800, 8000)
    af, config = _convert.load_audio(path, RecognitionConfig(language="fr"))
    assert af.data == b"\x01\x00" * 800
    assert (config.encoding, config.sample_rate_hz, config.channels) == (AudioEncoding.LINEAR16, 8000, 1)
    assert config.language == "fr"


def test_load_audio_refuses_a_config_that_contradicts_the_file(tmp_path: Path) -> None:
    path = tmp_path / "a.wav"
    write_wav(path, b"\x00\x00" * 10, 8000)
    with pytest.raises(ValueError, match="sample_rate_hz"):
        _convert.load_audio(path, RecognitionConfig(sample_rate_hz=16000))
    with pytest.raises(ValueError, match="config.encoding"):
        _convert.load_audio(path, RecognitionConfig(encoding=AudioEncoding.FLAC))
    # Naming the file's own type is not a contradiction.
    _, config = _convert.load_audio(path, RecognitionConfig(encoding=AudioEncoding.WAV))
    assert config.encoding is AudioEncoding.LINEAR16


def test_load_audio_bytes_need_an_encoding_and_pcm_a_rate() -> None:
    with pytest.raises(ValueError, match="encoding"):
        _convert.load_audio(b"\x00\x00", None)
    with pytest.raises(ValueError, match="sample_rate_hz"):
        _convert.load_audio(b"\x00\x00", RecognitionConfig(encoding=AudioEncoding.LINEAR16))
    af, _ = _convert.load_audio(b"\x00\x00" * 1600, RecognitionConfig(AudioEncoding.LINEAR16, 16000))
    assert af.duration_s == pytest.approx(0.1)
    af, _ = _convert.load_audio(b"fLaC....", RecognitionConfig(AudioEncoding.FLAC))
    assert (af.encoding, af.duration_s) == (AudioEncoding.FLAC, None)


def test_plan_whole_audio_realtime_needs_a_known_duration() -> None:
    with pytest.raises(ValueError, match="realtime"):
        _convert.plan_whole_audio(b"OggS....", RecognitionConfig(AudioEncoding.OGG_OPUS), 100, True)
    config, chunks, interval = _convert.plan_whole_audio(
        b"\x00\x00" * 1000, RecognitionConfig(AudioEncoding.LINEAR16, 8000), 50, True
    )
    assert interval == pytest.approx(0.05)
    assert [len(c) for c in chunks] == [800, 800, 400]
    assert config.sample_rate_hz == 8000
