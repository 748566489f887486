"""The "handoff host keys" device: ``[input] host_keys`` typed while the guest has input.

One uinput keyboard with exactly the profile's host keys, created when the
input hand-off is acquired and removed when it is released (the kernel
removes it, and its node, if the supervisor dies: nothing to journal). The
router (:class:`~handoff.input.router.RouterCore`) decides what it gets
(:class:`~handoff.input.router.ToHost`); this module only writes. It has no
EV_REP: the keyboard's own autorepeat is forwarded, so a held volume key
repeats as on the real keyboard and stops when it is let go. Never log what
is written.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from handoff.base.errors import InputError
from handoff.input.codes import EV_KEY
from handoff.input.devices import HOST_KEYS_NAME, DeviceInfo, Selection, describe
from handoff.input.host_key_check import KeySource
from handoff.input.translate import Event


def selected_key_sources(
    selection: Selection, classify: Callable[[DeviceInfo], DeviceInfo]
) -> list[KeySource]:
    """The devices ``selection`` would grab now, with their EV_KEY capability (read only:
    nothing is grabbed). A node that cannot be opened is left out, as the watcher does."""
    import pyudev
    from evdev import InputDevice

    sources = []
    for device in pyudev.Context().list_devices(subsystem="input"):
        info = describe(device)
        if info is None:
            continue
        if info.keyboard is None or info.mouse is None:
            info = classify(info)
        if not selection.wants(info):
            continue
        try:
            handle = InputDevice(info.node)
        except OSError:
            continue
        try:
            keys = frozenset(int(code) for code in handle.capabilities().get(EV_KEY, []))
        finally:
            handle.close()
        sources.append(KeySource(info.name, info.node, keys))
    return sorted(sources, key=lambda source: source.node)


class HostKeysDevice:
    """The uinput device the host's desktop reads the host keys from."""

    name = HOST_KEYS_NAME

    def __init__(self, codes: Iterable[int]) -> None:
        self.codes = tuple(sorted(set(codes)))
        self._device: Any = None

    def create(self) -> None:
        """Create it (needs /dev/uinput, i.e. root or the uinput group)."""
        from evdev import UInput

        try:
            self._device = UInput({EV_KEY: list(self.codes)}, name=HOST_KEYS_NAME)
        except Exception as exc:
            raise InputError(
                f"cannot create the {HOST_KEYS_NAME!r} device through /dev/uinput: {exc}",
                fix="modprobe uinput, and run handoff as root (or give it the uinput group); "
                "or remove [input] host_keys",
            ) from exc

    @property
    def node(self) -> str | None:
        """Its /dev/input/eventN (never grabbed by handoff), None before :meth:`create`."""
        return None if self._device is None else str(self._device.device.path)

    def write(self, events: Sequence[Event]) -> None:
        """One frame of key events, then SYN_REPORT."""
        if self._device is None:
            return
        for etype, code, value in events:
            self._device.write(etype, code, value)
        self._device.syn()

    def destroy(self) -> None:
        """Remove the device (the kernel lets go of any key it still holds). Idempotent."""
        if self._device is not None:
            with contextlib.suppress(OSError):
                self._device.close()
        self._device = None
