"""Spoken English for `<say-as>` content: numbers, ordinals, dates, times, phone numbers, spelling.

The G2P reads words reliably but has to guess at digits and punctuation ("3/5" is a date, a
fraction or a score). `<say-as>` tells us which reading the author meant, so the content is turned
into plain words here and the G2P never sees the digits. Everything is English and deterministic:
the same markup always gives the same words, so the same audio.

Decisions (documented for authors):
- cardinals: American style, no "and" ("one hundred one"); integers below 10**21 (quintillions);
  decimals are read digit by digit ("three point one four").
- telephone: "0" is read "zero"; groups of digits are separated by commas so the voice pauses, and
  ungrouped runs longer than four digits are cut into threes ("5551234567" → 555, 123, 4567).
- time: 12:00 is "noon" and 0:00 is "midnight" on the 12-hour clock; hms24 reads hours and
  minutes as numbers ("fourteen thirty", "fourteen hundred", "nine oh five").
- date: years must have four digits (a two-digit year hides its century); month names are spoken
  and days are ordinals ("March fifth, twenty twenty-four"; dmy: "the fifth of March, ...").
"""

from __future__ import annotations

import calendar
import re

__all__ = [
    "DATE_FORMATS",
    "MAX_CARDINAL",
    "TIME_FORMATS",
    "NotSpeakable",
    "cardinal",
    "characters",
    "date",
    "digit_words",
    "integer_words",
    "ordinal",
    "ordinal_words",
    "telephone",
    "time_of_day",
    "year_words",
]


class NotSpeakable(ValueError):
    """Content that does not fit the requested reading; the message says what was expected."""


_ONES = (
    "zero",
    "one",
    "two",
    "three",
    "four",
    "five",
    "six",
    "seven",
    "eight",
    "nine",
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
)
_TENS = ("", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety")
_SCALES = ("", "thousand", "million", "billion", "trillion", "quadrillion", "quintillion")
MAX_CARDINAL = 10 ** (3 * len(_SCALES)) - 1
_IRREGULAR_ORDINALS = {
    "one": "first",
    "two": "second",
    "three": "third",
    "five": "fifth",
    "eight": "eighth",
    "nine": "ninth",
    "twelve": "twelfth",
}
# English names, not calendar.month_name: that one follows the process locale.
_MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)
DATE_FORMATS = ("mdy", "dmy", "ymd", "md", "dm", "ym", "my", "y", "m", "d")
TIME_FORMATS = ("hms12", "hms24")
_DATE_EXAMPLES = {
    "mdy": "03/05/2024",
    "dmy": "05/03/2024",
    "ymd": "2024-03-05",
    "md": "03/05",
    "dm": "05/03",
    "ym": "2024-03",
    "my": "03/2024",
    "y": "2024",
    "m": "03",
    "d": "05",
}

_NUMBER = re.compile(r"(?P<sign>[-+\u2212]?)(?P<int>\d{1,3}(?:,\d{3})+|\d+)?(?:\.(?P<frac>\d+))?", re.ASCII)
_ORDINAL = re.compile(r"(?P<int>\d{1,3}(?:,\d{3})+|\d+)(?P<suffix>st|nd|rd|th)?", re.ASCII | re.IGNORECASE)
_ISO_DATE = re.compile(r"\d{4}-\d{1,2}-\d{1,2}", re.ASCII)
_DATE_SEPARATOR = re.compile(r"[-/.]")
_TIME = re.compile(
    r"(?P<hour>\d{1,2})(?::(?P<minute>\d{2})(?::(?P<second>\d{2}))?)?\s*(?P<half>[ap])\.?\s?m\.?",
    re.ASCII | re.IGNORECASE,
)
_TIME_24 = re.compile(r"(?P<hour>\d{1,2}):(?P<minute>\d{2})(?::(?P<second>\d{2}))?", re.ASCII)
_TELEPHONE = re.compile(r"\+?[0-9\s()./\-]+", re.ASCII)
_DIGITS = re.compile(r"[0-9]+", re.ASCII)


def _quote(text: str, limit: int = 40) -> str:
    """Quotes content for an error message without echoing a whole paragraph back."""
    text = " ".join(text.split())
    return f'"{text}"' if len(text) <= limit else f'"{text[: limit - 1]}…"'


def _field(text: str) -> str:
    """A date field for an error message: as written when short, else quoted and cut."""
    return text if len(text) <= 4 else _quote(text)


def _below_hundred(n: int) -> str:
    if n < 20:
        return _ONES[n]
    tens, ones = divmod(n, 10)
    return _TENS[tens] if ones == 0 else f"{_TENS[tens]}-{_ONES[ones]}"


def _below_thousand(n: int) -> str:
    hundreds, rest = divmod(n, 100)
    words = [f"{_ONES[hundreds]} hundred"] if hundreds else []
    if rest:
        words.append(_below_hundred(rest))
    return " ".join(words)


