"""A subset of SSML 1.1 turned into a flat list of items for the synthesis planner.

expat is used directly (not ElementTree) so that every error names a line and column of the
caller's text, and so that DOCTYPE and entity declarations are refused before anything expands.
Markup outside the subset is rejected by name: silently dropping it would speak something other
than what the author wrote.

Decisions: `<prosody rate>` values multiply down the tree and the product is clamped to 0.5..2.0
(a request's speaking_rate range) only when text is emitted, so x-fast in x-fast in slow is
1.5 * 1.5 * 0.8 = 1.8. Element boundaries separate words (`Hello<break/>world`); comments do not.
A `<p>` end replaces a `<s>` end just before it, and nothing emits a boundary twice. `<phoneme>`
defaults to alphabet="ipa". Spoken forms of `<say-as>` are documented in spoken.py.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass, field
from xml.parsers import expat

from voxwire_server.errors import QUOTE_CHARS, InvalidInput, quoted
from voxwire_server.sessions import spoken

__all__ = [
    "BREAK_STRENGTH_MS",
    "MAX_RATE",
    "MIN_RATE",
    "SUPPORTED_ELEMENTS",
    "Boundary",
    "Break",
    "Phonemes",
    "SsmlItem",
    "Words",
    "ipa_to_hibari",
    "is_ssml",
    "parse_ssml",
]


@dataclass(frozen=True, slots=True)
class Words:
    """Text to speak, already normalised (say-as and sub expanded); the G2P reads it later."""

    text: str
    rate: float


@dataclass(frozen=True, slots=True)
class Phonemes:
    """A literal pronunciation from `<phoneme>`, in hibari's alphabet: it bypasses the G2P."""

    phonemes: str
    rate: float


@dataclass(frozen=True, slots=True)
class Break:
    ms: int


@dataclass(frozen=True, slots=True)
class Boundary:
    """The end of an `<s>` (sentence) or `<p>` (paragraph): the planner cuts synthesis units here."""

    paragraph: bool


SsmlItem = Words | Phonemes | Break | Boundary

MIN_RATE = 0.5
MAX_RATE = 2.0
BREAK_STRENGTH_MS = {"none": 0, "x-weak": 100, "weak": 250, "medium": 400, "strong": 700, "x-strong": 1000}
_RATE_WORDS = {"x-slow": 0.6, "slow": 0.8, "medium": 1.0, "default": 1.0, "fast": 1.25, "x-fast": 1.5}
_ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "speak": ("version", "xmlns", "xml:lang", "xmlns:*", "xsi:schemaLocation"),
    "p": ("xml:lang",),
    "s": ("xml:lang",),
    "break": ("time", "strength"),
    "say-as": ("interpret-as", "format"),
    "sub": ("alias",),
    "prosody": ("rate",),
    "phoneme": ("alphabet", "ph"),
}
SUPPORTED_ELEMENTS = tuple(_ATTRIBUTES)
_TEXT_ONLY = ("say-as", "sub", "phoneme")
_KINDS = ("characters", "cardinal", "ordinal", "date", "time", "telephone")
_INTERPRETATIONS = {**{kind: kind for kind in _KINDS}, "spell-out": "characters", "number": "cardinal"}
_READERS = {
    "characters": spoken.characters,
    "cardinal": spoken.cardinal,
    "ordinal": spoken.ordinal,
    "telephone": spoken.telephone,
}
_ALPHABETS = ("ipa", "x-hibari")

_DURATION = re.compile(r"(\d+(?:\.\d*)?|\.\d+)\s*(ms|s)", re.ASCII)
_RATE_NUMBER = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(%?)", re.ASCII)
_ENGLISH = re.compile(r"en(?:[-_][a-z0-9]{1,8})*", re.ASCII | re.IGNORECASE)
_TAG_NAME = re.compile(r"<[^\s/>]+")
_ATTRIBUTE = re.compile(r"\s+([^\s=/>]+)\s*=\s*(?:\"[^\"]*\"|'[^']*')")
_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_SPACE_BEFORE_PUNCTUATION = re.compile(r"\s+(?=[.,!?;:…)\]”’])")
_SPACE_AFTER_OPENING = re.compile(r"([(\[“‘])\s+")

