"""The values the client API takes and returns: frozen dataclasses and string enums, no protobuf.

Times are in milliseconds (``*_ms``) or seconds (``*_s``), rates in hertz (``*_hz``). Enum values
are lower-case strings, so ``json.dumps(dataclasses.asdict(result))`` works.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field

__all__ = [
    "Alternative",
    "AudioEncoding",
    "CachePolicy",
    "CacheStatus",
    "CacheTierStats",
    "Endpointing",
    "ModelTier",
    "RecognitionConfig",
    "RecognitionResult",
    "Resumability",
    "ServerStats",
    "SpeechEvent",
    "SpeechEventType",
    "StreamUpdate",
    "SynthesisCacheStatus",
    "SynthesisChunk",
    "SynthesisResult",
    "Tls",
    "Transcript",
    "UtteranceEnd",
    "Voice",
    "Word",
]


class AudioEncoding(enum.StrEnum):
    """Audio format of input (recognition) or output (synthesis) audio."""

    LINEAR16 = "linear16"
    """Raw little-endian signed 16-bit PCM, channels interleaved."""
    WAV = "wav"
    FLAC = "flac"
    OGG_OPUS = "ogg_opus"


class ModelTier(enum.StrEnum):
    """Which recognition model tier to use."""

    DEFAULT = "default"
    """The server's default tier."""
    FAST = "fast"
    """Low latency (greedy decoding)."""
    ACCURATE = "accurate"
    """Higher accuracy (beam search or a larger model)."""


class CachePolicy(enum.StrEnum):
    """What the server may do with its caches for a request."""

    USE = "use"
    """Look up and store."""
    BYPASS = "bypass"
    """Neither look up nor store."""
    DO_NOT_STORE = "do_not_store"
    """Look up, but store nothing derived from this request."""


class CacheStatus(enum.StrEnum):
    """Which recognition cache tier answered a result."""

    NONE = "none"
    """No cache was consulted."""
    MISS = "miss"
    """Consulted; the model decoded it."""
    EXACT = "exact"
    """The same audio was decoded before."""
    FUZZY = "fuzzy"
    """The same recording arrived again (re-encoded, noisier): matched by its fingerprint."""
    COMPONENT = "component"
    NEGATIVE = "negative"
    """Audio that decoded to nothing before: dropped, the result has no alternatives."""
    CORRECTION = "correction"
    """A transcript submitted with ``submit_correction``."""
    SELF_ECHO = "self_echo"
    """The server's own synthesized speech heard back: dropped, the result has no alternatives."""


class SynthesisCacheStatus(enum.StrEnum):
    """How the synthesis cache took part in producing audio."""

    NONE = "none"
    """No cache was consulted."""
    MISS = "miss"
    HIT = "hit"
    STITCHED = "stitched"
    """A cached template prefix spliced with freshly synthesized entities."""


class UtteranceEnd(enum.StrEnum):
    """Why a final came when it did (:attr:`RecognitionResult.end`)."""

    UNSPECIFIED = "unspecified"
    """Partial results, and finals of servers that do not say."""
    SILENCE = "silence"
    """Trailing silence (the endpointer)."""
    MAX_DURATION = "max_duration"
    """Speech reached ``max_utterance_s`` and was cut at its quietest point."""
    END_OF_AUDIO = "end_of_audio"
    """The end of the audio: ``end_of_audio`` on a stream, the end of a clip."""
    STREAM_LIMIT = "stream_limit"
    """A stream limit stopped the stream (an ``OutOfRangeError`` follows)."""
    SHUTDOWN = "shutdown"
    """The server is shutting down: what was heard is final; an ``UnavailableError`` follows
    (reconnect, to another replica)."""


class SpeechEventType(enum.StrEnum):
    """Kinds of :class:`SpeechEvent`."""

    UNSPECIFIED = "unspecified"
    SPEECH_STARTED = "speech_started"
    END_OF_UTTERANCE = "end_of_utterance"
    END_OF_SINGLE_UTTERANCE = "end_of_single_utterance"
    """Sent once in single-utterance mode; the server then ends the stream."""


@dataclass(frozen=True, slots=True)
class Endpointing:
    """How the server decides that an utterance ended. None leaves a field at the server default."""

    silence_ms: int | None = None
    """Trailing silence that ends an utterance (server default 600 ms)."""
    max_utterance_s: float | None = None
    """An utterance is cut after this long (server default 15 s, at most 30 s)."""
    vad_aggressiveness: int | None = None
    """0 (least) to 3 (most aggressive at rejecting non-speech); server default 2."""
    min_speech_ms: int | None = None
    """Voiced audio needed before speech counts as started (server default 90 ms)."""


