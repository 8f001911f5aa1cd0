"""Protobuf ↔ domain values."""

from __future__ import annotations

import re

from voxwire.v1 import cache_admin_pb2, common_pb2, recognizer_pb2, synthesizer_pb2
from voxwire_server import auth
from voxwire_server.domain import (
    AudioFormat,
    CachePolicy,
    CacheStatus,
    DecodeOptions,
    EncodedAudio,
    Encoding,
    Endpointing,
    RecognitionOptions,
    RequestContext,
    Result,
    Resumability,
    Resumed,
    SpeechEvent,
    SpeechEventType,
    StreamUpdate,
    SynthesisCacheStatus,
    SynthesisInput,
    SynthesisRequest,
    Tier,
    UtteranceEnd,
    VoiceInfo,
)
from voxwire_server.errors import InvalidInput

_ENCODINGS_PB = {
    Encoding.LINEAR16: common_pb2.LINEAR16,
    Encoding.WAV: common_pb2.WAV,
    Encoding.FLAC: common_pb2.FLAC,
    Encoding.OGG_OPUS: common_pb2.OGG_OPUS,
}
_ENCODINGS: dict[int, Encoding] = {int(pb): domain for domain, pb in _ENCODINGS_PB.items()}
_POLICIES: dict[int, CachePolicy] = {
    common_pb2.CACHE_POLICY_UNSPECIFIED: CachePolicy.USE,
    common_pb2.CACHE_POLICY_USE: CachePolicy.USE,
    common_pb2.CACHE_POLICY_BYPASS: CachePolicy.BYPASS,
    common_pb2.CACHE_POLICY_DO_NOT_STORE: CachePolicy.DO_NOT_STORE,
}
_RESULT_CACHE_PB = {
    CacheStatus.NONE: recognizer_pb2.CACHE_STATUS_UNSPECIFIED,
    CacheStatus.MISS: recognizer_pb2.CACHE_STATUS_MISS,
    CacheStatus.EXACT: recognizer_pb2.CACHE_STATUS_EXACT,
    CacheStatus.FUZZY: recognizer_pb2.CACHE_STATUS_FUZZY,
    CacheStatus.COMPONENT: recognizer_pb2.CACHE_STATUS_COMPONENT,
    CacheStatus.NEGATIVE: recognizer_pb2.CACHE_STATUS_NEGATIVE,
    CacheStatus.CORRECTION: recognizer_pb2.CACHE_STATUS_CORRECTION,
    CacheStatus.SELF_ECHO: recognizer_pb2.CACHE_STATUS_SELF_ECHO,
}
_TIERS_PB = {Tier.FAST: recognizer_pb2.MODEL_TIER_FAST, Tier.ACCURATE: recognizer_pb2.MODEL_TIER_ACCURATE}
_EVENTS_PB = {
    SpeechEventType.SPEECH_STARTED: recognizer_pb2.SpeechEvent.SPEECH_STARTED,
    SpeechEventType.END_OF_UTTERANCE: recognizer_pb2.SpeechEvent.END_OF_UTTERANCE,
    SpeechEventType.END_OF_SINGLE_UTTERANCE: recognizer_pb2.SpeechEvent.END_OF_SINGLE_UTTERANCE,
}
_ENDS_PB = {
    UtteranceEnd.SILENCE: recognizer_pb2.UTTERANCE_END_SILENCE,
    UtteranceEnd.MAX_DURATION: recognizer_pb2.UTTERANCE_END_MAX_DURATION,
    UtteranceEnd.END_OF_AUDIO: recognizer_pb2.UTTERANCE_END_END_OF_AUDIO,
    UtteranceEnd.STREAM_LIMIT: recognizer_pb2.UTTERANCE_END_STREAM_LIMIT,
    UtteranceEnd.SHUTDOWN: recognizer_pb2.UTTERANCE_END_SHUTDOWN,
}
MAX_HOTWORDS = 100
MAX_HOTWORD_CHARS = 100
# Hotwords and prompt together, in characters: checked before anything is tokenized (the recognizer
# then checks them in tokens: Whisper's prompt holds 223, shared with what was said before).
MAX_PROMPT_CHARS = 1000
MAX_REQUEST_ID_CHARS = 64
_REQUEST_ID = re.compile(rf"[A-Za-z0-9._:-]{{1,{MAX_REQUEST_ID_CHARS}}}")


def context(pb: common_pb2.RequestContext, request_id: str) -> RequestContext:
    """The request's context; its request_id is the client's when given (it goes into every log
    line, so it is held to a short, plain form), else the server's. The tenant is the caller's
    (from its API key), never the body's; see auth.scoped_ids."""
    if pb.cache_policy not in _POLICIES:
        raise InvalidInput(f"unknown cache_policy {pb.cache_policy}")
    if pb.request_id and not _REQUEST_ID.fullmatch(pb.request_id):
        raise InvalidInput(
            f"request_id must be 1 to {MAX_REQUEST_ID_CHARS} letters, digits or . _ : - (or empty)"
        )
    tenant_id, user_id = auth.scoped_ids(pb.tenant_id, pb.user_id)
    return RequestContext(
        tenant_id=tenant_id,
        user_id=user_id,
        cache_policy=_POLICIES[pb.cache_policy],
        request_id=pb.request_id or request_id,
    )


