"""Synthesis: validate a request, then synthesize sentence by sentence and encode as it goes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

from voxwire_server.config import OUTPUT_SAMPLE_RATES_HZ
from voxwire_server.domain import EncodedAudio, Encoding, SynthesisRequest
from voxwire_server.engines.audio import AudioEncoder, wav_header
from voxwire_server.engines.base import SpeechSynthesizer
from voxwire_server.errors import InvalidInput

MIN_SPEAKING_RATE = 0.5
MAX_SPEAKING_RATE = 2.0


@dataclass(frozen=True, slots=True)
class SynthesisLimits:
    max_text_chars: int = 5000


@dataclass(frozen=True, slots=True)
class _Plan:
    voice: str
    units: list[str]
    sample_rate_hz: int


class SynthesisSession:
    def __init__(self, synthesizer: SpeechSynthesizer, limits: SynthesisLimits) -> None:
        self._tts = synthesizer
        self._limits = limits

    async def _plan(self, request: SynthesisRequest) -> _Plan:
        text = request.text.strip()
        if not text:
            raise InvalidInput("text is empty")
        if len(text) > self._limits.max_text_chars:
            raise InvalidInput(f"text is {len(text)} characters; the limit is {self._limits.max_text_chars}")
        if not MIN_SPEAKING_RATE <= request.speaking_rate <= MAX_SPEAKING_RATE:
            bounds = f"{MIN_SPEAKING_RATE}..{MAX_SPEAKING_RATE}"
            raise InvalidInput(f"speaking_rate must be {bounds}, got {request.speaking_rate:g}")
        rate = request.sample_rate_hz or self._tts.sample_rate_hz
        if rate not in OUTPUT_SAMPLE_RATES_HZ:
            allowed = ", ".join(str(r) for r in OUTPUT_SAMPLE_RATES_HZ)
            raise InvalidInput(f"unsupported output sample_rate_hz {rate}; supported: {allowed}")
        if request.encoding is Encoding.FLAC:
            raise InvalidInput("FLAC is not an output encoding; use LINEAR16, WAV or OGG_OPUS")
        voice = self._tts.resolve_voice(request.voice)
        units = await self._tts.plan(voice, text)
        if not units:
            raise InvalidInput("text has nothing to speak (no pronounceable words)")
        return _Plan(voice, units, rate)

    async def stream(self, request: SynthesisRequest) -> AsyncIterator[EncodedAudio]:
        """Yields encoded audio a sentence at a time; cancelling the consumer stops synthesis."""
        plan = await self._plan(request)
        encoder = AudioEncoder(request.encoding, self._tts.sample_rate_hz, plan.sample_rate_hz)
        try:
            header = wav_header(plan.sample_rate_hz, 1, None) if request.encoding is Encoding.WAV else b""
            for i, unit in enumerate(plan.units):
                audio = await self._tts.render(plan.voice, unit, request.speaking_rate)
                before = encoder.samples_out
                last = i == len(plan.units) - 1
                data = encoder.encode(audio)
                if last:
                    data += encoder.finish()
                yield EncodedAudio(
                    data=header + data if i == 0 else data,
                    encoding=request.encoding,
                    sample_rate_hz=plan.sample_rate_hz,
                    offset_ms=before * 1000 // plan.sample_rate_hz,
                    duration_ms=(encoder.samples_out - before) * 1000 // plan.sample_rate_hz,
                    last=last,
                )
        finally:
            encoder.close()

    async def synthesize(self, request: SynthesisRequest) -> tuple[EncodedAudio, str]:
        """The whole utterance (WAV with exact sizes) and the voice that spoke it."""
        plan = await self._plan(request)
        encoder = AudioEncoder(request.encoding, self._tts.sample_rate_hz, plan.sample_rate_hz)
        try:
            parts = [
                encoder.encode(await self._tts.render(plan.voice, u, request.speaking_rate))
                for u in plan.units
            ]
            parts.append(encoder.finish())
        finally:
            encoder.close()
        data = b"".join(parts)
        if request.encoding is Encoding.WAV:
            data = wav_header(plan.sample_rate_hz, 1, len(data)) + data
        audio = EncodedAudio(
            data=data,
            encoding=request.encoding,
            sample_rate_hz=plan.sample_rate_hz,
            offset_ms=0,
            duration_ms=encoder.samples_out * 1000 // plan.sample_rate_hz,
            last=True,
        )
        return audio, plan.voice