@dataclass(frozen=True, slots=True)
class RecognitionConfig:
    """Options of a recognition request.

    ``encoding``, ``sample_rate_hz`` and ``channels`` left as None are filled from the audio file
    when a client method is given a path; with raw bytes ``encoding`` is required, and
    ``sample_rate_hz`` too for LINEAR16.
    """

    encoding: AudioEncoding | None = None
    sample_rate_hz: int | None = None
    channels: int | None = None
    language: str = "en"
    """BCP-47 language of the speech."""
    interim_results: bool = False
    """Stream partial (non-final) results while an utterance is spoken."""
    single_utterance: bool = False
    """End the stream after the first utterance."""
    endpointing: Endpointing | None = None
    max_alternatives: int = 1
    word_timestamps: bool = False
    hotwords: tuple[str, ...] = ()
    """Words or phrases to favour."""
    prompt: str = ""
    """Free text that conditions the decoder (previous dialogue, domain words)."""
    tenant_id: str = ""
    user_id: str = ""
    cache_policy: CachePolicy = CachePolicy.USE
    model_tier: ModelTier = ModelTier.DEFAULT
    request_id: str = ""
    """Echoed in server logs; the server generates one when empty."""

    def __post_init__(self) -> None:
        hotwords: object = self.hotwords
        if isinstance(hotwords, str):
            raise TypeError("hotwords must be a sequence of strings, not a single string")
        if not isinstance(hotwords, tuple):
            object.__setattr__(self, "hotwords", tuple(self.hotwords))


@dataclass(frozen=True, slots=True)
class Word:
    """One recognised word with its position in the audio."""

    word: str
    start_ms: int
    end_ms: int
    confidence: float
    """Probability the model gave this word, 0..1."""


@dataclass(frozen=True, slots=True)
class Alternative:
    """One hypothesis of what was said."""

    transcript: str
    confidence: float
    """0..1: the geometric mean of the token probabilities."""
    words: tuple[Word, ...] = ()
    """Filled when ``word_timestamps`` was asked for."""


@dataclass(frozen=True, slots=True)
class RecognitionResult:
    """A partial or final result for one utterance (stream) or segment (clip)."""

    alternatives: tuple[Alternative, ...]
    is_final: bool
    stability: float
    """0..1 estimate that a partial result will not change; 1 for finals."""
    utterance_index: int
    audio_start_ms: int
    audio_end_ms: int
    cache_status: CacheStatus
    model_tier: ModelTier
    processing_latency_ms: float
    end: UtteranceEnd = UtteranceEnd.UNSPECIFIED
    """Finals: why the utterance ended there."""
    cache_key: str = ""
    """Finals a recognition cache was consulted for: pass it to ``submit_correction`` when the
    transcript was wrong."""

    @property
    def transcript(self) -> str:
        """The first alternative's transcript, or "" when there is none."""
        return self.alternatives[0].transcript if self.alternatives else ""


@dataclass(frozen=True, slots=True)
class SpeechEvent:
    """Voice activity news from a stream."""

    type: SpeechEventType
    audio_offset_ms: int
    utterance_index: int


class Resumability(enum.StrEnum):
    """Whether the server can resume a stream from its :attr:`StreamUpdate.resume_token`."""

    UNSPECIFIED = "unspecified"
    """A server that does not say (one without stream state)."""
    RESUMABLE = "resumable"
    STORE_UNAVAILABLE = "store_unavailable"
    """The server's state store failed: the stream goes on, not resumable until a write succeeds."""
    NOT_RESUMABLE = "not_resumable"
    """Compressed audio (FLAC, OGG_OPUS), or a server that keeps no stream state."""


@dataclass(frozen=True, slots=True)
class StreamUpdate:
    """One message of a recognition stream: a result or a speech event (exactly one is set), or, when
    a stream was resumed by hand with ``resume_token``, the notice ``resumed``."""

    result: RecognitionResult | None
    speech_event: SpeechEvent | None
    stream_id: str
    committed_audio_offset_ms: int
    """Audio before this offset is fully transcribed (covered by finals)."""
    resume_token: bytes = b""
    """Opaque token to resume the stream after a disconnect (the client library does so itself; keep
    the latest one to resume by hand). Empty when the stream cannot be resumed."""
    resume_offset_bytes: int = 0
    """The byte of the audio sent (after the config) from which a resume of the server's latest
    stored state sends it again: the audio before it is no longer needed."""
    resumability: Resumability = Resumability.UNSPECIFIED
    resumed: bool = False
    """The first update of a stream resumed by hand: send its audio from ``resume_offset_bytes``."""


