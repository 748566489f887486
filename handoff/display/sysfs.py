"""Reading the host's display side: vtconsoles, firmware framebuffers, the card's BARs.

An edge that only reads (sysfs and /proc/iomem under :class:`HostPaths`);
the decisions are :mod:`handoff.display.model`'s, the writes
:mod:`handoff.display.resource`'s.
"""

from __future__ import annotations

import os
from pathlib import Path

from handoff.base.errors import PciAddressError
from handoff.base.host import HostPaths
from handoff.display.model import FIRMWARE_FB_DRIVERS, FirmwareFb, MemoryRange, VtConsole
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import device_dir

#: /proc/iomem names of a firmware framebuffer's memory (sysfb's "BOOTFB", efifb's "efifb").
_FB_RESOURCE_NAMES = ("BOOTFB", "efifb", "simplefb", "simpledrm", "vesafb")
#: sysfs ``resource`` flags of a memory BAR (IORESOURCE_MEM).
_IORESOURCE_MEM = 0x200


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return None


def vtconsole_dir(paths: HostPaths) -> Path:
    return paths.sys / "class" / "vtconsole"


def read_vtconsoles(paths: HostPaths) -> tuple[VtConsole, ...]:
    """Every ``/sys/class/vtconsole/vtconN`` in index order."""
    root = vtconsole_dir(paths)
    try:
        nodes = [n for n in os.listdir(root) if n.startswith("vtcon") and n[5:].isdigit()]
    except OSError:
        return ()
    consoles = []
    for node in sorted(nodes, key=lambda n: int(n[5:])):
        name = _read(root / node / "name") or ""
        consoles.append(VtConsole(node, name, _read(root / node / "bind") == "1"))
    return tuple(consoles)


def _fb_memory(paths: HostPaths) -> MemoryRange | None:
    """The firmware framebuffer's range from /proc/iomem (root sees real addresses)."""
    text = _read(paths.proc / "iomem") or ""
    for line in text.splitlines():
        span, _, name = line.strip().partition(" : ")
        if name.strip() not in _FB_RESOURCE_NAMES:
            continue
        start, _, end = span.partition("-")
        try:
            found = MemoryRange(int(start, 16), int(end, 16))
        except ValueError:
            continue
        if found.end > 0:
            return found
    return None


def _pci_parent(path: Path) -> str | None:
    """The PCI address a platform device's real sysfs directory sits under, if any."""
    try:
        parent = Path(os.path.realpath(path)).parent.name
    except OSError:
        return None
    try:
        return str(PciAddress.parse(parent))
    except PciAddressError:
        return None


def read_firmware_fbs(paths: HostPaths) -> tuple[FirmwareFb, ...]:
    """Every firmware framebuffer platform device (efi-, simple-, vesa-framebuffer.N)."""
    root = paths.sys / "bus" / "platform" / "devices"
    try:
        names = sorted(os.listdir(root))
    except OSError:
        return ()
    memory = _fb_memory(paths)
    fbs = []
    for name in names:
        if name.rpartition(".")[0] not in FIRMWARE_FB_DRIVERS:
            continue
        link = root / name / "driver"
        driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
        fbs.append(FirmwareFb(name, driver, memory, _pci_parent(root / name)))
    return tuple(fbs)


def read_bars(paths: HostPaths, address: PciAddress) -> tuple[MemoryRange, ...]:
    """The card's memory BARs (and ROM) from sysfs ``resource``: ``start end flags`` in hex."""
    text = _read(device_dir(paths, address) / "resource") or ""
    bars = []
    for line in text.splitlines()[:7]:
        fields = line.split()
        if len(fields) != 3:
            continue
        try:
            start, end, flags = (int(f, 16) for f in fields)
        except ValueError:
            continue
        if end > start and flags & _IORESOURCE_MEM:
            bars.append(MemoryRange(start, end))
    return tuple(bars)


def reset_methods(paths: HostPaths, address: PciAddress) -> tuple[str, ...] | None:
    """The device's ``reset_method`` list; None when it has no ``reset`` file at all."""
    dev = device_dir(paths, address)
    if not (dev / "reset").exists():
        return None
    return tuple((_read(dev / "reset_method") or "").split())
