"""From the addresses a profile passes through to a checked plan (pure).

The kernel hands devices to a guest per IOMMU group: every endpoint of the
group must be on vfio-pci (or driverless) before QEMU can open it. So the
plan grows each requested address to its whole group; PCI bridges (header
type 1) stay where they are, as the kernel already treats them as viable.

Everything here decides from a :class:`HostSnapshot` taken beforehand and
changes nothing: this module must never read or write the host (of the PCI
package it imports only :mod:`handoff.pci.model` and the address type). A
refusal is a :class:`PreflightRefusedError` naming the group, its members,
the reason and the fix, raised before any host change.
The rules are ARCHITECTURE.md's "The hand-off planner's rules" (from libvirt's
virpci.c, driverctl, users' reports of what went wrong with hook scripts and
the published layouts in tests/data/layouts); the per-device questions are
:mod:`handoff.pci.rules`.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from handoff.base.errors import PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.model import (
    VFIO_DRIVER,
    ComputeStack,
    Holder,
    IommuState,
    PciDevice,
    compute_stack,
)
from handoff.pci.rules import (
    ACS_FIX,
    boot_gpu_reason,
    card_elsewhere,
    class_need,
    holds_boot_gpu,
    host_need,
    need_fix,
    split_cards,
    stay_reason,
    stays,
)


@dataclass(frozen=True)
class HostSnapshot:
    """Everything preflight needs, read once from the host (:mod:`handoff.pci.snapshot`).

    ``holders`` maps a device to the processes holding its DRM/fb/sound nodes
    (and /dev/nvidiaN); ``vfio_holders`` maps a group to the processes holding
    /dev/vfio/N; ``vendor_holders`` maps a device to the processes holding its
    driver's shared nodes (/dev/nvidiactl, /dev/nvidia-modeset, /dev/nvidia-uvm,
    /dev/kfd), which warn rather than refuse.
    """

    devices: Mapping[PciAddress, PciDevice]
    iommu: IommuState
    vfio_available: bool
    fbcon_bound: bool = False
    holders: Mapping[PciAddress, tuple[Holder, ...]] = field(default_factory=dict)
    vfio_holders: Mapping[int, tuple[Holder, ...]] = field(default_factory=dict)
    vendor_holders: Mapping[PciAddress, tuple[Holder, ...]] = field(default_factory=dict)


@dataclass(frozen=True)
class Refusal:
    """One reason a group cannot be handed off, with the fix."""

    group: int | None
    reason: str
    fix: str


@dataclass(frozen=True)
class PlanWarning:
    """Something that may go wrong during the hand-off but does not stop it, with the fix."""

    group: int | None
    reason: str
    fix: str


@dataclass(frozen=True)
class GroupPlan:
    """One IOMMU group: the endpoints that move to vfio-pci and the bridges that stay."""

    group: int
    members: tuple[PciDevice, ...]
    moved: tuple[PciDevice, ...]
    staying: tuple[PciDevice, ...]
    requested: tuple[PciAddress, ...]

    @property
    def co_members(self) -> tuple[PciDevice, ...]:
        """Endpoints that move only because they share the group with a requested one."""
        return tuple(d for d in self.moved if d.address not in self.requested)


@dataclass(frozen=True)
class HandoffPlan:
    """The checked plan: which devices move, in which order."""

    groups: tuple[GroupPlan, ...]
    detach_order: tuple[PciDevice, ...]
    warnings: tuple[PlanWarning, ...] = ()

    @property
    def group_ids(self) -> tuple[int, ...]:
        return tuple(g.group for g in self.groups)

    def render(self) -> str:
        """The plan as the person reads it before anything changes."""
        lines: list[str] = []
        position = {d.address: i + 1 for i, d in enumerate(self.detach_order)}
        for group in self.groups:
            lines.append(f"IOMMU group {group.group}:")
            for member in group.members:
                if member in group.staying:
                    action = stay_reason(member)
                elif member.driver == VFIO_DRIVER:
                    action = f"already on vfio-pci (step {position[member.address]})"
                else:
                    was = member.driver or "no driver"
                    note = "" if member.address in group.requested else ", co-member of the group"
                    action = f"{was} -> vfio-pci (step {position[member.address]}{note})"
                lines.append(f"  {member.describe()}: {action}")
        lines.append(
            "Afterwards every device returns to the driver listed here, VGA function first."
        )
        for warning in self.warnings:
            lines.append(f"warning: {warning.reason}")
            lines.append(f"  fix: {warning.fix}")
        return "\n".join(lines)


def _members(device_list: Iterable[PciDevice]) -> str:
    return "; ".join(d.describe() for d in device_list)


def _detach_key(device: PciDevice) -> tuple[int, PciAddress]:
    """Non-VGA functions first, the VGA function last (its driver may hold the others)."""
    return (1 if device.is_display else 0, device.address)


def _refuse(refusals: Sequence[Refusal]) -> PreflightRefusedError:
    if len(refusals) == 1:
        only = refusals[0]
        return PreflightRefusedError(f"refusing the hand-off: {only.reason}", fix=only.fix)
    reasons = "\n".join(f"  - {r.reason}" for r in refusals)
    fixes = "\n       ".join(f"- {r.fix}" for r in refusals)
    return PreflightRefusedError(
        f"refusing the hand-off, nothing was changed:\n{reasons}", fix=fixes
    )


def _group_refusals(
    group: int,
    members: Sequence[PciDevice],
    moved: Sequence[PciDevice],
    requested: frozenset[PciAddress],
    allowed: frozenset[PciAddress],
    snapshot: HostSnapshot,
    *,
    handover: bool = False,
) -> list[Refusal]:
    """Every reason ``group`` cannot move ``moved`` to vfio-pci right now."""
    refusals: list[Refusal] = []
    label = f"IOMMU group {group} ({_members(members)})"
    for device in moved:
        need = host_need(device, snapshot.devices)
        if need and device.address not in requested and device.address not in allowed:
            refusals.append(
                Refusal(
                    group,
                    f"{label} holds {device.address.short} {device.class_name}, "
                    f"{need}; passing the group would take it from the host",
                    need_fix(device)
                    + f'only if the host can live without it: add allow_in_group = ["'
                    f'{device.address.short}"] to that [[passthrough]] entry; otherwise the '
                    "card needs another slot (its own IOMMU group, an ACS-capable port); "
                    + ACS_FIX,
                )
            )
    if not handover:
        for device in moved:
            if holds_boot_gpu(device):
                own_card = any(
                    a.slot_address == device.address.slot_address for a in requested
                )
                reason, fix = boot_gpu_reason(
                    group, device, own_card, fbcon_bound=snapshot.fbcon_bound
                )
                refusals.append(Refusal(group, reason, fix))
    for device in moved:
        if device.is_dead:
            header = "unreadable" if device.header_type is None else f"{device.header_type:#04x}"
            refusals.append(
                Refusal(
                    group,
                    f"{device.address.short} reads back header type {header} in config space: "
                    "it fell off the bus or sits in D3cold (libvirt: \"Unknown PCI header type "
                    "'127'\"); rebinding it would hang or fail",
                    "wake it (`echo on > /sys/bus/pci/devices/"
                    f"{device.address}/power/control`), or reboot the host if it stays dead",
                )
            )
    for device in moved:
        if not device.driver_override_supported:
            refusals.append(
                Refusal(
                    group,
                    f"{device.address.short} has no driver_override attribute (kernel before "
                    "3.16): handoff will not use new_id, which would grab every device with "
                    f"the ids {device.ids}, the host's twin card too",
                    "upgrade the kernel (driver_override exists since Linux 3.16)",
                )
            )
    for device in moved:
        holders = snapshot.holders.get(device.address, ())
        if holders:
            who = ", ".join(h.describe() for h in holders)
            pids = " ".join(str(h.pid) for h in holders)
            refusals.append(
                Refusal(
                    group,
                    f"{device.address.short} {device.class_name} is in use on the host: {who}",
                    _persistenced_fix(holders)
                    + f"close those programs (or stop them: `kill {pids}`), e.g. log out of the "
                    "desktop running on this GPU, then try again",
                )
            )
    vfio_users = snapshot.vfio_holders.get(group, ())
    if vfio_users:
        who = ", ".join(h.describe() for h in vfio_users)
        refusals.append(
            Refusal(
                group,
                f"IOMMU group {group} is already in use through /dev/vfio/{group}: {who}",
                "stop the VM that uses this group first (another QEMU or handoff session)",
            )
        )
    return refusals


# /proc/PID/comm keeps 15 characters: "nvidia-persistenced" reads back like this.
_PERSISTENCED_COMM = "nvidia-persistenced"[:15]
_PERSISTENCED_STOP = "stop nvidia-persistenced (`systemctl stop nvidia-persistenced`)"


def _has_persistenced(holders: Sequence[Holder]) -> bool:
    return any(h.command == _PERSISTENCED_COMM for h in holders)


def _persistenced_fix(holders: Sequence[Holder]) -> str:
    """The daemon's own stop command, first, when nvidia-persistenced is among ``holders``."""
    return _PERSISTENCED_STOP + "; " if _has_persistenced(holders) else ""


