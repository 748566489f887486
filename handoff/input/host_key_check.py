"""``[input] host_keys`` against the devices handoff grabs: every host key must be on one. Pure.

A host key no grabbed device can send would never reach the host device:
the profile promises something the hardware cannot do (a typo'd media key,
a keyboard without that key, a selector that picked the wrong device). It is
refused at start, before anything on the host changes, naming the key, the
devices and the fix. With no selected device present yet (a keyboard that
will be plugged in later) there is nothing to judge: the check passes.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from handoff.base.errors import InputError
from handoff.input.keynames import KEY_CODES


@dataclass(frozen=True)
class KeySource:
    """One device handoff would grab now: its name, node and EV_KEY capability."""

    name: str
    node: str
    keys: frozenset[int]


def unreported_host_keys(host_keys: Iterable[str], devices: Sequence[KeySource]) -> list[str]:
    """The host keys (names, in the profile's order) that none of ``devices`` reports."""
    if not devices:
        return []
    reported = frozenset().union(*(device.keys for device in devices))
    return [name for name in host_keys if KEY_CODES[name] not in reported]


def check_host_keys(host_keys: Iterable[str], devices: Sequence[KeySource]) -> None:
    """Raise :class:`InputError` when a host key is on none of the devices handoff grabs."""
    missing = unreported_host_keys(host_keys, devices)
    if not missing:
        return
    keys = ", ".join(f'"{name}"' for name in missing)
    listed = ", ".join(f"{device.name!r} ({device.node})" for device in devices)
    one = len(missing) == 1
    raise InputError(
        f"input.host_keys: {keys} {'is' if one else 'are'} not a key of any device handoff "
        f"grabs ({listed}): {'it' if one else 'they'} could never reach the host",
        fix=f"remove {keys} from [input] host_keys, or select the keyboard that has "
        f"{'it' if one else 'them'} in [input] devices (`handoff doctor` lists the devices)",
    )
