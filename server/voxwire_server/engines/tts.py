"""hibari TTS behind the SpeechSynthesizer seam, on a pool of worker threads."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import unicodedata
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np
import numpy.typing as npt

from voxwire_server.domain import VoiceInfo
from voxwire_server.engines.splicing import (
    FRAME_SAMPLES,
    Frames,
    JointCheck,
    Prefix,
    check_joint,
    continue_prefix,
    make_prefix,
    word_bounds,
)
from voxwire_server.errors import InvalidInput, NotFound, PreconditionFailed, quoted

log = logging.getLogger(__name__)

# Fixed noise seed: the same text, voice and rate always give the same audio (cacheable, testable).
_SEED = 0
T = TypeVar("T")
Float32Array = npt.NDArray[np.float32]

# What one model call may see. The acoustic model's time and memory grow faster than its input (a
# 4.9 KB sentence took 28 s and 2 GB), so longer sentences are cut at clauses, then at words.
MAX_UNIT_CHARS = 400
# Backstop for pronunciations that reach the model whole (template splices): longer is refused.
MAX_MODEL_PHONEMES = 1000
# hibari reads a run of digits (commas and points included) as one number and knows scales up to
# 10**36; a longer run fails inside it. Runs with more digits than this are read digit by digit.
MAX_NUMBER_DIGITS = 15
_NUMBER_RUN = re.compile(r"\d+(?:[,.]\d+)*")
_CLAUSE_END = re.compile(r"(?<=[,;:—–])\s+")
# The G2P's own failures on odd text: turned into InvalidInput (the text, not the server, is at fault).
_G2P_ERRORS = (ValueError, IndexError, KeyError, TypeError, OverflowError, RecursionError)


def _plain_digit(char: str) -> str:
    # Superscripts, subscripts, circled digits: digits to str.isdigit, not to int() (hibari's G2P).
    return f" {unicodedata.digit(char)} " if char.isdigit() and not char.isdecimal() else char


def _spoken_number(match: re.Match[str]) -> str:
    run = match[0]
    if sum(c.isdigit() for c in run) <= MAX_NUMBER_DIGITS:
        return run
    parts = re.split(r"([,.])", run)
    return "".join({",": ", ", ".": " point "}.get(part, " ".join(part)) for part in parts)


def speakable(text: str) -> str:
    """Text the G2P reads without failing: odd digits made plain, over-long numbers read as digits."""
    if any(c.isdigit() and not c.isdecimal() for c in text):
        text = "".join(_plain_digit(c) for c in text)
    return _NUMBER_RUN.sub(_spoken_number, text)


def bounded_pieces(text: str, max_chars: int = MAX_UNIT_CHARS) -> list[str]:
    """text cut into pieces of at most max_chars: at clause punctuation, then at spaces, then anywhere."""
    if len(text) <= max_chars:
        return [text]
    pieces: list[str] = []
    for clause in _CLAUSE_END.split(text):
        for word in clause.split() if len(clause) > max_chars else [clause]:
            for cut in range(0, len(word), max_chars):
                part = word[cut : cut + max_chars]
                if pieces and len(pieces[-1]) + 1 + len(part) <= max_chars:
                    pieces[-1] = f"{pieces[-1]} {part}"
                else:
                    pieces.append(part)
    return [p for p in pieces if p.strip()]


def _with_durations(model_path: str) -> bytes | None:
    """The voice's ONNX graph with the per-phoneme durations (the clipped, rounded duration tensor the
    model computes internally) added as a seventh output; None if the graph has no such tensor."""
    import onnx

    model = onnx.load(model_path)
    producers = {out: node for node in model.graph.node for out in node.output}
    found = [
        node
        for node in model.graph.node
        if node.op_type == "Clip" and getattr(producers.get(node.input[0]), "op_type", "") == "Round"
    ]
    if len(found) != 1:
        return None
    output = onnx.ValueInfoProto()
    output.name = found[0].output[0]
    model.graph.output.append(output)
    return bytes(model.SerializeToString())


class _Voice:
    """One hibari voice: its G2P (through hibari's public API) and an acoustic model session that also
    reports phoneme durations, so word boundaries are exact."""

    def __init__(self, name: str, threads: int) -> None:
        import hibari
        import onnxruntime as ort

        self.tts: Any = hibari.Hibari(voice=name, threads=threads)
        with open(
            os.path.join(os.path.dirname(hibari.__file__), "assets", "vocab.json"), encoding="utf-8"
        ) as f:
            self.vocab: dict[str, int] = json.load(f)
        graph = _with_durations(self.tts.model_path)
        self.durations = graph is not None
        options = ort.SessionOptions()
        options.intra_op_num_threads = options.inter_op_num_threads = threads
        options.log_severity_level = 3
        self.session: Any = (
            ort.InferenceSession(graph, options, providers=["CPUExecutionProvider"])
            if graph
            else self.tts.sess
        )
        if not self.durations:
            log.warning("voice %s: no duration tensor in its model; template stitching is off", name)

    def frames(self, phonemes: str, speaking_rate: float) -> Frames:
        tokens = [c for c in phonemes if c in self.vocab]
        if not tokens:
            raise InvalidInput("nothing to pronounce")
        if len(tokens) > MAX_MODEL_PHONEMES:
            raise InvalidInput(
                f"a sentence is too long to synthesize at once ({len(tokens)} sounds; the limit is "
                f"{MAX_MODEL_PHONEMES}): add sentence breaks"
            )
        ids = np.asarray([[0, *(self.vocab[c] for c in tokens), 0]], np.int64)
        outputs = self.session.run(None, {"ids": ids, "speed": np.asarray([speaking_rate], np.float32)})
        spectra = np.stack([np.asarray(o[0], np.float32) for o in outputs[:5]])
        f0 = np.asarray(outputs[5][0], np.float32)
        starts, ends = word_bounds(tokens, outputs[6]) if self.durations else ((), ())
        return Frames(spectra, f0, starts, ends)

    def vocode(self, frames: Frames) -> Float32Array:
        from hibari import dsp

        lh, theta, ln, lr, phi = frames.spectra
        audio = dsp.synth(lh, theta, ln, lr, phi, frames.f0, np.random.default_rng(_SEED))
        return np.asarray(audio, np.float32)


class HibariSynthesizer:
    """Loads every hibari voice present on disk (the bundled one at least) and never downloads.

    ``workers`` sentences are synthesized at once: onnxruntime sessions may run concurrently, the
    vocoder is numpy, and the G2P only reads its lexicons once loaded (warm_up loads them all)."""

    def __init__(self, default_voice: str = "heart", threads: int = 1, workers: int = 1) -> None:
        import hibari
        from hibari import voices as hv

        self._registry: dict[str, dict[str, Any]] = dict(hv.VOICES)
        self.sample_rate_hz = int(hibari.SAMPLE_RATE)
        self.model_name = f"hibari-tts {hibari.__version__}"
        self._voices: dict[str, _Voice] = {}
        for name in self._registry:
            try:
                path = hv.voice_path(name, download_missing=False)
            except FileNotFoundError:
                continue
            if os.path.isfile(path):
                self._voices[name] = _Voice(name, threads)
        if default_voice not in self._voices:
            raise PreconditionFailed(f"default voice {quoted(default_voice)} is not available offline")
        self.default_voice = default_voice
        self.phoneme_symbols = frozenset(self._voices[default_voice].vocab)
        self._worker = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tts")

    def model_version(self, voice: str) -> str:
        """Changes whenever the voice's model does: part of every synthesis cache key."""
        digest = str(self._registry[voice].get("sha256", ""))[:16]
        return f"{self.model_name}/{voice}/{digest}"

    def can_splice(self, voice: str) -> bool:
        return self._voices[voice].durations

    def split_sentences(self, text: str) -> list[str]:
        from hibari import Hibari

        return [str(s) for s in Hibari.split_sentences(text)]

    def warm_up(self) -> None:
        # The first call loads the lexicons (~0.3 s), and the first unknown word the spelling model:
        # pay both at start-up, not on a user's request (and before workers could race to load them).
        for voice in self._voices.values():
            voice.vocode(voice.frames(voice.tts.g2p("Warm up, Zorblaxian."), 1.0))

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
                f"voice {quoted(voice)} is not installed on this server (it is not in the hibari wheel and "
                "this "
                "server never downloads at run time)"
            )
        raise NotFound(f"unknown voice {quoted(voice)}; available: {', '.join(sorted(self._voices))}")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        # Cancelling the awaiting task cancels the job while it is still queued.
        return await asyncio.wrap_future(self._worker.submit(fn, *args))

    def _phonemize(self, voice: str, piece: str) -> list[str]:
        try:
            units = [str(u) for u in self._voices[voice].tts.phonemize(speakable(piece))]
        except _G2P_ERRORS as exc:
            log.warning("the G2P failed on a piece of text (%s)", type(exc).__name__)
            raise InvalidInput(f"this text cannot be read aloud: {quoted(piece)}") from None
        # hibari splits at clauses only; a clause of one long run of words is cut here.
        return [bounded for u in units for bounded in bounded_pieces(u)]

    async def plan(self, voice: str, text: str) -> list[str]:
        """Units of at most MAX_UNIT_CHARS, one G2P job per sentence piece: cancelling the caller
        stops the work between pieces, and a long text does not hold a worker for long."""
        units: list[str] = []
        for sentence in self.split_sentences(text):
            for piece in bounded_pieces(sentence):
                units.extend(await self._run(self._phonemize, voice, piece))
        # A unit of punctuation alone ("?!", "...") has no sound to make.
        return [u for u in units if any(c.isalpha() for c in u)]

    def _g2p(self, voice: str, text: str) -> str:
        try:
            return str(self._voices[voice].tts.g2p(speakable(text)))
        except _G2P_ERRORS as exc:
            log.warning("the G2P failed on a piece of text (%s)", type(exc).__name__)
            raise InvalidInput(f"this text cannot be read aloud: {quoted(text)}") from None

    async def phonemes(self, voice: str, text: str) -> str:
        """Pronunciation of a piece of a sentence (no sentence splitting)."""
        return await self._run(self._g2p, voice, text)

    def _render(self, voice: str, phonemes: str, speaking_rate: float) -> Float32Array:
        v = self._voices[voice]
        return v.vocode(v.frames(phonemes, speaking_rate))

    async def render(self, voice: str, unit: str, speaking_rate: float) -> Float32Array:
        return await self._run(self._render, voice, unit, speaking_rate)

    async def render_then(
        self, voice: str, unit: str, speaking_rate: float, then: Callable[[Float32Array], T]
    ) -> T:
        def job() -> T:
            return then(self._render(voice, unit, speaking_rate))

        return await self._run(job)

    async def run(self, work: Callable[[], T]) -> T:
        return await self._run(work)

    def _render_timed(
        self, voice: str, phonemes: str, speaking_rate: float
    ) -> tuple[Float32Array, list[float]]:
        v = self._voices[voice]
        frames = v.frames(phonemes, speaking_rate)
        return v.vocode(frames), [end * FRAME_SAMPLES / self.sample_rate_hz for end in frames.word_ends]

    async def render_timed(
        self, voice: str, phonemes: str, speaking_rate: float
    ) -> tuple[Float32Array, list[float]]:
        """Audio and where each word ends in it (seconds)."""
        return await self._run(self._render_timed, voice, phonemes, speaking_rate)

    def _render_split(
        self, voice: str, prefix_words: list[str], rest: str, speaking_rate: float
    ) -> tuple[Float32Array, Prefix | None]:
        v = self._voices[voice]
        frames = v.frames(" ".join(prefix_words) + " " + rest, speaking_rate)
        audio = v.vocode(frames)
        try:
            return audio, make_prefix(frames, audio, prefix_words)
        except ValueError:  # a prefix too short to splice onto
            return audio, None

    async def render_split(
        self, voice: str, prefix_words: list[str], rest: str, speaking_rate: float
    ) -> tuple[Float32Array, Prefix | None]:
        """One sentence, prefix words then the rest, and the prefix's state for later continuations
        (None when the prefix is too short to splice onto)."""
        return await self._run(self._render_split, voice, prefix_words, rest, speaking_rate)

    def _continue(
        self, voice: str, prefix: Prefix, context_words: int, rest: str, speaking_rate: float
    ) -> tuple[Float32Array, JointCheck]:
        # The context words are synthesized again (and dropped): the continuation keeps the sentence's
        # prosody; then come the words carried over from the prefix, and the new text.
        v = self._voices[voice]
        n = max(1, min(context_words, len(prefix.words)))
        frames = v.frames(" ".join([*prefix.words[-n:], *prefix.carried, rest]), speaking_rate)
        return continue_prefix(prefix, frames, n, _SEED), check_joint(prefix, frames, n)

    async def continue_prefix(
        self, voice: str, prefix: Prefix, context_words: int, rest: str, speaking_rate: float
    ) -> tuple[Float32Array, JointCheck]:
        """The rest of a sentence whose prefix was already spoken from the cache, synthesized with the
        prefix's last words as context; and how well the joint matches."""
        return await self._run(self._continue, voice, prefix, context_words, rest, speaking_rate)

    def close(self) -> None:
        self._worker.shutdown(wait=True, cancel_futures=True)
