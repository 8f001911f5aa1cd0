"""Reply templates with named slots: "Coming up next is {song} by {artist}."

A template's text before its first slot is the part every reply shares: the server keeps its audio and
splices each reply's entities onto it (see engines/splicing.py). ``{{`` and ``}}`` are literal braces.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from voxwire_server.errors import InvalidInput, quoted

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
MAX_SLOTS = 16
MAX_ENTITY_CHARS = 200


def _names(names: list[str] | tuple[str, ...]) -> str:
    """Slot or entity names for an error message: caller text, so cut when long."""
    joined = ", ".join(names)
    return joined if len(joined) <= 60 else quoted(joined)


@dataclass(frozen=True, slots=True)
class Slot:
    name: str


@dataclass(frozen=True, slots=True)
class Template:
    source: str
    parts: tuple[str | Slot, ...]

    @property
    def slots(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.name for p in self.parts if isinstance(p, Slot)))

    @property
    def prefix(self) -> str:
        """The literal text before the first slot."""
        text = []
        for part in self.parts:
            if isinstance(part, Slot):
                break
            text.append(part)
        return "".join(text)

    def fill(self, entities: Mapping[str, str]) -> str:
        """The reply's text; every slot needs a value, and every value a slot."""
        missing = [name for name in self.slots if name not in entities]
        if missing:
            raise InvalidInput(f"template entities are missing a value for: {_names(missing)}")
        extra = sorted(set(entities) - set(self.slots))
        if extra:
            raise InvalidInput(f"template has no slot named: {_names(extra)}")
        for name, value in entities.items():
            if not value.strip():
                raise InvalidInput(f"entity {quoted(name)} is empty")
            if len(value) > MAX_ENTITY_CHARS:
                raise InvalidInput(
                    f"entity {quoted(name)} is {len(value)} characters; the limit is {MAX_ENTITY_CHARS}"
                )
            if "<" in value and ">" in value:
                raise InvalidInput(f"entity {quoted(name)} looks like markup; entities are plain text")
        return "".join(
            " ".join(entities[p.name].split()) if isinstance(p, Slot) else p for p in self.parts
        ).strip()

    def fill_from_first_slot(self, entities: Mapping[str, str]) -> str:
        """The reply's text from the first slot on (the prefix is what a cache may already hold)."""
        first = next(i for i, p in enumerate(self.parts) if isinstance(p, Slot))
        return Template(self.source, self.parts[first:]).fill(entities)


def parse_template(source: str) -> Template:
    """Parses ``{name}`` slots; errors name the character position (1-based) of the problem."""
    if source.lstrip().startswith("<"):
        raise InvalidInput("templates are plain text with {slot} placeholders, not SSML")
    parts: list[str | Slot] = []
    literal: list[str] = []
    i = 0
    while i < len(source):
        c = source[i]
        if source.startswith("{{", i) or source.startswith("}}", i):
            literal.append(c)
            i += 2
            continue
        if c == "}":
            raise InvalidInput(f"template: unmatched '}}' at character {i + 1} (write '}}}}' for a brace)")
        if c != "{":
            literal.append(c)
            i += 1
            continue
        end = source.find("}", i + 1)
        if end < 0:
            raise InvalidInput(f"template: '{{' at character {i + 1} is never closed")
        name = source[i + 1 : end].strip()
        if not _NAME.fullmatch(name):
            raise InvalidInput(
                f"template: slot name {quoted(name)} at character {i + 1} must be a word like {{song}}"
            )
        if literal:
            parts.append("".join(literal))
            literal = []
        parts.append(Slot(name))
        i = end + 1
    if literal:
        parts.append("".join(literal))
    template = Template(source, tuple(parts))
    if not template.slots:
        raise InvalidInput("template has no {slot}; send plain text instead")
    if len(template.slots) > MAX_SLOTS:
        raise InvalidInput(f"template has {len(template.slots)} slots; the limit is {MAX_SLOTS}")
    return template
