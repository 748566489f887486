"""USB devices for the guest, decided: which host devices an entry names, QEMU's part,
the refusals. Pure.

An entry names a device by ``vendor:product`` or by its place on the host's
bus (``BUS-PORT[.PORT...]``, as /sys/bus/usb/devices names it). QEMU's
``usb-host`` with those properties attaches any matching device whenever it
appears, so a device plugged in late or re-plugged is passed again without
handoff doing anything; on the host side the resource hands each matching
``/dev/bus/usb`` node to ``vm.user`` as it appears.

Refused before anything changes: a device whose keyboard or mouse the input
hand-off also takes (two owners of one device), and the host's only keyboard
(the host would be left without one, the escape hotkey included).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from handoff.profile.model import Usb
from handoff.profile.usb import DEVICE, PORT

#: The xHCI controller's QEMU id (display.tablet's usb-tablet shares it).
XHCI_ID = "xhci"


def host_args(index: int, usb: Usb) -> str:
    """``usb-host,...`` for one entry (on the one xHCI controller)."""
    head = f"usb-host,bus={XHCI_ID}.0,id=usb-host-{index}"
    if usb.device is not None:
        match = DEVICE.match(usb.device)
        assert match is not None, "parse_usb checks the form"
        return f"{head},vendorid=0x{match[1].lower()},productid=0x{match[2].lower()}"
    match = PORT.match(usb.port or "")
    assert match is not None, "parse_usb checks the form"
    return f"{head},hostbus={match[1]},hostport={match[2]}"


def describe(usb: Usb) -> str:
    return f"usb device {usb.device}" if usb.device is not None else f"usb port {usb.port}"


@dataclass(frozen=True)
class HostUsb:
    """One device on the host's USB bus, as /sys/bus/usb/devices shows it.

    ``name``: the sysfs name (``1-2.3``); ``node``: its /dev/bus/usb/BBB/DDD;
    ``keyboards``/``grabbed``: its evdev nodes that are keyboards / that the
    input hand-off's selection wants.
    """

    name: str
    busnum: int
    devnum: int
    vendor: str
    product: str
    product_name: str = ""
    keyboards: tuple[str, ...] = ()
    grabbed: tuple[str, ...] = ()

    @property
    def node(self) -> str:
        return f"/dev/bus/usb/{self.busnum:03d}/{self.devnum:03d}"


def matches(usb: Usb, host: HostUsb) -> bool:
    """Whether the entry names this host device (QEMU's usb-host rule)."""
    if usb.device is not None:
        return usb.device.lower() == f"{host.vendor}:{host.product}"
    return usb.port == host.name


def refusal(
    entries: Sequence[Usb], devices: Sequence[HostUsb], host_keyboards: int
) -> tuple[str, str] | None:
    """(message, fix) when an entry may not be passed now; None: go."""
    passed = [(usb, d) for usb in entries for d in devices if matches(usb, d)]
    for index, usb in enumerate(entries):
        for other in entries[index + 1:]:
            if usb == other:
                return (f"{describe(usb)} is listed twice in [[usb]]",
                        "remove the second [[usb]] entry")
    for usb, device in passed:
        if device.grabbed:
            return (
                f"{describe(usb)} ({device.name}, {device.product_name or 'no name'}) is also "
                f"taken by the input hand-off ({', '.join(device.grabbed)}): one device, "
                "two owners",
                f'remove the [[usb]] entry, or add its input node to input.exclude '
                f'(e.g. "usb:{device.vendor}:{device.product}")',
            )
    taken = {d.name: d for _, d in passed}
    keyboards_left = host_keyboards - sum(len(d.keyboards) for d in taken.values())
    for usb, device in passed:
        if device.keyboards and keyboards_left <= 0:
            return (
                f"{describe(usb)} ({device.name}) is the host's only keyboard; passed to the "
                "guest, the host would have none (no Ctrl-C, no escape hotkey)",
                "plug in a second keyboard for the host, or hand this one over with [input] "
                "instead (it comes back on the hotkey)",
            )
    return None