@dataclass(frozen=True, slots=True)
class Transcript:
    """The answer to a whole-clip recognition: one final result per segment, in order."""

    results: tuple[RecognitionResult, ...]
    audio_duration_ms: int
    processing_latency_ms: float

    @property
    def text(self) -> str:
        """The final transcripts joined with single spaces."""
        parts = (r.transcript.strip() for r in self.results if r.is_final)
        return " ".join(p for p in parts if p)


@dataclass(frozen=True, slots=True)
class SynthesisResult:
    """A whole synthesized utterance."""

    audio: bytes
    """Encoded audio: a complete file for WAV and OGG_OPUS, raw samples for LINEAR16."""
    encoding: AudioEncoding
    sample_rate_hz: int
    audio_duration_ms: int
    cache_status: SynthesisCacheStatus
    voice: str


@dataclass(frozen=True, slots=True)
class SynthesisChunk:
    """A piece of a streamed synthesis. For WAV, concatenating the chunks gives a streamable file."""

    audio: bytes
    encoding: AudioEncoding
    sample_rate_hz: int
    audio_offset_ms: int
    """Position of this chunk's first sample in the whole utterance."""
    audio_duration_ms: int
    cache_status: SynthesisCacheStatus
    sequence: int
    """0-based chunk number."""
    last: bool
    """True on the final chunk."""


@dataclass(frozen=True, slots=True)
class Voice:
    """A synthesis voice the server offers."""

    name: str
    language: str
    accent: str
    gender: str
    native_sample_rate_hz: int
    sample_rates_hz: tuple[int, ...]
    is_default: bool


@dataclass(frozen=True, slots=True)
class CacheTierStats:
    """Counters of one cache tier, e.g. ``"asr.exact"`` or ``"tts.phrase"``."""

    tier: str
    entries: int
    hits: int
    misses: int
    size_bytes: int
    tenant_id: str = ""
    """Recognition tiers: the tenant of this row (one row per tier and tenant)."""
    requests: int = 0
    model_seconds_saved: float = 0.0
    """Decoder time the hits did not spend."""
    hit_latency_p50_ms: float = 0.0
    miss_latency_p50_ms: float = 0.0
    collisions: int = 0
    """Fuzzy: times one entry answered many different recordings within a minute."""

    @property
    def hit_ratio(self) -> float | None:
        """hits / (hits + misses), or None before any lookup."""
        lookups = self.hits + self.misses
        return self.hits / lookups if lookups else None


@dataclass(frozen=True, slots=True)
class ServerStats:
    """Server-wide (or one tenant's) counters."""

    tiers: tuple[CacheTierStats, ...]
    uptime_s: float
    active_streams: int
    recognize_requests: int
    streaming_requests: int
    synthesize_requests: int
    server_version: str
    asr_model: str
    tts_model: str
    asr_model_bypass_ratio: float = 0.0
    """Utterances answered or dropped by a recognition cache tier, of those looked up."""
    asr_model_version: str = ""


@dataclass(frozen=True, slots=True)
class Tls:
    """TLS for the connection to the server.

    Args:
        root_certificates: PEM CA bundle that signed the server's certificate; None uses the
            system's roots.
        certificate_chain: PEM certificate of this client, for a server that asks for one
            (mutual TLS); goes with ``private_key``.
        private_key: PEM private key of ``certificate_chain``.
        server_name: the name to check the server's certificate against, when it differs from
            the host in the target (e.g. connecting by IP address).
    """

    root_certificates: bytes | None = None
    certificate_chain: bytes | None = None
    private_key: bytes | None = field(default=None, repr=False)
    server_name: str | None = None

    @classmethod
    def from_files(
        cls,
        ca: str | None = None,
        cert: str | None = None,
        key: str | None = None,
        *,
        server_name: str | None = None,
    ) -> Tls:
        """Reads the PEM files named (None: not used)."""

        def read(path: str | None) -> bytes | None:
            if path is None:
                return None
            with open(path, "rb") as f:
                return f.read()

        return cls(read(ca), read(cert), read(key), server_name)
