"""Finding keyboards and mice with pyudev, following hotplug, and choosing which to hand off.

Classification is udev's (ID_INPUT_KEYBOARD / ID_INPUT_MOUSE), or udev
input_id's rules on the capabilities where no udevd runs. An identity
survives re-plugging (never the event node). Selection is pure
(:class:`Selection`); only :class:`DeviceWatcher` touches udev. Must never
open, grab or read an event node.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import trio

from handoff.base.errors import InputError
from handoff.input.codes import BTN_LEFT, EV_KEY, EV_REL, REL_X, REL_Y
from handoff.profile import SelectorKind, selector_kind

log = logging.getLogger(__name__)

PROXY_NAME_PREFIX = "handoff virtio "  # the names of handoff's own uinput proxies
HOST_KEYS_NAME = "handoff host keys"  # handoff's uinput device for [input] host_keys
EVENT_NODE = re.compile(r"^/dev/input/event\d+$")


@dataclass(frozen=True)
class DeviceInfo:
    """What handoff knows about one evdev node, before opening it."""

    node: str
    name: str
    by_id: tuple[str, ...]
    id_path: str | None
    vendor: str  # 4 hex digits, lower case ("" when unknown)
    product: str
    keyboard: bool | None  # None: udev did not say (no udev daemon)
    mouse: bool | None

    @property
    def identity(self) -> str:
        """Stable over re-plugging: the by-id link, else ID_PATH + name, else name + USB id."""
        if self.by_id:
            return f"by-id:{sorted(self.by_id)[0]}"
        if self.id_path:
            return f"path:{self.id_path}/{self.name}"
        return f"name:{self.name}/usb:{self.vendor}:{self.product}"

    @property
    def is_proxy(self) -> bool:
        return self.name.startswith(PROXY_NAME_PREFIX) or self.name == HOST_KEYS_NAME


@dataclass(frozen=True)
class Selector:
    kind: SelectorKind
    value: str

    def matches(self, info: DeviceInfo) -> bool:
        if self.kind is SelectorKind.BY_ID:
            return self.value in info.by_id
        if self.kind is SelectorKind.PATH:
            return info.id_path == self.value
        if self.kind is SelectorKind.USB:
            return f"{info.vendor}:{info.product}" == self.value.lower()
        return info.name == self.value


def parse_selector(text: str) -> Selector:
    """``by-id:LINK`` / ``path:ID_PATH`` / ``usb:VVVV:PPPP`` / ``name:TEXT`` → Selector.

    The same rules the profile checked the text with
    (:func:`handoff.profile.selector_kind`, the one selector grammar); failing
    here means the text did not come from a checked profile.
    """
    kind = selector_kind(text)
    if kind is None:
        raise InputError(
            f"input device selector {text!r} is not understood",
            fix="write by-id:LINK (a /dev/input/by-id name), path:ID_PATH, usb:VVVV:PPPP "
            "(hex vendor:product, see `lsusb`) or name:KERNEL NAME; `handoff doctor` lists "
            "the devices",
        )
    return Selector(kind, text.partition(":")[2])


@dataclass(frozen=True)
class Selection:
    """Which devices a profile hands off (pure; see the module docstring)."""

    include: tuple[Selector, ...] = ()
    exclude: tuple[Selector, ...] = ()
    proxy_nodes: frozenset[str] = frozenset()

    @classmethod
    def from_profile(
        cls, devices: Iterable[str], exclude: Iterable[str], proxy_nodes: Iterable[str] = ()
    ) -> Selection:
        return cls(
            tuple(parse_selector(s) for s in devices),
            tuple(parse_selector(s) for s in exclude),
            frozenset(proxy_nodes),
        )

    def wants(self, info: DeviceInfo) -> bool:
        if info.is_proxy or info.node in self.proxy_nodes:
            return False
        if any(s.matches(info) for s in self.exclude):
            return False
        if self.include:
            return any(s.matches(info) for s in self.include)
        return bool(info.keyboard or info.mouse)


def _flag(props: Mapping[str, str], key: str, udev_ran: bool) -> bool | None:
    if key in props:
        return props[key] == "1"
    return False if udev_ran else None


def describe(device: Any) -> DeviceInfo | None:
    """A pyudev Device for an input node → DeviceInfo (None if not /dev/input/eventN)."""
    node = device.device_node
    if not node or not EVENT_NODE.match(node):
        return None
    props: Mapping[str, str] = dict(device.properties)
    parent = device.parent
    attrs: Mapping[str, str] = {}
    if parent is not None:
        attrs = {key: _attr(parent, key) for key in ("name", "id/vendor", "id/product")}
    links = props.get("DEVLINKS", "").split()
    by_id = tuple(os.path.basename(link) for link in links if link.startswith("/dev/input/by-id/"))
    udev_ran = "ID_INPUT" in props
    return DeviceInfo(
        node=node,
        name=attrs.get("name", "") or props.get("NAME", "").strip('"'),
        by_id=by_id,
        id_path=props.get("ID_PATH") or None,
        vendor=attrs.get("id/vendor", "").lower(),
        product=attrs.get("id/product", "").lower(),
        keyboard=_flag(props, "ID_INPUT_KEYBOARD", udev_ran),
        mouse=_flag(props, "ID_INPUT_MOUSE", udev_ran),
    )


def _attr(device: Any, key: str) -> str:
    try:
        value = device.attributes.asstring(key)
    except (KeyError, UnicodeDecodeError):
        return ""
    return str(value).strip()


def classify_by_capabilities(capabilities: Mapping[int, Iterable[Any]]) -> tuple[bool, bool]:
    """(keyboard, mouse) by udev input_id's rules, for systems without udevd.

    A keyboard has every key code 1-31 (KEY_ESC … KEY_S, the first word of
    the key bitmap); a mouse has REL_X, REL_Y and BTN_LEFT.
    """
    keys = {int(c) for c in capabilities.get(EV_KEY, [])}
    rels = {int(c) for c in capabilities.get(EV_REL, [])}
    keyboard = all(code in keys for code in range(1, 32))
    mouse = {REL_X, REL_Y} <= rels and BTN_LEFT in keys
    return keyboard, mouse


def udev_running(run: Path = Path("/run")) -> bool:
    """udevd answers on /run/udev/control; without it only kernel uevents exist."""
    return (run / "udev" / "control").exists()


class DeviceWatcher:
    """Reports every wanted input node now and whenever one is plugged in.

    ``on_device(info)`` is awaited in a new task per node (the router's reader
    runs there until the device is unplugged). A node is reported again only
    after its task ended, so a device is never opened twice.
    """

    def __init__(
        self,
        selection: Selection,
        on_device: Callable[[DeviceInfo], Awaitable[None]],
        *,
        classify: Callable[[DeviceInfo], DeviceInfo] | None = None,
    ) -> None:
        self._selection = selection
        self._on_device = on_device
        self._classify = classify
        self._active: set[str] = set()

    async def run(self) -> None:
        import pyudev

        context = pyudev.Context()
        source = "udev" if udev_running() else "kernel"
        monitor = pyudev.Monitor.from_netlink(context, source=source)
        monitor.filter_by("input")
        monitor.start()  # before enumerating: nothing slips between the two
        async with trio.open_nursery() as nursery:
            for device in context.list_devices(subsystem="input"):
                self._consider(nursery, device)
            while True:
                await trio.lowlevel.wait_readable(monitor.fileno())
                while (device := monitor.poll(timeout=0)) is not None:
                    if device.action in ("add", "change", None):
                        self._consider(nursery, device)

    def _consider(self, nursery: trio.Nursery, device: Any) -> None:
        info = describe(device)
        if info is None or info.node in self._active:
            return
        if (info.keyboard is None or info.mouse is None) and self._classify is not None:
            info = self._classify(info)
        if not self._selection.wants(info):
            return
        self._active.add(info.node)
        nursery.start_soon(self._track, info)

    async def _track(self, info: DeviceInfo) -> None:
        try:
            await self._on_device(info)
        finally:
            self._active.discard(info.node)
