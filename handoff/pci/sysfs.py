"""Reading PCI devices and IOMMU groups from sysfs, under a configurable root.

Everything here is read-only and returns frozen values, so the pure planner
(:mod:`handoff.pci.plan`) can decide from a snapshot and tests can build the
same snapshot from a fake tree. Paths are those of the kernel's ABI
(Documentation/ABI/testing/sysfs-bus-pci): ``/sys/bus/pci/devices/X`` are
symlinks into ``/sys/devices/pci0000:00/...``; ``driver`` and ``iommu_group``
are symlinks whose last component is the name we need.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from handoff.errors import PciError
from handoff.host import HostPaths
from handoff.pci.address import PciAddress

VFIO_DRIVER = "vfio-pci"
VFIO_MODULE = "vfio_pci"

# PCI header types (config space byte 0x0e, low 7 bits; bit 7 = multifunction).
HEADER_ENDPOINT = 0x00
HEADER_BRIDGE = 0x01
HEADER_CARDBUS = 0x02
_HEADER_OFFSET = 0x0E

# Class names as lspci prints them, base class then (base, subclass) overrides.
_BASE_CLASSES: Mapping[int, str] = {
    0x00: "Unclassified device",
    0x01: "Mass storage controller",
    0x02: "Network controller",
    0x03: "Display controller",
    0x04: "Multimedia controller",
    0x05: "Memory controller",
    0x06: "Bridge",
    0x07: "Communication controller",
    0x08: "Generic system peripheral",
    0x09: "Input device controller",
    0x0A: "Docking station",
    0x0B: "Processor",
    0x0C: "Serial bus controller",
    0x0D: "Wireless controller",
    0x0E: "Intelligent controller",
    0x0F: "Satellite communications controller",
    0x10: "Encryption controller",
    0x11: "Signal processing controller",
    0x12: "Processing accelerators",
    0x13: "Non-Essential Instrumentation",
    0xFF: "Unassigned class",
}
_SUBCLASSES: Mapping[tuple[int, int], str] = {
    (0x01, 0x00): "SCSI storage controller",
    (0x01, 0x01): "IDE interface",
    (0x01, 0x04): "RAID bus controller",
    (0x01, 0x06): "SATA controller",
    (0x01, 0x07): "Serial Attached SCSI controller",
    (0x01, 0x08): "Non-Volatile memory controller",
    (0x02, 0x00): "Ethernet controller",
    (0x02, 0x80): "Network controller",
    (0x03, 0x00): "VGA compatible controller",
    (0x03, 0x02): "3D controller",
    (0x03, 0x80): "Display controller",
    (0x04, 0x01): "Multimedia audio controller",
    (0x04, 0x03): "Audio device",
    (0x06, 0x00): "Host bridge",
    (0x06, 0x01): "ISA bridge",
    (0x06, 0x04): "PCI bridge",
    (0x06, 0x80): "Bridge",
    (0x07, 0x80): "Communication controller",
    (0x0C, 0x03): "USB controller",
    (0x0C, 0x05): "SMBus",
}


def class_name(class_code: int) -> str:
    """lspci's name for a 24-bit class code (``0x030000`` → VGA compatible controller)."""
    base, sub = (class_code >> 16) & 0xFF, (class_code >> 8) & 0xFF
    return _SUBCLASSES.get((base, sub)) or _BASE_CLASSES.get(base, f"Class {base:02x}{sub:02x}")


