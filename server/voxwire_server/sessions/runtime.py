"""What the services share: engines (once warmed up), limits and telemetry."""

from __future__ import annotations

from dataclasses import dataclass, field

from voxwire_server.caches.synthesis import SynthesisCache
from voxwire_server.domain import Endpointing, Tier
from voxwire_server.engines.base import SpeechRecognizer, SpeechSynthesizer
from voxwire_server.errors import OverCapacity, Unavailable
from voxwire_server.metrics import Telemetry
from voxwire_server.sessions.recognition import RecognitionLimits, VadFactory
from voxwire_server.sessions.synthesis import SynthesisHooks, SynthesisLimits, SynthesisSession


@dataclass
class Runtime:
    recognition_limits: RecognitionLimits
    synthesis_limits: SynthesisLimits
    endpointing: Endpointing
    default_tier: Tier
    max_streams: int
    vad_factory: VadFactory
    telemetry: Telemetry = field(default_factory=Telemetry)
    # None: the server runs without caches (--cache off).
    synthesis_cache: SynthesisCache | None = None
    _recognizer: SpeechRecognizer | None = None
    _synthesizer: SpeechSynthesizer | None = None
    draining: bool = False

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

    def admit_stream(self) -> None:
        if self.telemetry.active_streams >= self.max_streams:
            raise OverCapacity(f"this server is at its limit of {self.max_streams} concurrent streams")
        self.telemetry.stream_opened()

    def synthesis(self) -> SynthesisSession:
        t = self.telemetry
        hooks = SynthesisHooks(
            on_units=t.tts_units.inc,
            on_stitch=lambda passed: t.tts_stitches.labels("passed" if passed else "rejected").inc(),
        )
        return SynthesisSession(self.synthesizer, self.synthesis_limits, self.synthesis_cache, hooks)

    def engines(self) -> tuple[SpeechRecognizer | None, SpeechSynthesizer | None]:
        return self._recognizer, self._synthesizer