def stream_id(value: str) -> str:
    """A client's stream id: it is echoed in every response and logged, so short and plain."""
    if value and not _REQUEST_ID.fullmatch(value):
        raise InvalidInput(
            f"stream_id must be 1 to {MAX_REQUEST_ID_CHARS} letters, digits or . _ : - (or empty)"
        )
    return value


def encoding(value: int, *, default: Encoding | None = None) -> Encoding:
    if value == common_pb2.AUDIO_ENCODING_UNSPECIFIED and default is not None:
        return default
    if value not in _ENCODINGS:
        raise InvalidInput("encoding must be set to LINEAR16, WAV, FLAC or OGG_OPUS")
    return _ENCODINGS[value]


def recognition_options(
    pb: recognizer_pb2.RecognitionConfig, defaults: Endpointing, default_tier: Tier, request_id: str
) -> RecognitionOptions:
    enc = encoding(pb.encoding)
    if enc is Encoding.LINEAR16 and pb.sample_rate_hz <= 0:
        raise InvalidInput("sample_rate_hz is required for LINEAR16 audio")
    if pb.sample_rate_hz < 0 or pb.channels < 0:
        raise InvalidInput("sample_rate_hz and channels must not be negative")
    if pb.max_alternatives < 0:
        raise InvalidInput("max_alternatives must not be negative")
    if len(pb.hotwords) > MAX_HOTWORDS:
        raise InvalidInput(f"at most {MAX_HOTWORDS} hotwords, got {len(pb.hotwords)}")
    longest = max((len(h) for h in pb.hotwords), default=0)
    if longest > MAX_HOTWORD_CHARS:
        raise InvalidInput(f"a hotword is {longest} characters; the limit is {MAX_HOTWORD_CHARS}")
    chars = len(pb.prompt) + sum(len(h) + 1 for h in pb.hotwords)
    if chars > MAX_PROMPT_CHARS:
        raise InvalidInput(
            f"hotwords and prompt are {chars} characters together; the limit is {MAX_PROMPT_CHARS}"
        )
    tiers: dict[int, Tier] = {
        recognizer_pb2.MODEL_TIER_UNSPECIFIED: default_tier,
        recognizer_pb2.MODEL_TIER_FAST: Tier.FAST,
        recognizer_pb2.MODEL_TIER_ACCURATE: Tier.ACCURATE,
    }
    if pb.model_tier not in tiers:
        raise InvalidInput(f"unknown model_tier {pb.model_tier}")
    e = pb.endpointing
    endpointing = Endpointing(
        silence_ms=e.silence_ms if e.HasField("silence_ms") else defaults.silence_ms,
        max_utterance_s=e.max_utterance_s if e.HasField("max_utterance_s") else defaults.max_utterance_s,
        vad_aggressiveness=e.vad_aggressiveness
        if e.HasField("vad_aggressiveness")
        else defaults.vad_aggressiveness,
        min_speech_ms=e.min_speech_ms if e.HasField("min_speech_ms") else defaults.min_speech_ms,
        pre_roll_ms=defaults.pre_roll_ms,
    )
    return RecognitionOptions(
        audio=AudioFormat(enc, pb.sample_rate_hz, pb.channels),
        decode=DecodeOptions(
            tier=tiers[pb.model_tier],
            language=pb.language or "en",
            word_timestamps=pb.word_timestamps,
            max_alternatives=max(1, pb.max_alternatives),
            hotwords=tuple(h.strip() for h in pb.hotwords if h.strip()),
            prompt=pb.prompt.strip(),
        ),
        endpointing=endpointing,
        interim_results=pb.interim_results,
        single_utterance=pb.single_utterance,
        context=context(pb.context, request_id),
    )


def result(r: Result) -> recognizer_pb2.RecognitionResult:
    return recognizer_pb2.RecognitionResult(
        alternatives=[
            recognizer_pb2.SpeechRecognitionAlternative(
                transcript=a.text,
                confidence=a.confidence,
                words=[
                    recognizer_pb2.WordInfo(
                        word=w.text,
                        start_ms=round(w.start_s * 1000),
                        end_ms=round(w.end_s * 1000),
                        confidence=w.probability,
                    )
                    for w in a.words
                ],
            )
            for a in r.alternatives
        ],
        is_final=r.is_final,
        stability=r.stability,
        utterance_index=r.utterance_index,
        audio_start_ms=r.start_ms,
        audio_end_ms=r.end_ms,
        cache_status=_RESULT_CACHE_PB[r.cache_status],
        cache_key=r.cache_key,
        model_tier=_TIERS_PB[r.tier],
        processing_latency_ms=r.processing_latency_ms,
        end=_ENDS_PB[r.end] if r.end is not None else recognizer_pb2.UTTERANCE_END_UNSPECIFIED,
    )


