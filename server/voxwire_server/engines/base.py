"""The seams between sessions and engines."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from voxwire_server.domain import Alternative, DecodeOptions, VoiceInfo
from voxwire_server.engines.splicing import JointCheck, Prefix

T = TypeVar("T")


class PartialSkipped(Exception):
    """A partial's decode was skipped: the recognizer was too busy to start it before its deadline."""


class SpeechRecognizer(Protocol):
    """Decodes 16 kHz mono float32 audio off the event loop."""

    model_name: str
    # A hash of the weights (and of the settings that change text): what recognition cache keys hold.
    model_version: str

    def check_language(self, language: str) -> str:
        """The model's code for a BCP-47 language; InvalidInput when the model does not know it."""
        ...

    def check_conditioning(self, options: DecodeOptions) -> None:
        """InvalidInput when the hotwords and prompt do not fit the model's prompt (with room left for
        what was said before)."""
        ...

    async def decode(self, request: WindowRequest, *, final: bool, deadline: float) -> WindowResult:
        """One utterance of at most ~29 s, batched with other streams' work; finals go first."""
        ...

    def pending_finals(self) -> int:
        """Finals waiting for the decoder: a measure of how busy it is."""
        ...

    def load(self) -> DecoderLoad:
        """How busy the decoder is now: what admission and load shedding decide from."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class DecoderLoad:
    """A snapshot of the decoder's queue. Service times are moving averages per job (a batch's
    time shared by its jobs), 0 until a job of that kind has run."""

    workers: int = 1
    waiting_finals: int = 0
    waiting_partials: int = 0
    running_finals: int = 0
    running_partials: int = 0
    final_service_s: float = 0.0
    partial_service_s: float = 0.0
    # How long the oldest final still waiting for a worker has waited (0: none waits).
    oldest_final_wait_s: float = 0.0


class SpeechSynthesizer(Protocol):
    """Synthesizes text off the event loop, a sentence at a time, and splices new speech onto a
    cached prefix (the engine's own prefix state, opaque to sessions)."""

    model_name: str
    sample_rate_hz: int
    # The pronunciation alphabet of ``render`` (SSML <phoneme> is checked against it).
    phoneme_symbols: frozenset[str]

    def voices(self) -> list[VoiceInfo]: ...

    def resolve_voice(self, name: str) -> str: ...

    def model_version(self, voice: str) -> str:
        """Changes whenever the voice's audio would: part of every synthesis cache key."""
        ...

    def can_splice(self, voice: str) -> bool: ...

    def split_sentences(self, text: str) -> list[str]: ...

    async def plan(self, voice: str, text: str) -> list[str]:
        """Splits text into the units synthesized one at a time (sentences), in the engine's form."""
        ...

    async def phonemes(self, voice: str, text: str) -> str:
        """The pronunciation of a piece of a sentence, in the engine's form (no sentence splitting)."""
        ...

    async def render(self, voice: str, unit: str, speaking_rate: float) -> npt.NDArray[np.float32]: ...

    async def render_then(
        self, voice: str, unit: str, speaking_rate: float, then: Callable[[npt.NDArray[np.float32]], T]
    ) -> T:
        """render, then ``then`` on the audio in the same worker job (e.g. encoding it): the event
        loop never runs it, and it does not wait in the workers' queue a second time."""
        ...

    async def run(self, work: Callable[[], T]) -> T:
        """CPU work of a reply (encoding audio that was made already) on the synthesis workers."""
        ...

    async def render_split(
        self, voice: str, prefix_words: list[str], rest: str, speaking_rate: float
    ) -> tuple[npt.NDArray[np.float32], Prefix | None]:
        """One sentence (prefix words, then the rest) and the prefix's state for continuations
        (None when the prefix is too short to splice onto)."""
        ...

    async def continue_prefix(
        self, voice: str, prefix: Prefix, context_words: int, rest: str, speaking_rate: float
    ) -> tuple[npt.NDArray[np.float32], JointCheck]:
        """Audio from the end of a prefix already spoken on, and how well the joint matches."""
        ...

    def close(self) -> None: ...


class VoiceActivityDetector(Protocol):
    frame_ms: int

    def is_speech(self, frame: npt.NDArray[np.int16]) -> bool: ...


@dataclass(frozen=True, slots=True)
class DecoderBeam:
    """One hypothesis of a decoder search: the whole token sequence (head, forced tokens, then chosen
    ones), the log-probability of each token after the head, whether it ended, and the
    self-attention K-V of every position but the last (float16 bytes; empty when not kept)."""

    tokens: tuple[int, ...]
    logprobs: tuple[float, ...]
    finished: bool
    kv: bytes = b""
    # Greedy searches: the argmax at each position after the head (it differs from the token where a
    # forced token was taken), so a later decode knows without a pass how far the tokens hold for it.
    choices: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class DecoderState:
    """A stream's last decoder search, as an engine with an explicit K-V cache left it: what a later
    decode over the same window goes on from (its K-V is valid only for the window it was computed on,
    named by ``window``), under the same settings, head (prompt) and forced tokens."""

    window: str
    settings: str
    head: tuple[int, ...]
    forced: tuple[int, ...]
    live: tuple[DecoderBeam, ...]
    finished: tuple[DecoderBeam, ...]
    no_speech_prob: float = 0.0

    @property
    def done(self) -> bool:
        return not self.live

    @property
    def kv_bytes(self) -> int:
        return sum(len(b.kv) for b in (*self.live, *self.finished))


@dataclass(frozen=True, slots=True)
class WindowRequest:
    """One utterance (or the utterance so far) to decode on a short window."""

    audio: npt.NDArray[np.float32]
    options: DecodeOptions
    # Words already committed: the decoder must continue from them.
    prefix: str = ""
    # What the stream (or clip) said before this utterance: Whisper's previous-text context, so a
    # sentence split by a pause decodes like one. Dropped by the recognizer when it makes the
    # decoder loop.
    context: str = ""
    # Set by the recognizer: a final is trimmed of words echoed into the padding.
    final: bool = False
    # The encoder output of this audio on this tier's window, from the recognition cache: the encoder
    # is skipped (an engine that cannot use it, or one of another shape, encodes as usual).
    encoder_output: npt.NDArray[np.float32] | None = None
    # Hand the encoder output back (WindowResult.encoder_output) for the cache to keep.
    keep_encoder_output: bool = False
    # What this stream's last decode of the utterance produced (its best tokens): an engine that can
    # verify a draft in one pass keeps it as far as it is what the decoder would choose anyway.
    draft: tuple[int, ...] = ()
    # The stream's last search, continued where it still holds (same window); engines without an
    # explicit K-V cache ignore both.
    decoder_state: DecoderState | None = None
    # Hand this decode's search back (WindowResult.decoder_state), with its K-V when keep_kv.
    keep_decoder_state: bool = False


@dataclass(frozen=True, slots=True)
class WindowResult:
    alternatives: tuple[Alternative, ...]
    # Why the decoder's text was dropped, if it was: "no_speech" or "repetition".
    rejected: str = ""
    no_speech_prob: float = 0.0
    # The request's encoder output (float32, as the encoder made it) when it asked to keep it.
    encoder_output: npt.NDArray[np.float32] | None = None
    # The request's encoder_output was used: the encoder did not run for it.
    encoder_reused: bool = False
    # The best hypothesis's tokens (a draft for the stream's next decode of this utterance).
    tokens: tuple[int, ...] = ()
    decoder_state: DecoderState | None = None
