from __future__ import annotations

from voxwire_server.sessions.agreement import LocalAgreement


def test_commits_what_two_hypotheses_agree_on() -> None:
    agreement = LocalAgreement(hold_back=1)
    text, stability = agreement.update("turn on the")
    assert (text, stability) == ("turn on the", 0.0)
    text, stability = agreement.update("turn on the kitchen")
    assert agreement.committed == ["turn", "on", "the"]
    assert stability == 0.75
    assert agreement.prefix == "turn on the"


def test_committed_words_survive_a_disagreeing_hypothesis() -> None:
    agreement = LocalAgreement(hold_back=0)
    agreement.update("Turn on the kitchen")
    agreement.update("turn on the kitten lights")  # agrees on three words, ignoring case
    assert agreement.committed == ["turn", "on", "the"]
    # The decoder continues from the committed words; they are shown exactly as committed.
    text, _ = agreement.update("Turn on, the kitchen lights")
    assert text == "turn on the kitchen lights"
    assert agreement.committed == ["turn", "on", "the"]  # "kitten" and "kitchen" disagree


def test_punctuation_does_not_block_agreement_and_reset_starts_over() -> None:
    agreement = LocalAgreement(hold_back=0)
    agreement.update("What time is it")
    agreement.update("What time is it?")
    assert len(agreement.committed) == 4
    agreement.reset()
    assert agreement.committed == []
    assert agreement.update("hello")[1] == 0.0


def test_the_last_words_at_the_edge_of_the_audio_are_not_committed() -> None:
    # jfk at 2.5 s and 3 s: both hypotheses end "am I" where "my fellow" is still being spoken.
    agreement = LocalAgreement()
    agreement.update("And so am I")
    text, stability = agreement.update("And so am I")
    assert agreement.committed == ["And", "so"]
    assert (text, stability) == ("And so am I", 0.5)
    agreement.update("And so my fellow Americans")
    assert agreement.committed == ["And", "so"]
    agreement.update("And so my fellow Americans ask not")
    assert agreement.committed == ["And", "so", "my", "fellow", "Americans"]
