"""Everything the sync and asyncio clients share: protobuf <-> voxwire.types, request building, and
turning the audio a caller passes into config + chunks. Private: the public API has no protobuf."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Mapping
from types import ModuleType

import grpc

from voxwire.audio import AudioFile, encoding_for_path, pcm_duration_s, read_audio_file
from voxwire.types import (
    Alternative,
    AudioEncoding,
    CachePolicy,
    CacheStatus,
    CacheTierStats,
    ModelTier,
    RecognitionConfig,
    RecognitionResult,
    Resumability,
    ServerStats,
    SpeechEvent,
    SpeechEventType,
    StreamUpdate,
    SynthesisCacheStatus,
    SynthesisChunk,
    SynthesisResult,
    Tls,
    Transcript,
    UtteranceEnd,
    Voice,
    Word,
)
from voxwire.v1 import cache_admin_pb2, common_pb2, recognizer_pb2, synthesizer_pb2

AudioPath = str | os.PathLike[str]
AudioInput = bytes | AudioPath

# The server decides how large a request may be (it answers OUT_OF_RANGE beyond its limit); the
# client takes replies up to this size.
MAX_RECEIVE_BYTES = 256 * 1024 * 1024
DEFAULT_CHANNEL_OPTIONS: dict[str, int | str] = {
    "grpc.max_send_message_length": -1,
    "grpc.max_receive_message_length": MAX_RECEIVE_BYTES,
    # A stream resumes once the channel has reconnected: after a lost connection, try again soon
    # (gRPC's own first wait is 1 s).
    "grpc.initial_reconnect_backoff_ms": 100,
    "grpc.min_reconnect_backoff_ms": 100,
    "grpc.max_reconnect_backoff_ms": 2000,
}

_ENCODING_TO_PB: dict[AudioEncoding, common_pb2.AudioEncoding.ValueType] = {
    AudioEncoding.LINEAR16: common_pb2.LINEAR16,
    AudioEncoding.WAV: common_pb2.WAV,
    AudioEncoding.FLAC: common_pb2.FLAC,
    AudioEncoding.OGG_OPUS: common_pb2.OGG_OPUS,
}
_ENCODING_FROM_PB = {v: k for k, v in _ENCODING_TO_PB.items()}
_CACHE_POLICY_TO_PB: dict[CachePolicy, common_pb2.CachePolicy.ValueType] = {
    CachePolicy.USE: common_pb2.CACHE_POLICY_USE,
    CachePolicy.BYPASS: common_pb2.CACHE_POLICY_BYPASS,
    CachePolicy.DO_NOT_STORE: common_pb2.CACHE_POLICY_DO_NOT_STORE,
}
_TIER_TO_PB: dict[ModelTier, recognizer_pb2.ModelTier.ValueType] = {
    ModelTier.DEFAULT: recognizer_pb2.MODEL_TIER_UNSPECIFIED,
    ModelTier.FAST: recognizer_pb2.MODEL_TIER_FAST,
    ModelTier.ACCURATE: recognizer_pb2.MODEL_TIER_ACCURATE,
}
_TIER_FROM_PB = {v: k for k, v in _TIER_TO_PB.items()}
_CACHE_STATUS_FROM_PB: dict[recognizer_pb2.CacheStatus.ValueType, CacheStatus] = {
    recognizer_pb2.CACHE_STATUS_UNSPECIFIED: CacheStatus.NONE,
    recognizer_pb2.CACHE_STATUS_MISS: CacheStatus.MISS,
    recognizer_pb2.CACHE_STATUS_EXACT: CacheStatus.EXACT,
    recognizer_pb2.CACHE_STATUS_FUZZY: CacheStatus.FUZZY,
    recognizer_pb2.CACHE_STATUS_COMPONENT: CacheStatus.COMPONENT,
    recognizer_pb2.CACHE_STATUS_NEGATIVE: CacheStatus.NEGATIVE,
    recognizer_pb2.CACHE_STATUS_CORRECTION: CacheStatus.CORRECTION,
    recognizer_pb2.CACHE_STATUS_SELF_ECHO: CacheStatus.SELF_ECHO,
}
_SYNTH_CACHE_FROM_PB: dict[synthesizer_pb2.SynthesisCacheStatus.ValueType, SynthesisCacheStatus] = {
    synthesizer_pb2.SYNTHESIS_CACHE_STATUS_UNSPECIFIED: SynthesisCacheStatus.NONE,
    synthesizer_pb2.SYNTHESIS_CACHE_STATUS_MISS: SynthesisCacheStatus.MISS,
    synthesizer_pb2.SYNTHESIS_CACHE_STATUS_HIT: SynthesisCacheStatus.HIT,
    synthesizer_pb2.SYNTHESIS_CACHE_STATUS_STITCHED: SynthesisCacheStatus.STITCHED,
}
_END_FROM_PB: dict[recognizer_pb2.UtteranceEnd.ValueType, UtteranceEnd] = {
    recognizer_pb2.UTTERANCE_END_SILENCE: UtteranceEnd.SILENCE,
    recognizer_pb2.UTTERANCE_END_MAX_DURATION: UtteranceEnd.MAX_DURATION,
    recognizer_pb2.UTTERANCE_END_END_OF_AUDIO: UtteranceEnd.END_OF_AUDIO,
    recognizer_pb2.UTTERANCE_END_STREAM_LIMIT: UtteranceEnd.STREAM_LIMIT,
    recognizer_pb2.UTTERANCE_END_SHUTDOWN: UtteranceEnd.SHUTDOWN,
}
_EVENT_FROM_PB: dict[recognizer_pb2.SpeechEvent.Type.ValueType, SpeechEventType] = {
    recognizer_pb2.SpeechEvent.SPEECH_STARTED: SpeechEventType.SPEECH_STARTED,
    recognizer_pb2.SpeechEvent.END_OF_UTTERANCE: SpeechEventType.END_OF_UTTERANCE,
    recognizer_pb2.SpeechEvent.END_OF_SINGLE_UTTERANCE: SpeechEventType.END_OF_SINGLE_UTTERANCE,
}

END_OF_AUDIO = recognizer_pb2.StreamingRecognizeRequest(end_of_audio=recognizer_pb2.EndOfAudio())


def channel_options(
    extra: Iterable[tuple[str, int | str]], tls: Tls | None = None
) -> list[tuple[str, int | str]]:
    """The default options with the caller's on top (one value per key)."""
    options = dict(DEFAULT_CHANNEL_OPTIONS)
    if tls is not None and tls.server_name:
        options["grpc.ssl_target_name_override"] = tls.server_name
    options.update(extra)
    return list(options.items())