# IPA → hibari (misaki conventions): diphthongs and affricates are single letters, American r and
# flap as the G2P writes them ("butter" → bˈʌTəɹ). Length marks, tie bars and syllable dots are
# dropped: "." is sentence-final punctuation in hibari's alphabet.
_IPA_DROPPED = str.maketrans("", "", "ːˑ\u0361\u035c.")
_IPA_PAIRS = {"eɪ": "A", "aɪ": "I", "aʊ": "W", "ɔɪ": "Y", "oʊ": "O", "əʊ": "Q", "dʒ": "ʤ", "tʃ": "ʧ"}
_IPA_SINGLE = {"r": "ɹ", "g": "ɡ", "ɚ": "əɹ", "ɝ": "ɜɹ", "ɾ": "T"}

Position = tuple[int, int]


def _tag(name: str) -> str:
    """An element name for an error message, cut like errors.quoted cuts caller text."""
    return f"<{name}>" if len(name) <= QUOTE_CHARS else f"<{name[:QUOTE_CHARS]}...> ({len(name)} characters)"


def is_ssml(text: str) -> bool:
    """Whether a request's text should go through parse_ssml (it starts with a <speak> element)."""
    return text.strip().startswith("<speak")


def ipa_to_hibari(ipa: str) -> str:
    """IPA as authors write it → hibari's alphabet; stress marks stay where they were written."""
    source = " ".join(ipa.translate(_IPA_DROPPED).split())
    out: list[str] = []
    i = 0
    while i < len(source):
        pair = _IPA_PAIRS.get(source[i : i + 2])
        if pair is not None:
            out.append(pair)
            i += 2
        else:
            out.append(_IPA_SINGLE.get(source[i], source[i]))
            i += 1
    return "".join(out)


class _SsmlError(Exception):
    def __init__(self, at: Position, message: str) -> None:
        super().__init__(message)
        self.at = at
        self.message = message


@dataclass(slots=True)
class _Frame:
    """An open element; mutable parse state, not a value."""

    name: str
    at: Position
    rate: float  # the unclamped product of the enclosing prosody rates
    attrs: dict[str, str]
    payload: str = ""  # say-as: the interpretation; sub: the alias; phoneme: the phonemes
    text: list[str] = field(default_factory=list)
    text_at: Position | None = None


def _effective_rate(rate: float) -> float:
    # Rounded so that products like 0.8 * 1.25 compare equal to 1.0 when adjacent words merge.
    return round(min(MAX_RATE, max(MIN_RATE, rate)), 6)


def _advance(at: Position, text: str) -> Position:
    """The position after `text` (expat hands character data with line breaks normalised to \\n)."""
    line, column = at
    for char in text:
        line, column = (line + 1, 1) if char == "\n" else (line, column + 1)
    return line, column


class _Items:
    """Collects the output, merging text runs of the same rate and normalising whitespace."""

    def __init__(self) -> None:
        self.items: list[SsmlItem] = []
        self._chunks: list[str] = []
        self._rate = 1.0

    def text(self, data: str, rate: float) -> None:
        if rate != self._rate:
            self._flush()
            self._rate = rate
        self._chunks.append(data)

    def separate(self) -> None:
        """Element boundaries separate words: `Hello<break/>world` is two words."""
        self._chunks.append(" ")

    def add(self, item: Phonemes | Break) -> None:
        self._flush()
        self.items.append(item)

    def boundary(self, paragraph: bool) -> None:
        """No boundary before anything was said, and none twice in a row (a paragraph wins)."""
        self._flush()
        if not self.items:
            return
        last = self.items[-1]
        if isinstance(last, Boundary):
            if paragraph:
                self.items[-1] = Boundary(paragraph=True)
            return
        self.items.append(Boundary(paragraph))

    def finish(self) -> list[SsmlItem]:
        self._flush()
        return self.items

    def _flush(self) -> None:
        text = " ".join("".join(self._chunks).split())
        self._chunks.clear()
        if not text:
            return
        last = self.items[-1] if self.items else None
        if isinstance(last, Words) and last.rate == self._rate:
            self.items[-1] = Words(_tidy(f"{last.text} {text}"), self._rate)
        else:
            self.items.append(Words(_tidy(text), self._rate))


def _tidy(text: str) -> str:
    """Drops the space an element boundary left before punctuation: `<say-as>…</say-as>.`."""
    return _SPACE_BEFORE_PUNCTUATION.sub("", _SPACE_AFTER_OPENING.sub(r"\1", text))


