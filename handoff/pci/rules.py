"""What a hand-off takes along, leaves as it is, or must not take, and why (pure).

The planner (:mod:`handoff.pci.plan`) asks these questions of every member
of a group; they are here, apart from its bookkeeping, because each is one
rule learned from real machines' layouts (tests/data/layouts):

- **Stays as it is**: PCI bridges (vfio-pci does not take them), and a
  device the host would need but that has no driver bound (the AM4 "PCIe
  Dummy Host Bridge" 1022:1482 beside a GPU): VFIO counts a driverless
  device as viable, and nothing on the host uses it, so it neither blocks
  the group nor moves to vfio-pci.
- **Host-needed**: the host bridge, the ISA/LPC bridge, SMBus, storage,
  network and USB controllers (the host's keyboard and disks hang off
  them), except an SR-IOV virtual function (made to be given to guests)
  and a GPU card's own USB controller (NVIDIA Turing's USB-C port).
- **One card**: the functions of one slot from one vendor are one card;
  QEMU resets it as a whole, so they are passed together even when the
  IOMMU splits them over groups.
- **The boot GPU** never moves without ``[host_display] handover``,
  whatever the console state, and the reason names what it takes.
- **ACS override**: where a group holds what the host needs and no other
  slot can help (a laptop's soldered GPU, devices behind one root port),
  the fix names ``pcie_acs_override`` and what it costs.

This module must never touch the host: it decides from frozen
:class:`~handoff.pci.model.PciDevice` values.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping, Sequence

from handoff.pci.address import PciAddress
from handoff.pci.model import VFIO_DRIVER, PciDevice

USB_CONTROLLER = 0x0C03
ACS_OVERRIDE = "pcie_acs_override=downstream,multifunction"
ACS_FIX = (
    f"where no other slot can help (a laptop's soldered GPU, slots behind one root port), "
    f"only a kernel carrying the ACS override patch (linux-zen, Proxmox, linux-vfio) booted "
    f"with {ACS_OVERRIDE} splits the group; it costs isolation: the kernel then trusts that "
    "the devices in the group cannot reach each other, which the hardware never promised "
    "(a guest's card could read or write the host's device by peer-to-peer DMA)"
)

# Endpoints the host needs to keep running: giving them away takes the disk,
# the chipset, the network or the keyboard from under the host. (class prefix → why)
_HOST_NEEDED_PREFIXES: Mapping[int, str] = {
    0x0600: "the host bridge (the CPU's path to memory and every device)",
    0x0601: "the ISA/LPC bridge (keyboard controller, RTC, firmware flash, fans)",
    0x0C05: "the SMBus controller (sensors, memory SPD)",
    USB_CONTROLLER: "a USB controller (the host's keyboard, mouse and USB disks may hang off it)",
}
_HOST_NEEDED_BASES: Mapping[int, str] = {
    0x01: "a storage controller (the host's disks)",
    0x02: "a network controller (the host's network)",
}


def class_need(device: PciDevice) -> str | None:
    """Why the host needs a device of this class, before looking at its neighbours."""
    return _HOST_NEEDED_PREFIXES.get(device.class_prefix) or _HOST_NEEDED_BASES.get(
        device.base_class
    )


USB_FIX = (
    "see what hangs off it first (`lsusb -t`): a USB controller the host's keyboard, mouse "
    "or disks use cannot go; to give the guest single USB devices instead, pass them with "
    "QEMU's usb-host (extra_args)"
)


def need_fix(device: PciDevice) -> str:
    """What to check before giving this host-needed device away (empty: nothing special)."""
    return USB_FIX + "; " if device.class_prefix == USB_CONTROLLER else ""


def card_functions(
    device: PciDevice, devices: Mapping[PciAddress, PciDevice]
) -> tuple[PciDevice, ...]:
    """The other functions of ``device``'s card: same slot, same vendor, no bridge, no VF."""
    if device.is_bridge or device.is_virtfn:
        return ()
    return tuple(
        d
        for d in sorted(devices.values(), key=lambda d: d.address)
        if d.address != device.address
        and d.address.slot_address == device.address.slot_address
        and d.vendor == device.vendor
        and not d.is_bridge
        and not d.is_virtfn
    )


def is_gpu_own(device: PciDevice, devices: Mapping[PciAddress, PciDevice]) -> bool:
    """A function of a GPU card (its USB-C controller, its audio): a display function of
    the same vendor sits in the same slot."""
    return device.is_display or any(d.is_display for d in card_functions(device, devices))