def channel_credentials(tls: Tls) -> grpc.ChannelCredentials:
    if (tls.certificate_chain is None) != (tls.private_key is None):
        raise ValueError("Tls: certificate_chain and private_key go together (mutual TLS)")
    return grpc.ssl_channel_credentials(tls.root_certificates, tls.private_key, tls.certificate_chain)


def auth_metadata(api_key: str | None) -> tuple[tuple[str, str], ...]:
    """The metadata every call carries: the API key as a bearer token."""
    if not api_key:
        return ()
    if api_key != api_key.strip() or any(c in api_key for c in "\r\n"):
        raise ValueError("api_key must not contain spaces at its ends or line breaks")
    return (("authorization", f"Bearer {api_key}"),)


def encoding_to_pb(encoding: AudioEncoding | None) -> common_pb2.AudioEncoding.ValueType:
    return common_pb2.AUDIO_ENCODING_UNSPECIFIED if encoding is None else _ENCODING_TO_PB[encoding]


def encoding_from_pb(value: common_pb2.AudioEncoding.ValueType, default: AudioEncoding) -> AudioEncoding:
    return _ENCODING_FROM_PB.get(value, default)


def context_to_pb(
    tenant_id: str, user_id: str, cache_policy: CachePolicy = CachePolicy.USE, request_id: str = ""
) -> common_pb2.RequestContext:
    return common_pb2.RequestContext(
        tenant_id=tenant_id,
        user_id=user_id,
        cache_policy=_CACHE_POLICY_TO_PB[cache_policy],
        request_id=request_id,
    )


def recognition_config_to_pb(config: RecognitionConfig) -> recognizer_pb2.RecognitionConfig:
    pb = recognizer_pb2.RecognitionConfig(
        encoding=encoding_to_pb(config.encoding),
        sample_rate_hz=config.sample_rate_hz or 0,
        channels=config.channels or 0,
        language=config.language,
        interim_results=config.interim_results,
        single_utterance=config.single_utterance,
        max_alternatives=config.max_alternatives,
        word_timestamps=config.word_timestamps,
        hotwords=list(config.hotwords),
        prompt=config.prompt,
        context=context_to_pb(config.tenant_id, config.user_id, config.cache_policy, config.request_id),
        model_tier=_TIER_TO_PB[config.model_tier],
    )
    if config.endpointing is not None:
        ep = config.endpointing
        pb.endpointing.SetInParent()
        if ep.silence_ms is not None:
            pb.endpointing.silence_ms = ep.silence_ms
        if ep.max_utterance_s is not None:
            pb.endpointing.max_utterance_s = ep.max_utterance_s
        if ep.vad_aggressiveness is not None:
            pb.endpointing.vad_aggressiveness = ep.vad_aggressiveness
        if ep.min_speech_ms is not None:
            pb.endpointing.min_speech_ms = ep.min_speech_ms
    return pb


