from __future__ import annotations

from voxwire_server.domain import Alternative, Word
from voxwire_server.sessions.agreement import LocalAgreement


def _h(text: str) -> Alternative:
    return Alternative(text=text, confidence=1.0)


def _sure(text: str, *probabilities: float) -> Alternative:
    """A hypothesis with one aligned word per word of the text (probability 0.9 unless given)."""
    words = text.split()
    p = list(probabilities) + [0.9] * (len(words) - len(probabilities))
    return Alternative(
        text=text,
        confidence=1.0,
        words=tuple(Word(w, i * 0.3, i * 0.3 + 0.25, p[i]) for i, w in enumerate(words)),
    )


def test_commits_what_two_hypotheses_agree_on() -> None:
    agreement = LocalAgreement(hold_back=1)
    text, stability = agreement.update(_h("turn on the"))
    assert (text, stability) == ("turn on the", 0.0)
    text, stability = agreement.update(_h("turn on the kitchen"))
    assert agreement.committed == ["turn", "on", "the"]
    assert stability == 0.75
    assert agreement.prefix == "turn on the"


def test_committed_words_survive_a_disagreeing_hypothesis() -> None:
    agreement = LocalAgreement(hold_back=0)
    agreement.update(_h("Turn on the kitchen"))
    agreement.update(_h("turn on the kitten lights"))  # agrees on three words, ignoring case
    assert agreement.committed == ["turn", "on", "the"]
    # The decoder continues from the committed words; they are shown exactly as committed.
    text, _ = agreement.update(_h("Turn on, the kitchen lights"))
    assert text == "turn on the kitchen lights"
    assert agreement.committed == ["turn", "on", "the"]  # "kitten" and "kitchen" disagree


def test_punctuation_does_not_block_agreement_and_reset_starts_over() -> None:
    agreement = LocalAgreement(hold_back=0)
    agreement.update(_h("What time is it"))
    agreement.update(_h("What time is it?"))
    assert len(agreement.committed) == 4
    agreement.reset()
    assert agreement.committed == []
    assert agreement.update(_h("hello"))[1] == 0.0


def test_the_last_words_at_the_edge_of_the_audio_are_not_committed() -> None:
    # jfk at 2.5 s and 3 s: both hypotheses end "am I" where "my fellow" is still being spoken.
    agreement = LocalAgreement()
    agreement.update(_h("And so am I"))
    text, stability = agreement.update(_h("And so am I"))
    assert agreement.committed == ["And", "so"]
    assert (text, stability) == ("And so am I", 0.5)
    agreement.update(_h("And so my fellow Americans"))
    assert agreement.committed == ["And", "so"]
    agreement.update(_h("And so my fellow Americans ask not"))
    assert agreement.committed == ["And", "so", "my", "fellow", "Americans"]


def test_a_word_is_committed_only_if_both_agreeing_hypotheses_were_sure_of_it() -> None:
    agreement = LocalAgreement(hold_back=0, min_probability=0.45)
    assert not agreement.needs_words  # the first hypothesis of an utterance need not be aligned
    agreement.update(_sure("turn on the kitten", 0.9, 0.9, 0.9, 0.3))
    assert agreement.needs_words
    agreement.update(_sure("turn on the kitten lights", 0.9, 0.9, 0.9, 0.8))
    # "kitten" agrees, but the first hypothesis was unsure of it: it and all after it wait.
    assert agreement.committed == ["turn", "on", "the"]
    agreement.update(_sure("turn on the kitten lights", 0.9, 0.9, 0.9, 0.7, 0.2))
    assert agreement.committed == ["turn", "on", "the", "kitten"]
    agreement.update(_sure("turn on the kitten lights", 0.9, 0.9, 0.9, 0.7, 0.9))
    assert agreement.committed == ["turn", "on", "the", "kitten"]  # the previous one doubted "lights"
    agreement.update(_sure("turn on the kitten lights"))
    assert agreement.committed == ["turn", "on", "the", "kitten", "lights"]


def test_committed_words_are_kept_however_unsure_a_later_hypothesis_is() -> None:
    agreement = LocalAgreement(hold_back=0, min_probability=0.45)
    agreement.update(_sure("what time"))
    agreement.update(_sure("what time is it"))
    assert agreement.committed == ["what", "time"]
    text, stability = agreement.update(_sure("what time is it", 0.1, 0.1, 0.1, 0.1))
    assert (text, stability) == ("what time is it", 0.5)


def test_without_word_probabilities_the_gate_commits_nothing_new() -> None:
    agreement = LocalAgreement(hold_back=0, min_probability=0.45)
    agreement.update(_h("turn on the lights"))  # the first: its words count as sure
    agreement.update(_h("turn on the lights"))  # a later one without words: unsure
    assert agreement.committed == []
    agreement.update(_sure("turn on the lights"))
    assert agreement.committed == []  # the one before was unsure
    agreement.update(_sure("turn on the lights"))
    assert agreement.committed == ["turn", "on", "the", "lights"]
    agreement.reset()
    assert not agreement.needs_words
    agreement.update(_h("turn on the lights"))
    agreement.update(_sure("turn on the lights"))
    assert agreement.committed == ["turn", "on", "the", "lights"]  # the second decides alone
    agreement.reset()
    # Words that do not line up with the text (the aligner split one) count as unsure too.
    split = Alternative(
        text="a 42-line bible",
        confidence=1.0,
        words=(Word("a", 0, 0.1, 0.9), Word("42", 0.1, 0.3, 0.9), Word("-line", 0.3, 0.5, 0.9)),
    )
    agreement.update(split)
    agreement.update(split)
    assert agreement.committed == []
    assert not LocalAgreement().needs_words
