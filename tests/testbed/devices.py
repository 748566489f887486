"""The testbed's standard device set: what QEMU gets, and where the guest sees it.

It mirrors the seed guide's host (an R9 290X with its HDMI audio function in one
IOMMU group, a NIC, and the chipset group that must never go to a VM):

- GPU lookalike: bochs-display (1234:1111, driver bochs-drm) at slot 06.0,
  multifunction, + ich9-intel-hda (8086:293e, driver snd_hda_intel) at 06.1.
  Same slot, so one IOMMU group: handing the "GPU" over means handing over
  its audio function too. snd_hda_intel binds the controller but finds no
  codec ("Cannot probe codecs, giving up", with or without an hda-output
  codec under TCG), so there is no sound card: irrelevant to hand-off.
  06.1 sets the multifunction bit in its own header too, as a real GPU's audio
  function does: without it a hot-added 06.1 (the reset ladder's remove +
  rescan) lands in an IOMMU group of its own (the kernel sets a function's
  multifunction flag from its slot only after the IOMMU has grouped it).
- edu (1234:11e8): QEMU's teaching device; no driver, so it shows the "nothing
  to unbind" path.
- e1000e (8086:10d3): a real host driver with a network interface.
- q35's ICH9 functions LPC 1f.0 (lpc_ich), SATA 1f.2 (ahci), SMBus 1f.3
  (i801_smbus): one group, like the seed's group 13.
- A second GPU lookalike, virtio-gpu-pci (1af4:1050, a display controller in
  a group of its own) at 0a.0: with it the testbed has two passable GPUs, so
  `handoff init` must refuse to guess. Another id than the first lookalike's,
  so every lookup by bochs-display's id still finds one device.
- The boot GPU, cirrus-vga (1013:00b8, VGA class) at 0b.0: SeaBIOS runs its
  option ROM, so the kernel marks it boot_vga=1; handoff never takes it.
  Multifunction, with pci-testdev (1b36:0005, no driver) at 0b.1: same slot,
  so one IOMMU group holding the boot GPU and another device; passing that
  group is refused, console bound or not.
- The systemd boot (runner.Init.SYSTEMD) has a std VGA (``-device VGA``, 1234:1111 like
  bochs-display but VGA class 0x030000, driver bochs-drm with fbcon on it) at 05.0
  instead of cirrus-vga: the boot GPU a single-GPU host hands over. At 05.0 its driver
  probes before bochs-display's, so the kernel keeps the dummy console fbcon took over
  from (measured: with the VGA at 0b.0, bochs-display's fbcon came first, vgacon was
  then unregistered and fbcon was the only console driver, which the kernel never
  unbinds).
- A 64 MiB virtio disk (1af4:1001, serial testbed-disk) at 09.0, backed by
  QEMU's null-co driver with snapshot=on: writable (a throw-away overlay),
  nothing on the host to create or clean up; tests make a file system on it
  and mount it.

Guest code must find devices by vendor:device, not by slot: the functions below
do that, reading sysfs under ``sys_root`` (so they also work on a fake tree).
Host code uses :func:`qemu_args`. Standard library plus handoff's PciAddress.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from handoff.pci.address import PciAddress

# Vendor:device ids (sysfs writes them as 0x1234 / 0x1111).
BOCHS_DISPLAY = (0x1234, 0x1111)
ICH9_HDA = (0x8086, 0x293E)
EDU = (0x1234, 0x11E8)
E1000E = (0x8086, 0x10D3)
ICH9_LPC = (0x8086, 0x2918)
ICH9_SATA = (0x8086, 0x2922)
ICH9_SMBUS = (0x8086, 0x2930)
VIRTIO_GPU = (0x1AF4, 0x1050)
CIRRUS_VGA = (0x1013, 0x00B8)
PCI_TESTDEV = (0x1B36, 0x0005)
VIRTIO_BLK = (0x1AF4, 0x1001)
DISK_SERIAL = "testbed-disk"
#: QEMU's usb-ccid (a smartcard reader no testbed driver binds), on the xHCI at 0c.0.
USB_CCID = "08e6:4433"

#: The driver each device is bound to when the guest has settled.
HOST_DRIVERS: dict[tuple[int, int], str | None] = {
    BOCHS_DISPLAY: "bochs-drm",
    ICH9_HDA: "snd_hda_intel",
    EDU: None,
    E1000E: "e1000e",
    ICH9_LPC: "lpc_ich",
    ICH9_SATA: "ahci",
    ICH9_SMBUS: "i801_smbus",
}

SYS = Path("/sys")


#: PCI class of a VGA-compatible controller (std VGA) and of bochs-display's "other display".
VGA_CLASS = 0x030000
OTHER_DISPLAY_CLASS = 0x038000


def qemu_args(*, std_vga: bool = False) -> list[str]:
    """QEMU arguments adding the standard device set to a q35 machine.

    ``std_vga``: the boot GPU is a std VGA at 05.0 (the systemd boot) instead of cirrus-vga
    at 0b.0.
    """
    boot_gpu = "VGA,addr=05.0" if std_vga else "cirrus-vga,addr=0b.0,multifunction=on"
    beside_boot_gpu = [] if std_vga else ["-device", "pci-testdev,addr=0b.1"]
    return [
        "-device", "bochs-display,addr=06.0,multifunction=on",
        "-device", "ich9-intel-hda,addr=06.1,multifunction=on",
        "-device", "edu,addr=07.0",
        "-netdev", "user,id=n0,restrict=on",
        "-device", "e1000e,netdev=n0,addr=08.0",
        "-device", "virtio-gpu-pci,addr=0a.0",
        "-device", boot_gpu,
        *beside_boot_gpu,
        "-drive", "if=none,id=tbdisk,driver=null-co,size=64M,read-zeroes=on,snapshot=on",
        "-device", f"virtio-blk-pci,drive=tbdisk,addr=09.0,serial={DISK_SERIAL}",
        # A USB device no testbed driver claims, for [[usb]] (test_desk_realkernel).
        "-device", "qemu-xhci,id=tbxhci,addr=0c.0",
        "-device", "usb-ccid,bus=tbxhci.0,id=tbccid",
    ]  # fmt: skip


@dataclass(frozen=True)
class GpuLookalike:
    """bochs-display (the "GPU") and ich9-intel-hda (its HDMI audio) in one IOMMU group."""

    vga: PciAddress
    audio: PciAddress
    group: int

    @property
    def functions(self) -> tuple[PciAddress, PciAddress]:
        return (self.vga, self.audio)


@dataclass(frozen=True)
class Ich9Group:
    """q35's chipset functions that share one IOMMU group (never to be handed to a VM)."""

    lpc: PciAddress
    sata: PciAddress
    smbus: PciAddress
    group: int

    @property
    def functions(self) -> tuple[PciAddress, PciAddress, PciAddress]:
        return (self.lpc, self.sata, self.smbus)