def result_from_pb(pb: recognizer_pb2.RecognitionResult) -> RecognitionResult:
    return RecognitionResult(
        alternatives=tuple(
            Alternative(
                transcript=alt.transcript,
                confidence=alt.confidence,
                words=tuple(Word(w.word, w.start_ms, w.end_ms, w.confidence) for w in alt.words),
            )
            for alt in pb.alternatives
        ),
        is_final=pb.is_final,
        stability=pb.stability,
        utterance_index=pb.utterance_index,
        audio_start_ms=pb.audio_start_ms,
        audio_end_ms=pb.audio_end_ms,
        cache_status=_CACHE_STATUS_FROM_PB.get(pb.cache_status, CacheStatus.NONE),
        model_tier=_TIER_FROM_PB.get(pb.model_tier, ModelTier.DEFAULT),
        processing_latency_ms=pb.processing_latency_ms,
        end=_END_FROM_PB.get(pb.end, UtteranceEnd.UNSPECIFIED),
        cache_key=pb.cache_key,
    )


def transcript_from_pb(pb: recognizer_pb2.RecognizeResponse) -> Transcript:
    return Transcript(
        results=tuple(result_from_pb(r) for r in pb.results),
        audio_duration_ms=pb.audio_duration_ms,
        processing_latency_ms=pb.processing_latency_ms,
    )


def stream_update_from_pb(pb: recognizer_pb2.StreamingRecognizeResponse) -> StreamUpdate:
    kind = pb.WhichOneof("response")
    event = None
    if kind == "speech_event":
        ev = pb.speech_event
        event = SpeechEvent(
            type=_EVENT_FROM_PB.get(ev.type, SpeechEventType.UNSPECIFIED),
            audio_offset_ms=ev.audio_offset_ms,
            utterance_index=ev.utterance_index,
        )
    return StreamUpdate(
        result=result_from_pb(pb.result) if kind == "result" else None,
        speech_event=event,
        stream_id=pb.stream_id,
        committed_audio_offset_ms=pb.committed_audio_offset_ms,
        resume_token=pb.resume_token,
        resume_offset_bytes=pb.resume_offset_bytes,
        resumability=_RESUMABILITY_FROM_PB.get(pb.resumability, Resumability.UNSPECIFIED),
        resumed=kind == "resumed",
    )


_RESUMABILITY_FROM_PB = {
    recognizer_pb2.RESUMABILITY_RESUMABLE: Resumability.RESUMABLE,
    recognizer_pb2.RESUMABILITY_STORE_UNAVAILABLE: Resumability.STORE_UNAVAILABLE,
    recognizer_pb2.RESUMABILITY_NOT_RESUMABLE: Resumability.NOT_RESUMABLE,
}


def stream_head(
    config: RecognitionConfig, stream_id: str, resume_token: bytes
) -> recognizer_pb2.StreamingRecognizeRequest:
    """The first message of a recognition stream."""
    return recognizer_pb2.StreamingRecognizeRequest(
        config=recognizer_pb2.StreamingRecognitionConfig(
            config=recognition_config_to_pb(config), stream_id=stream_id, resume_token=resume_token
        )
    )


def audio_message(chunk: object) -> recognizer_pb2.StreamingRecognizeRequest:
    if not isinstance(chunk, bytes | bytearray | memoryview):
        raise TypeError(f"audio chunks must be bytes, got {type(chunk).__name__}")
    return recognizer_pb2.StreamingRecognizeRequest(audio=bytes(chunk))


def is_whole_audio(source: object) -> bool:
    """Whether a stream source is a path or a bytes object rather than an iterable of chunks."""
    return isinstance(source, str | os.PathLike | bytes | bytearray | memoryview)


