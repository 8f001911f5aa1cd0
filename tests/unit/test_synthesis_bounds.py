"""Synthesis work is bounded: text the G2P cannot read, over-long sentences, replies longer than
max_synthesis_s and oversized warmups, without the model."""

from __future__ import annotations

import pytest

from tests.unit.test_synthesis_session import FakeEngine, collect, make_setup, request
from voxwire_server.domain import SynthesisInput
from voxwire_server.engines.tts import MAX_NUMBER_DIGITS, MAX_UNIT_CHARS, bounded_pieces, speakable
from voxwire_server.errors import InvalidInput, LimitExceeded
from voxwire_server.sessions import spoken
from voxwire_server.sessions.speech_plan import Speech, plan_ssml
from voxwire_server.sessions.ssml import Words
from voxwire_server.sessions.synthesis import SynthesisLimits


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("1" * 37, " ".join("1" * 37)),
        ("1," * 3 + "1", "1,1,1,1"),  # short runs are hibari's to read
        ("1," * 300, ", ".join(["1"] * 300) + ","),
        ("²a", " 2 a"),
        ("x ①a", "x  1 a"),
        ("pi is 3.14", "pi is 3.14"),
    ],
)
def test_text_is_made_speakable_for_the_g2p(text: str, expected: str) -> None:
    assert speakable(text) == expected


def test_numbers_with_more_digits_than_the_limit_are_read_digit_by_digit() -> None:
    long = "1" * (MAX_NUMBER_DIGITS + 1)
    assert speakable(f"call {long}.") == f"call {' '.join(long)}."
    assert speakable("1" * MAX_NUMBER_DIGITS) == "1" * MAX_NUMBER_DIGITS


def test_overlong_sentences_are_cut_at_clauses_then_words_into_bounded_pieces() -> None:
    words = " ".join(f"word{i}" for i in range(1000))  # 4.9 KB, no sentence break
    pieces = bounded_pieces(words)
    assert all(len(p) <= MAX_UNIT_CHARS for p in pieces)
    assert " ".join(pieces) == words
    clauses = "; ".join(["a clause of a few words"] * 40)
    assert all(p.endswith(";") or p == bounded_pieces(clauses)[-1] for p in bounded_pieces(clauses))
    assert bounded_pieces("x" * 1000) == ["x" * 400, "x" * 400, "x" * 200]
    assert bounded_pieces("short") == ["short"]


def test_say_as_numbers_of_any_length_are_not_speakable_rather_than_failing() -> None:
    for reader in (spoken.cardinal, spoken.ordinal):
        with pytest.raises(spoken.NotSpeakable, match="too large"):
            reader("9" * 5000)  # int() of over 4300 digits raises ValueError
    with pytest.raises(spoken.NotSpeakable):
        spoken.date("9" * 5000 + "/01/2024")


async def test_many_short_ssml_pieces_still_make_bounded_units() -> None:
    engine = FakeEngine()
    items = [Words(f"piece {i}", 1.0) for i in range(400)]
    units = await plan_ssml(engine, "heart", items, 1.0)
    assert len(units) > 1
    assert all(isinstance(u, Speech) and len(u.phonemes) <= MAX_UNIT_CHARS for u in units)


async def test_breaks_longer_than_the_reply_limit_are_out_of_range_before_any_synthesis() -> None:
    setup = make_setup(limits=SynthesisLimits(max_synthesis_s=120))
    ssml = "<speak>Hi." + '<break time="10s"/>' * 13 + "</speak>"
    with pytest.raises(LimitExceeded, match="alone are 130 s; a reply may be at most 120 s"):
        await collect(setup.session, request(ssml, input=SynthesisInput.SSML))
    assert setup.units == []  # nothing was synthesized
    # 600 plain <break/> (400 ms each) are 240 s.
    ssml = "<speak>Hi." + "<break/>" * 600 + "</speak>"
    with pytest.raises(LimitExceeded, match="240 s"):
        await setup.session.synthesize(request(ssml, input=SynthesisInput.SSML))
    assert setup.units == []


async def test_synthesis_stops_at_the_reply_limit() -> None:
    setup = make_setup(limits=SynthesisLimits(max_synthesis_s=1.0))
    text = " ".join(f"This is sentence number {i} of a long reply." for i in range(40))
    stream = setup.session.stream(request(text))
    with pytest.raises(LimitExceeded, match="longer than 1 s"):
        async for _ in stream:
            pass
    assert 0 < len(setup.units) < 40


async def test_warmup_is_bounded_in_items_and_characters() -> None:
    setup = make_setup(limits=SynthesisLimits(max_warmup_items=3, max_warmup_chars=100))
    base = request("")
    with pytest.raises(InvalidInput, match="at most 3 phrases and templates"):
        await setup.session.warmup(base, ["a", "b", "c"], ["Hi {name}."])
    with pytest.raises(InvalidInput, match="100 characters in all"):
        await setup.session.warmup(base, ["x" * 60, "y" * 41], [])
    assert setup.units == []


@pytest.mark.parametrize("name", ["max_synthesis_s", "max_warmup_items", "max_warmup_chars"])
def test_the_new_limits_must_be_positive(name: str) -> None:
    from voxwire_server.config import ConfigError, ServerConfig

    with pytest.raises(ConfigError, match=f"{name} must be positive"):
        ServerConfig(listen="127.0.0.1:0", **{name: 0}).validate()  # type: ignore[arg-type]