_STACK_TEXT: Mapping[ComputeStack, tuple[str, str]] = {
    ComputeStack.NVIDIA: (
        "NVIDIA's driver",
        "a CUDA program or nvidia-persistenced using this card makes its unbind block in the "
        "kernel (NVRM: \"non-zero usage count\"), which hangs the host",
    ),
    ComputeStack.ROCM: (
        "amdgpu (ROCm)",
        "a ROCm program using this card keeps amdgpu's compute side (/dev/kfd) busy while the "
        "card is unbound",
    ),
}


def compute_warning(device: PciDevice, snapshot: HostSnapshot) -> PlanWarning | None:
    """A warning when processes hold ``device``'s driver-wide compute nodes (pure).

    These nodes are shared by every card of the driver, so holding them does
    not prove this card is busy: a warning with the fix, not a refusal.
    """
    stack = compute_stack(device)
    holders = snapshot.vendor_holders.get(device.address, ())
    if stack is None or not holders:
        return None
    unique = tuple(dict.fromkeys(holders))
    driver, risk = _STACK_TEXT[stack]
    who = ", ".join(h.describe() for h in unique)
    persistenced = _has_persistenced(unique)
    steps = [_PERSISTENCED_STOP] if persistenced else []
    pids = " ".join(
        str(pid) for pid in dict.fromkeys(h.pid for h in unique if h.command != _PERSISTENCED_COMM)
    )
    if pids:
        kind = "CUDA" if stack is ComputeStack.NVIDIA else "ROCm"
        others = "the other programs" if persistenced else "the programs"
        steps.append(f"close {others}, {kind} jobs first (or stop them: `kill {pids}`),")
    fix = " and ".join(steps)
    return PlanWarning(
        device.iommu_group,
        f"{device.address.short} {device.class_name} runs on {driver}, whose shared nodes are "
        f"open: {who}; {risk}",
        f"{fix} before the hand-off",
    )