def load_audio(
    audio: AudioInput | bytearray | memoryview, config: RecognitionConfig | None
) -> tuple[AudioFile, RecognitionConfig]:
    """Reads a path (blocking) or wraps bytes; returns the audio and the config with its gaps filled.

    Raises ValueError for bytes without ``config.encoding`` (or LINEAR16 without a sample rate) and
    for a config that contradicts the file.
    """
    config = config or RecognitionConfig()
    if isinstance(audio, bytes | bytearray | memoryview):
        encoding = require_encoding(config)
        data = bytes(audio)
        if encoding is AudioEncoding.LINEAR16:
            rate, channels = config.sample_rate_hz or 0, config.channels or 1
            return AudioFile(
                data, encoding, rate, channels, pcm_duration_s(len(data), rate, channels)
            ), config
        return AudioFile(data, encoding, config.sample_rate_hz or 0, config.channels or 0, None), config
    file_encoding = encoding_for_path(audio)
    af = read_audio_file(audio, sample_rate_hz=config.sample_rate_hz, channels=config.channels or 1)
    name = os.fspath(audio)
    if config.encoding not in (None, file_encoding, af.encoding):
        raise ValueError(
            f"{name} is {file_encoding.name} audio but config.encoding is {config.encoding.name}"
        )
    if af.encoding is not AudioEncoding.LINEAR16:
        return af, dataclasses.replace(config, encoding=af.encoding)
    for field, value in (("sample_rate_hz", af.sample_rate_hz), ("channels", af.channels)):
        given = getattr(config, field)
        if given is not None and given != value:
            raise ValueError(f"{name} has {field}={value} but config.{field} is {given}")
    return af, dataclasses.replace(
        config, encoding=af.encoding, sample_rate_hz=af.sample_rate_hz, channels=af.channels
    )


def check_stream_args(
    source: object, config: RecognitionConfig | None, chunk_ms: int, realtime: bool
) -> None:
    """Argument errors of a stream call, raised before any I/O."""
    if chunk_ms <= 0:
        raise ValueError(f"chunk_ms must be positive, got {chunk_ms}")
    if not is_whole_audio(source):
        if realtime:
            raise ValueError("realtime=True paces a path or bytes source; pace a chunk iterable yourself")
        require_encoding(config)


def require_encoding(config: RecognitionConfig | None) -> AudioEncoding:
    """The encoding of audio given as bytes or chunks, which the config must name."""
    if config is None or config.encoding is None:
        raise ValueError("audio given as bytes or chunks needs config=RecognitionConfig(encoding=...)")
    if config.encoding is AudioEncoding.LINEAR16 and not config.sample_rate_hz:
        raise ValueError("LINEAR16 audio needs config.sample_rate_hz")
    return config.encoding


def plan_whole_audio(
    source: AudioInput | bytearray | memoryview,
    config: RecognitionConfig | None,
    chunk_ms: int,
    realtime: bool,
) -> tuple[RecognitionConfig, list[bytes], float | None]:
    """For a stream from a path or bytes: the config, the chunks, and the pacing interval (realtime)."""
    af, config = load_audio(source, config)
    if realtime and not af.can_pace:
        raise ValueError("realtime=True needs audio of known duration (PCM, WAV, or FLAC/Ogg with headers)")
    return config, af.chunks(chunk_ms), chunk_ms / 1000 if realtime else None


def synthesize_request(
    *,
    text: str | None,
    ssml: str | None,
    template: str | None,
    entities: Mapping[str, str] | None,
    voice: str,
    speaking_rate: float,
    encoding: AudioEncoding,
    sample_rate_hz: int,
    tenant_id: str,
    user_id: str,
    cache_policy: CachePolicy,
    request_id: str,
) -> synthesizer_pb2.SynthesizeRequest:
    given = [
        name for name, value in (("text", text), ("ssml", ssml), ("template", template)) if value is not None
    ]
    if len(given) != 1:
        raise ValueError(f"give exactly one of text, ssml or template (got {', '.join(given) or 'none'})")
    if entities is not None and template is None:
        raise ValueError("entities are only used with template")
    request = synthesizer_pb2.SynthesizeRequest(
        voice=voice,
        speaking_rate=speaking_rate,
        encoding=encoding_to_pb(encoding),
        sample_rate_hz=sample_rate_hz,
        context=context_to_pb(tenant_id, user_id, cache_policy, request_id),
    )
    if text is not None:
        request.text = text
    elif ssml is not None:
        request.ssml = ssml
    else:
        request.template.template = template or ""
        request.template.entities.update(entities or {})
    return request