class _Parser:
    def __init__(self, source: str, phoneme_symbols: frozenset[str], max_break_ms: int) -> None:
        self._source = source
        self._symbols = phoneme_symbols
        self._max_break_ms = max_break_ms
        self._stack: list[_Frame] = []
        self._out = _Items()
        self._starts: list[int] | None = None
        self._expat = expat.ParserCreate()
        self._expat.StartElementHandler = self._start
        self._expat.EndElementHandler = self._end
        self._expat.CharacterDataHandler = self._text
        self._expat.StartDoctypeDeclHandler = self._doctype

    def run(self) -> list[SsmlItem]:
        stripped = self._source.lstrip()
        if stripped and not stripped.startswith("<"):
            skipped = self._source[: len(self._source) - len(stripped)]
            at = (skipped.count("\n") + 1, len(skipped) - skipped.rfind("\n"))
            raise _invalid(
                at, "this is plain text, not SSML: wrap it in <speak>...</speak>, or send it as text"
            )
        try:
            self._expat.Parse(self._source, True)
        except _SsmlError as exc:
            raise _invalid(exc.at, exc.message) from None
        except expat.ExpatError as exc:
            raise _invalid((exc.lineno, exc.offset + 1), self._malformed(exc.code)) from None
        return self._out.finish()

    # -- expat handlers -------------------------------------------------------------------------
    def _start(self, name: str, attrs: dict[str, str]) -> None:
        at = self._here()
        parent = self._stack[-1] if self._stack else None
        if parent is None and name != "speak":
            raise _SsmlError(at, f"the root element must be <speak>, not {_tag(name)}")
        if name not in _ATTRIBUTES:
            supported = ", ".join(f"<{n}>" for n in SUPPORTED_ELEMENTS)
            raise _SsmlError(at, f"{_tag(name)} is not supported; supported elements: {supported}")
        if parent is not None:
            self._check_nesting(parent, name, at)
        self._check_attributes(name, attrs, at)
        frame = _Frame(name, at, parent.rate if parent else 1.0, attrs)
        if name in ("speak", "p", "s"):
            self._check_language(name, attrs, at)
        elif name == "break":
            self._out.add(Break(self._break_ms(attrs, at)))
        elif name == "prosody":
            frame.rate *= self._rate(attrs, at)
        elif name == "say-as":
            frame.payload = self._interpretation(attrs, at)
        elif name == "sub":
            frame.payload = self._alias(attrs, at)
        elif name == "phoneme":
            frame.payload = self._phonemes(attrs, at)
        self._out.separate()
        self._stack.append(frame)

    def _end(self, name: str) -> None:
        frame = self._stack.pop()
        rate = _effective_rate(frame.rate)
        if name == "say-as":
            self._out.text(self._say_as(frame), rate)
        elif name == "sub":
            self._out.text(frame.payload, rate)
        elif name == "phoneme":
            self._out.add(Phonemes(frame.payload, rate))
        elif name in ("s", "p"):
            self._out.boundary(paragraph=name == "p")
        self._out.separate()

    def _text(self, data: str) -> None:
        if not self._stack:
            return
        frame = self._stack[-1]
        if frame.name == "break":
            if data.strip():
                raise _SsmlError(_advance(self._here(), data[: len(data) - len(data.lstrip())]), _EMPTY_BREAK)
        elif frame.name in _TEXT_ONLY:
            if frame.text_at is None:
                frame.text_at = self._here()
            frame.text.append(data)
        else:
            self._out.text(data, _effective_rate(frame.rate))

    def _doctype(self, name: str, system_id: str | None, public_id: str | None, internal: bool) -> None:
        # expat reports the end of the declaration's head; point at its start instead.
        start = self._source.rfind("<!DOCTYPE", 0, self._offset(self._here()) + 1)
        at = self._position(start) if start >= 0 else self._here()
        raise _SsmlError(at, "DOCTYPE declarations are not allowed (no DTDs or entity declarations)")

    # -- checks ---------------------------------------------------------------------------------
    def _check_nesting(self, parent: _Frame, name: str, at: Position) -> None:
        if parent.name == "break":
            raise _SsmlError(at, _EMPTY_BREAK)
        if parent.name in _TEXT_ONLY:
            raise _SsmlError(at, f"<{parent.name}> may contain only text, not {_tag(name)}")
        if name == "speak":
            raise _SsmlError(at, "<speak> must be the root element; it cannot be nested")
        if name in ("p", "s"):
            # SSML 1.1: a sentence may sit in a paragraph, never the other way round.
            forbidden = ("p", "s") if name == "p" else ("s",)
            outer = next((f for f in reversed(self._stack) if f.name in forbidden), None)
            if outer is not None:
                raise _SsmlError(
                    at, f"<{name}> cannot be inside <{outer.name}> (opened at {_where(outer.at)})"
                )

    def _check_attributes(self, name: str, attrs: dict[str, str], at: Position) -> None:
        allowed = _ATTRIBUTES[name]
        for attr in attrs:
            if attr in allowed or (name == "speak" and attr.startswith("xmlns:")):
                continue
            supported = ", ".join(allowed) or "none"
            raise _SsmlError(
                self._attribute_at(at, attr),
                f"<{name}> attribute {quoted(attr)} is not supported; supported: {supported}",
            )

    def _check_language(self, name: str, attrs: dict[str, str], at: Position) -> None:
        lang = attrs.get("xml:lang")
        if lang is not None and not _ENGLISH.fullmatch(lang.strip()):
            raise _SsmlError(
                self._attribute_at(at, "xml:lang"),
                f"<{name}> xml:lang {quoted(lang)} is not supported; the voice speaks English "
                "(en, en-US, ...)",
            )

    def _break_ms(self, attrs: dict[str, str], at: Position) -> int:
        strength = attrs.get("strength")
        if strength is not None and strength not in BREAK_STRENGTH_MS:
            raise _SsmlError(
                self._attribute_at(at, "strength"),
                f"<break> strength {quoted(strength)} is not one of {', '.join(BREAK_STRENGTH_MS)}",
            )
        time = attrs.get("time")
        if time is None:
            return BREAK_STRENGTH_MS[strength or "medium"]
        time_at = self._attribute_at(at, "time")
        match = _DURATION.fullmatch(time.strip())
        if match is None:
            raise _SsmlError(time_at, f"<break> time {quoted(time)} is not a duration (use e.g. 500ms or 2s)")
        ms = float(match[1]) * (1000 if match[2] == "s" else 1)
        if ms > self._max_break_ms:
            raise _SsmlError(
                time_at, f"<break> time {quoted(time)} is longer than the limit of {self._max_break_ms}ms"
            )
        return round(ms)

    def _rate(self, attrs: dict[str, str], at: Position) -> float:
        value = attrs.get("rate")
        if value is None:
            raise _SsmlError(at, "<prosody> needs a rate attribute (the only prosody attribute supported)")
        word = _RATE_WORDS.get(value.strip())
        if word is not None:
            return word
        match = _RATE_NUMBER.fullmatch(value.strip())
        factor = float(match[1]) / (100 if match[2] else 1) if match else 0.0
        if factor <= 0:
            raise _SsmlError(
                self._attribute_at(at, "rate"),
                f"<prosody> rate {quoted(value)} is not supported (use {', '.join(_RATE_WORDS)}, "
                "a positive percentage like 150% or a multiplier like 1.5)",
            )
        return factor

    def _interpretation(self, attrs: dict[str, str], at: Position) -> str:
        supported = ", ".join(_INTERPRETATIONS)
        given = attrs.get("interpret-as")
        if given is None:
            raise _SsmlError(at, f"<say-as> needs an interpret-as attribute ({supported})")
        kind = _INTERPRETATIONS.get(given.strip())
        if kind is None:
            raise _SsmlError(
                self._attribute_at(at, "interpret-as"),
                f"<say-as> interpret-as {quoted(given)} is not supported; supported: {supported}",
            )
        form = attrs.get("format")
        formats = {"date": spoken.DATE_FORMATS, "time": spoken.TIME_FORMATS}.get(kind)
        if form is None:
            return kind
        if formats is None:
            message = '<say-as> format is only supported with interpret-as="date" or "time"'
        elif form not in formats:
            message = (
                f"<say-as> format {quoted(form)} is not supported for {kind}; supported: {', '.join(formats)}"
            )
        else:
            return kind
        raise _SsmlError(self._attribute_at(at, "format"), message)

    def _alias(self, attrs: dict[str, str], at: Position) -> str:
        alias = " ".join(attrs.get("alias", "").split())
        if not alias:
            raise _SsmlError(self._attribute_at(at, "alias"), "<sub> needs a non-empty alias attribute")
        return alias

    def _phonemes(self, attrs: dict[str, str], at: Position) -> str:
        alphabet = attrs.get("alphabet", "ipa")
        if alphabet not in _ALPHABETS:
            raise _SsmlError(
                self._attribute_at(at, "alphabet"),
                f"<phoneme> alphabet {quoted(alphabet)} is not supported; supported: {', '.join(_ALPHABETS)}",
            )
        ph = attrs.get("ph", "")
        phonemes = ipa_to_hibari(ph) if alphabet == "ipa" else " ".join(ph.split())
        ph_at = self._attribute_at(at, "ph")
        if not phonemes:
            raise _SsmlError(ph_at, "<phoneme> needs a non-empty ph attribute")
        bad = next((symbol for symbol in phonemes if symbol not in self._symbols), None)
        if bad is not None:
            raise _SsmlError(
                ph_at,
                f'<phoneme> ph {quoted(ph)}: "{bad}" (U+{ord(bad):04X}) is not a symbol of the '
                "voice's alphabet"
                + (f" (after conversion from ipa: {quoted(phonemes)})" if alphabet == "ipa" else ""),
            )
        return phonemes

    def _say_as(self, frame: _Frame) -> str:
        content = "".join(frame.text)
        form = frame.attrs.get("format")
        try:
            if frame.payload == "date":
                return spoken.date(content, form)
            if frame.payload == "time":
                return spoken.time_of_day(content, form)
            return _READERS[frame.payload](content)
        except spoken.NotSpeakable as exc:
            at = frame.at
            if frame.text_at is not None and content.strip():
                at = _advance(frame.text_at, content[: len(content) - len(content.lstrip())])
            given = frame.attrs["interpret-as"]
            raise _SsmlError(at, f'<say-as interpret-as="{given.strip()}">: {exc}') from None

    # -- positions ------------------------------------------------------------------------------
    def _here(self) -> Position:
        return self._expat.CurrentLineNumber, self._expat.CurrentColumnNumber + 1

    def _line_starts(self) -> list[int]:
        if self._starts is None:
            self._starts = [0] + [m.end() for m in _LINE_BREAK.finditer(self._source)]
        return self._starts

    def _offset(self, at: Position) -> int:
        return self._line_starts()[at[0] - 1] + at[1] - 1

    def _position(self, offset: int) -> Position:
        line = bisect.bisect_right(self._line_starts(), offset)
        return line, offset - self._line_starts()[line - 1] + 1

    def _attribute_at(self, element_at: Position, attr: str) -> Position:
        """Where `attr` is written in the start tag at `element_at`; the tag itself if not found."""
        tag = _TAG_NAME.match(self._source, self._offset(element_at))
        offset = tag.end() if tag else len(self._source)
        while (match := _ATTRIBUTE.match(self._source, offset)) is not None:
            if match[1] == attr:
                return self._position(match.start(1))
            offset = match.end()
        return element_at

    def _malformed(self, code: int) -> str:
        reason = expat.ErrorString(code)
        if not self._stack:
            return reason
        open_ = self._stack[-1]
        if code == expat.errors.codes[expat.errors.XML_ERROR_TAG_MISMATCH]:
            return f"{reason}: expected </{open_.name}> to close the <{open_.name}> at {_where(open_.at)}"
        if code == expat.errors.codes[expat.errors.XML_ERROR_NO_ELEMENTS]:
            return f"<{open_.name}> at {_where(open_.at)} is never closed"
        return reason


_EMPTY_BREAK = "<break> must be empty (write <break/> or <break></break>)"


def _where(at: Position) -> str:
    return f"line {at[0]}, column {at[1]}"


def _invalid(at: Position, message: str) -> InvalidInput:
    return InvalidInput(f"invalid SSML at {_where(at)}: {message}")


def parse_ssml(source: str, *, phoneme_symbols: frozenset[str], max_break_ms: int = 10_000) -> list[SsmlItem]:
    """SSML → items for the planner; InvalidInput names the line and column of the first problem.

    phoneme_symbols: the voice's alphabet (hibari's vocab keys); every `<phoneme>` symbol must be
    in it. max_break_ms: the longest `<break>` accepted.
    """
    return _Parser(source, phoneme_symbols, max_break_ms).run()