def plan_handoff(
    requested: Sequence[PciAddress],
    snapshot: HostSnapshot,
    *,
    allow_in_group: Iterable[PciAddress] = (),
    handover: bool = False,
) -> HandoffPlan:
    """Grow ``requested`` to whole groups and check every rule; refuse or return the plan.

    ``handover``: the profile's [host_display] handover = true, which takes the
    host's display off the boot GPU first (:mod:`handoff.display`); only it
    lifts the boot-GPU refusal.
    """
    wanted = frozenset(requested)
    allowed = frozenset(allow_in_group)
    refusals: list[Refusal] = []
    if not snapshot.iommu.enabled:
        raise _refuse(
            [
                Refusal(
                    None,
                    "the IOMMU is off: /sys/kernel/iommu_groups is empty, so no device can be "
                    "isolated for a guest",
                    "enable VT-d / AMD-Vi in the firmware setup; on Intel also boot with "
                    "intel_iommu=on (AMD-Vi is on by default), then check `handoff groups`",
                )
            ]
        )
    group_ids: list[int] = []
    for address in sorted(wanted):
        device = snapshot.devices.get(address)
        if device is None:
            refusals.append(
                Refusal(
                    None,
                    f"PCI device {address} does not exist on this host",
                    "list the devices with `handoff groups` and fix the [[passthrough]] address",
                )
            )
            continue
        if device.is_bridge:
            refusals.append(
                Refusal(
                    device.iommu_group,
                    f"{device.describe()} is a PCI bridge: bridges stay with the host "
                    "(vfio-pci does not take them)",
                    "pass the device behind the bridge instead (`handoff groups` lists it)",
                )
            )
            continue
        if device.iommu_group is None:
            refusals.append(
                Refusal(
                    None,
                    f"{device.describe()} has no iommu_group link: the IOMMU does not cover it",
                    "check the firmware's VT-d / AMD-Vi setting and, on Intel, boot with "
                    "intel_iommu=on",
                )
            )
            continue
        if device.iommu_group not in group_ids:
            group_ids.append(device.iommu_group)
    groups: list[GroupPlan] = []
    for group in sorted(group_ids):
        members = tuple(
            snapshot.devices[a]
            for a in snapshot.iommu.groups.get(group, ())
            if a in snapshot.devices
        )
        staying = tuple(d for d in members if stays(d, wanted))
        moved = tuple(d for d in members if not stays(d, wanted))
        refusals.extend(
            _group_refusals(group, members, moved, wanted, allowed, snapshot, handover=handover)
        )
        groups.append(
            GroupPlan(
                group=group,
                members=members,
                moved=moved,
                staying=staying,
                requested=tuple(sorted(a for a in wanted if a in {d.address for d in members})),
            )
        )
    refusals.extend(
        Refusal(group, reason, fix)
        for group, reason, fix in split_cards(wanted, group_ids, snapshot.devices)
    )
    if groups and not snapshot.vfio_available:
        refusals.append(
            Refusal(
                None,
                "the vfio-pci driver is neither loaded nor loadable (modprobe vfio-pci fails)",
                "install a kernel with CONFIG_VFIO_PCI (module vfio-pci), check that it is not "
                "blacklisted in /etc/modprobe.d, then `modprobe vfio-pci`",
            )
        )
    if refusals:
        raise _refuse(refusals)
    order = tuple(sorted((d for g in groups for d in g.moved), key=_detach_key))
    warnings = tuple(w for d in order if (w := compute_warning(d, snapshot)) is not None)
    return HandoffPlan(groups=tuple(groups), detach_order=order, warnings=warnings)


