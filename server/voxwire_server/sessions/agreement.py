"""LocalAgreement-2: commit the words two consecutive hypotheses of a growing utterance agree on,
except the newest hypothesis's last words: they lie at the edge of the audio heard so far, where a
word may still be cut off ("And so am I" before "my fellow Americans" has been heard)."""

from __future__ import annotations

import re

_STRIP = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _STRIP.sub("", word.lower())


# Words at the end of the newest hypothesis never committed.
HOLD_BACK_WORDS = 2


class LocalAgreement:
    """Committed words only ever grow; a partial is the committed words plus the newest tail."""

    def __init__(self, hold_back: int = HOLD_BACK_WORDS) -> None:
        self._hold_back = hold_back
        self.committed: list[str] = []
        self._previous: list[str] = []

    @property
    def prefix(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: str) -> tuple[str, float]:
        """Takes a new hypothesis of the whole utterance; returns the partial text and its stability
        (the share of its words that are committed)."""
        words = hypothesis.split()
        # The decoder was given the committed words as a forced prefix, so the hypothesis starts with
        # them: show them exactly as committed, whatever spelling came back.
        current = [*self.committed, *words[len(self.committed) :]]
        agreed = 0
        for a, b in zip(current, self._previous, strict=False):
            if _norm(a) != _norm(b):
                break
            agreed += 1
        agreed = min(agreed, len(current) - self._hold_back)
        if agreed > len(self.committed):
            self.committed = current[:agreed]
        self._previous = current
        stability = len(self.committed) / len(current) if current else 0.0
        return " ".join(current), stability

    def reset(self) -> None:
        self.committed = []
        self._previous = []
