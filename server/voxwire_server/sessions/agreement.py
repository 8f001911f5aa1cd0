"""LocalAgreement-2: commit the words two consecutive hypotheses of a growing utterance agree on."""

from __future__ import annotations

import re

_STRIP = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _STRIP.sub("", word.lower())


class LocalAgreement:
    """Committed words only ever grow; a partial is the committed words plus the newest tail."""

    def __init__(self) -> None:
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
        if agreed > len(self.committed):
            self.committed = current[:agreed]
        self._previous = current
        stability = len(self.committed) / len(current) if current else 0.0
        return " ".join(current), stability

    def reset(self) -> None:
        self.committed = []
        self._previous = []
