"""`handoff groups`, `detach`, `attach`, `recover`: the GPU engine by hand.

Each command is an ``add_<name>_arguments(parser)`` / ``cmd_<name>(args)``
pair that :mod:`handoff.cli` imports lazily, over a ``run_<name>`` function
that takes the host roots and the :class:`SysfsWriter` explicitly, so the
tests drive the very same code against the fake sysfs tree.

`detach` and `attach` are journaled exactly like a session (kind
``manual``): a crash halfway is finished by `handoff recover`, and
`handoff run` refuses a group still recorded as detached by hand.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

import trio

from handoff.errors import PciError
from handoff.host import HostPaths
from handoff.pci import journal as jr
from handoff.pci.address import PciAddress
from handoff.pci.bind import Engine, KernelWriter, SysfsWriter, recover
from handoff.pci.plan import GroupVerdict, group_verdicts
from handoff.pci.resource import prepare, qemu_owner
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import PciDevice, read_boot_id

Out = Callable[[str], None]


def _out(stream: TextIO) -> Out:
    def write(line: str) -> None:
        print(line, file=stream, flush=True)

    return write


def _addresses(texts: Sequence[str]) -> list[PciAddress]:
    return [PciAddress.parse(text) for text in texts]


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
    for verdict in verdicts:
        lines.append(f"IOMMU group {verdict.group}: {verdict.verdict.value}: {verdict.reason}")
        for device in verdict.members:
            lines.append(
                f"  {device.address.short:<10} {device.class_name:<28} [{device.ids}]  "
                f"{device.driver or '-'}"
            )
        if verdict.fix:
            lines.append(f"  fix: {verdict.fix}")
    return "\n".join(lines)


def run_groups(paths: HostPaths, writer: SysfsWriter, *, as_json: bool, out: Out) -> int:
    snapshot = take_snapshot(paths, writer)
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
    if as_json:
        out(json.dumps({"iommu": True, "groups": [verdict_json(v) for v in verdicts]}, indent=2))
    else:
        out(render_groups(verdicts))
    return 0


def add_groups_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", action="store_true", help="print JSON for scripts")


def cmd_groups(args: argparse.Namespace) -> int:
    return run_groups(
        HostPaths.from_environment(), KernelWriter(), as_json=args.json, out=_out(sys.stdout)
    )


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
        journal = jr.Journal(
            path=jr.journal_path(paths, name),
            kind=jr.KIND_MANUAL,
            owner="handoff detach",
            boot_id=read_boot_id(paths),
            supervisor_pid=os.getpid(),
        )
        await Engine(paths, writer).detach(prepared.plan, journal, vfio_owner=owner)
    finally:
        prepared.locks.release()
    moved = " ".join(d.address.short for d in prepared.plan.detach_order)
    out(f"on vfio-pci: {moved} (journal {journal.path}); `handoff attach {moved}` returns them")
    return 0


def add_detach_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="PCI address (01:00.0 or 0000:01:00.0); its group moves with it")
    parser.add_argument("--allow-in-group", action="append", default=[], metavar="ADDRESS",
                        help="accept losing this host-needed co-member (storage, NIC, ...)")
    parser.add_argument("--user", default=None,
                        help="chown /dev/vfio/N to this user (the QEMU user)")
    parser.add_argument("--dry-run", action="store_true", help="print the plan, change nothing")


def cmd_detach(args: argparse.Namespace) -> int:
    return trio.run(
        lambda: run_detach(
            HostPaths.from_environment(),
            KernelWriter(),
            _addresses(args.addresses),
            allow_in_group=_addresses(args.allow_in_group),
            user=args.user,
            dry_run=args.dry_run,
            out=_out(sys.stdout),
        )
    )


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
        if journal.kind == jr.KIND_SESSION:
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


def add_attach_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("addresses", nargs="+", metavar="ADDRESS",
                        help="a device moved by `handoff detach` (its whole group returns)")


def cmd_attach(args: argparse.Namespace) -> int:
    return trio.run(
        lambda: run_attach(
            HostPaths.from_environment(), KernelWriter(), _addresses(args.addresses),
            out=_out(sys.stdout),
        )
    )


# --------------------------------------------------------------------------- recover


async def run_recover(paths: HostPaths, writer: SysfsWriter, *, out: Out) -> int:
    report = await recover(Engine(paths, writer))
    for line in report.lines():
        out(line)
    return 0 if report.ok else 1


def add_recover_arguments(parser: argparse.ArgumentParser) -> None:
    del parser  # no options: it reads every journal


def cmd_recover(args: argparse.Namespace) -> int:
    del args
    return trio.run(
        lambda: run_recover(HostPaths.from_environment(), KernelWriter(), out=_out(sys.stdout))
    )


__all__ = [
    "add_attach_arguments",
    "add_detach_arguments",
    "add_groups_arguments",
    "add_recover_arguments",
    "cmd_attach",
    "cmd_detach",
    "cmd_groups",
    "cmd_recover",
    "run_attach",
    "run_detach",
    "run_groups",
    "run_recover",
]