def host_need(
    device: PciDevice, devices: Mapping[PciAddress, PciDevice] | None = None
) -> str | None:
    """Why the host needs this endpoint, or None when it can be given away.

    ``devices`` (the host's functions) lets a GPU card's own USB controller
    go with the card; without it a USB controller always counts as the host's.
    """
    need = class_need(device)
    if need is None:
        return None
    if device.is_virtfn:
        return None  # an SR-IOV VF: the host keeps its physical function
    if device.class_prefix == USB_CONTROLLER and devices is not None and is_gpu_own(
        device, devices
    ):
        return None
    return need


def stays(device: PciDevice, requested: Iterable[PciAddress] = ()) -> bool:
    """Whether a group member stays as it is (neither moved nor blocking).

    Bridges always stay. A host-needed class with no driver bound stays
    unless it was asked for by address: VFIO counts a driverless device as
    viable, and binding vfio-pci to a host bridge serves nobody.
    """
    if device.is_bridge:
        return True
    return device.driver is None and class_need(device) is not None and (
        device.address not in set(requested)
    )


def stay_reason(device: PciDevice) -> str:
    if device.is_bridge:
        return "stays with the host (PCI bridge)"
    return "stays as it is (no driver bound: VFIO counts it as viable)"


def holds_boot_gpu(device: PciDevice) -> bool:
    """The boot GPU still driven by the host (one already on vfio-pci gave its display up)."""
    return device.boot_vga and device.driver != VFIO_DRIVER


def boot_gpu_reason(
    group: int, device: PciDevice, requested: bool, *, fbcon_bound: bool
) -> tuple[str, str]:
    """The refusal (reason, fix) for a group holding the host's boot GPU; ``requested``:
    the boot GPU's own card was asked for (a single-GPU host), else another card shares
    its group."""
    console = (
        "the host's text console runs on a framebuffer (a bound vtconsole): unbinding it "
        "takes the console with it, the classic single-GPU hang"
        if fbcon_bound
        else "the host's firmware framebuffer and display start on it, and it is the card "
        "the host comes back to (with the console unbound, video=efifb:off, it is still the "
        "host's display)"
    )
    if requested:
        reason = f"{device.address.short} is the boot GPU (boot_vga=1) and {console}"
        fix = (
            "on a host with another GPU make that one primary in the firmware setup (then this "
            "card is no longer the boot GPU); a host with no other GPU hands its display over "
            "with it: [host_display] handover = true (profiles/single-gpu.md)"
        )
        return reason, fix
    reason = (
        f"IOMMU group {group} also holds the host's boot GPU {device.describe()} "
        f"(boot_vga=1): passing the group would take the host's display; {console}"
    )
    fix = (
        "put the guest's card in a slot with an IOMMU group of its own (another CPU-attached "
        "slot, or swap the two cards), so the two GPUs no longer share a group; " + ACS_FIX
    )
    return reason, fix


def split_card_reason(
    device: PciDevice, sibling: PciDevice
) -> tuple[str, str]:
    """The refusal (reason, fix) for a card whose function sits in a group not requested."""
    reason = (
        f"{device.address.short} and {sibling.address.short} {sibling.class_name} are one card "
        f"but in different IOMMU groups ({device.iommu_group} and {sibling.iommu_group}); "
        "QEMU resets the card as a whole and, with the other group not its own, fails with "
        f"\"Cannot reset device {sibling.address}, depends on group {sibling.iommu_group} "
        "which is not owned\""
    )
    fix = (
        f"pass it too: add a [[passthrough]] entry with address = \"{sibling.address.short}\" "
        f"(its IOMMU group {sibling.iommu_group} then moves to vfio-pci as well)"
    )
    return reason, fix


def split_cards(
    wanted: Iterable[PciAddress],
    group_ids: Collection[int],
    devices: Mapping[PciAddress, PciDevice],
) -> list[tuple[int | None, str, str]]:
    """(group, reason, fix) for each requested GPU card's function in a group not handed
    over: QEMU cannot reset the card."""
    found: list[tuple[int | None, str, str]] = []
    for address in sorted(wanted):
        device = devices.get(address)
        if device is None or not is_gpu_own(device, devices):
            continue
        for sibling in card_functions(device, devices):
            if sibling.iommu_group is not None and sibling.iommu_group not in group_ids:
                found.append((device.iommu_group, *split_card_reason(device, sibling)))
    return found


def card_elsewhere(
    candidates: Sequence[PciDevice], group: int, devices: Mapping[PciAddress, PciDevice]
) -> list[PciDevice]:
    """The other functions of the candidates' GPU cards that sit in other groups."""
    found: dict[PciAddress, PciDevice] = {}
    for device in candidates:
        if not is_gpu_own(device, devices):
            continue
        for sibling in card_functions(device, devices):
            if sibling.iommu_group not in (None, group):
                found[sibling.address] = sibling
    return [found[a] for a in sorted(found)]
