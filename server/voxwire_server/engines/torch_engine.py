"""The PyTorch decoder as WhisperRecognizer's generate step (``--asr-engine torch``): the encoder,
features, alignment and every guard stay CTranslate2's; the decoder runs here with an explicit K-V
cache, so a committed prefix and a draft cost one pass, and a stream's search can be continued."""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from voxwire_server.engines.base import WindowRequest
from voxwire_server.engines.torch_decoder import TorchWhisperDecoder
from voxwire_server.engines.torch_search import (
    Generated,
    SearchRow,
    SearchSettings,
    TorchSearch,
    window_fingerprint,
)

__all__ = ["DecoderCounters", "TorchGenerator", "torch_available"]

log = logging.getLogger(__name__)


def torch_available() -> bool:
    try:
        import torch  # noqa: F401
    except ImportError:
        return False
    return True


@dataclass(slots=True)
class DecoderCounters:
    """What the decoder did, summed over decodes (the benchmark and GetStats read them)."""

    decodes: int = 0
    passes: int = 0
    draft_tokens: int = 0
    accepted_draft_tokens: int = 0
    continued: int = 0
    seconds: float = 0.0


class TorchGenerator:
    """One TorchWhisperDecoder per model directory; ``generate`` takes CTranslate2's arguments plus
    the requests (drafts, stored searches) and returns outputs shaped like CTranslate2's."""

    def __init__(self, *, device: str, compute_type: str, threads: int, keep_kv: bool) -> None:
        self._device = device
        self._quantize = compute_type.startswith("int8")
        self._threads = threads
        self._keep_kv = keep_kv
        self._decoders: dict[str, TorchSearch] = {}
        self._identities: dict[str, str] = {}
        self.counters = DecoderCounters()
        self._lock = threading.Lock()

    @property
    def precision(self) -> str:
        if self._device == "cuda":
            return "float16"
        return "int8" if self._quantize else "float32"

    def load(self, model_dir: str, tokenizer: Any, identity: str) -> None:
        """identity: a hash of the weights (with the precision), what stored searches are keyed by."""
        if model_dir in self._decoders:
            return
        self._identities[model_dir] = identity
        decoder = TorchWhisperDecoder(
            model_dir, device=self._device, quantize=self._quantize, threads=self._threads
        )
        self._decoders[model_dir] = TorchSearch(
            decoder,
            eot=int(tokenizer.eot),
            blank=tuple(int(t) for t in tokenizer.encode(" ")),
            no_speech=int(tokenizer.no_speech),
        )

    def kv_bytes_per_token(self, model_dir: str) -> int:
        return self._decoders[model_dir].decoder.kv_bytes_per_token

    def generate(
        self,
        model_dir: str,
        encoded: npt.NDArray[np.float32] | Any,
        requests: list[WindowRequest],
        prompts: list[list[int]],
        heads: list[int],
        windows: list[int],
        *,
        beam_size: int,
        num_hypotheses: int,
        max_length: int,
        repetition_penalty: float,
        suppress_tokens: list[int],
    ) -> list[Generated]:
        search = self._decoders[model_dir]
        settings = SearchSettings(
            beam_size=beam_size,
            num_hypotheses=num_hypotheses,
            max_length=max_length,
            repetition_penalty=repetition_penalty,
            suppress_blank=True,
            suppress_tokens=tuple(suppress_tokens),
            model=self._identities[model_dir],
        )
        rows = []
        for request, prompt, head, window in zip(requests, prompts, heads, windows, strict=True):
            forced = tuple(prompt[head:])
            # A draft is the whole of a decode's output: the part past this decode's forced tokens,
            # up to a token that is not this model's (a draft is only a guess: it is cut, not refused).
            draft = _after(request.draft, forced)
            vocab = search.decoder.vocab
            draft = draft[: next((k for k, t in enumerate(draft) if not 0 <= t < vocab), len(draft))]
            rows.append(
                SearchRow(
                    window=window_fingerprint(request.audio, window),
                    head=tuple(prompt[:head]),
                    forced=forced,
                    draft=draft,
                    state=request.decoder_state,
                    keep_kv=self._keep_kv and request.keep_decoder_state,
                )
            )
        started = time.perf_counter()
        if beam_size > 1 or num_hypotheses > 1:
            outputs = search.beam_search(encoded, rows, settings)
        else:
            outputs = search.greedy(encoded, rows, settings)
        with self._lock:
            self._count(outputs, rows, time.perf_counter() - started)
        return outputs

    def _count(self, outputs: list[Generated], rows: list[SearchRow], seconds: float) -> None:
        c = self.counters
        c.seconds += seconds
        c.decodes += len(rows)
        c.passes += max((o.passes for o in outputs), default=0)
        c.draft_tokens += sum(len(r.draft) for r in rows)
        c.accepted_draft_tokens += sum(o.accepted_draft for o in outputs)
        c.continued += sum(o.reused > 0 for o in outputs)


def _after(draft: tuple[int, ...], forced: tuple[int, ...]) -> tuple[int, ...]:
    """The part of a draft past the forced tokens: after them where it starts with them, else after
    the last place it holds their last two (committed words tokenized from their text need not be
    the tokens the decoder chose for them); nothing where it holds neither."""
    if draft[: len(forced)] == forced:
        return draft[len(forced) :]
    tail = forced[-2:]
    for j in range(len(draft) - len(tail), -1, -1):
        if draft[j : j + len(tail)] == tail:
            return draft[j + len(tail) :]
    return ()
