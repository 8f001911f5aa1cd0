from __future__ import annotations

import re
from collections.abc import Sequence

import pytest

from voxwire_server.sessions.speech_plan import (
    PARAGRAPH_PAUSE_MS,
    Silence,
    Speech,
    Unit,
    clamp_rate,
    plan_ssml,
    plan_text,
)
from voxwire_server.sessions.ssml import Boundary, Break, Phonemes, SsmlItem, Words, parse_ssml


class FakePlanner:
    """The only engine method the planner uses: sentences split after . ! ? and lower-cased (the
    "engine's form"). Unlike hibari it keeps punctuation-only pieces, so the planner's own filter shows."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def plan(self, voice: str, text: str) -> list[str]:
        self.calls.append((voice, text))
        return [s.lower() for s in re.split(r"(?<=[.!?…])\s+", text.strip()) if s]


async def ssml_units(items: Sequence[SsmlItem], speaking_rate: float = 1.0) -> list[Unit]:
    """The plan with rates rounded to 9 places (1.5 * 0.8 is 1.2000000000000002 in floats)."""
    units = await plan_ssml(FakePlanner(), "heart", items, speaking_rate)  # type: ignore[arg-type]
    return [Speech(u.phonemes, round(u.speaking_rate, 9)) if isinstance(u, Speech) else u for u in units]


@pytest.mark.parametrize(("rate", "clamped"), [(0.1, 0.5), (0.5, 0.5), (1.3, 1.3), (2.0, 2.0), (3.0, 2.0)])
def test_clamp_rate(rate: float, clamped: float) -> None:
    assert clamp_rate(rate) == clamped


async def test_text_is_one_unit_per_sentence_at_the_request_rate() -> None:
    planner = FakePlanner()
    units = await plan_text(planner, "heart", "Hello there. How are you?", 1.2)  # type: ignore[arg-type]
    assert units == [Speech("hello there.", 1.2), Speech("how are you?", 1.2)]
    assert planner.calls == [("heart", "Hello there. How are you?")]


async def test_words_of_one_sentence_and_rate_are_one_unit() -> None:
    units = await ssml_units([Words("Turn on", 1.0), Phonemes("ðə", 1.0), Words("lights.", 1.0)])
    assert units == [Speech("turn on ðə lights.", 1.0)]


async def test_a_break_becomes_silence_between_units() -> None:
    units = await ssml_units([Words("Hi there", 1.0), Break(500), Words("Bye.", 1.0)])
    assert units == [Speech("hi there", 1.0), Silence(500), Speech("bye.", 1.0)]


async def test_a_zero_break_splits_without_silence() -> None:
    units = await ssml_units([Words("Hi there", 1.0), Break(0), Words("bye", 1.0)])
    assert units == [Speech("hi there", 1.0), Speech("bye", 1.0)]


async def test_a_paragraph_boundary_adds_the_paragraph_pause() -> None:
    units = await ssml_units([Words("One", 1.0), Boundary(paragraph=True), Words("two", 1.0)])
    assert units == [Speech("one", 1.0), Silence(PARAGRAPH_PAUSE_MS), Speech("two", 1.0)]


async def test_a_sentence_boundary_splits_without_silence() -> None:
    units = await ssml_units([Words("One", 1.0), Boundary(paragraph=False), Words("two", 1.0)])
    assert units == [Speech("one", 1.0), Speech("two", 1.0)]


async def test_a_rate_change_starts_a_new_unit() -> None:
    units = await ssml_units([Words("slow part", 0.8), Words("fast part", 1.5), Words("back", 1.0)])
    assert units == [Speech("slow part", 0.8), Speech("fast part", 1.5), Speech("back", 1.0)]


@pytest.mark.parametrize(
    ("request_rate", "rates"),
    [(1.5, [1.2, 2.0]), (0.5, [0.5, 0.75]), (1.0, [0.8, 1.5])],
)
async def test_ssml_rates_multiply_with_the_request_rate_and_clamp(
    request_rate: float, rates: list[float]
) -> None:
    units = await ssml_units([Words("slow part", 0.8), Words("fast part", 1.5)], request_rate)
    assert units == [Speech("slow part", rates[0]), Speech("fast part", rates[1])]


async def test_rates_equal_after_clamping_do_not_split() -> None:
    # 2.0 * 1.25 and 2.0 * 1.5 both clamp to 2.0: one sentence, one model call.
    units = await ssml_units([Words("quite fast", 1.25), Words("faster still.", 1.5)], 2.0)
    assert units == [Speech("quite fast faster still.", 2.0)]


async def test_phonemes_merge_into_the_sentence_around_them() -> None:
    units = await ssml_units([Words("Say", 1.0), Phonemes("təmˈAɾO", 1.0), Words("please. Thanks.", 1.0)])
    assert units == [Speech("say təmˈAɾO please.", 1.0), Speech("thanks.", 1.0)]


async def test_phonemes_after_a_sentence_end_start_a_new_unit() -> None:
    units = await ssml_units([Words("Done.", 1.0), Phonemes("hˈI", 1.0)])
    assert units == [Speech("done.", 1.0), Speech("hˈI", 1.0)]


async def test_phonemes_at_another_rate_are_their_own_unit() -> None:
    units = await ssml_units([Words("Say", 1.0), Phonemes("hˈI", 0.5), Words("now", 1.0)])
    assert units == [Speech("say", 1.0), Speech("hˈI", 0.5), Speech("now", 1.0)]


async def test_a_sentence_end_inside_text_splits_and_the_last_sentence_continues() -> None:
    units = await ssml_units([Words("One. Two", 1.0), Phonemes("tˈu", 1.0), Words("three!", 1.0)])
    assert units == [Speech("one.", 1.0), Speech("two tˈu three!", 1.0)]


async def test_punctuation_only_pieces_produce_no_unit() -> None:
    units = await ssml_units([Words("Hi.", 1.0), Break(100), Words("...", 1.0), Boundary(paragraph=False)])
    assert units == [Speech("hi.", 1.0), Silence(100)]
    assert await ssml_units([Words("?!", 1.0)]) == []


async def test_parsed_ssml_through_the_planner() -> None:
    items = parse_ssml(
        '<speak><p>Hello there. <break time="1.5s"/>Wait.</p>'
        '<p><prosody rate="x-fast"><s>Quick one</s><s>Two</s></prosody> done.</p></speak>',
        phoneme_symbols=frozenset(),
    )
    units = await ssml_units(items, 1.2)
    # The closing </p> of the last paragraph adds its pause too: the reply ends in 350 ms of silence.
    assert units == [
        Speech("hello there.", 1.2),
        Silence(1500),
        Speech("wait.", 1.2),
        Silence(PARAGRAPH_PAUSE_MS),
        Speech("quick one", 1.8),
        Speech("two", 1.8),
        Speech("done.", 1.2),
        Silence(PARAGRAPH_PAUSE_MS),
    ]