def integer_words(n: int) -> str:
    """-1234 → "minus one thousand two hundred thirty-four"."""
    if n < 0:
        return f"minus {integer_words(-n)}"
    if n == 0:
        return "zero"
    if n > MAX_CARDINAL:
        raise NotSpeakable(f"{n} is too large to speak (the limit is {MAX_CARDINAL:,})")
    groups: list[str] = []
    for scale in _SCALES:
        n, group = divmod(n, 1000)
        if group:
            groups.append(f"{_below_thousand(group)} {scale}".rstrip())
        if n == 0:
            break
    return " ".join(reversed(groups))


def ordinal_words(n: int) -> str:
    """21 → "twenty-first": only the last word of the cardinal changes."""
    if n < 0:
        raise NotSpeakable(f"{n} has no ordinal (ordinals are 0 or more)")
    words = integer_words(n)
    cut = max(words.rfind(" "), words.rfind("-")) + 1
    head, last = words[:cut], words[cut:]
    if last in _IRREGULAR_ORDINALS:
        last = _IRREGULAR_ORDINALS[last]
    elif last.endswith("y"):
        last = f"{last[:-1]}ieth"
    else:
        last = f"{last}th"
    return head + last


def digit_words(digits: str) -> str:
    """ "105" → "one zero five"."""
    return " ".join(_ONES[int(d)] for d in digits)


def year_words(year: int) -> str:
    """Years as people say them: 1984 "nineteen eighty-four", 2005 "two thousand five"."""
    if not 1000 <= year <= 9999:
        return integer_words(year)
    century, rest = divmod(year, 100)
    if rest == 0:
        return integer_words(year) if century % 10 == 0 else f"{integer_words(century)} hundred"
    if century % 10 == 0 and rest < 10:
        return integer_words(year)
    if rest < 10:
        return f"{integer_words(century)} oh {_ONES[rest]}"
    return f"{integer_words(century)} {_below_hundred(rest)}"


def cardinal(text: str) -> str:
    """ "-1,234.5" → "minus one thousand two hundred thirty-four point five"."""
    match = _NUMBER.fullmatch(text.strip())
    if match is None or not (match["int"] or match["frac"]):
        raise NotSpeakable(
            f"{_quote(text)} is not a number (expected digits with an optional sign, thousands "
            "separators and decimals, e.g. -1,234.5)"
        )
    value = _bounded_int(match["int"]) if match["int"] else 0
    if value > MAX_CARDINAL:
        raise NotSpeakable(f"{_quote(text)} is too large to speak (the limit is {MAX_CARDINAL:,})")
    words = integer_words(value)
    if match["frac"]:
        words = f"{words} point {digit_words(match['frac'])}"
    sign = match["sign"]
    if sign == "+":
        return f"plus {words}"
    return f"minus {words}" if sign else words


def _bounded_int(digits: str) -> int:
    """The value of digits with thousands separators; anything longer than MAX_CARDINAL's digits is
    MAX_CARDINAL + 1 (too large either way, and int() of a 5000-digit string is slow or refused)."""
    plain = digits.replace(",", "").lstrip("0")
    return MAX_CARDINAL + 1 if len(plain) > len(str(MAX_CARDINAL)) else int(plain or "0")


