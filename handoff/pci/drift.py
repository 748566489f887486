"""Did the host change between the session's plan and the GPU hand-off? Pure.

The session plan decides the hand-off from one read of the host
(:class:`handoff.pci.plan.HandoffPlan`: the groups, their members, each
device's driver as it was); the GPU resource executes exactly that plan. At
acquire it reads the groups again under their locks, for safety only: where
that read differs from the plan's in what the hand-off acts on (a group's
members, a moving device's driver, override or ids), it refuses with the
differences named instead of deciding anew.
"""

from __future__ import annotations

from handoff.pci.model import PciDevice
from handoff.pci.plan import HandoffPlan

__all__ = ["plan_drift"]


def _driver(device: PciDevice) -> str:
    return device.driver or "no driver"


def _differences(planned: PciDevice, now: PciDevice) -> list[str]:
    name = planned.address.short
    out = []
    if planned.driver != now.driver:
        out.append(f"{name} was on {_driver(planned)} when the session was planned, "
                   f"is on {_driver(now)} now")
    if planned.driver_override != now.driver_override:
        out.append(f"{name}'s driver_override was {planned.driver_override or '(null)'}, "
                   f"is {now.driver_override or '(null)'} now")
    if planned.ids != now.ids:
        out.append(f"{name} was {planned.ids}, is {now.ids} now")
    return out


def plan_drift(planned: HandoffPlan, now: HandoffPlan) -> list[str]:
    """What differs between the plan's hand-off and the same hand-off planned now
    (empty: the host is as the plan read it, in everything the hand-off acts on)."""
    out: list[str] = []
    if planned.group_ids != now.group_ids:
        out.append(f"the IOMMU groups were {list(planned.group_ids)}, are "
                   f"{list(now.group_ids)} now")
        return out
    for was, group in zip(planned.groups, now.groups, strict=True):
        before = [d.address.short for d in was.members]
        after = [d.address.short for d in group.members]
        if before != after:
            out.append(f"IOMMU group {group.group} held {', '.join(before)}, holds "
                       f"{', '.join(after)} now")
    if out:
        return out
    current = {d.address: d for d in now.detach_order}
    for device in planned.detach_order:
        again = current.get(device.address)
        if again is None:
            out.append(f"{device.address.short} no longer moves to vfio-pci")
            continue
        out += _differences(device, again)
    out += [f"{d.address.short} moves to vfio-pci now, which the plan did not say"
            for d in now.detach_order
            if d.address not in {p.address for p in planned.detach_order}]
    return out