@dataclass(frozen=True)
class PciDevice:
    """One PCI function as sysfs shows it right now.

    ``header_type`` is the raw config byte 0x0e, or None when config space
    could not be read at all. ``driver_override`` is None when the kernel
    reports ``(null)``; ``driver_override_supported`` is False on kernels
    without the attribute (before 3.16), which handoff cannot drive safely.
    """

    address: PciAddress
    class_code: int
    vendor: int
    device: int
    subsystem_vendor: int | None
    subsystem_device: int | None
    driver: str | None
    driver_module: str | None
    driver_override: str | None
    driver_override_supported: bool
    iommu_group: int | None
    boot_vga: bool
    header_type: int | None
    drm_nodes: tuple[str, ...] = ()
    fb_nodes: tuple[str, ...] = ()
    sound_cards: tuple[int, ...] = ()
    netdevs: tuple[str, ...] = ()

    @property
    def ids(self) -> str:
        """``vendor:device`` in lspci -n form (``1002:67b0``)."""
        return f"{self.vendor:04x}:{self.device:04x}"

    @property
    def class_name(self) -> str:
        return class_name(self.class_code)

    @property
    def base_class(self) -> int:
        return (self.class_code >> 16) & 0xFF

    @property
    def class_prefix(self) -> int:
        """Base class and subclass (``0x0601`` for an ISA bridge)."""
        return (self.class_code >> 8) & 0xFFFF

    @property
    def is_display(self) -> bool:
        return self.base_class == 0x03

    @property
    def is_vga(self) -> bool:
        """A VGA-class function (the one a GPU's legacy VGA and boot_vga belong to)."""
        return self.class_prefix == 0x0300

    @property
    def header_kind(self) -> int | None:
        return None if self.header_type is None else self.header_type & 0x7F

    @property
    def is_bridge(self) -> bool:
        """Header type 1 (PCI-to-PCI bridge): stays with the host, vfio-pci refuses it."""
        return self.header_kind == HEADER_BRIDGE

    @property
    def is_dead(self) -> bool:
        """Config space reads back all ones: the device fell off the bus or sits in D3cold.

        libvirt reports this as "Unknown PCI header type '127'". Touching the
        driver binding of such a device hangs or fails, so handoff refuses.
        """
        return self.header_type is None or (self.header_type & 0x7F) == 0x7F

    def describe(self) -> str:
        """One line as lspci -nnk would: address, class, ids, driver."""
        driver = self.driver or "no driver"
        return f"{self.address.short} {self.class_name} [{self.ids}] ({driver})"


@dataclass(frozen=True)
class IommuState:
    """Whether the IOMMU is on and which devices share each group."""

    enabled: bool
    groups: Mapping[int, tuple[PciAddress, ...]]


# --------------------------------------------------------------------------- paths