def _ordinal_suffix(n: int) -> str:
    if 11 <= n % 100 <= 13:
        return "th"
    return {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")


def ordinal(text: str) -> str:
    """ "3", "3rd" → "third"; a suffix that does not fit the number ("21th") is refused."""
    match = _ORDINAL.fullmatch(text.strip())
    if match is None:
        raise NotSpeakable(f"{_quote(text)} is not an ordinal (expected digits with an optional st/nd/rd/th)")
    value = _bounded_int(match["int"])
    suffix = match["suffix"]
    if value > MAX_CARDINAL:
        raise NotSpeakable(f"{_quote(text)} is too large to speak (the limit is {MAX_CARDINAL:,})")
    if suffix is not None and suffix.lower() != _ordinal_suffix(value):
        raise NotSpeakable(f"{_quote(text)} has the wrong suffix (expected {value}{_ordinal_suffix(value)})")
    return ordinal_words(value)


# hibari's G2P reads a lone "A" as the article ("uh"); "eigh" is how it says the letter's name.
_LETTER_NAMES = {"A": "eigh"}


def characters(text: str) -> str:
    """ "ABC1" → "eigh B C one": letters upper-cased so the G2P reads them as letter names."""
    spoken: list[str] = []
    for char in text:
        if char.isspace():
            continue
        if char.isascii() and char.isdigit():
            spoken.append(_ONES[int(char)])
        elif char.isalpha():
            spoken.append(_LETTER_NAMES.get(char.upper(), char.upper()))
        else:
            raise NotSpeakable(f'"{char}" cannot be spelled out (characters reads letters and digits)')
    if not spoken:
        raise NotSpeakable("there is nothing to spell out")
    return " ".join(spoken)


def telephone(text: str) -> str:
    """ "+1 (555) 123-4567" → "plus one, five five five, one two three, four five six seven"."""
    number = text.strip()
    if not _TELEPHONE.fullmatch(number) or not _DIGITS.search(number):
        raise NotSpeakable(
            f"{_quote(text)} is not a telephone number (digits with an optional leading +, grouped by "
            "spaces, dashes, dots, slashes or parentheses)"
        )
    groups: list[str] = []
    for run in _DIGITS.findall(number):
        while len(run) > 4:
            groups.append(run[:3])
            run = run[3:]
        groups.append(run)
    spoken = ", ".join(digit_words(group) for group in groups)
    return f"plus {spoken}" if number.startswith("+") else spoken


def date(text: str, date_format: str | None = None) -> str:
    """Numeric dates in the given field order; ISO 2024-03-05 defaults to ymd, anything else to mdy."""
    value = text.strip()
    order = date_format or ("ymd" if _ISO_DATE.fullmatch(value) else "mdy")
    if order not in DATE_FORMATS:
        raise NotSpeakable(
            f"date format {_quote(order)} is not supported; supported: {', '.join(DATE_FORMATS)}"
        )
    expected = f"expected {order} like {_DATE_EXAMPLES[order]}, separated by - / or ."
    parts = _DATE_SEPARATOR.split(value)
    separators = set(_DATE_SEPARATOR.findall(value))
    if (
        len(parts) != len(order)
        or len(separators) > 1
        or not all(part.isascii() and part.isdigit() for part in parts)
    ):
        raise NotSpeakable(f"{_quote(text)} is not a date ({expected})")
    fields = dict(zip(order, parts, strict=True))
    year: int | None = None
    month: int | None = None
    day: int | None = None
    if "y" in fields:
        if len(fields["y"]) != 4 or int(fields["y"]) == 0:
            raise NotSpeakable(f"{_quote(text)}: the year must have four digits ({expected})")
        year = int(fields["y"])
    if "m" in fields:
        month = int(fields["m"]) if len(fields["m"]) <= 2 else 0
        if len(fields["m"]) > 2 or not 1 <= month <= 12:
            raise NotSpeakable(f"{_quote(text)}: {_field(fields['m'])} is not a month (1 to 12)")
    if "d" in fields:
        day = int(fields["d"]) if len(fields["d"]) <= 2 else 0
        # Without a year, February 29 is allowed (some year has it); without a month, any day to 31.
        days = 31 if month is None else calendar.monthrange(year or 2000, month)[1]
        if len(fields["d"]) > 2 or not 1 <= day <= days:
            where = "" if month is None else f" in {_MONTHS[month - 1]}" + (f" {year}" if year else "")
            raise NotSpeakable(
                f"{_quote(text)} is not a valid date: {_field(fields['d'])} is not a day{where}"
            )
    month_name = _MONTHS[month - 1] if month else ""
    day_name = ordinal_words(day) if day else ""
    year_name = year_words(year) if year else ""
    match order:
        case "mdy" | "ymd":
            return f"{month_name} {day_name}, {year_name}"
        case "dmy":
            return f"the {day_name} of {month_name}, {year_name}"
        case "md":
            return f"{month_name} {day_name}"
        case "dm":
            return f"the {day_name} of {month_name}"
        case "ym" | "my":
            return f"{month_name} {year_name}"
        case "y":
            return year_name
        case "m":
            return month_name
        case _:
            return f"the {day_name}"


def _minutes(minute: int) -> str:
    return f"oh {_ONES[minute]}" if minute < 10 else integer_words(minute)


def time_of_day(text: str, time_format: str | None = None) -> str:
    """ "14:30" → "two thirty PM"; hms24 → "fourteen thirty"; accepts "7:30pm", "7 p.m."."""
    value = text.strip()
    if time_format is not None and time_format not in TIME_FORMATS:
        raise NotSpeakable(
            f"time format {_quote(time_format)} is not supported; supported: {', '.join(TIME_FORMATS)}"
        )
    expected = "expected H:MM or H:MM:SS, optionally with am/pm, e.g. 14:30 or 2:30pm"
    match = _TIME.fullmatch(value) or _TIME_24.fullmatch(value)
    if match is None:
        raise NotSpeakable(f"{_quote(text)} is not a time ({expected})")
    hour = int(match["hour"])
    minute = int(match["minute"] or 0)
    second = int(match["second"] or 0)
    half = match.groupdict().get("half")
    if half is not None:
        if not 1 <= hour <= 12:
            raise NotSpeakable(f"{_quote(text)}: with am/pm the hour must be 1 to 12")
        hour = hour % 12 + (12 if half.lower() == "p" else 0)
    elif hour > 23:
        raise NotSpeakable(f"{_quote(text)}: the hour must be 0 to 23")
    if minute > 59 or second > 59:
        raise NotSpeakable(f"{_quote(text)}: minutes and seconds must be 00 to 59")
    if time_format == "hms24":
        spoken = f"{integer_words(hour)} {'hundred' if minute == 0 else _minutes(minute)}"
    elif minute == 0 and second == 0 and hour in (0, 12):
        spoken = "noon" if hour == 12 else "midnight"
    else:
        clock = integer_words(hour % 12 or 12) + (f" {_minutes(minute)}" if minute else "")
        spoken = f"{clock} {'AM' if hour < 12 else 'PM'}"
    if second:
        spoken += f" and {integer_words(second)} second{'s' if second > 1 else ''}"
    return spoken
