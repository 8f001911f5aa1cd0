"""Prometheus metrics, plus the plain counters GetStats reports."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

_LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4)


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
        self.streams = Gauge("voxwire_active_streams", "recognition streams in progress", registry=r)
        self.final_latency = Histogram(
            "voxwire_asr_final_latency_seconds",
            "time from the arrival of the audio that ended an utterance to its final result",
            buckets=_LATENCY_BUCKETS_S,
            registry=r,
        )
        self.escalations = Counter(
            "voxwire_asr_escalations", "fast-tier finals re-decoded on the accurate tier", registry=r
        )
        self.cache_requests = Counter(
            "voxwire_cache_requests", "cache lookups by tier and outcome", ["tier", "outcome"], registry=r
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
