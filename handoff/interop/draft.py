"""A profile under construction, rendered as commented TOML. Pure.

An importer fills a :class:`Draft` section by section (``[vm]``, ``[[disk]]``
…) with plain TOML values and a comment for each choice worth explaining; the
text it renders is what :func:`handoff.profile.parse_profile` then checks, so
a draft never has to be a valid Profile on its own.

Never: validate values (parse_profile does), or touch the host.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from handoff.profile.model import SECTIONS
from handoff.profile.render import toml_value

#: A TOML value as a draft holds it.
Value = str | int | float | bool | list[str]


@dataclass
class Entry:
    """One ``[section]`` table or one ``[[section]]`` entry: keys in insertion order."""

    values: dict[str, Value] = field(default_factory=dict)
    comments: dict[str, list[str]] = field(default_factory=dict)
    header: list[str] = field(default_factory=list)  # comment lines above the table

    def set(self, key: str, value: Value, comment: str | None = None) -> None:
        self.values[key] = value
        if comment:
            self.comments.setdefault(key, []).append(comment)


@dataclass
class Draft:
    """Sections by TOML name; array sections hold a list of entries."""

    preamble: list[str] = field(default_factory=list)
    tables: dict[str, Entry] = field(default_factory=dict)
    arrays: dict[str, list[Entry]] = field(default_factory=dict)

    def table(self, name: str) -> Entry:
        return self.tables.setdefault(name, Entry())

    def append(self, name: str) -> Entry:
        entry = Entry()
        self.arrays.setdefault(name, []).append(entry)
        return entry

    def render(self) -> str:
        """The commented TOML text, sections in the order profiles declare them."""
        out = [_comment(line) for line in self.preamble]
        if out:
            out.append("")
        for section in SECTIONS:
            if section.array:
                entries = self.arrays.get(section.name, [])
                heading = f"[[{section.name}]]"
            else:
                entries = [self.tables[section.name]] if section.name in self.tables else []
                heading = f"[{section.name}]"
            for entry in entries:
                out.extend(_comment(line) for line in entry.header)
                out.append(heading)
                for key, value in entry.values.items():
                    out.extend(_comment(line) for line in entry.comments.get(key, []))
                    out.append(f"{key} = {toml_value(value)}")
                out.append("")
        return "\n".join(out)


def _comment(line: str) -> str:
    return f"# {line}".rstrip()