def synthesis_result_from_pb(
    pb: synthesizer_pb2.SynthesizeResponse, requested: AudioEncoding
) -> SynthesisResult:
    return SynthesisResult(
        audio=pb.audio,
        encoding=encoding_from_pb(pb.encoding, requested),
        sample_rate_hz=pb.sample_rate_hz,
        audio_duration_ms=pb.audio_duration_ms,
        cache_status=_SYNTH_CACHE_FROM_PB.get(pb.cache_status, SynthesisCacheStatus.NONE),
        voice=pb.voice,
    )


def synthesis_chunk_from_pb(pb: synthesizer_pb2.SynthesisChunk, requested: AudioEncoding) -> SynthesisChunk:
    return SynthesisChunk(
        audio=pb.audio,
        encoding=encoding_from_pb(pb.encoding, requested),
        sample_rate_hz=pb.sample_rate_hz,
        audio_offset_ms=pb.audio_offset_ms,
        audio_duration_ms=pb.audio_duration_ms,
        cache_status=_SYNTH_CACHE_FROM_PB.get(pb.cache_status, SynthesisCacheStatus.NONE),
        sequence=pb.sequence,
        last=pb.last,
    )


def voices_from_pb(pb: synthesizer_pb2.ListVoicesResponse) -> list[Voice]:
    return [
        Voice(
            name=v.name,
            language=v.language,
            accent=v.accent,
            gender=v.gender,
            native_sample_rate_hz=v.native_sample_rate_hz,
            sample_rates_hz=tuple(v.sample_rates_hz),
            is_default=v.is_default,
        )
        for v in pb.voices
    ]


def stats_from_pb(pb: cache_admin_pb2.GetStatsResponse) -> ServerStats:
    return ServerStats(
        tiers=tuple(
            CacheTierStats(
                t.tier,
                t.entries,
                t.hits,
                t.misses,
                t.bytes,
                tenant_id=t.tenant_id,
                requests=t.requests,
                model_seconds_saved=t.model_seconds_saved,
                hit_latency_p50_ms=t.hit_latency_p50_ms,
                miss_latency_p50_ms=t.miss_latency_p50_ms,
                collisions=t.collisions,
            )
            for t in pb.tiers
        ),
        uptime_s=pb.uptime_s,
        active_streams=pb.active_streams,
        recognize_requests=pb.recognize_requests,
        streaming_requests=pb.streaming_requests,
        synthesize_requests=pb.synthesize_requests,
        server_version=pb.server_version,
        asr_model=pb.asr_model,
        tts_model=pb.tts_model,
        asr_model_bypass_ratio=pb.asr_model_bypass_ratio,
        asr_model_version=pb.asr_model_version,
    )


def warmup_request(
    phrases: Iterable[str],
    templates: Iterable[str],
    voice: str,
    speaking_rate: float,
    encoding: AudioEncoding,
    sample_rate_hz: int,
) -> cache_admin_pb2.WarmupRequest:
    if isinstance(phrases, str) or isinstance(templates, str):
        raise TypeError("phrases and templates must be sequences of strings, not a single string")
    return cache_admin_pb2.WarmupRequest(
        phrases=list(phrases),
        templates=list(templates),
        voice=voice,
        speaking_rate=speaking_rate,
        encoding=encoding_to_pb(encoding),
        sample_rate_hz=sample_rate_hz,
    )


def correction_request(
    af: AudioFile | None,
    corrected_transcript: str,
    tenant_id: str,
    user_id: str,
    request_id: str,
    cache_key: str = "",
    language: str = "",
) -> cache_admin_pb2.SubmitCorrectionRequest:
    if (af is None) == (not cache_key):
        raise ValueError("give either the audio or a result's cache_key, not both")
    request = cache_admin_pb2.SubmitCorrectionRequest(
        context=context_to_pb(tenant_id, user_id, CachePolicy.USE, request_id),
        corrected_transcript=corrected_transcript,
        cache_key=cache_key,
        language=language,
    )
    if af is not None:
        request.audio = af.data
        request.encoding = encoding_to_pb(af.encoding)
        request.sample_rate_hz = af.sample_rate_hz if af.encoding is AudioEncoding.LINEAR16 else 0
    return request


def health_modules() -> tuple[ModuleType, ModuleType]:
    """grpc_health.v1's health_pb2 and health_pb2_grpc, imported on first use (an optional dependency)."""
    try:
        from grpc_health.v1 import health_pb2, health_pb2_grpc
    except ImportError as exc:
        raise ImportError(
            "health() needs the grpcio-health-checking package: pip install grpcio-health-checking"
        ) from exc
    return health_pb2, health_pb2_grpc


def health_status_name(health_pb2: ModuleType, status: int) -> str:
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(status))