# --------------------------------------------------------------------------- handoff groups


class Passability(enum.Enum):
    """Whether `handoff groups` finds a group passable (its GroupVerdict's ``verdict``)."""

    PASSABLE = "passable"
    PASSABLE_WITH_CO_MEMBERS = "passable-with-co-members"
    REFUSED = "refused"
    BRIDGES_ONLY = "bridges-only"


@dataclass(frozen=True)
class GroupVerdict:
    """What `handoff groups` says about passing one group through."""

    group: int
    members: tuple[PciDevice, ...]
    verdict: Passability
    reason: str
    fix: str | None = None
    co_members: tuple[PciAddress, ...] = ()


def group_verdict(group: int, snapshot: HostSnapshot) -> GroupVerdict:
    """Judge a group as if its non-host-needed endpoints were requested, together with
    the rest of their cards in other groups (a GPU's audio the IOMMU put apart)."""
    members = tuple(
        snapshot.devices[a] for a in snapshot.iommu.groups.get(group, ()) if a in snapshot.devices
    )
    endpoints = [d for d in members if not d.is_bridge]
    if not endpoints:
        return GroupVerdict(
            group, members, Passability.BRIDGES_ONLY, "only PCI bridges, which stay with the host"
        )
    movable = [d for d in endpoints if not stays(d)]
    candidates = [d for d in movable if host_need(d, snapshot.devices) is None]
    if not candidates:
        needs = "; ".join(f"{d.address.short} is {class_need(d)}" for d in endpoints)
        return GroupVerdict(
            group,
            members,
            Passability.REFUSED,
            f"every device in it is one the host needs: {needs}",
            "".join(dict.fromkeys(need_fix(d) for d in endpoints))
            + "list such a device in [[passthrough]] only if the host can really do without it",
        )
    boot_slots = {d.address.slot_address for d in candidates if holds_boot_gpu(d)}
    other_cards = [d for d in candidates if d.address.slot_address not in boot_slots]
    if boot_slots and other_cards:
        # Two cards in one group, one the host's boot GPU: judge the other card, so the
        # refusal names the boot GPU as what the group would take from the host.
        candidates = other_cards
    elsewhere = card_elsewhere(candidates, group, snapshot.devices)
    try:
        plan_handoff([d.address for d in candidates + elsewhere], snapshot)
    except PreflightRefusedError as refused:
        return GroupVerdict(group, members, Passability.REFUSED, refused.message, refused.fix)
    if len(movable) == 1 and not elsewhere:
        return GroupVerdict(group, members, Passability.PASSABLE, "passable on its own")
    first = sorted(movable, key=lambda d: (0 if d.is_display else 1, d.address))[0]
    others = tuple(d.address for d in movable + elsewhere if d is not first)
    text = "passable together with " + ", ".join(
        f"{a.short}" for a in others if a not in {d.address for d in elsewhere}
    )
    if elsewhere:
        apart = ", ".join(f"{d.address.short} (IOMMU group {d.iommu_group})" for d in elsewhere)
        joined = " and " if len(movable) > 1 else ""
        text = (text if len(movable) > 1 else "passable") + (
            f"{joined} together with the rest of its card in another group: {apart}"
        )
    return GroupVerdict(
        group,
        members,
        Passability.PASSABLE_WITH_CO_MEMBERS,
        text + " (the whole group moves to vfio-pci)",
        co_members=others,
    )


def group_verdicts(snapshot: HostSnapshot) -> tuple[GroupVerdict, ...]:
    return tuple(group_verdict(g, snapshot) for g in sorted(snapshot.iommu.groups))
