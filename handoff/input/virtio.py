"""The ``virtio`` backend: handoff's own uinput keyboard and mouse, held by QEMU.

At acquire time the supervisor creates two uinput devices with every
capability a keyboard or mouse can have (all keys; the mouse buttons; REL
X/Y, both wheels and both hi-res wheels; keyboard LEDs so the guest's
Caps Lock light has somewhere to go) and gives them to QEMU as
``virtio-input-host-pci,evdev=<qemu socket dir>/keyboard.evdev`` (and
``mouse.evdev``): the session plan fixes those paths before the proxies
exist, and :meth:`VirtioProxies.link` points them at the real
``/dev/input/eventN`` nodes once they do. QEMU reads them in its
main loop, as input-linux reads a real device, so no QMP is involved per
event. In guest mode the router's frames are written into them unchanged:
extra buttons, hi-res and horizontal wheels reach the guest exactly.

Because the proxies exist for the whole session and never change, a real
keyboard being unplugged and plugged again never touches QEMU.

QEMU running as ``vm.user`` must open the proxies' event nodes itself
(``/dev/input/eventN`` is root:input 0660). :meth:`VirtioProxies.create`
gives them to that uid (owner only: the group and mode stay udev's), after
recording each node's device number and previous owner, and
:meth:`VirtioProxies.destroy` (every exit path of the session) gives them
back before the devices go (and removes the links). No on-disk journal is needed: the nodes live
exactly as long as the supervisor's /dev/uinput fds, so if the supervisor
dies the kernel removes the devices and their nodes with it; a later device
reusing the number gets a fresh node.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from handoff.base.errors import InputError
from handoff.input.codes import (
    BTN_LEFT,
    BTN_TASK,
    EV_KEY,
    EV_LED,
    EV_REL,
    KEY_MAX,
    LED_CAPSL,
    LED_NUML,
    LED_SCROLLL,
    REL_HWHEEL,
    REL_HWHEEL_HI_RES,
    REL_WHEEL,
    REL_WHEEL_HI_RES,
    REL_X,
    REL_Y,
)
from handoff.input.devices import PROXY_NAME_PREFIX
from handoff.input.keymap import is_button
from handoff.input.translate import Event

log = logging.getLogger(__name__)

MOUSE_BUTTONS = tuple(range(BTN_LEFT, BTN_TASK + 1))
KEYBOARD_KEYS = tuple(c for c in range(1, KEY_MAX + 1) if not is_button(c))
MOUSE_AXES = (REL_X, REL_Y, REL_HWHEEL, REL_WHEEL, REL_WHEEL_HI_RES, REL_HWHEEL_HI_RES)
LEDS = (LED_NUML, LED_CAPSL, LED_SCROLLL)


@dataclass(frozen=True)
class NodeOwner:
    """An event node's owner before handoff gave it to QEMU's user (rdev: which device)."""

    path: str
    rdev: int
    uid: int


class VirtioProxies:
    """The two uinput proxies and the guest sink that writes into them.

    ``owner_uid``: QEMU's uid when it is not the supervisor's (``vm.user``);
    the proxies' event nodes then belong to it while they exist.
    """

    def __init__(self, session: str, *, owner_uid: int | None = None) -> None:
        self._session = session
        self._owner_uid = owner_uid
        self.keyboard: Any = None
        self.mouse: Any = None
        #: Nodes handed to ``owner_uid``, recorded before each chown.
        self.given: list[NodeOwner] = []
        #: The links made by :meth:`link`, removed by :meth:`destroy`.
        self.links: tuple[Path, ...] = ()

    @property
    def keyboard_name(self) -> str:
        return f"{PROXY_NAME_PREFIX}keyboard ({self._session})"

    @property
    def mouse_name(self) -> str:
        return f"{PROXY_NAME_PREFIX}mouse ({self._session})"

    def create(self) -> None:
        """Create both devices (needs /dev/uinput, i.e. root or the uinput group)."""
        from evdev import UInput

        try:
            self.keyboard = UInput(
                {EV_KEY: list(KEYBOARD_KEYS), EV_LED: list(LEDS)},
                name=self.keyboard_name,
            )
            self.mouse = UInput(
                {EV_KEY: list(MOUSE_BUTTONS), EV_REL: list(MOUSE_AXES)},
                name=self.mouse_name,
            )
        except Exception as exc:
            self.destroy()
            raise InputError(
                f"cannot create the virtio input proxies through /dev/uinput: {exc}",
                fix="modprobe uinput, and run handoff as root (or give it the uinput group)",
            ) from exc
        if self._owner_uid is not None:
            try:
                self._give_nodes(self._owner_uid)
            except OSError as exc:
                self.destroy()
                raise InputError(
                    f"cannot give the virtio input proxies' nodes to uid {self._owner_uid} "
                    f"(vm.user), which QEMU runs as: {exc}",
                    fix="run handoff as root, or remove vm.user from the profile",
                ) from exc

    def _give_nodes(self, uid: int) -> None:
        for node in self.nodes:
            info = os.stat(node)
            self.given.append(NodeOwner(node, info.st_rdev, info.st_uid))  # record first
            os.chown(node, uid, -1)

    def _restore_nodes(self) -> None:
        """Give each node back its recorded owner, if it is still the same device."""
        while self.given:
            record = self.given[-1]
            try:
                if os.stat(record.path).st_rdev == record.rdev:
                    os.chown(record.path, record.uid, -1)
            except FileNotFoundError:
                pass  # the device is gone already: nothing left to restore
            except OSError as exc:
                log.warning("cannot give %s back to uid %d: %s", record.path, record.uid, exc)
            self.given.pop()

    @property
    def nodes(self) -> tuple[str, str]:
        """The proxies' /dev/input/eventN nodes (for QEMU and for never grabbing them)."""
        if self.keyboard is None or self.mouse is None:
            raise InputError("the virtio input proxies have not been created")
        return (self.keyboard.device.path, self.mouse.device.path)

    def link(self, keyboard: Path, mouse: Path) -> None:
        """Point the paths QEMU opens (the plan's) at the proxies' event nodes.

        A stale link (a crashed session's) is replaced; the directory is
        created 0700 when missing (the session's run directory made it already).
        """
        for path, node in zip((keyboard, mouse), self.nodes, strict=True):
            path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            temporary = path.with_name(f".{path.name}.new")
            with contextlib.suppress(FileNotFoundError):
                temporary.unlink()
            os.symlink(node, temporary)
            os.replace(temporary, path)  # atomic: QEMU never sees a half-made link
            self.links += (path,)

    def _unlink(self) -> None:
        for path in self.links:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        self.links = ()

    def submit(self, device: str, events: Sequence[Event]) -> None:
        """Copy one frame into the proxies (keys → keyboard; buttons, motion → mouse)."""
        touched_keyboard = touched_mouse = False
        for etype, code, value in events:
            if etype == EV_KEY and not is_button(code):
                self.keyboard.write(etype, code, value)
                touched_keyboard = True
            elif etype in (EV_KEY, EV_REL):
                self.mouse.write(etype, code, value)
                touched_mouse = True
        if touched_keyboard:
            self.keyboard.syn()
        if touched_mouse:
            self.mouse.syn()

    def forget(self, device: str) -> None:
        """Nothing per device: the proxies outlive every real device."""

    def destroy(self) -> None:
        """Remove the links, restore the nodes' owners, then remove both devices. Idempotent."""
        self._unlink()
        self._restore_nodes()
        for proxy in (self.keyboard, self.mouse):
            if proxy is not None:
                with contextlib.suppress(OSError):
                    proxy.close()
        self.keyboard = self.mouse = None
