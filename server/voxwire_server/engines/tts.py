"""hibari TTS behind the SpeechSynthesizer seam, with one worker thread."""

from __future__ import annotations

import asyncio
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from voxwire_server.domain import VoiceInfo
from voxwire_server.errors import NotFound, PreconditionFailed

# Fixed noise seed: the same text, voice and rate always give the same audio (cacheable, testable).
_SEED = 0


class HibariSynthesizer:
    """Loads every hibari voice present on disk (the bundled one at least) and never downloads."""

    def __init__(self, default_voice: str = "heart", threads: int = 1) -> None:
        import hibari
        from hibari import voices as hv

        self._registry: dict[str, dict[str, Any]] = dict(hv.VOICES)
        self.sample_rate_hz = int(hibari.SAMPLE_RATE)
        self.model_name = f"hibari-tts {hibari.__version__}"
        self._voices: dict[str, Any] = {}
        for name in self._registry:
            try:
                path = hv.voice_path(name, download_missing=False)
            except FileNotFoundError:
                continue
            if os.path.isfile(path):
                self._voices[name] = hibari.Hibari(voice=name, threads=threads)
        if default_voice not in self._voices:
            raise PreconditionFailed(f"default voice {default_voice!r} is not available offline")
        self.default_voice = default_voice
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="tts")

    def warm_up(self) -> None:
        # The first call loads the lexicons (~0.3 s): pay it at start-up, not on a user's request.
        for tts in self._voices.values():
            tts("Warm up.", seed=_SEED)

    def voices(self) -> list[VoiceInfo]:
        return [
            VoiceInfo(
                name=name,
                language=str(self._registry[name]["language"]),
                accent=str(self._registry[name]["accent"]),
                gender=str(self._registry[name]["gender"]),
                native_sample_rate_hz=self.sample_rate_hz,
                is_default=name == self.default_voice,
            )
            for name in sorted(self._voices)
        ]

    def resolve_voice(self, name: str) -> str:
        voice = name or self.default_voice
        if voice in self._voices:
            return voice
        if voice in self._registry:
            raise PreconditionFailed(
                f"voice {voice!r} is not installed on this server (it is not in the hibari wheel and this "
                "server never downloads at run time)"
            )
        raise NotFound(f"unknown voice {voice!r}; available: {', '.join(sorted(self._voices))}")

    async def plan(self, voice: str, text: str) -> list[str]:
        tts = self._voices[voice]
        units: list[str] = await asyncio.wrap_future(self._worker.submit(tts.phonemize, text))
        # A unit of punctuation alone ("?!", "...") has no sound to make.
        return [u for u in units if any(c.isalpha() for c in u)]

    async def render(self, voice: str, unit: str, speaking_rate: float) -> npt.NDArray[np.float32]:
        tts = self._voices[voice]
        audio = await asyncio.wrap_future(self._worker.submit(tts.from_phonemes, unit, speaking_rate, _SEED))
        return np.asarray(audio, dtype=np.float32)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
