"""A profile's passthrough devices, judged by the GPU engine's own rules.

Doctor does not keep a second copy of the hand-off rules: it reads the same
:class:`handoff.pci.plan.HostSnapshot` preflight reads and asks
:func:`handoff.pci.plan.group_verdict` and :func:`handoff.pci.plan.plan_handoff`
what they would decide. So ``handoff doctor profile.toml`` fails exactly when
``handoff run profile.toml`` would refuse, with the same reason and fix, but
without changing anything.
"""

from __future__ import annotations

import dataclasses

from handoff.base.errors import PciError, PreflightRefusedError
from handoff.checks import Check, DoctorEnv, Verdict, fail, ok, warn
from handoff.checks.kernel import ModuleState, module_state
from handoff.pci.address import PciAddress
from handoff.pci.model import VFIO_DRIVER
from handoff.pci.plan import (
    GroupVerdict,
    HostSnapshot,
    Passability,
    compute_warning,
    group_verdict,
    plan_handoff,
)
from handoff.pci.rules import host_need
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import groups_of
from handoff.profile import Profile


def profile_snapshot(env: DoctorEnv, profile: Profile) -> HostSnapshot:
    """Preflight's own snapshot (:func:`handoff.pci.snapshot.take_snapshot`), holders
    scanned for the groups of the profile's devices only; vfio-pci's availability
    from the modules of the tree doctor looks at."""
    addresses = [entry.address for entry in profile.passthrough]
    groups = groups_of(env.host, addresses)
    return take_snapshot(
        env.host, lambda module: _module_available(env, module), groups=groups,
        addresses=addresses,
    )


def _module_available(env: DoctorEnv, module: str) -> bool:
    """Whether the tree doctor looks at has ``module`` (its modules.dep); loads nothing."""
    return module_state(env, module) is not ModuleState.MISSING


def check_passthrough_devices(env: DoctorEnv, profile: Profile) -> list[Check]:
    """One line per [[passthrough]] entry, then the whole plan as ``handoff run`` would make it."""
    if not profile.passthrough:
        return []
    try:
        snapshot = profile_snapshot(env, profile)
    except PciError as err:
        return [fail("passthrough", err.message, err.fix or "check /sys/bus/pci")]
    handover = profile.host_display.handover
    if handover:
        # The display hand-over stops the units holding the card and unbinds fbcon first
        # (the host-display checks list them): judge the card as the GPU resource will.
        snapshot = dataclasses.replace(snapshot, holders={}, fbcon_bound=False)
    allowed = [a for entry in profile.passthrough for a in entry.allow_in_group]
    plan_check: Check
    try:
        plan = plan_handoff(
            [entry.address for entry in profile.passthrough], snapshot, allow_in_group=allowed,
            handover=handover,
        )
    except PreflightRefusedError as refused:
        plan_check = fail(
            "passthrough-plan", refused.message, refused.fix or "see `handoff groups`"
        )
    else:
        moved = ", ".join(d.address.short for d in plan.detach_order)
        plan_check = ok("passthrough-plan", f"handoff run would move {moved} to vfio-pci and back")
    planned = plan_check.verdict is Verdict.OK
    checks = [
        _device_check(snapshot, entry.address, planned, handover=handover)
        for entry in profile.passthrough
    ]
    return [*checks, plan_check]


def _group_text(group: int, address: PciAddress, verdict: GroupVerdict) -> str:
    """The group's verdict from this device's point of view (its co-members, not itself)."""
    if verdict.verdict is Passability.PASSABLE_WITH_CO_MEMBERS:
        others = [
            m.address.short for m in verdict.members if m.address != address and not m.is_bridge
        ]
        return (
            f"IOMMU group {group} also holds {', '.join(others)} (the whole group moves "
            "to vfio-pci)"
        )
    return f"IOMMU group {group}: {verdict.reason}"


def _device_check(
    snapshot: HostSnapshot, address: PciAddress, planned: bool, *, handover: bool = False
) -> Check:
    """One passthrough function: found, its group's verdict, driver, holders, boot_vga,
    and the planner's warning about its compute driver's shared nodes.

    The group verdict judges the group without the profile's
    ``allow_in_group``; when the profile's own plan passes (the person
    accepted those co-members), the group's refusal is shown but not failed.
    """
    name = f"device:{address}"
    device = snapshot.devices.get(address)
    if device is None:
        return fail(
            name,
            f"PCI device {address} does not exist on this host",
            "list the devices with `handoff groups` (or lspci -nn) and fix the [[passthrough]] "
            "address",
        )
    if device.iommu_group is None:
        return fail(
            name,
            f"{device.describe()} is in no IOMMU group",
            "turn the IOMMU on (see the iommu check)",
        )
    verdict = group_verdict(device.iommu_group, snapshot)
    parts = [device.describe(), _group_text(device.iommu_group, address, verdict)]
    holders = snapshot.holders.get(address, ())
    if holders:
        parts.append("held by " + ", ".join(h.describe() for h in holders))
    if device.boot_vga:
        bound = " with a framebuffer console bound" if snapshot.fbcon_bound else ""
        parts.append("boot_vga=1" + bound)
    if device.driver == VFIO_DRIVER:
        parts.append("already on vfio-pci")
    detail = "; ".join(parts)
    if verdict.verdict is Passability.REFUSED and not planned:
        return fail(name, detail, verdict.fix or "see `handoff groups`")
    if verdict.verdict is Passability.REFUSED:
        detail += (
            " (the profile asks for it by address: the host goes without it while the VM runs)"
            if host_need(device, snapshot.devices) is not None
            else " (accepted by the profile's allow_in_group)"
        )
    fixes: list[str] = []
    caution = compute_warning(device, snapshot)
    if caution is not None:
        detail += "; " + caution.reason
        fixes.append(caution.fix)
    if device.boot_vga and not handover:
        fixes.append(
            "make the other GPU the primary display in the firmware setup, so the host keeps "
            "its console while the guest has this one"
        )
    if fixes:
        return warn(name, detail, "; ".join(fixes))
    return ok(name, detail)
