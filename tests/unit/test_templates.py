from __future__ import annotations

import re

import pytest

from voxwire_server.errors import InvalidInput
from voxwire_server.sessions.templates import (
    MAX_ENTITY_CHARS,
    MAX_SLOTS,
    Slot,
    Template,
    parse_template,
)


def parse_error(source: str) -> str:
    with pytest.raises(InvalidInput) as info:
        parse_template(source)
    return str(info.value)


def fill_error(template: Template, entities: dict[str, str]) -> str:
    with pytest.raises(InvalidInput) as info:
        template.fill(entities)
    return str(info.value)


def character(message: str) -> int:
    match = re.search(r"at character (\d+)", message)
    assert match is not None, message
    return int(match[1])


# -- parsing --------------------------------------------------------------------------------------


def test_slots_and_literal_parts_in_order() -> None:
    template = parse_template("Coming up next is {song} by {artist}.")
    assert template.source == "Coming up next is {song} by {artist}."
    assert template.parts == ("Coming up next is ", Slot("song"), " by ", Slot("artist"), ".")
    assert template.slots == ("song", "artist")


def test_a_repeated_slot_is_listed_once_in_first_use_order() -> None:
    template = parse_template("{b} and {a}, then {b} again")
    assert template.slots == ("b", "a")
    assert template.parts.count(Slot("b")) == 2


def test_doubled_braces_are_literal_braces() -> None:
    template = parse_template("{{not a slot}} for {name} }}")
    assert template.parts == ("{not a slot} for ", Slot("name"), " }")
    assert template.slots == ("name",)
    assert template.prefix == "{not a slot} for "


def test_a_literal_brace_right_before_and_after_a_slot() -> None:
    template = parse_template("x{{{name}}}y")
    assert template.parts == ("x{", Slot("name"), "}y")


def test_whitespace_inside_the_braces_is_ignored() -> None:
    template = parse_template("Play { song }, then {\tartist\n}")
    assert template.slots == ("song", "artist")
    assert template.parts == ("Play ", Slot("song"), ", then ", Slot("artist"))


def test_slot_names_are_identifiers() -> None:
    template = parse_template("{_a} {B2} {snake_case_9}")
    assert template.slots == ("_a", "B2", "snake_case_9")


def test_a_template_made_of_one_slot() -> None:
    template = parse_template("{only}")
    assert template.parts == (Slot("only"),)
    assert template.prefix == ""


# -- parse errors name the character (1-based) -----------------------------------------------------


def test_unmatched_closing_brace_names_its_position() -> None:
    message = parse_error("Play {song} now}")
    assert character(message) == 16
    assert "unmatched '}'" in message
    assert "'}}'" in message  # tells the author how to write a literal brace


def test_a_single_closing_brace_after_doubled_ones() -> None:
    # "}}" is a literal brace, the third "}" is unmatched.
    assert character(parse_error("{a} }}}")) == 7


def test_unclosed_opening_brace_names_its_position() -> None:
    message = parse_error("Play {song} by {artist")
    assert character(message) == 16
    assert "never closed" in message


@pytest.mark.parametrize(
    ("source", "at", "name"),
    [
        ("Hi {} there", 4, "''"),
        ("Hi {two words}", 4, "'two words'"),
        ("{9lives} x", 1, "'9lives'"),
        ("ab {a-b}", 4, "'a-b'"),
        ("ab {a{b}", 4, "'a{b'"),
    ],
)
def test_bad_slot_names_name_the_slot_and_its_position(source: str, at: int, name: str) -> None:
    message = parse_error(source)
    assert character(message) == at
    assert name in message


def test_a_template_without_a_slot_is_refused() -> None:
    assert "no {slot}" in parse_error("Just text {{with braces}}")
    assert "no {slot}" in parse_error("")


def test_at_most_max_slots_distinct_slots() -> None:
    fits = " ".join(f"{{s{i}}}" for i in range(MAX_SLOTS))
    assert len(parse_template(fits).slots) == MAX_SLOTS
    # Repeats do not count.
    assert len(parse_template(fits + " {s0} {s1}").slots) == MAX_SLOTS
    message = parse_error(fits + " {one_more}")
    assert f"{MAX_SLOTS + 1} slots" in message
    assert f"limit is {MAX_SLOTS}" in message


