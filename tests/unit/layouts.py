"""Real machines' published IOMMU group listings (tests/data/layouts) as fake sysfs trees.

One builder, :func:`build`, turns a listing into a :class:`FakeHost` laid out
as the kernel lays out sysfs (:mod:`tests.unit.fakesysfs` does the layout and
the driver core): every function with its class, vendor and device ids, its
``iommu_group`` link and the group's ``devices`` link back, its driver bound
(as the listing says, else the driver Linux binds to that class and vendor),
``boot_vga`` on the card the header names, PCI bridges with header type 1,
the device nested under the bridge of its group, domains of any width (a VMD
domain's root bus is ``pci10000:e0``), and SR-IOV's ``physfn`` and
``virtfnN`` links with ``sriov_numvfs``.

The listings come in the formats people paste: the Arch wiki's script
(``IOMMU Group N:`` then indented ``lspci -nns`` lines), ``lsiommu``'s
``IOMMU Group N ADDR ...`` lines, IOMMU-viewer's ``Group:  N  DDDD:ADDR ...
Driver: X``, and a GUI tool's ``Group N: [vvvv:dddd] ADDR  class name``.
Header lines (``# key: value``) carry the source, what the owner reported,
the wanted card (``wanted``), the boot GPU (``boot_vga``) and SR-IOV's
physical function with its VFs (``virtfn: PF VF...``).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from handoff.pci.address import PciAddress
from tests.unit import fakecpu
from tests.unit.fakesysfs import FakeHost, add_cpus, add_meminfo

LAYOUTS = Path(__file__).resolve().parents[1] / "data" / "layouts"

_ADDR = r"(?:[0-9a-fA-F]{4,8}:)?[0-9a-fA-F]{2}:[0-9a-fA-F]{2}\.[0-7]"
_GROUP_HEAD = re.compile(r"^\s*(?:IOMMU\s+[Gg]roup|Group:?)\s+(\d+)\s*:?\s*(.*)$")
_DEVICE = re.compile(rf"(?P<addr>{_ADDR})\s+(?P<rest>.*)$")
_IDS = re.compile(r"\[([0-9a-fA-F]{4}):([0-9a-fA-F]{4})\]")
_CLASS = re.compile(r"\[([0-9a-fA-F]{4})\]:")
_DRIVER = re.compile(r"Driver:\s*(\S+)")

# lspci's class names, for listings that print no class code.
_CLASS_BY_NAME: Mapping[str, int] = {
    "VGA compatible controller": 0x0300,
    "3D controller": 0x0302,
    "Display controller": 0x0380,
    "Audio device": 0x0403,
    "USB controller": 0x0C03,
    "Serial bus controller": 0x0C80,
    "PCI bridge": 0x0604,
    "Host bridge": 0x0600,
    "Ethernet controller": 0x0200,
}
# Programming interfaces lspci -nn does not print, as these controllers report them.
_PROG_IF: Mapping[int, int] = {0x0C03: 0x30, 0x0106: 0x01, 0x0108: 0x02}


@dataclass(frozen=True)
class Function:
    address: PciAddress
    class_code: int  # 24 bits
    vendor: int
    device: int
    group: int
    driver: str | None  # from the listing; None: infer


@dataclass
class Layout:
    """A parsed listing: its header and its functions, in the order published."""

    name: str
    header: dict[str, str] = field(default_factory=dict)
    functions: list[Function] = field(default_factory=list)

    def address(self, key: str) -> PciAddress | None:
        value = self.header.get(key, "").split(" ", 1)[0]
        try:
            return PciAddress.parse(value)
        except Exception:  # "none ..." or absent
            return None

    @property
    def wanted(self) -> PciAddress | None:
        return self.address("wanted")

    @property
    def boot_vga(self) -> PciAddress | None:
        return self.address("boot_vga")

    @property
    def virtfns(self) -> tuple[PciAddress, tuple[PciAddress, ...]] | None:
        text = self.header.get("virtfn")
        if not text:
            return None
        words = [w for w in text.split("(")[0].split() if w]
        pf, *vfs = (PciAddress.parse(w) for w in words)
        return pf, tuple(vfs)

    @property
    def derived(self) -> bool:
        return "DERIVED" in self.header.get("machine", "")


def names() -> list[str]:
    return sorted(p.stem for p in LAYOUTS.glob("*.txt"))


def parse(name: str) -> Layout:
    layout = Layout(name)
    group: int | None = None
    for raw in (LAYOUTS / f"{name}.txt").read_text().splitlines():
        if raw.startswith("#"):
            key, sep, value = raw[1:].partition(":")
            if sep:
                layout.header.setdefault(key.strip(), value.strip())
            continue
        line = raw.strip()
        if not line:
            continue
        head = _GROUP_HEAD.match(line)
        if head:
            group = int(head[1])
            line = head[2]
        match = _DEVICE.search(line)
        if match is None:
            continue
        assert group is not None, f"{name}: {raw!r} before any group"
        layout.functions.append(_function(name, match, group, line))
    return layout


def _function(name: str, match: re.Match[str], group: int, line: str) -> Function:
    rest = match["rest"]
    ids = _IDS.findall(line)
    assert ids, f"{name}: no [vendor:device] in {line!r}"
    vendor, device = int(ids[-1][0], 16), int(ids[-1][1], 16)
    code = _CLASS.search(rest)
    if code is not None:
        prefix = int(code[1], 16)
    else:
        prefix = next(v for k, v in _CLASS_BY_NAME.items() if rest.startswith(k))
    driver = _DRIVER.search(rest)
    return Function(
        PciAddress.parse(match["addr"]),
        prefix << 8 | _PROG_IF.get(prefix, 0),
        vendor,
        device,
        group,
        driver[1] if driver else None,
    )


# --------------------------------------------------------------------------- drivers

_GPU_DRIVERS: Mapping[int, str] = {0x10DE: "nvidia", 0x1002: "amdgpu", 0x8086: "i915"}
_NET_DRIVERS: Mapping[tuple[int, int] | int, str] = {
    (0x8086, 0x10C9): "igb",
    (0x8086, 0x10CA): "igbvf",
    0x8086: "e1000e",
    0x10EC: "r8169",
    0x15B3: "mlx5_core",
    0x1969: "alx",
}
_VMD = {(0x8086, 0x9A0B), (0x8086, 0x467F), (0x8086, 0x28C0)}  # Intel VMD endpoints
_WIFI_DRIVERS: Mapping[int, str] = {0x8086: "iwlwifi", 0x168C: "ath9k", 0x14C3: "mt7921e"}
_KINDS: Mapping[str, str] = {
    "nvidia": "drm", "amdgpu": "drm", "i915": "drm", "nouveau": "drm",
    "snd_hda_intel": "sound",
    "igb": "net", "igbvf": "net", "e1000e": "net", "r8169": "net", "mlx5_core": "net",
    "alx": "net", "iwlwifi": "net", "ath9k": "net", "mt7921e": "net",
}  # fmt: skip


def infer_driver(f: Function) -> str | None:
    """The driver Linux binds to this class and vendor (None: none binds)."""
    prefix, base = f.class_code >> 8, f.class_code >> 16
    if base == 0x03:
        return _GPU_DRIVERS.get(f.vendor)
    if prefix == 0x0604:
        return "pcieport"
    if prefix == 0x0403:
        return "snd_hda_intel"
    if prefix == 0x0C03:
        return "xhci_hcd"
    if (f.vendor, f.device) in _VMD:
        return "vmd"
    if prefix in (0x0101, 0x0104, 0x0106):
        return "ahci"
    if prefix == 0x0108:
        return "nvme"
    if prefix == 0x0200:
        return _NET_DRIVERS.get((f.vendor, f.device)) or _NET_DRIVERS.get(f.vendor, "netdev")
    if prefix == 0x0280:
        return _WIFI_DRIVERS.get(f.vendor, "wlan")
    if prefix == 0x0601:
        return "lpc_ich" if f.vendor == 0x8086 else None
    if prefix == 0x0C05:
        return "i801_smbus" if f.vendor == 0x8086 else "piix4_smbus"
    if prefix == 0x0780 and f.vendor == 0x8086:
        return "mei_me"
    if prefix == 0x1080 and f.vendor == 0x1022:
        return "ccp"
    if prefix == 0x0C80:
        return "nvidia-gpu" if f.vendor == 0x10DE else "intel-lpss"
    if prefix == 0x1180:
        return "intel_pch_thermal"
    return None  # host bridges, system peripherals, memory, instrumentation


# --------------------------------------------------------------------------- the tree


def build(
    name: str,
    root: Path,
    *,
    vfio_loaded: bool = True,
    fbcon_bound: bool | None = None,
    cpu: fakecpu.Machine | None = None,
    memory_mib: int = 32 * 1024,
) -> tuple[FakeHost, Layout]:
    """The fake host of listing ``name``: its PCI functions and groups, with drivers bound.

    ``fbcon_bound``: add a framebuffer vtconsole, bound or not (None: no vtconsole).
    ``cpu``: a :mod:`tests.unit.fakecpu` machine for /sys/devices/system/cpu (default
    4 cores x 2 threads); ``memory_mib``: /proc/meminfo's MemTotal.
    """
    layout = parse(name)
    host = FakeHost(root)
    drivers: dict[str, set[tuple[int, int]]] = {"pcieport": set()}
    bound: dict[PciAddress, str | None] = {}
    for f in layout.functions:
        driver = f.driver or infer_driver(f)
        bound[f.address] = driver
        if driver is not None:
            drivers.setdefault(driver, set()).add((f.vendor, f.device))
    for driver, ids in sorted(drivers.items()):
        host.add_driver(driver, ids=ids, kind=_KINDS.get(driver, "plain"))
    host.add_driver("vfio-pci", "vfio_pci", kind="vfio", loaded=vfio_loaded)
    virtfns = layout.virtfns
    functions = list(layout.functions)
    if virtfns is not None and virtfns[0] not in {f.address for f in functions}:
        # The PF is not quoted (skylake-sp-connectx5-vf): add it, in no group of the excerpt.
        first_vf = next(f for f in functions if f.address in virtfns[1])
        pf = Function(virtfns[0], first_vf.class_code, first_vf.vendor, first_vf.device - 1,
                      -1, None)
        functions.insert(0, pf)
        bound[pf.address] = None
    parents = _parents(functions)
    slots = {(f.address.slot_address) for f in functions if f.address.function}
    for f in sorted(functions, key=lambda f: (f.address.domain, f.address.bus, f.address)):
        bridge = f.class_code >> 8 == 0x0604
        multifunction = f.address.function == 0 and f.address.slot_address in slots
        parent = parents.get(f.address)
        host.add_device(
            str(f.address), f.vendor, f.device, f.class_code,
            group=None if f.group < 0 else f.group,
            parent=None if parent is None else str(parent),
            driver=bound[f.address],
            header=(0x01 if bridge else 0x00) | (0x80 if multifunction else 0x00),
            boot_vga=f.address == layout.boot_vga,
        )  # fmt: skip
    if virtfns is not None:
        _link_sriov(host, *virtfns)
    if fbcon_bound is not None:
        host.add_vtconsole(fbcon_bound)
    if cpu is not None:
        fakecpu.write_sysfs(cpu, root)
    else:
        add_cpus(host, cores=4, threads=2)
    add_meminfo(host, memory_mib)
    return host, layout


def _parents(functions: list[Function]) -> dict[PciAddress, PciAddress]:
    """Each function on a bus other than 0 nested under its group's bridge on a lower bus
    (the one bridge of the group that can lead there), as sysfs nests it."""
    parents: dict[PciAddress, PciAddress] = {}
    for f in functions:
        if f.address.bus == 0 and f.address.domain == 0:
            continue
        bridges = [
            b.address for b in functions
            if b.group == f.group and b.class_code >> 8 == 0x0604
            and b.address.domain == f.address.domain and b.address.bus < f.address.bus
        ]  # fmt: skip
        if bridges:
            parents[f.address] = max(bridges)
    return parents


def _link_sriov(host: FakeHost, pf: PciAddress, vfs: tuple[PciAddress, ...]) -> None:
    """``physfn`` in each VF, ``virtfnN`` and the VF counts in the PF (drivers/pci/iov.c)."""
    pf_dir = host.device_dir(pf)
    (pf_dir / "sriov_totalvfs").write_text(f"{max(7, len(vfs))}\n")
    (pf_dir / "sriov_numvfs").write_text(f"{len(vfs)}\n")
    for index, vf in enumerate(vfs):
        vf_dir = host.device_dir(vf)
        os.symlink(os.path.relpath(vf_dir, pf_dir), pf_dir / f"virtfn{index}")
        os.symlink(os.path.relpath(pf_dir, vf_dir), vf_dir / "physfn")