_RESUMABILITY_PB = {
    Resumability.RESUMABLE: recognizer_pb2.RESUMABILITY_RESUMABLE,
    Resumability.STORE_UNAVAILABLE: recognizer_pb2.RESUMABILITY_STORE_UNAVAILABLE,
    Resumability.NOT_RESUMABLE: recognizer_pb2.RESUMABILITY_NOT_RESUMABLE,
}


def stream_update(update: StreamUpdate, stream_id: str) -> recognizer_pb2.StreamingRecognizeResponse:
    response = recognizer_pb2.StreamingRecognizeResponse(
        stream_id=stream_id, committed_audio_offset_ms=update.committed_offset_ms
    )
    if update.resume is not None:
        response.resumability = _RESUMABILITY_PB[update.resume.status]
        response.resume_token = update.resume.token
        response.resume_offset_bytes = update.resume.offset_bytes
    payload = update.payload
    if isinstance(payload, Resumed):
        response.resumed.finals_resent = payload.finals_resent
    elif isinstance(payload, SpeechEvent):
        response.speech_event.CopyFrom(
            recognizer_pb2.SpeechEvent(
                type=_EVENTS_PB[payload.type],
                audio_offset_ms=payload.offset_ms,
                utterance_index=payload.utterance_index,
            )
        )
    else:
        response.result.CopyFrom(result(payload))
    return response


def synthesis_request(pb: synthesizer_pb2.SynthesizeRequest, request_id: str) -> SynthesisRequest:
    kind = pb.WhichOneof("input")
    if kind is None:
        raise InvalidInput("text is empty: set text, ssml or template")
    if pb.sample_rate_hz < 0:
        raise InvalidInput("sample_rate_hz must not be negative")
    text = pb.text
    entities: tuple[tuple[str, str], ...] = ()
    if kind == "ssml":
        text = pb.ssml
    elif kind == "template":
        text, entities = pb.template.template, tuple(sorted(pb.template.entities.items()))
    return SynthesisRequest(
        text=text,
        voice=pb.voice,
        speaking_rate=pb.speaking_rate or 1.0,
        encoding=encoding(pb.encoding, default=Encoding.WAV),
        sample_rate_hz=pb.sample_rate_hz,
        context=context(pb.context, request_id),
        input=SynthesisInput(kind),
        entities=entities,
    )


def warmup_request(pb: cache_admin_pb2.WarmupRequest, request_id: str) -> SynthesisRequest:
    """The voice and format a Warmup fills the cache for (its phrases and templates come apart)."""
    if pb.sample_rate_hz < 0:
        raise InvalidInput("sample_rate_hz must not be negative")
    return SynthesisRequest(
        text="",
        voice=pb.voice,
        speaking_rate=pb.speaking_rate or 1.0,
        encoding=encoding(pb.encoding, default=Encoding.WAV),
        sample_rate_hz=pb.sample_rate_hz,
        context=RequestContext(request_id=request_id),
    )


_CACHE_STATUS_PB = {
    SynthesisCacheStatus.NONE: synthesizer_pb2.SYNTHESIS_CACHE_STATUS_UNSPECIFIED,
    SynthesisCacheStatus.MISS: synthesizer_pb2.SYNTHESIS_CACHE_STATUS_MISS,
    SynthesisCacheStatus.HIT: synthesizer_pb2.SYNTHESIS_CACHE_STATUS_HIT,
    SynthesisCacheStatus.STITCHED: synthesizer_pb2.SYNTHESIS_CACHE_STATUS_STITCHED,
}


def cache_status_pb(value: SynthesisCacheStatus) -> synthesizer_pb2.SynthesisCacheStatus.ValueType:
    return _CACHE_STATUS_PB[value]


def encoding_pb(value: Encoding) -> common_pb2.AudioEncoding.ValueType:
    return _ENCODINGS_PB[value]


def chunk(audio: EncodedAudio, sequence: int) -> synthesizer_pb2.SynthesisChunk:
    return synthesizer_pb2.SynthesisChunk(
        audio=audio.data,
        encoding=encoding_pb(audio.encoding),
        sample_rate_hz=audio.sample_rate_hz,
        audio_offset_ms=audio.offset_ms,
        audio_duration_ms=audio.duration_ms,
        cache_status=cache_status_pb(audio.cache_status),
        sequence=sequence,
        last=audio.last,
    )


def voice(v: VoiceInfo, sample_rates_hz: tuple[int, ...]) -> synthesizer_pb2.Voice:
    return synthesizer_pb2.Voice(
        name=v.name,
        language=v.language,
        accent=v.accent,
        gender=v.gender,
        native_sample_rate_hz=v.native_sample_rate_hz,
        sample_rates_hz=list(sample_rates_hz),
        is_default=v.is_default,
    )
