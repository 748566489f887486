"""VESA MCCS input source values (VCP feature 0x60, "Input Select"). Pure data.

The names are MCCS 2.2a's, as ddcutil prints them without spaces; a profile
may also give the raw number (some monitors use values outside the table,
and some set high bits, which is why a read value is compared as
``value & 0xff``).
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping

#: VCP 0x60 value by input name (MCCS 2.2a, table 8-29).
INPUT_SOURCES: Mapping[str, int] = {
    "VGA1": 0x01,
    "VGA2": 0x02,
    "DVI1": 0x03,
    "DVI2": 0x04,
    "Composite1": 0x05,
    "Composite2": 0x06,
    "S-Video1": 0x07,
    "S-Video2": 0x08,
    "Tuner1": 0x09,
    "Tuner2": 0x0A,
    "Tuner3": 0x0B,
    "Component1": 0x0C,
    "Component2": 0x0D,
    "Component3": 0x0E,
    "DisplayPort1": 0x0F,
    "DisplayPort2": 0x10,
    "HDMI1": 0x11,
    "HDMI2": 0x12,
}

_BY_FOLDED = {name.casefold().replace("-", ""): value for name, value in INPUT_SOURCES.items()}


def input_value(name: str) -> int | None:
    """The VCP 0x60 value of an input name (case and dashes ignored), None if unknown."""
    return _BY_FOLDED.get(name.casefold().replace("-", "").replace(" ", ""))


def closest_input(name: str) -> str | None:
    """The table's name closest to ``name`` ("did you mean")."""
    folded = {n.casefold(): n for n in INPUT_SOURCES}
    close = difflib.get_close_matches(name.casefold(), list(folded), n=1, cutoff=0.5)
    return folded[close[0]] if close else None


def same_input(read: int, wanted: int) -> bool:
    """A value read back names ``wanted``: compared as ``value & 0xff`` (high bits vary)."""
    return read & 0xFF == wanted & 0xFF
