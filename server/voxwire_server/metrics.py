"""Prometheus metrics, plus the plain counters GetStats reports."""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
)
from prometheus_client.core import CounterMetricFamily, Metric
from prometheus_client.registry import Collector

from voxwire_server.domain import Result, SpeechEvent, SpeechEventType, StreamUpdate
from voxwire_server.engines.batching import FINAL, PARTIAL, BatchWorker

# What a user waits for: fine steps around the ~100 ms targets, then up to minutes, so an overloaded
# server's latencies land in a bucket instead of all in +Inf.
_LATENCY_BUCKETS_S = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.6, 0.8,
    1, 1.6, 2.5, 5, 10, 30, 60, 120, 300,
)  # fmt: skip
# Time a window waits for a decoder worker: from a millisecond (idle) to minutes (a backlog).
_QUEUE_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)
_BATCH_SIZES = (1, 2, 3, 4, 6, 8, 12, 16, 32)
_KINDS = {FINAL: "final", PARTIAL: "partial"}
# Whole calls: a stream or a long clip can take minutes.
LONG_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800)


@dataclass
class Telemetry:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    started_at: float = field(default_factory=time.monotonic)
    recognize_requests: int = 0
    streaming_requests: int = 0
    synthesize_requests: int = 0
    active_streams: int = 0

    def __post_init__(self) -> None:
        r = self.registry
        # Process RSS, CPU seconds, open fds; the Python version; garbage collections.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.rpc_requests = Counter(
            "voxwire_rpc_requests",
            "calls by method and the status code they ended with",
            ["method", "code"],
            registry=r,
        )
        self.rpc_duration = Histogram(
            "voxwire_rpc_duration_seconds",
            "time from a call's start to its status, by method",
            ["method"],
            buckets=LONG_BUCKETS_S,
            registry=r,
        )
        self.streams = Gauge("voxwire_active_streams", "recognition streams in progress", registry=r)
        self._decoder_work = _DecoderWork()
        r.register(self._decoder_work)
        self.final_latency = Histogram(
            "voxwire_asr_final_latency_seconds",
            "time from the arrival of the audio that ended an utterance to its final result",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.first_partial_latency = Histogram(
            "voxwire_asr_first_partial_latency_seconds",
            "time from an utterance's SPEECH_STARTED event to its first interim result",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.recognize_latency = Histogram(
            "voxwire_asr_recognize_latency_seconds",
            "time from a Recognize request to its response (answered calls)",
            buckets=LONG_BUCKETS_S,
            registry=r,
        )
        self.synthesize_latency = Histogram(
            "voxwire_tts_synthesize_latency_seconds",
            "time from a Synthesize request to its response (answered calls)",
            buckets=LONG_BUCKETS_S,
            registry=r,
        )
        self.decoder_queue_wait = Histogram(
            "voxwire_asr_decoder_queue_wait_seconds",
            "time a window waited from its submission to the start of its batch, by kind",
            ["kind"],
            buckets=_QUEUE_BUCKETS_S,
            registry=r,
        )
        self.decoder_batch_size = Histogram(
            "voxwire_asr_decoder_batch_size",
            "windows decoded together in one batch, by kind",
            ["kind"],
            buckets=_BATCH_SIZES,
            registry=r,
        )
        self.decoder_queue_depth = Gauge(
            "voxwire_asr_decoder_queue_depth",
            "windows waiting for a decoder worker, by kind (read at scrape time)",
            ["kind"],
            registry=r,
        )
        self.escalations = Counter(
            "voxwire_asr_escalations", "fast-tier finals re-decoded on the accurate tier", registry=r
        )
        self.long_accurate = Counter(
            "voxwire_asr_long_accurate",
            "finals of long utterances decoded on the accurate tier instead of the fast one",
            registry=r,
        )
        self.cache_requests = Counter(
            "voxwire_cache_requests", "cache lookups by tier and outcome", ["tier", "outcome"], registry=r
        )
        self.asr_cache_lookups = Counter(
            "voxwire_asr_cache_lookups",
            "recognition cache lookups by tier, tenant and outcome (hit or miss)",
            ["tier", "tenant", "outcome"],
            registry=r,
        )
        self.asr_cache_lookup_latency = Histogram(
            "voxwire_asr_cache_lookup_seconds",
            "server-side time of a recognition cache lookup, by tier and outcome",
            ["tier", "outcome"],
            buckets=_QUEUE_BUCKETS_S,
            registry=r,
        )
        self.asr_cache_saved = Counter(
            "voxwire_asr_cache_model_seconds_saved",
            "decoder time that recognition cache hits did not spend, by tenant",
            ["tenant"],
            registry=r,
        )
        self.asr_cache_collisions = Counter(
            "voxwire_asr_cache_collisions",
            "fuzzy entries that answered many different recordings within a minute",
            ["tier", "tenant"],
            registry=r,
        )
        self.asr_cache_stale = Counter(
            "voxwire_asr_cache_stale",
            "exact entries of an older model version: served, then refreshed, dropped (queue full), "
            "failed or purged",
            ["outcome"],
            registry=r,
        )
        self.tts_streams = Gauge(
            "voxwire_tts_active_streams", "SynthesizeStream calls in progress", registry=r
        )
        self.tts_units = Counter("voxwire_tts_units", "sentences (model calls) synthesized", registry=r)
        self.tts_stitches = Counter(
            "voxwire_tts_stitches",
            "template replies spliced onto a cached prefix, by whether the joint check passed",
            ["outcome"],
            registry=r,
        )
        self.tts_first_audio = Histogram(
            "voxwire_tts_first_audio_seconds",
            "time from a synthesis request to its first audio",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        # Admission, load shedding and stream limits (sessions/admission.py, sessions/recognition.py).
        self.admission_refused = Counter(
            "voxwire_admission_refused",
            "streams and calls refused with RESOURCE_EXHAUSTED, by what was refused "
            "(stream, recognize, synthesize, warmup) and why (delay, streams, ramp, concurrency, rate)",
            ["rpc", "reason"],
            registry=r,
        )
        self.asr_shed = Counter(
            "voxwire_asr_shed",
            "recognition work skipped because the decoder was behind, by kind (partial, escalation)",
            ["kind"],
            registry=r,
        )
        self.stream_limits = Counter(
            "voxwire_asr_stream_limits",
            "streams ended with OUT_OF_RANGE by a stream limit (idle, duration, audio)",
            ["limit"],
            registry=r,
        )
        self.state_writes = Counter(
            "voxwire_stream_state_writes",
            "stream-state writes by outcome: ok, unavailable (the store failed: the stream goes on, not "
            "resumable), conflict (resumed elsewhere)",
            ["outcome"],
            registry=r,
        )
        self.state_bytes = Histogram(
            "voxwire_stream_state_bytes",
            "size of a written stream state",
            buckets=(1e3, 4e3, 16e3, 32e3, 64e3, 100e3, 200e3, 400e3, 1e6, 4e6),
            registry=r,
        )
        self.stream_resumes = Counter(
            "voxwire_stream_resumes",
            "StreamingRecognize calls with a resume token, by outcome (resumed, or the status refusing it)",
            ["outcome"],
            registry=r,
        )

    @property
    def uptime_s(self) -> float:
        return time.monotonic() - self.started_at

    def stream_opened(self) -> None:
        self.streaming_requests += 1
        self.active_streams += 1
        self.streams.inc()

    def stream_closed(self) -> None:
        self.active_streams -= 1
        self.streams.dec()

    def watch_decoder(self, worker: BatchWorker[Any, Any]) -> None:
        """Queue depth at scrape time; queue wait and batch size as each batch starts."""
        for priority, kind in _KINDS.items():
            self.decoder_queue_depth.labels(kind).set_function(functools.partial(worker.pending_at, priority))

        def on_batch(priority: int, waited_s: list[float]) -> None:
            kind = _KINDS.get(priority, str(priority))
            wait = self.decoder_queue_wait.labels(kind)
            for seconds in waited_s:
                wait.observe(seconds)
            self.decoder_batch_size.labels(kind).observe(len(waited_s))

        worker.on_batch = on_batch

    def watch_decoder_work(self, engine: str, stats: Callable[[], dict[str, float]]) -> None:
        """What the ASR decoder did, read at scrape time: seconds in its generate step and windows
        decoded; on the torch engine also its passes, draft tokens offered and kept, and searches
        continued from a stored state."""
        self._decoder_work.watch(engine, stats)

    def stream_latencies(self, clock: Callable[[], float] = time.perf_counter) -> StreamLatencies:
        """An observer of one recognition stream's updates (one per stream)."""
        return StreamLatencies(self, clock)


class StreamLatencies:
    """Observes a stream's final latencies (measured by the session) and each utterance's first
    partial, timed here from the SPEECH_STARTED event the stream sent before it."""

    def __init__(self, telemetry: Telemetry, clock: Callable[[], float]) -> None:
        self._t = telemetry
        self._clock = clock
        self._speech_started: dict[int, float] = {}

    def __call__(self, update: StreamUpdate) -> None:
        payload = update.payload
        if isinstance(payload, SpeechEvent):
            if payload.type is SpeechEventType.SPEECH_STARTED:
                # Only the utterance under way: one that ended without a result leaves nothing.
                self._speech_started = {payload.utterance_index: self._clock()}
        elif isinstance(payload, Result):
            started = self._speech_started.pop(payload.utterance_index, None)
            if payload.is_final:
                self._t.final_latency.observe(payload.processing_latency_ms / 1000)
            elif started is not None:
                self._t.first_partial_latency.observe(self._clock() - started)


_DECODER_WORK = {
    "seconds": ("voxwire_asr_decoder_seconds", "seconds in the decoder's generate step (not the encoder)"),
    "windows": ("voxwire_asr_decoder_windows", "windows the decoder decoded"),
    "passes": ("voxwire_asr_decoder_passes", "decoder passes (torch engine: one per step or verified draft)"),
    "draft_tokens": (
        "voxwire_asr_decoder_draft_tokens",
        "draft tokens offered to the decoder (torch engine)",
    ),
    "accepted_draft_tokens": (
        "voxwire_asr_decoder_draft_accepted_tokens",
        "draft tokens kept because they were the decoder's own choice (torch engine)",
    ),
    "continued": (
        "voxwire_asr_decoder_continued_searches",
        "decodes that went on from a stored search over the same window (torch engine)",
    ),
}


class _DecoderWork(Collector):
    """Every family from the start (0 until an engine is watched; the ctranslate2 engine has no
    passes or drafts to count)."""

    def __init__(self) -> None:
        self._engine = ""
        self._stats: Callable[[], dict[str, float]] = dict

    def watch(self, engine: str, stats: Callable[[], dict[str, float]]) -> None:
        self._engine, self._stats = engine, stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        for key, (name, documentation) in _DECODER_WORK.items():
            family = CounterMetricFamily(name, documentation, labels=["engine"])
            family.add_metric([self._engine], stats.get(key, 0.0))
            yield family
