"""A :class:`~handoff.profile.model.Profile` back to TOML text. Pure.

:func:`profile_to_toml` writes what :func:`handoff.profile.parse.parse_profile`
reads back to an equal Profile: sections and keys in the order and under the
names handoff.profile.model declares, values that differ from their declared
defaults only (a default that depends on other keys, display.vga, is always
written), paths absolute.

Never: read or write files, or touch the host; never validate (a Profile is
valid by construction).
"""

from __future__ import annotations

import json
from dataclasses import MISSING, fields
from enum import Enum
from pathlib import Path

from handoff.pci.address import PciAddress
from handoff.profile.model import CONTEXT_DEFAULT, SECTIONS, Profile, field_default, toml_name
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import EmulatorSpec, HugepageSize, PinMode, PinSpec


def profile_to_toml(profile: Profile) -> str:
    """The profile as TOML that parse_profile reads back to an equal Profile.

    Used by tests (round trip) and to show the effective profile.
    """
    out: list[str] = []
    for section in SECTIONS:
        value = getattr(profile, section.attr)
        entries = value if section.array else (value,)
        for entry in entries:
            lines = _key_lines(entry)
            # [vm] is always written (it is required); an empty [[x]] is still an entry.
            if lines or section.array or section.name == "vm":
                out.append(f"[[{section.name}]]" if section.array else f"[{section.name}]")
                out.extend(lines)
                out.append("")
    return "\n".join(out)


def _key_lines(entry: object) -> list[str]:
    """``key = value`` for each field of one section entry worth writing."""
    lines: list[str] = []
    for f in fields(entry):  # type: ignore[arg-type]
        name = toml_name(f)
        value = getattr(entry, f.name)
        if name is None or value is None:
            continue
        default = field_default(f)
        if default is not MISSING and value == default and not f.metadata.get(CONTEXT_DEFAULT):
            continue
        lines.append(f"{name} = {toml_value(value)}")
    return lines


def toml_value(value: object) -> str:
    if isinstance(value, PinSpec):
        if value.mode is PinMode.EXPLICIT:
            return toml_value([format_cpulist(cpus) for cpus in value.lists])
        return json.dumps(value.mode.value)
    if isinstance(value, EmulatorSpec):
        return json.dumps("auto" if value.cpus is None else format_cpulist(value.cpus))
    if isinstance(value, HugepageSize):
        return json.dumps(value.label)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return json.dumps(value.value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path | PciAddress):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")
