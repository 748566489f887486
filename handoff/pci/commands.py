"""`handoff groups`, `detach`, `attach`: the GPU engine by hand.

One ``run_<name>`` function per command, taking the host roots and the
:class:`SysfsWriter` explicitly and writing its lines to ``out``, so the
tests drive the very same code against the fake sysfs tree. The argparse
side (options, the real writer, stdout) is :mod:`handoff.cli.gpu`; nothing
here parses arguments or prints.

`detach` and `attach` are journaled exactly like a session (kind
``manual``): a crash halfway is finished by `handoff recover`, and
`handoff run` refuses a group still recorded as detached by hand.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any

from handoff import journal as jr
from handoff.base.errors import PciError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.model import PciDevice
from handoff.pci.ops import SysfsWriter
from handoff.pci.plan import GroupVerdict, group_verdicts
from handoff.pci.reset_report import render_resets, reset_report, resets_json
from handoff.pci.resource import prepare, qemu_owner
from handoff.pci.snapshot import take_snapshot

Out = Callable[[str], None]


# --------------------------------------------------------------------------- groups


def device_json(device: PciDevice) -> dict[str, Any]:
    return {
        "address": str(device.address),
        "class": f"{device.class_code:06x}",
        "class_name": device.class_name,
        "vendor": f"{device.vendor:04x}",
        "device": f"{device.device:04x}",
        "ids": device.ids,
        "driver": device.driver,
        "driver_override": device.driver_override,
        "boot_vga": device.boot_vga,
        "bridge": device.is_bridge,
        "header_type": device.header_type,
    }


def verdict_json(verdict: GroupVerdict) -> dict[str, Any]:
    return {
        "group": verdict.group,
        "verdict": verdict.verdict.value,
        "reason": verdict.reason,
        "fix": verdict.fix,
        "co_members": [str(a) for a in verdict.co_members],
        "devices": [device_json(d) for d in verdict.members],
    }


def render_groups(verdicts: Sequence[GroupVerdict]) -> str:
    lines: list[str] = []
    # 10 columns fit 0000's short form; a VMD domain's 10000:e1:00.0 widens the column.
    width = max([10, *(len(d.address.short) + 1 for v in verdicts for d in v.members)])
    for verdict in verdicts:
        lines.append(f"IOMMU group {verdict.group}: {verdict.verdict.value}: {verdict.reason}")
        for device in verdict.members:
            lines.append(
                f"  {device.address.short:<{width}} {device.class_name:<28} [{device.ids}]  "
                f"{device.driver or '-'}"
            )
        if verdict.fix:
            lines.append(f"  fix: {verdict.fix}")
    return "\n".join(lines)


def run_groups(paths: HostPaths, writer: SysfsWriter, *, as_json: bool, out: Out) -> int:
    snapshot = take_snapshot(paths, writer.module_loadable)
    if not snapshot.iommu.enabled:
        if as_json:
            out(json.dumps({"iommu": False, "groups": []}, indent=2))
        else:
            out(
                "no IOMMU groups: the IOMMU is off. Enable VT-d / AMD-Vi in the firmware and, "
                "on Intel, boot with intel_iommu=on (AMD-Vi is on by default)."
            )
        return 1
    verdicts = group_verdicts(snapshot)
    resets = reset_report(paths, writer.module_loadable, verdicts)
    if as_json:
        out(json.dumps({"iommu": True, "groups": [verdict_json(v) for v in verdicts],
                        "reset": resets_json(resets)}, indent=2))
    else:
        out(render_groups(verdicts))
        out(render_resets(resets))
    return 0


# --------------------------------------------------------------------------- detach


async def run_detach(
    paths: HostPaths,
    writer: SysfsWriter,
    addresses: Sequence[PciAddress],
    *,
    allow_in_group: Sequence[PciAddress] = (),
    user: str | None = None,
    dry_run: bool = False,
    out: Out,
) -> int:
    """Move ``addresses`` (grown to their groups) to vfio-pci and leave them there."""
    owner = qemu_owner(user)
    prepared = await prepare(
        paths, writer, addresses, allow_in_group=allow_in_group, owner="handoff detach"
    )
    try:
        out("plan:\n" + prepared.plan.render())
        if dry_run:
            out("dry run: nothing changed")
            return 0
        name = "manual-" + "-".join(str(g) for g in prepared.plan.group_ids)
        journal = jr.Journal.begin(paths, name, jr.Kind.MANUAL, "handoff detach")
        await Engine(paths, writer).detach(prepared.plan, journal, vfio_owner=owner)
    finally:
        prepared.locks.release()
    moved = " ".join(d.address.short for d in prepared.plan.detach_order)
    out(f"on vfio-pci: {moved} (journal {journal.path}); `handoff attach {moved}` returns them")
    return 0


# --------------------------------------------------------------------------- attach


async def run_attach(
    paths: HostPaths, writer: SysfsWriter, addresses: Sequence[PciAddress], *, out: Out
) -> int:
    """Return what `handoff detach` moved: the whole journal holding each address."""
    journals: dict[str, jr.Journal] = {}
    for address in addresses:
        journal = jr.find_journal_for(paths, str(address))
        if journal is None:
            raise PciError(
                f"{address.short} is not recorded as handed off by handoff (no journal in "
                f"{jr.journal_dir(paths)})",
                fix=f"if it sits on vfio-pci from elsewhere, return it by hand: echo {address} "
                f"> /sys/bus/pci/drivers/vfio-pci/unbind; echo > /sys/bus/pci/devices/"
                f"{address}/driver_override; echo {address} > /sys/bus/pci/drivers_probe",
            )
        if journal.kind == jr.Kind.SESSION:
            raise PciError(
                f"{address.short} belongs to the session {journal.owner!r}",
                fix="stop that session (it returns its devices), or `handoff recover` if it "
                "crashed",
            )
        journals[str(journal.path)] = journal
    engine = Engine(paths, writer)
    for journal in journals.values():
        with jr.held_groups(paths, journal.groups, "handoff attach"):
            for line in await engine.give_back(journal):
                out(line)
    return 0
