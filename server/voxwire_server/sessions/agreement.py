"""LocalAgreement-2 with a confidence gate: commit the words two consecutive hypotheses of a growing
utterance agree on, and that the decoder was sure of in both, except the newest hypothesis's last
words: they lie at the edge of the audio heard so far, where a word may still be cut off ("And so am
I" before "my fellow Americans" has been heard)."""

from __future__ import annotations

import re

from voxwire_server.domain import Alternative

_STRIP = re.compile(r"[^\w']+")


def _norm(word: str) -> str:
    return _STRIP.sub("", word.lower())


# Words at the end of the newest hypothesis never committed.
HOLD_BACK_WORDS = 2
# The server's default gate (--partial-commit-probability) is 0.55: a word is committed only when
# both agreeing hypotheses gave it at least that probability (the aligner's word probability). In
# process, a partial every 500 ms of audio through every clip of both dev sets, the share of
# committed words that differed from the final (speech-dev / speech-dev-2): without the gate
# 2.7 % / 6.8 %; at 0.3 1.9 % / 3.2 %; at 0.45 1.2 % / 1.7 %; at 0.55 1.2 % / 1.3 %; at 0.6
# 0.3 % / 0.7 %; with 3-pass agreement instead, 1.0 % / 4.6 %. Through the server
# (benchmarks/asr_accuracy.py, one stream at twice real time) 2.3 % / 6.0 % without it, 1.3 % /
# 2.5 % at 0.45 and 1.4 % / 2.1 % at 0.55, committing 58 % / 49 % as many words.


class LocalAgreement:
    """Committed words only ever grow; a partial is the committed words plus the newest tail."""

    def __init__(self, hold_back: int = HOLD_BACK_WORDS, min_probability: float = 0.0) -> None:
        """min_probability: 0 commits what two hypotheses agree on, sure or not (then hypotheses need
        no words); above 0, a hypothesis after the first without word probabilities commits nothing
        new."""
        self._hold_back = hold_back
        self._min_probability = min_probability
        self.committed: list[str] = []
        self._previous: list[str] = []
        self._previous_sure: list[bool] = []

    @property
    def needs_words(self) -> bool:
        """Whether the next hypothesis must carry its words (with probabilities). The first of an
        utterance need not: nothing is committed before a second one, whose probabilities then
        decide alone (measured: as good, and the first partial comes without the aligner's cost)."""
        return self._min_probability > 0 and bool(self._previous)

    @property
    def prefix(self) -> str:
        return " ".join(self.committed)

    def update(self, hypothesis: Alternative) -> tuple[str, float]:
        """Takes a new hypothesis of the whole utterance; returns the partial text and its stability
        (the share of its words that are committed)."""
        words = hypothesis.text.split()
        # The decoder was given the committed words as a forced prefix, so the hypothesis starts with
        # them: show them exactly as committed, whatever spelling came back.
        current = [*self.committed, *words[len(self.committed) :]]
        sure = self._sure(hypothesis, len(current))
        agreed = 0
        for i, (a, b) in enumerate(zip(current, self._previous, strict=False)):
            if _norm(a) != _norm(b):
                break
            if i >= len(self.committed) and not (sure[i] and self._previous_sure[i]):
                break
            agreed += 1
        agreed = min(agreed, len(current) - self._hold_back)
        if agreed > len(self.committed):
            self.committed = current[:agreed]
        self._previous = current
        self._previous_sure = sure
        stability = len(self.committed) / len(current) if current else 0.0
        return " ".join(current), stability

    def _sure(self, hypothesis: Alternative, n: int) -> list[bool]:
        """Per word of the hypothesis: whether it passes the gate. Aligned words that do not spell
        the text word for word (the aligner split or merged one) leave every word unsure."""
        if self._min_probability <= 0 or (not self._previous and not hypothesis.words):
            return [True] * n
        spelled = [_norm(w.text) for w in hypothesis.words]
        if len(hypothesis.words) != n or spelled != [_norm(w) for w in hypothesis.text.split()]:
            return [False] * n
        return [w.probability >= self._min_probability for w in hypothesis.words]

    def snapshot(self) -> dict[str, list[str] | list[bool]]:
        return {
            "committed": list(self.committed),
            "previous": list(self._previous),
            "sure": list(self._previous_sure),
        }

    def restore(self, state: dict[str, list[str] | list[bool]]) -> None:
        """Continues from a snapshot(); ValueError for one that does not fit."""
        try:
            committed = [str(w) for w in state["committed"]]
            previous = [str(w) for w in state["previous"]]
            sure = [bool(x) for x in state["sure"]]
        except (KeyError, TypeError) as exc:
            raise ValueError(f"not an agreement snapshot: {exc}") from None
        if len(sure) != len(previous) or len(committed) > len(previous):
            raise ValueError("the agreement snapshot is inconsistent")
        self.committed, self._previous, self._previous_sure = committed, previous, sure

    def reset(self) -> None:
        self.committed = []
        self._previous = []
        self._previous_sure = []
