"""``[[usb]]`` TOML → :class:`~handoff.profile.model.Usb` entries. Pure.

Read through :meth:`handoff.profile.reader.Reader.fields` with
:data:`USB_KEYS`: one clear error per mistake (an id that is not
``VVVV:PPPP``, a port that is not ``BUS-PORT[.PORT...]``, both or neither
given, the same device twice).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from handoff.profile.model import SECTION_KEYS, Usb
from handoff.profile.reader import FieldParser, Reader, Text, show

DEVICE = re.compile(r"^([0-9a-fA-F]{4}):([0-9a-fA-F]{4})$")
PORT = re.compile(r"^([1-9][0-9]{0,2})-([1-9][0-9]?(?:\.[1-9][0-9]?){0,6})$")

USB_KEYS: Mapping[str, FieldParser] = {
    "device": Text(
        DEVICE, expected='a USB id "VVVV:PPPP" (4 hex digits each, as lsusb prints after ID)',
        fix='write device = "046d:c52b" (lsusb: "ID 046d:c52b Logitech ...")',
    ),
    "port": Text(PORT, expected='a USB port "BUS-PORT[.PORT...]" such as "1-2" or "3-1.4"',
                 fix='write port = "1-2" (the device\'s name under /sys/bus/usb/devices)'),
}


def parse_usb(r: Reader, data: Mapping[str, Any]) -> tuple[Usb, ...]:
    entries: list[Usb] = []
    seen: dict[str, str] = {}
    for index, t in enumerate(r.array_of_tables(data, "usb")):
        prefix = f"usb[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["usb"])
        if ("device" in t) == ("port" in t):
            raise r.error(
                prefix, "expected exactly one of device or port",
                'write device = "046d:c52b" (vendor:product, from lsusb) or port = "1-2.3" '
                "(bus-port, from /sys/bus/usb/devices)",
            )
        read = Usb(**r.fields(t, prefix, Usb, USB_KEYS))
        device, port = read.device, read.port
        key = (device or "").lower() or f"port {port}"
        if key in seen:
            raise r.error(
                f"{prefix}.{'device' if device else 'port'}",
                f"found {show(device or port)} again; {seen[key]} names it already",
                f"remove {prefix}",
            )
        seen[key] = prefix
        entries.append(Usb(device=device.lower() if device else None, port=port))
    return tuple(entries)
