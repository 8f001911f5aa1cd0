"""Values that flow between transport, sessions and engines (no grpc, no numpy)."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field


class Encoding(enum.Enum):
    LINEAR16 = "linear16"
    WAV = "wav"
    FLAC = "flac"
    OGG_OPUS = "ogg_opus"


class Tier(enum.Enum):
    FAST = "fast"
    ACCURATE = "accurate"


class CachePolicy(enum.Enum):
    USE = "use"
    BYPASS = "bypass"
    DO_NOT_STORE = "do_not_store"


class CacheStatus(enum.Enum):
    """Which recognition cache tier answered a result."""

    # No cache was consulted (caching off, BYPASS, or a partial).
    NONE = "none"
    # Consulted; the model decoded it.
    MISS = "miss"
    EXACT = "exact"
    FUZZY = "fuzzy"
    # The model decoded it, with an encoder output from the cache.
    COMPONENT = "component"
    # A fingerprint of audio that decoded to nothing before: dropped, no transcript.
    NEGATIVE = "negative"
    CORRECTION = "correction"
    # The server's own synthesized speech heard back: dropped, no transcript.
    SELF_ECHO = "self_echo"


@dataclass(frozen=True, slots=True)
class RequestContext:
    tenant_id: str = ""
    user_id: str = ""
    cache_policy: CachePolicy = CachePolicy.USE
    request_id: str = ""


@dataclass(frozen=True, slots=True)
class AudioFormat:
    encoding: Encoding
    # 0: take it from the container.
    sample_rate_hz: int = 0
    # 0: 1 for raw PCM, the container's count otherwise.
    channels: int = 0


@dataclass(frozen=True, slots=True)
class PcmFormat:
    """The PCM a stream's audio is before resampling (for WAV, what its header said)."""

    sample_rate_hz: int
    channels: int
    bits: int = 16
    floating: bool = False


@dataclass(frozen=True, slots=True)
class Endpointing:
    silence_ms: int = 600
    max_utterance_s: float = 15.0
    vad_aggressiveness: int = 2
    min_speech_ms: int = 90
    # Audio kept from before speech was detected so the first syllable is not clipped.
    pre_roll_ms: int = 300


@dataclass(frozen=True, slots=True)
class DecodeOptions:
    tier: Tier = Tier.FAST
    language: str = "en"
    word_timestamps: bool = False
    max_alternatives: int = 1
    hotwords: tuple[str, ...] = ()
    prompt: str = ""


@dataclass(frozen=True, slots=True)
class RecognitionOptions:
    audio: AudioFormat
    decode: DecodeOptions = field(default_factory=DecodeOptions)
    endpointing: Endpointing = field(default_factory=Endpointing)
    interim_results: bool = False
    single_utterance: bool = False
    context: RequestContext = field(default_factory=RequestContext)


@dataclass(frozen=True, slots=True)
class Word:
    text: str
    start_s: float
    end_s: float
    probability: float


@dataclass(frozen=True, slots=True)
class Alternative:
    text: str
    # Geometric mean of the token probabilities, 0..1.
    confidence: float
    words: tuple[Word, ...] = ()


@dataclass(frozen=True, slots=True)
class Result:
    alternatives: tuple[Alternative, ...]
    is_final: bool
    utterance_index: int
    start_ms: int
    end_ms: int
    tier: Tier
    processing_latency_ms: float
    stability: float = 1.0
    # Finals: why the utterance ended (None on partials).
    end: UtteranceEnd | None = None
    cache_status: CacheStatus = CacheStatus.NONE
    # Finals a cache was consulted for: the utterance's audio key, for SubmitCorrection.
    cache_key: str = ""


class UtteranceEnd(enum.Enum):
    SILENCE = "silence"
    MAX_DURATION = "max_duration"
    END_OF_AUDIO = "end_of_audio"
    STREAM_LIMIT = "stream_limit"
    SHUTDOWN = "shutdown"


class SpeechEventType(enum.Enum):
    SPEECH_STARTED = "speech_started"
    END_OF_UTTERANCE = "end_of_utterance"
    END_OF_SINGLE_UTTERANCE = "end_of_single_utterance"


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    type: SpeechEventType
    offset_ms: int
    utterance_index: int


@dataclass(frozen=True, slots=True)
class StreamUpdate:
    """What a recognition stream sends: a result, a speech event or the notice that it resumed, how far
    it has committed, and how it can be resumed."""

    payload: Result | SpeechEvent | Resumed
    committed_offset_ms: int
    resume: ResumeInfo | None = None


class Resumability(enum.Enum):
    # The stream's state is stored: resume_token resumes it.
    RESUMABLE = "resumable"
    # The state store failed: the stream goes on, but cannot be resumed until a write succeeds again.
    STORE_UNAVAILABLE = "store_unavailable"
    # This stream cannot be resumed: compressed audio, or the server keeps no stream state.
    NOT_RESUMABLE = "not_resumable"


@dataclass(frozen=True, slots=True)
class ResumeInfo:
    status: Resumability
    # The token of the latest stored state, and the bytes of the client's audio (as sent, after the
    # config) that state covers: a client resuming with it sends its audio again from that offset.
    token: bytes = b""
    offset_bytes: int = 0


@dataclass(frozen=True, slots=True)
class Resumed:
    """The first message of a resumed stream: send the audio again from the update's offset_bytes."""

    finals_resent: int


# Inputs of a recognition stream, after the first (config) message.
@dataclass(frozen=True, slots=True)
class AudioChunk:
    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfAudio:
    pass


StreamInput = AudioChunk | EndOfAudio


@dataclass(frozen=True, slots=True)
class StreamStart:
    options: RecognitionOptions
    stream_id: str = ""
    resume_token: bytes = b""


class SynthesisInput(enum.Enum):
    TEXT = "text"
    SSML = "ssml"
    TEMPLATE = "template"


class SynthesisCacheStatus(enum.Enum):
    # No cache was consulted.
    NONE = "none"
    MISS = "miss"
    HIT = "hit"
    # A cached template prefix with freshly synthesized entities spliced on.
    STITCHED = "stitched"


@dataclass(frozen=True, slots=True)
class SynthesisRequest:
    # Plain text, an SSML document or a template with {slots}, as ``input`` says.
    text: str
    voice: str = ""
    speaking_rate: float = 1.0
    encoding: Encoding = Encoding.WAV
    # 0: the voice's native rate.
    sample_rate_hz: int = 0
    context: RequestContext = field(default_factory=RequestContext)
    input: SynthesisInput = SynthesisInput.TEXT
    # Slot values of a template, as (name, value) pairs.
    entities: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class VoiceInfo:
    name: str
    language: str
    accent: str
    gender: str
    native_sample_rate_hz: int
    is_default: bool


@dataclass(frozen=True, slots=True)
class EncodedAudio:
    data: bytes
    encoding: Encoding
    sample_rate_hz: int
    offset_ms: int
    duration_ms: int
    # The final piece of a streamed utterance.
    last: bool = False
    cache_status: SynthesisCacheStatus = SynthesisCacheStatus.NONE
