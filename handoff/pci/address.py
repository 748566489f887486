"""PCI addresses: parse what people type, print what the kernel uses.

People copy addresses from ``lspci`` (``01:00.0``) and from sysfs
(``0000:01:00.0``); both mean the same function. The domain is 16 bits on
most hosts but not all: Intel VMD puts the NVMe drives behind it in domain
``10000`` and up (the kernel prints the domain as ``%04x``, so it grows to
five digits), and Hyper-V uses 32-bit domains, so any width is accepted. Everything inside handoff
uses the normalised, sysfs form, so comparisons and paths never disagree.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from handoff.base.errors import PciAddressError

_ADDRESS = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4,8}):)?"
    r"(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<function>[0-7])$"
)


@dataclass(frozen=True, order=True)
class PciAddress:
    """A PCI function: domain, bus, slot (device) and function numbers."""

    domain: int
    bus: int
    slot: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Accept ``DDDD:BB:SS.F`` (4 to 8 domain digits) or ``BB:SS.F`` (domain 0000),
        any hex case."""
        match = _ADDRESS.match(text.strip())
        if match is None:
            raise PciAddressError(
                f"{text!r} is not a PCI address",
                fix="write it as lspci prints it, e.g. 01:00.0, or as sysfs does, "
                "e.g. 0000:01:00.0 or 10000:e1:00.0 (see `handoff groups`)",
            )
        slot = int(match["slot"], 16)
        if slot > 0x1F:
            raise PciAddressError(
                f"{text!r} is not a PCI address: slot {slot:#04x} is above 0x1f",
                fix="a PCI slot (the number after the bus) is 00 to 1f",
            )
        return cls(
            domain=int(match["domain"] or "0", 16),
            bus=int(match["bus"], 16),
            slot=slot,
            function=int(match["function"]),
        )

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}.{self.function:x}"

    @property
    def short(self) -> str:
        """lspci's form, without the domain when it is 0000."""
        text = str(self)
        return text[5:] if self.domain == 0 else text

    @property
    def slot_address(self) -> str:
        """The device without its function, ``0000:01:00``: functions that share
        it are one physical card (a GPU and its HDMI audio)."""
        return f"{self.domain:04x}:{self.bus:02x}:{self.slot:02x}"
