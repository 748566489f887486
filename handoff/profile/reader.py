"""Typed reads of one profile's TOML tables, and the per-key parser table.

:class:`Reader` turns a parsed TOML value into a typed one or raises a
:class:`handoff.base.errors.ProfileError` naming the file, the key path
(``vm.memory``), the value found, what was expected and a fix.
:meth:`Reader.fields` reads a whole section entry from its dataclass in
handoff.profile.model: a bool or enum field is read by its declared type and
default; every other key names its parser (and the parser its error text) in
the section's table of :class:`FieldParser`. A new section's module (e.g.
handoff/profile/tpm.py) writes one such table and calls
``reader.section(data, "tpm")`` and ``reader.fields(...)``.

Never: touch the host beyond abspath of the profile's own directory.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import fields
from enum import Enum
from pathlib import Path
from typing import Any, Protocol, TypeVar

from handoff.base.errors import PciAddressError, ProfileError
from handoff.pci.address import PciAddress
from handoff.profile.model import SECTION_KEYS, field_default, toml_name

_E = TypeVar("_E", bound=Enum)


def show(value: object) -> str:
    """A value as the person wrote it in TOML, with its type when that helps."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"the string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = ", ".join(literal(v) for v in value[:6])
        return f"the array [{shown}{', ...' if len(value) > 6 else ''}]"
    if isinstance(value, datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{...}"
    return str(value)


class Reader:
    """Typed access to one parsed profile, raising ProfileErrors with key paths."""

    def __init__(self, source: Path) -> None:
        self.source = source
        base = source.parent
        self.base = base if base.is_absolute() else Path(os.path.abspath(base))

    def error(self, key: str | None, message: str, fix: str) -> ProfileError:
        return ProfileError(message, path=str(self.source), key=key, fix=fix)

    # -- structure

    def check_keys(self, table: Mapping[str, Any], prefix: str, allowed: Sequence[str]) -> None:
        for key in table:
            # [memory] is a section and vm.memory a key: a top-level `memory = "8G"`
            # is the [vm] key written above its table, not a malformed section.
            misplaced = not prefix and key in SECTION_KEYS["vm"] and not isinstance(
                table[key], dict
            )
            if key in allowed and not misplaced:
                continue
            where = f"[{prefix}]" if prefix else "the top level"
            full = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            close = [] if misplaced else close
            expected = f"expected one of: {', '.join(allowed)}"
            if close:
                fix = f'did you mean "{close[0]}"? rename "{key}" to "{close[0]}"'
            elif not prefix and key in SECTION_KEYS["vm"]:
                fix = f'"{key}" belongs in the [vm] table: move it below a [vm] line'
            else:
                fix = f'remove "{key}" or use one of: {", ".join(allowed)}'
            raise self.error(full, f"unknown key {json.dumps(key)} in {where}; {expected}", fix)

    def table(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(
                name,
                f"found {show(value)}; expected a table [{name}]",
                f"write the settings below a [{name}] line, e.g. [{name}]",
            )
        return value

    def array_of_tables(self, data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if isinstance(value, dict):
            raise self.error(
                name,
                f"found a single table [{name}]; expected an array of tables [[{name}]]",
                f"write [[{name}]] (double brackets) above each {name} entry",
            )
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(
                name,
                f"found {show(value)}; expected an array of tables [[{name}]]",
                f"write each {name} as its own [[{name}]] section",
            )
        return value

    def section(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        """The ``[name]`` table (empty when absent), its keys checked against the model."""
        table = self.table(data, name)
        self.check_keys(table, name, SECTION_KEYS[name])
        return table

    def fields(
        self, table: Mapping[str, Any], prefix: str, kind: type[Any],
        parsers: Mapping[str, FieldParser], defaults: Mapping[str, object] | None = None,
    ) -> dict[str, Any]:
        """Every field of the dataclass ``kind`` read from ``table``, in field order.

        A key in ``parsers`` is read by its parser; any other field must be a bool
        or an enum, read by its declared default's type. ``defaults`` overrides a
        declared default that depends on other keys (display.vga). The result is
        ``kind``'s keyword arguments: check across keys, then call ``kind(**it)``.
        """
        values: dict[str, Any] = {}
        for f in fields(kind):
            key = toml_name(f)
            if key is None:
                continue
            default = field_default(f)
            if defaults is not None and f.name in defaults:
                default = defaults[f.name]
            parser = parsers.get(key) or derived_parser(default)
            if parser is None:
                raise TypeError(f"{kind.__name__}.{f.name}: no parser in the table")
            values[f.name] = parser.read(self, table, prefix, key, default)
        return values

    # -- scalars

    def string(
        self, table: Mapping[str, Any], prefix: str, name: str, *, pattern: re.Pattern[str] | None,
        expected: str, fix: str,
    ) -> str | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if not isinstance(value, str):
            raise self.error(key, f"found {show(value)}; expected {expected}", fix)
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"found {show(value)}; expected {expected}", fix)
        return value

    def boolean(self, table: Mapping[str, Any], prefix: str, name: str, default: bool) -> bool:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, bool):
            key = f"{prefix}.{name}"
            raise self.error(
                key,
                f"found {show(value)}; expected true or false",
                f"write {name} = true or {name} = false (no quotes)",
            )
        return value

    def integer(
        self, table: Mapping[str, Any], prefix: str, name: str, low: int, high: int
    ) -> int | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if isinstance(value, bool) or not isinstance(value, int):
            example = value.strip() if isinstance(value, str) and value.strip().isdigit() else low
            raise self.error(
                key,
                f"found {show(value)}; expected a whole number from {low} to {high}",
                f"write {name} = {example} (a number without quotes)",
            )
        if not low <= value <= high:
            raise self.error(
                key,
                f"found {show(value)}; expected a whole number from {low} to {high}",
                f"choose a value between {low} and {high}",
            )
        return value

    def enum(
        self, table: Mapping[str, Any], prefix: str, name: str, kind: type[_E], default: _E
    ) -> _E:
        if name not in table:
            return default
        value = table[name]
        choices = [str(member.value) for member in kind]
        listed = ", ".join(json.dumps(c) for c in choices)
        key = f"{prefix}.{name}"
        if isinstance(value, str):
            for member in kind:
                if member.value == value:
                    return member
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            fix = (
                f'did you mean "{close[0]}"? write {name} = "{close[0]}"'
                if close
                else f'write {name} = "{choices[0]}" (choices: {listed})'
            )
        else:
            fix = f'write {name} = "{choices[0]}" with quotes (choices: {listed})'
        raise self.error(key, f"found {show(value)}; expected one of {listed}", fix)

    def strings(
        self, table: Mapping[str, Any], prefix: str, name: str, *, expected: str, example: str
    ) -> tuple[str, ...] | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if not isinstance(value, list):
            raise self.error(
                key, f"found {show(value)}; expected an array of {expected}",
                f"write {name} = {example}",
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(
                    f"{key}[{index}]",
                    f"found {show(item)}; expected {expected}",
                    f"quote every entry: {name} = {example}",
                )
        return tuple(value)

    def path(self, table: Mapping[str, Any], prefix: str, name: str) -> Path | None:
        """A file path, absolute or relative to the profile's own directory."""
        raw = self.string(
            table, prefix, name, pattern=None,
            expected="a file path (absolute, or relative to the profile's directory)",
            fix=f'write {name} = "/full/path/to/the/file"',
        )
        if raw is None:
            return None
        key = f"{prefix}.{name}"
        if not raw.strip():
            raise self.error(
                key, f"found {show(raw)}; expected a file path",
                f'write {name} = "/full/path/to/the/file"',
            )
        if raw.startswith("~"):
            raise self.error(
                key,
                f"found {show(raw)}; expected an absolute path or one relative to "
                f"{self.base} (\"~\" is not expanded: QEMU may run as another user)",
                f'write the full path, e.g. {name} = "{os.path.expanduser(raw)}"',
            )
        if "\0" in raw or "\n" in raw:
            raise self.error(
                key, f"found {show(raw)}; expected a file path without control characters",
                "remove the control characters from the path",
            )
        path = Path(raw)
        return path if path.is_absolute() else Path(os.path.normpath(self.base / path))

    def pci_address(self, value: object, key: str) -> PciAddress:
        if not isinstance(value, str):
            raise self.error(
                key, f"found {show(value)}; expected a PCI address string such as \"01:00.0\"",
                'write the address in quotes as lspci prints it, e.g. "01:00.0"',
            )
        try:
            return PciAddress.parse(value)
        except PciAddressError as exc:
            raise self.error(
                key,
                f"found {show(value)}; expected a PCI address such as \"01:00.0\" or "
                f"\"0000:01:00.0\" ({exc.message})",
                exc.fix or 'write it as lspci prints it, e.g. "01:00.0"',
            ) from None




# --------------------------------------------------------------------------- the parser table
# Plain classes, not dataclasses: they are built at import on every `handoff run`.


class FieldParser(Protocol):
    """How one key is read: ``default`` (the model's) when the key is absent."""

    def read(
        self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any
    ) -> Any: ...


class Flag:
    """true or false."""

    __slots__ = ()

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        return r.boolean(table, prefix, key, default)


class Choice:
    """One of an enum's values (its type is the default's)."""

    __slots__ = ()

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        return r.enum(table, prefix, key, type(default), default)


def matches(pattern: re.Pattern[str]) -> Callable[[str], bool]:
    """An :class:`Item` check: the entry matches ``pattern``."""
    return lambda text: pattern.match(text) is not None


def derived_parser(default: object) -> FieldParser | None:
    """The parser a field's declared default implies (bool, enum), or None."""
    if isinstance(default, bool):
        return Flag()
    if isinstance(default, Enum):
        return Choice()
    return None


class Text:
    """A string, matching ``pattern`` when given."""

    __slots__ = ("expected", "fix", "pattern")

    def __init__(self, pattern: re.Pattern[str] | None, *, expected: str, fix: str) -> None:
        self.pattern, self.expected, self.fix = pattern, expected, fix

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        value = r.string(
            table, prefix, key, pattern=self.pattern, expected=self.expected, fix=self.fix
        )
        return default if value is None else value


class Whole:
    """A whole number from ``low`` to ``high``."""

    __slots__ = ("high", "low")

    def __init__(self, low: int, high: int) -> None:
        self.low, self.high = low, high

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        value = r.integer(table, prefix, key, self.low, self.high)
        return default if value is None else value


class File:
    """A path, absolute or relative to the profile's directory."""

    __slots__ = ()

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        value = r.path(table, prefix, key)
        return default if value is None else value


class Item:
    """What each entry of an array of strings must be: ``valid`` says, and the error
    says ``found <entry>; expected <expected>`` with ``fix`` (a text, or one made
    from the entry)."""

    __slots__ = ("expected", "fix", "valid")

    def __init__(
        self, valid: Callable[[str], bool], expected: str, fix: str | Callable[[str], str]
    ) -> None:
        self.valid, self.expected, self.fix = valid, expected, fix


class Texts:
    """An array of strings (a tuple), each entry checked by ``item`` when given."""

    __slots__ = ("example", "expected", "item")

    def __init__(self, expected: str, example: str, item: Item | None = None) -> None:
        self.expected, self.example, self.item = expected, example, item

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        value = r.strings(table, prefix, key, expected=self.expected, example=self.example)
        if value is None:
            return default
        for index, entry in enumerate(value):
            if self.item is not None and not self.item.valid(entry):
                fix = self.item.fix if isinstance(self.item.fix, str) else self.item.fix(entry)
                raise r.error(
                    f"{prefix}.{key}[{index}]",
                    f"found {show(entry)}; expected {self.item.expected}", fix,
                )
        return value


class Custom:
    """A key with its own reading function (cross-key rules stay in the section)."""

    __slots__ = ("function",)

    def __init__(self, function: Callable[[Reader, Mapping[str, Any], str, str, Any], Any]) -> None:
        self.function = function

    def read(self, r: Reader, table: Mapping[str, Any], prefix: str, key: str, default: Any) -> Any:
        return self.function(r, table, prefix, key, default)


def required(
    r: Reader, table: Mapping[str, Any], prefix: str, key: str, expected: str, fix: str
) -> Any:
    """The key's raw value; ``missing; expected ...`` when it is absent."""
    if key not in table:
        raise r.error(f"{prefix}.{key}", f"missing; expected {expected}", fix)
    return table[key]


__all__ = [
    "Choice",
    "Custom",
    "FieldParser",
    "File",
    "Flag",
    "Item",
    "Reader",
    "Text",
    "Texts",
    "Whole",
    "derived_parser",
    "literal",
    "matches",
    "required",
    "show",
]
