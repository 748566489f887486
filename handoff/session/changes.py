"""The host changes a session plan lists, and the GPU and display parts it decides. Pure.

:class:`HostChange` is one line of ``handoff run --dry-run`` / ``handoff argv``:
its kind, what it touches, how. The hand-off of the passthrough groups
(:func:`plan_gpu`, from the groups read once in ``HostFacts.gpu``) and the
host display hand-over (:func:`plan_display`, from ``HostFacts.display``)
are decided here as typed values the plan carries and the resources execute;
their lines (:func:`gpu_changes`, :func:`display_changes`) are printed from
the same values.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from handoff.pci.address import PciAddress
from handoff.profile import Profile

if TYPE_CHECKING:
    from handoff.base.errors import HandoffError
    from handoff.display.model import Takeover
    from handoff.pci.plan import HandoffPlan
    from handoff.session.plan import HostFacts, QemuOwner

__all__ = [
    "ChangeKind",
    "HostChange",
    "ProxyPlan",
    "display_changes",
    "gpu_changes",
    "owner_text",
    "plan_display",
    "plan_gpu",
    "plan_proxies",
]


class ChangeKind(enum.Enum):
    """The kinds of host change a session makes (and undoes), in the order it makes them."""

    CREATE_RUN_DIR = "create-run-dir"
    STOP_UNIT = "stop-unit"
    UNBIND_CONSOLE = "unbind-console"
    UNBIND_FRAMEBUFFER = "unbind-framebuffer"
    DEVICE_TO_VFIO = "device-to-vfio"
    CHOWN_NODE = "chown-node"
    CREATE_SHM = "create-shm"
    START_VIRTIOFSD = "start-virtiofsd"
    CREATE_PROXY = "create-proxy"
    LINK_PROXY = "link-proxy"
    RAISE_HUGEPAGES = "raise-hugepages"
    SET_GOVERNOR = "set-governor"
    RAISE_MEMLOCK = "raise-memlock"
    QEMU_SCOPE = "qemu-scope"
    ISOLATE_HOST = "isolate-host"
    PIN_VCPUS = "pin-vcpus"
    SET_EMULATOR_AFFINITY = "set-emulator-affinity"
    GRAB_INPUT = "grab-input"
    CREATE_TPM_STATE = "create-tpm-state"
    START_SWTPM = "start-swtpm"


@dataclass(frozen=True)
class HostChange:
    """One planned change: its kind, what it touches, and how."""

    kind: ChangeKind
    target: str
    detail: str

    def describe(self) -> str:
        return f"{self.kind.value}: {self.target}: {self.detail}"



@dataclass(frozen=True)
class ProxyPlan:
    """The virtio input proxies as the plan decides them: the links QEMU opens (keyboard,
    mouse) and the uid their event nodes go to (None: left to udev, QEMU runs as the
    supervisor's own user)."""

    links: tuple[Path, Path]
    owner_uid: int | None


def plan_proxies(facts: HostFacts, links: tuple[Path, Path] | None) -> ProxyPlan | None:
    """The proxies of a virtio input profile (``links``: the plan's paths; None: not virtio)."""
    if links is None:
        return None
    owner = facts.qemu_owner
    give = owner is not None and owner.uid != facts.supervisor_uid
    return ProxyPlan(links, owner.uid if give and owner is not None else None)


def owner_text(owner: QemuOwner) -> str:
    return f"owner {owner.uid}:{owner.gid} ({owner.user}) while QEMU runs, then back"


def plan_display(
    profile: Profile, facts: HostFacts, gpu: HandoffPlan | None
) -> tuple[Takeover | None, HandoffError | None]:
    """The host display hand-over from the facts' read and the plan's hand-off."""
    if not profile.host_display.handover or gpu is None or facts.display is None:
        return None, None
    from handoff.display.plan import try_plan_takeover

    named = {p.address for p in profile.passthrough if not p.live}
    requested = [d for d in gpu.detach_order if d.address in named]
    return try_plan_takeover(requested, profile.host_display.stop_units, facts.display)


def display_changes(takeover: Takeover | None) -> list[HostChange]:
    """Before the GPU leaves: the units stopped, fbcon's consoles and the firmware
    framebuffer unbound; all back after the VM, once the card is back."""
    if takeover is None:
        return []
    changes = [
        HostChange(ChangeKind.STOP_UNIT, unit,
                   "stopped if it runs then; started again once the card is back")
        for unit in takeover.units
    ]
    changes += [
        HostChange(ChangeKind.UNBIND_CONSOLE, f"{c.node} ({c.name})",
                   "framebuffer console unbound; bound again after")
        for c in takeover.consoles
    ]
    fb = takeover.framebuffer
    if fb is not None:
        changes.append(HostChange(ChangeKind.UNBIND_FRAMEBUFFER, fb.device,
                                  f"unbound from {fb.driver} on {takeover.card}; bound again "
                                  "after (unless the card's driver replaced it)"))
    return changes


def plan_gpu(
    profile: Profile, facts: HostFacts, *, live: bool = False
) -> tuple[HandoffPlan | None, HandoffError | None]:
    """The hand-off of the passthrough groups (``live``: the live = true ones) from the
    facts' read, or its refusal."""
    entries = [p for p in profile.passthrough if p.live is live]
    snapshot = facts.live_gpu if live else facts.gpu
    if snapshot is None or not entries:
        return None, None
    from handoff.base.errors import HandoffError
    from handoff.pci.plan import plan_handoff

    try:
        return plan_handoff(
            [p.address for p in entries], snapshot,
            allow_in_group=[a for p in entries for a in p.allow_in_group],
            handover=profile.host_display.handover and not live,
        ), None
    except HandoffError as refusal:
        return None, refusal


def gpu_changes(
    profile: Profile, facts: HostFacts, dev: Path, handoff: HandoffPlan | None,
    live: HandoffPlan | None = None,
) -> list[HostChange]:
    """Each device the hand-offs move (the boot-time one, then the live one), from its
    driver and back, in the order they move them; /dev/vfio/N to vm.user. Without a
    hand-off plan, each entry as the profile names it."""
    changes: list[HostChange] = []
    groups: list[int | None] = []
    planned: set[PciAddress] = set()
    for plan, when in ((handoff, "afterwards"), (live, "on `handoff gpu` and afterwards")):
        if plan is None:
            continue
        requested = {a for g in plan.groups for a in g.requested}
        for moving in plan.detach_order:
            was = moving.driver or "no driver"
            also = "" if moving.address in requested else ", a co-member of the group"
            changes.append(HostChange(
                ChangeKind.DEVICE_TO_VFIO, str(moving.address),
                f"{was} -> vfio-pci (IOMMU group {moving.iommu_group}{also}); back to "
                f"{was} {when}",
            ))
            planned.add(moving.address)
        groups += [g for g in plan.group_ids if g not in groups]
    for device in profile.passthrough:
        if device.address in planned:
            continue
        group = facts.group_of(device.address)
        where = f"IOMMU group {group}" if group is not None else "its IOMMU group"
        changes.append(
            HostChange(
                ChangeKind.DEVICE_TO_VFIO, str(device.address),
                f"to vfio-pci with {where}; back to its driver afterwards",
            )
        )
        if group not in groups:
            groups.append(group)
    owner = facts.qemu_owner
    if owner is not None:
        for group in groups:
            node = str(dev / "vfio" / str(group)) if group is not None else f"{dev}/vfio/<group>"
            changes.append(HostChange(ChangeKind.CHOWN_NODE, node, owner_text(owner)))
    return changes
