"""Text or SSML → the units synthesis runs one at a time: sentences (one model call each) and pauses."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from voxwire_server.engines.base import SpeechSynthesizer
from voxwire_server.engines.tts import bounded_pieces
from voxwire_server.sessions.ssml import MAX_RATE, MIN_RATE, Boundary, Break, Phonemes, SsmlItem

# A paragraph ends with a pause a little longer than the one the voice makes after a sentence.
PARAGRAPH_PAUSE_MS = 350
_SENTENCE_END = (".", "!", "?", "…")


@dataclass(frozen=True, slots=True)
class Speech:
    phonemes: str
    speaking_rate: float


@dataclass(frozen=True, slots=True)
class Silence:
    ms: int


Unit = Speech | Silence


def clamp_rate(rate: float) -> float:
    # Rounded: 1.5 × 0.8 is the same rate as 1.2 (and the same cache key).
    return round(min(MAX_RATE, max(MIN_RATE, rate)), 3)


async def plan_text(tts: SpeechSynthesizer, voice: str, text: str, speaking_rate: float) -> list[Unit]:
    return [Speech(u, speaking_rate) for u in await tts.plan(voice, text)]


async def plan_ssml(
    tts: SpeechSynthesizer, voice: str, items: Sequence[SsmlItem], speaking_rate: float
) -> list[Unit]:
    """Pieces of one sentence with one rate become one model call; a sentence end inside text, an
    <s> or <p> end, a <break> or a rate change starts a new one."""
    units: list[Unit] = []
    current: list[str] = []
    rate = speaking_rate

    def flush() -> None:
        if any(any(c.isalpha() for c in piece) for piece in current):
            # Many short pieces of one sentence (say-as, sub) still make units of bounded length.
            units.extend(Speech(p, rate) for p in bounded_pieces(" ".join(current)))
        current.clear()

    for item in items:
        if isinstance(item, Break):
            flush()
            if item.ms:
                units.append(Silence(item.ms))
            continue
        if isinstance(item, Boundary):
            flush()
            if item.paragraph:
                units.append(Silence(PARAGRAPH_PAUSE_MS))
            continue
        item_rate = clamp_rate(speaking_rate * item.rate)
        if item_rate != rate:
            flush()
            rate = item_rate
        if isinstance(item, Phonemes):
            sentences = [item.phonemes]
        else:
            sentences = await tts.plan(voice, item.text)
        for i, sentence in enumerate(sentences):
            if i > 0 or (current and current[-1].rstrip().endswith(_SENTENCE_END)):
                flush()
            current.append(sentence)
    flush()
    return units
