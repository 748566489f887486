"""``[input] host_keys``: keys that stay with the host while the guest has the keyboard. Pure.

Each entry is a Linux key name checked as the chords' keys are
(:mod:`handoff.profile.input_section`'s key-name parser, with "did you mean"), never a
key of a chord (hotkey, gpu_hotkey, escape_hotkey: the chord would then
both fire and reach the host), and needs an input backend.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoff.profile.model import Input, InputBackend

if TYPE_CHECKING:
    from handoff.profile.reader import Reader as _Reader


def with_host_keys(r: _Reader, data: Mapping[str, Any], parsed: Input) -> Input:
    """``parsed`` (all of [input]) with its ``host_keys`` checked beyond their names (the
    names are checked as the chords' are, by input_section's key-name parser)."""
    keys = parsed.host_keys
    for index, name in enumerate(keys):
        if name.startswith("BTN_"):
            raise r.error(
                f"input.host_keys[{index}]",
                f'found "{name}"; expected a Linux key name such as "KEY_MUTE"',
                "a mouse or joystick button cannot stay with the host; remove it",
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
    return parsed