def pci_devices_dir(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "devices"


def device_dir(paths: HostPaths, address: PciAddress) -> Path:
    return pci_devices_dir(paths) / str(address)


def drivers_dir(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "drivers"


def drivers_probe_path(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "drivers_probe"


def iommu_groups_dir(paths: HostPaths) -> Path:
    return paths.sys / "kernel" / "iommu_groups"


def vfio_group_node(paths: HostPaths, group: int) -> Path:
    return paths.dev / "vfio" / str(group)


# --------------------------------------------------------------------------- small readers


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError:
        # Some attributes (e.g. of a device that vanished mid-read) fail with ENODEV.
        return None


def _read_hex(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def _link_name(path: Path) -> str | None:
    """Last component of a symlink's target (``driver`` → ``vfio-pci``), None if absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _children(path: Path, prefix: str) -> tuple[str, ...]:
    try:
        names = os.listdir(path)
    except OSError:
        return ()
    return tuple(sorted(n for n in names if n.startswith(prefix)))


def _header_type(dev: Path) -> int | None:
    try:
        with open(dev / "config", "rb") as config:
            config.seek(_HEADER_OFFSET)
            byte = config.read(1)
    except OSError:
        return None
    return byte[0] if byte else None


# --------------------------------------------------------------------------- devices


def read_device(paths: HostPaths, address: PciAddress) -> PciDevice:
    """Read one function; PciError when it does not exist."""
    dev = device_dir(paths, address)
    vendor = _read_hex(dev / "vendor")
    device = _read_hex(dev / "device")
    class_code = _read_hex(dev / "class")
    if vendor is None or device is None or class_code is None:
        raise PciError(
            f"PCI device {address} does not exist ({dev} has no vendor/device/class)",
            fix="list the devices with `handoff groups` or `lspci -nn` and use one of those "
            "addresses",
        )
    override_text = _read_text(dev / "driver_override")
    group = _link_name(dev / "iommu_group")
    drm = _children(dev / "drm", "card") + _children(dev / "drm", "renderD")
    sound = tuple(
        int(name[4:]) for name in _children(dev / "sound", "card") if name[4:].isdigit()
    )
    driver = _link_name(dev / "driver")
    return PciDevice(
        address=address,
        class_code=class_code,
        vendor=vendor,
        device=device,
        subsystem_vendor=_read_hex(dev / "subsystem_vendor"),
        subsystem_device=_read_hex(dev / "subsystem_device"),
        driver=driver,
        driver_module=_link_name(dev / "driver" / "module") if driver else None,
        driver_override=None if override_text in (None, "", "(null)") else override_text,
        driver_override_supported=(dev / "driver_override").exists(),
        iommu_group=int(group) if group is not None and group.isdigit() else None,
        boot_vga=_read_text(dev / "boot_vga") == "1",
        header_type=_header_type(dev),
        drm_nodes=drm,
        fb_nodes=_children(dev / "graphics", "fb"),
        sound_cards=sound,
        netdevs=_children(dev / "net", ""),
    )


@dataclass(frozen=True)
class Binding:
    """The two things a bind step changes: the driver link and driver_override."""

    driver: str | None
    driver_override: str | None


def read_binding(paths: HostPaths, address: PciAddress) -> Binding | None:
    """The device's current driver and driver_override, None when it is gone.

    The hot path of detach and return (read back after every write): two
    system calls, where :func:`read_device` reads the whole device.
    """
    base = f"{paths.sys}/bus/pci/devices/{address}"
    try:
        driver: str | None = os.path.basename(os.readlink(f"{base}/driver"))
    except FileNotFoundError:
        driver = None
    except OSError:
        return None
    try:
        fd = os.open(f"{base}/driver_override", os.O_RDONLY | os.O_CLOEXEC)
        try:
            override: str | None = os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except FileNotFoundError:
        if not os.path.exists(f"{base}/config"):
            return None
        override = None
    except OSError:
        return None
    return Binding(driver, None if override in (None, "", "(null)") else override)


def iommu_group_of(paths: HostPaths, address: PciAddress) -> int | None:
    """The group number from the device's iommu_group link (None: no link, no device)."""
    name = _link_name(device_dir(paths, address) / "iommu_group")
    return int(name) if name is not None and name.isdigit() else None


def list_addresses(paths: HostPaths) -> tuple[PciAddress, ...]:
    """Every PCI function the kernel knows, sorted."""
    names = _children(pci_devices_dir(paths), "")
    return tuple(sorted(PciAddress.parse(name) for name in names))


def read_devices(paths: HostPaths) -> dict[PciAddress, PciDevice]:
    """Every PCI function, read once. Devices that vanish while read are skipped."""
    devices: dict[PciAddress, PciDevice] = {}
    for address in list_addresses(paths):
        try:
            devices[address] = read_device(paths, address)
        except PciError:
            continue
    return devices


def read_iommu(paths: HostPaths) -> IommuState:
    """The IOMMU groups from /sys/kernel/iommu_groups (empty when the IOMMU is off)."""
    groups: dict[int, tuple[PciAddress, ...]] = {}
    for name in _children(iommu_groups_dir(paths), ""):
        if not name.isdigit():
            continue
        members = _children(iommu_groups_dir(paths) / name / "devices", "")
        addresses: list[PciAddress] = []
        for member in members:
            try:
                addresses.append(PciAddress.parse(member))
            except PciError:
                continue  # a non-PCI device in the group (platform devices on ARM)
        groups[int(name)] = tuple(sorted(addresses))
    return IommuState(enabled=bool(groups), groups=groups)


def driver_loaded(paths: HostPaths, driver: str) -> bool:
    """Whether a PCI driver is registered (``/sys/bus/pci/drivers/<driver>`` exists)."""
    return (drivers_dir(paths) / driver).is_dir()


def framebuffer_console_bound(paths: HostPaths) -> bool:
    """Whether a framebuffer console (fbcon) is bound to a virtual terminal.

    With fbcon bound, the boot GPU carries the host's text console; unbinding
    its driver under it is what leaves single-GPU users with a black screen or
    a hung unbind.
    """
    root = paths.sys / "class" / "vtconsole"
    for name in _children(root, "vtcon"):
        label = _read_text(root / name / "name") or ""
        if "frame buffer" in label and _read_text(root / name / "bind") == "1":
            return True
    return False


def read_boot_id(paths: HostPaths) -> str:
    """This boot's random id: journals from another boot are stale."""
    text = _read_text(paths.proc / "sys" / "kernel" / "random" / "boot_id")
    if not text:
        raise PciError(
            f"cannot read {paths.proc / 'sys/kernel/random/boot_id'}",
            fix="mount /proc (handoff needs it to recognise journals from an earlier boot)",
        )
    return text
