"""``[input] host_keys``: keys that stay with the host while the guest has the keyboard. Pure.

Each entry is a Linux key name checked as the chords' keys are (the names
of :data:`handoff.input.keynames.KEY_CODES`, with "did you mean"), never a
key of a chord (hotkey, gpu_hotkey, escape_hotkey: the chord would then
both fire and reach the host), and needs an input backend.
"""

from __future__ import annotations

import dataclasses
import difflib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoff.input.keynames import KEY_CODES
from handoff.profile.model import Input, InputBackend

if TYPE_CHECKING:
    from handoff.profile.parse import _Reader

_EXAMPLE = '["KEY_MUTE", "KEY_VOLUMEDOWN", "KEY_VOLUMEUP"]'


def key_name_fix(name: str) -> str:
    """The fix for a name that is not a Linux key name: the closest one, or where to look."""
    upper = name.upper()
    guess = upper if upper in KEY_CODES else f"KEY_{upper}" if f"KEY_{upper}" in KEY_CODES else None
    close = [guess] if guess else difflib.get_close_matches(upper, sorted(KEY_CODES), n=1)
    if close:
        return f'did you mean "{close[0]}"?'
    return "use a name from `evtest` or linux/input-event-codes.h, e.g. KEY_MUTE"


def with_host_keys(r: _Reader, data: Mapping[str, Any], parsed: Input) -> Input:
    """``parsed`` (the rest of [input]) with its ``host_keys``, checked."""
    t = data.get("input", {})
    if not isinstance(t, dict):
        return parsed
    keys = r.strings(t, "input", "host_keys", expected="Linux key names", example=_EXAMPLE) or ()
    for index, name in enumerate(keys):
        if name not in KEY_CODES or name.startswith("BTN_"):
            raise r.error(
                f"input.host_keys[{index}]",
                f'found "{name}"; expected a Linux key name such as "KEY_MUTE"',
                "a mouse or joystick button cannot stay with the host; remove it"
                if name.startswith("BTN_") else key_name_fix(name),
            )
    if len(set(keys)) != len(keys):
        raise r.error(
            "input.host_keys", "found a key named twice; expected each key once",
            "remove the repeated key name",
        )
    for chord in ("hotkey", "gpu_hotkey", "escape_hotkey"):
        shared = [k for k in keys if k in getattr(parsed, chord)]
        if shared:
            raise r.error(
                "input.host_keys",
                f'found "{shared[0]}", a key of input.{chord}; expected keys outside every '
                "chord (a chord key is the chord's, never the host's)",
                f'remove "{shared[0]}" from host_keys, or choose another {chord}',
            )
    if keys and parsed.backend is InputBackend.NONE:
        raise r.error(
            "input.host_keys",
            'found keys with backend = "none"; expected an input backend (handoff reads the '
            "keyboards only with one)",
            'add backend = "qmp" (or "virtio") to [input]',
        )
    return dataclasses.replace(parsed, host_keys=tuple(keys))