class DeviceNotFoundError(LookupError):
    """A standard testbed device is missing from the guest's PCI bus."""


def find(ids: tuple[int, int], sys_root: Path = SYS) -> list[PciAddress]:
    """Every PCI function with this vendor:device id, in address order."""
    vendor, device = ids
    found = []
    for node in (sys_root / "bus" / "pci" / "devices").iterdir():
        if (
            int((node / "vendor").read_text(), 16) == vendor
            and int((node / "device").read_text(), 16) == device
        ):
            found.append(PciAddress.parse(node.name))
    return sorted(found)


def find_one(ids: tuple[int, int], sys_root: Path = SYS) -> PciAddress:
    found = find(ids, sys_root)
    if len(found) != 1:
        raise DeviceNotFoundError(
            f"expected one PCI device {ids[0]:04x}:{ids[1]:04x} in the testbed, found "
            f"{[str(a) for a in found]}: is the guest booted with devices.qemu_args()?"
        )
    return found[0]


def _of_class(found: list[PciAddress], class_code: int, sys_root: Path) -> list[PciAddress]:
    node = sys_root / "bus" / "pci" / "devices"
    return [a for a in found if int((node / str(a) / "class").read_text(), 16) == class_code]


def gpu_lookalike(sys_root: Path = SYS) -> tuple[PciAddress, PciAddress]:
    """(VGA function, its audio function): bochs-display and ich9-intel-hda.

    By id and class: the systemd boot's std VGA has bochs-display's id.
    """
    found = _of_class(find(BOCHS_DISPLAY, sys_root), OTHER_DISPLAY_CLASS, sys_root)
    if len(found) != 1:
        raise DeviceNotFoundError(f"expected one bochs-display in the testbed, found {found}")
    return found[0], find_one(ICH9_HDA, sys_root)


def std_vga(sys_root: Path = SYS) -> PciAddress:
    """The systemd boot's std VGA (bochs-drm, fbcon): the boot GPU of the single-GPU tests."""
    found = _of_class(find(BOCHS_DISPLAY, sys_root), VGA_CLASS, sys_root)
    if len(found) != 1:
        raise DeviceNotFoundError(
            f"expected one std VGA in the testbed, found {found}: the systemd boot has it"
        )
    return found[0]


def edu(sys_root: Path = SYS) -> PciAddress:
    return find_one(EDU, sys_root)


def e1000e(sys_root: Path = SYS) -> PciAddress:
    return find_one(E1000E, sys_root)


def ich9_group(sys_root: Path = SYS) -> tuple[PciAddress, PciAddress, PciAddress]:
    """(LPC, SATA, SMBus): the chipset functions that share one IOMMU group."""
    return (
        find_one(ICH9_LPC, sys_root),
        find_one(ICH9_SATA, sys_root),
        find_one(ICH9_SMBUS, sys_root),
    )


def ids_of(address: PciAddress, sys_root: Path = SYS) -> tuple[int, int]:
    node = sys_root / "bus" / "pci" / "devices" / str(address)
    return int((node / "vendor").read_text(), 16), int((node / "device").read_text(), 16)


def second_gpu_lookalike(sys_root: Path = SYS) -> PciAddress:
    """virtio-gpu-pci: a second passable display controller."""
    return find_one(VIRTIO_GPU, sys_root)


def boot_gpu(sys_root: Path = SYS) -> PciAddress:
    """cirrus-vga: the VGA device the firmware initialised (boot_vga=1)."""
    return find_one(CIRRUS_VGA, sys_root)


def boot_gpu_companion(sys_root: Path = SYS) -> PciAddress:
    """pci-testdev: the function sharing the boot GPU's slot, and so its IOMMU group."""
    return find_one(PCI_TESTDEV, sys_root)


def virtio_disk(sys_root: Path = SYS) -> PciAddress:
    """The virtio disk's PCI function (the guest's /dev/vda)."""
    return find_one(VIRTIO_BLK, sys_root)