@pytest.mark.parametrize("source", ["<speak>Next is {song}</speak>", "  \n<s>{song}</s>"])
def test_ssml_looking_templates_are_refused(source: str) -> None:
    assert "not SSML" in parse_error(source)


# -- fill --------------------------------------------------------------------------------------------

TEMPLATE = parse_template("Coming up next is {song} by {artist}.")


def test_fill_puts_each_value_in_its_slot() -> None:
    assert TEMPLATE.fill({"song": "Yellow", "artist": "Coldplay"}) == "Coming up next is Yellow by Coldplay."


def test_fill_repeats_a_value_for_a_repeated_slot() -> None:
    template = parse_template("{x}, I said {x}!")
    assert template.fill({"x": "Hello"}) == "Hello, I said Hello!"


def test_fill_collapses_whitespace_inside_values_and_strips_the_result() -> None:
    template = parse_template("{a} and {b}")
    assert template.fill({"a": "  Hey \n  Jude ", "b": "Let\tIt  Be"}) == "Hey Jude and Let It Be"


def test_fill_keeps_literal_braces() -> None:
    assert parse_template("{{{x}}}").fill({"x": "y"}) == "{y}"


def test_fill_names_every_missing_value() -> None:
    message = fill_error(TEMPLATE, {})
    assert "missing a value for: song, artist" in message


def test_fill_names_values_without_a_slot() -> None:
    message = fill_error(TEMPLATE, {"song": "a", "artist": "b", "zz": "c", "album": "d"})
    assert "no slot named: album, zz" in message


@pytest.mark.parametrize("value", ["", "   ", "\n\t"])
def test_fill_refuses_empty_values(value: str) -> None:
    assert "'artist' is empty" in fill_error(TEMPLATE, {"song": "a", "artist": value})


def test_fill_refuses_values_over_the_limit() -> None:
    at_limit = "q" * MAX_ENTITY_CHARS
    assert TEMPLATE.fill({"song": at_limit, "artist": "b"}) == f"Coming up next is {at_limit} by b."
    message = fill_error(TEMPLATE, {"song": at_limit + "q", "artist": "b"})
    assert f"{MAX_ENTITY_CHARS + 1} characters" in message
    assert f"limit is {MAX_ENTITY_CHARS}" in message


def test_fill_refuses_markup_in_values() -> None:
    message = fill_error(TEMPLATE, {"song": "<break time='3s'/>", "artist": "b"})
    assert "'song' looks like markup" in message


def test_fill_accepts_lone_angle_brackets_and_ampersands() -> None:
    filled = TEMPLATE.fill({"song": "1 < 2", "artist": "Simon & Garfunkel"})
    assert filled == "Coming up next is 1 < 2 by Simon & Garfunkel."


# -- prefix and fill_from_first_slot ----------------------------------------------------------------


def test_prefix_is_the_literal_text_before_the_first_slot() -> None:
    assert TEMPLATE.prefix == "Coming up next is "
    assert parse_template("Welcome back. Next: {a} then {b}.").prefix == "Welcome back. Next: "


def test_fill_from_first_slot_drops_the_prefix() -> None:
    entities = {"song": " Yellow ", "artist": "Coldplay"}
    assert TEMPLATE.fill_from_first_slot(entities) == "Yellow by Coldplay."


def test_fill_from_first_slot_validates_like_fill() -> None:
    with pytest.raises(InvalidInput, match="missing a value for: artist"):
        TEMPLATE.fill_from_first_slot({"song": "x"})
    with pytest.raises(InvalidInput, match="no slot named: extra"):
        TEMPLATE.fill_from_first_slot({"song": "x", "artist": "y", "extra": "z"})


def test_fill_from_first_slot_of_a_template_starting_with_its_slot() -> None:
    template = parse_template("{song} is up next.")
    assert template.fill_from_first_slot({"song": "Yellow"}) == template.fill({"song": "Yellow"})
