"""The PCI engine's pure data model: devices, bindings, IOMMU groups, holders.

Plain frozen values and the constants they are judged by. Built by the
sysfs edge (:mod:`handoff.pci.sysfs`, :mod:`handoff.pci.holders`) or by
tests, and read by the pure planner (:mod:`handoff.pci.plan`). This module
must never touch the host: no file, process or kernel access, no I/O
imports.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from dataclasses import dataclass

from handoff.pci.address import PciAddress

VFIO_DRIVER = "vfio-pci"
VFIO_MODULE = "vfio_pci"

# The host's GPU (and GPU audio) drivers: the ones a passthrough GPU is taken from,
# and whose blacklisting the seed guide gets wrong (checks.modprobe, checks.iommu).
GPU_DRIVERS = ("amdgpu", "radeon", "nouveau", "nvidia", "i915", "xe", "snd_hda_intel")

# PCI header types (config space byte 0x0e, low 7 bits; bit 7 = multifunction).
HEADER_BRIDGE = 0x01

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
    physfn: PciAddress | None = None  # an SR-IOV virtual function's physical function

    @property
    def is_virtfn(self) -> bool:
        """An SR-IOV virtual function (it has a ``physfn`` link): made to be given to guests."""
        return self.physfn is not None

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
    """The IOMMU as sysfs shows it: its registered units and which devices share each group.

    ``units`` are /sys/class/iommu's entries (dmar0 on Intel, ivhd0 on AMD);
    ``groups`` /sys/kernel/iommu_groups. "On" means what VFIO needs: groups.
    """

    groups: Mapping[int, tuple[PciAddress, ...]]
    units: tuple[str, ...] = ()

    @property
    def enabled(self) -> bool:
        return bool(self.groups)


@dataclass(frozen=True)
class Binding:
    """The two things a bind step changes: the driver link and driver_override."""

    driver: str | None
    driver_override: str | None


@dataclass(frozen=True)
class Holder:
    """A process with an open fd on a watched node."""

    pid: int
    command: str
    node: str

    def describe(self) -> str:
        return f"pid {self.pid} ({self.command}) has {self.node} open"


class ComputeStack(enum.Enum):
    """A driver whose compute users hold the card outside DRM/fbdev/ALSA."""

    NVIDIA = "nvidia"  # the proprietary (or open) kernel module's PCI driver name
    ROCM = "amdgpu"  # ROCm's /dev/kfd belongs to amdgpu


def compute_stack(device: PciDevice) -> ComputeStack | None:
    """Which compute stack may hold ``device`` through driver-wide nodes."""
    for stack in ComputeStack:
        if device.driver == stack.value:
            return stack
    return None
