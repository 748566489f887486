"""handoff's own settings in a libvirt domain's ``<metadata>``. Pure.

libvirt has no element for some of a profile's keys (the input backend and
its chords, ``start_in``, ``shutdown_timeout``, ``vm.user``, ``accel =
"auto"``, automatic pinning, single-GPU hand-over, …). An exported domain
carries them as a TOML fragment in ``<metadata>`` under handoff's namespace
(as virt-manager keeps libosinfo's data there); libvirt stores such metadata
untouched, and an import applies it after the mapped elements, so a round
trip keeps them. Only keys libvirt cannot express go there: what the XML can
say, the XML says.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from handoff.interop.draft import Draft, Entry, Value
from handoff.profile.model import SECTIONS, Profile, field_default, toml_name
from handoff.profile.render import toml_value

#: The XML namespace of handoff's metadata element.
NAMESPACE = "urn:x-handoff:profile:1"
#: Its element name (``<handoff:settings>``).
ELEMENT = "settings"

#: (section, key) pairs libvirt's domain XML cannot express: they travel in
#: the metadata. Array sections list their per-entry keys.
METADATA_KEYS: frozenset[tuple[str, str]] = frozenset(
    {
        ("vm", "accel"),
        ("vm", "os"),  # libvirt knows the OS only from libosinfo's metadata
        ("vm", "hyperv"),  # "auto" has no element
        ("vm", "user"),
        ("vm", "shutdown_timeout"),
        ("display", "frontend"),
        ("passthrough", "allow_in_group"),
        ("passthrough", "live"),
        ("passthrough", "multifunction"),
        ("host_display", "handover"),
        ("host_display", "stop_units"),
        ("input", "backend"),
        ("input", "hotkey"),
        ("input", "start_in"),
        ("input", "devices"),
        ("input", "exclude"),
        ("input", "gpu_hotkey"),
        ("input", "follow_gpu"),
        ("input", "escape_hotkey"),
        ("cpu", "pin"),
        ("cpu", "emulator"),
        ("cpu", "isolate"),
        ("cpu", "governor"),
        ("tpm", "state"),  # libvirt keeps swtpm's state where it likes
        ("looking_glass", "width"),
        ("looking_glass", "height"),
        ("looking_glass", "hdr"),
        ("looking_glass", "owner"),
        ("looking_glass", "device"),
        ("looking_glass", "kvmfr_index"),
    }
)


#: Keys written even at their default: the XML implies another value for them
#: (``<domain type='kvm'>`` reads back as accel = "kvm", not "auto").
ALWAYS: frozenset[tuple[str, str]] = frozenset({("vm", "accel"), ("vm", "hyperv")})


def settings_toml(profile: Profile) -> str:
    """The profile's non-default values of :data:`METADATA_KEYS`, as TOML text."""
    out: list[str] = []
    for section in SECTIONS:
        value = getattr(profile, section.attr)
        entries = value if section.array else (value,)
        for entry in entries:
            lines = []
            for f in fields(entry):
                name = toml_name(f)
                if name is None or (section.name, name) not in METADATA_KEYS:
                    continue
                current = getattr(entry, f.name)
                if current is None or (
                    current == field_default(f) and (section.name, name) not in ALWAYS
                ):
                    continue
                lines.append(f"{name} = {toml_value(current)}")
            if section.array and any(
                (section.name, key) in METADATA_KEYS for key in section.keys
            ):
                out.append(f"[[{section.name}]]")
                out.extend(lines)
            elif lines:
                out.append(f"[{section.name}]")
                out.extend(lines)
    return "\n".join(out) + ("\n" if out else "")


def read_settings(text: str) -> Mapping[str, Any]:
    """The metadata's TOML, keeping only :data:`METADATA_KEYS` (anything else is ignored:
    the mapped XML, not stale metadata, decides every other key).

    Raises ValueError for text that is not TOML.
    """
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ValueError(str(exc)) from exc
    kept: dict[str, Any] = {}
    for section, value in data.items():
        if isinstance(value, list):
            kept[section] = [
                {k: v for k, v in entry.items() if (section, k) in METADATA_KEYS}
                for entry in value
                if isinstance(entry, dict)
            ]
        elif isinstance(value, dict):
            table = {k: v for k, v in value.items() if (section, k) in METADATA_KEYS}
            if table:
                kept[section] = table
    return kept


def apply_settings(draft: Draft, data: Mapping[str, Any]) -> None:
    """Apply :func:`read_settings`' values over what the domain's XML mapped."""
    for section, value in data.items():
        if isinstance(value, list):
            entries = draft.arrays.get(section, [])
            for entry, extra in zip(entries, value, strict=False):
                _apply_entry(entry, extra)
        else:
            _apply_entry(draft.table(section), value)


def _apply_entry(entry: Entry, values: Mapping[str, Any]) -> None:
    for key, item in values.items():
        value = _value(item)
        if entry.values.get(key) != value:
            entry.set(key, value, "handoff's own setting (libvirt has no element for it)")


def _value(item: object) -> Value:
    if isinstance(item, list):
        return [str(v) for v in item]
    if isinstance(item, str | int | float | bool):
        return item
    raise ValueError(f"unexpected metadata value {item!r}")
