"""What the services share: engines (once warmed up), limits and telemetry."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

from voxwire_server.caches.recognition import RecognitionCache
from voxwire_server.caches.synthesis import SynthesisCache
from voxwire_server.domain import Endpointing, Tier
from voxwire_server.engines.base import DecoderLoad, SpeechRecognizer, SpeechSynthesizer
from voxwire_server.errors import Unavailable
from voxwire_server.metrics import Telemetry
from voxwire_server.sessions.admission import (
    AdmissionConfig,
    CallLimiter,
    CallLimits,
    StreamAdmission,
    StreamTicket,
)
from voxwire_server.sessions.recognition import RecognitionLimits, VadFactory
from voxwire_server.sessions.resumption import StreamStates
from voxwire_server.sessions.synthesis import SynthesisHooks, SynthesisLimits, SynthesisSession


@dataclass
class Runtime:
    recognition_limits: RecognitionLimits
    synthesis_limits: SynthesisLimits
    endpointing: Endpointing
    default_tier: Tier
    vad_factory: VadFactory
    admission: AdmissionConfig = field(default_factory=AdmissionConfig)
    # Limits of the unary calls by kind: "recognize", "synthesize" (Synthesize and SynthesizeStream)
    # and "warmup"; a kind not given has none.
    call_limits: Mapping[str, CallLimits] = field(default_factory=dict)
    telemetry: Telemetry = field(default_factory=Telemetry)
    # None: the server runs without caches (--cache off).
    synthesis_cache: SynthesisCache | None = None
    # None: streams cannot be resumed (--state off).
    stream_states: StreamStates | None = None
    # Set once the model is loaded (its version is in every key); None: no recognition cache.
    recognition_cache: RecognitionCache | None = None
    _recognizer: SpeechRecognizer | None = None
    _synthesizer: SpeechSynthesizer | None = None
    draining: bool = False
    # Set when the server starts draining: open streams finalize what they heard and end.
    stopping: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        t = self.telemetry

        def refused(what: str, reason: str) -> None:
            t.admission_refused.labels(what, reason).inc()

        self.streams = StreamAdmission(
            self.admission,
            self._decoder_load,
            on_refused=refused,
            on_shed=lambda kind: t.asr_shed.labels(kind).inc(),
        )
        self.limiters = {
            kind: CallLimiter(
                kind,
                self.call_limits.get(kind, CallLimits()),
                top_priority=self.admission.top_priority,
                on_refused=refused,
            )
            for kind in ("recognize", "synthesize", "warmup")
        }

    def _decoder_load(self) -> DecoderLoad:
        # Not through .recognizer: streams still finishing during a drain ask too, and must not be
        # told the server is shutting down by their own shedding check.
        return self._recognizer.load() if self._recognizer is not None else DecoderLoad()

    def begin_drain(self) -> None:
        """New calls are refused (UNAVAILABLE) from now on; open streams are told to wrap up."""
        self.draining = True
        self.stopping.set()

    def set_engines(self, recognizer: SpeechRecognizer, synthesizer: SpeechSynthesizer) -> None:
        self._recognizer, self._synthesizer = recognizer, synthesizer

    @property
    def ready(self) -> bool:
        return self._recognizer is not None and self._synthesizer is not None and not self.draining

    def _check(self) -> None:
        if self.draining:
            raise Unavailable("the server is shutting down; retry on another replica")
        if not self.ready:
            raise Unavailable("the server is still loading its models; retry shortly")

    @property
    def recognizer(self) -> SpeechRecognizer:
        self._check()
        assert self._recognizer is not None
        return self._recognizer

    @property
    def synthesizer(self) -> SpeechSynthesizer:
        self._check()
        assert self._synthesizer is not None
        return self._synthesizer

    def admit_stream(self, tenant_id: str, priority: int) -> StreamTicket:
        """A stream slot (give it back with ``stream_closed``) or OverCapacity (see
        sessions/admission.py); the stream asks its ticket whether to shed work."""
        self._check()
        ticket = self.streams.admit(tenant_id, priority)
        self.telemetry.stream_opened()
        return ticket

    def stream_closed(self, ticket: StreamTicket) -> None:
        ticket.close()
        self.telemetry.stream_closed()

    @contextmanager
    def admit_call(self, kind: str, tenant_id: str, priority: int) -> Iterator[None]:
        """Holds a slot of a unary call's concurrency limit and takes a token of the tenant's rate
        limit, or raises OverCapacity."""
        with self.limiters[kind].call(tenant_id, priority):
            yield

    def synthesis(self) -> SynthesisSession:
        t = self.telemetry
        hooks = SynthesisHooks(
            on_units=t.tts_units.inc,
            on_stitch=lambda passed: t.tts_stitches.labels("passed" if passed else "rejected").inc(),
        )
        return SynthesisSession(
            self.synthesizer, self.synthesis_limits, self.synthesis_cache, hooks, self.recognition_cache
        )

    def engines(self) -> tuple[SpeechRecognizer | None, SpeechSynthesizer | None]:
        return self._recognizer, self._synthesizer
