"""The GPU hand-off as a session resource (see :mod:`handoff.session.resources`).

acquire
    memlock check, recovery of journals left by dead supervisors, read-only
    preflight (all or nothing: a refusal changes nothing), the group locks,
    the plan printed, then the journaled detach (rolled back on failure).
memlock_bytes
    what QEMU must be able to lock (guest RAM + 1 GiB), checked at acquire.
note_qemu_pid
    into the journal, with the process start time, so recovery can tell
    whether that QEMU still holds the devices.
release
    after QEMU has exited: every device back on its original driver,
    verified; the journal removed; the locks dropped. Idempotent.

QEMU's ``-device vfio-pci`` arguments are in the session plan
(:mod:`handoff.session.plan`), one per [[passthrough]] entry; co-members the
hand-off plan adds (the rest of the group) only need to be on vfio-pci for
the group to be viable, QEMU does not open them.

:func:`prepare` and :func:`qemu_owner` are shared with the manual
``handoff detach`` (:mod:`handoff.pci.commands`).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import trio

from handoff import journal as jr
from handoff.base.errors import HandoffError, PreflightRefusedError
from handoff.base.host import HostPaths, qemu_account
from handoff.pci.address import PciAddress
from handoff.pci.drift import plan_drift
from handoff.pci.engine import WRITE_TIMEOUT, Engine
from handoff.pci.ops import KernelWriter, SysfsWriter
from handoff.pci.plan import HandoffPlan, HostSnapshot, plan_handoff
from handoff.pci.recovery import recover
from handoff.pci.reset_sysfs import preflight_resets
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import groups_of, read_device
from handoff.profile import Profile
from handoff.session.memlock import check_memlock
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

log = logging.getLogger("handoff.pci")

Report = Callable[[str], None]


def _log_report(line: str) -> None:
    log.info("%s", line)


@dataclass
class Prepared:
    """A checked plan whose groups this process has locked."""

    plan: HandoffPlan
    locks: jr.Locks


# udev opens a DRM or sound node for a moment after the device appears or
# binds (rules that probe it, set ACLs, tag seats): not a user of the GPU.
TRANSIENT_HOLDERS = frozenset({"(udev-worker)", "systemd-udevd", "udevd"})
# Seconds preflight waits for such transient holders to let go.
TRANSIENT_WAIT = 5.0


async def settled_snapshot(
    paths: HostPaths,
    writer: SysfsWriter,
    *,
    groups: Iterable[int],
    addresses: Sequence[PciAddress],
) -> HostSnapshot:
    """A snapshot in which no udev worker holds a node, unless one does for 5 s.

    Only udev's own short-lived opens are waited out (bounded, polled); any
    other holder is reported at once by the plan.
    """
    wanted = tuple(groups)
    snapshot = take_snapshot(paths, writer.module_loadable, groups=wanted, addresses=addresses)
    with trio.move_on_after(TRANSIENT_WAIT):
        while any(
            holder.command in TRANSIENT_HOLDERS
            for holders in snapshot.holders.values()
            for holder in holders
        ):
            await trio.sleep(0.05)  # no event tells when udev closes a node: bounded poll
            snapshot = take_snapshot(
                paths, writer.module_loadable, groups=wanted, addresses=addresses
            )
    return snapshot


async def prepare(
    paths: HostPaths,
    writer: SysfsWriter,
    addresses: Sequence[PciAddress],
    *,
    allow_in_group: Iterable[PciAddress] = (),
    owner: str,
    handover: bool = False,
    planned: HandoffPlan | None = None,
) -> Prepared:
    """Preflight (read-only), then lock the groups and check again under the lock.

    ``planned``: the hand-off the session plan decided from its own read of
    the host; it is what is prepared, and the read under the locks only
    checks it (a holder of a node, or a difference in what the hand-off acts
    on, refuses: :func:`handoff.pci.drift.plan_drift`). Without it the
    groups are read and planned here (`handoff detach`, tools).

    Raises PreflightRefusedError before any device is touched. Also refuses a
    group another journal still records (a manual `handoff detach` not yet
    attached, or a session whose recovery was refused).
    """
    allowed = tuple(allow_in_group)
    plan = planned
    if plan is None:
        groups = groups_of(paths, addresses)
        first = await settled_snapshot(paths, writer, groups=groups, addresses=addresses)
        plan = plan_handoff(addresses, first, allow_in_group=allowed, handover=handover)
    locks = jr.lock_groups(paths, plan.group_ids, owner)
    try:
        # Again under the locks: nothing may have changed between check and lock.
        snapshot = await settled_snapshot(
            paths, writer, groups=plan.group_ids, addresses=addresses
        )
        now = plan_handoff(addresses, snapshot, allow_in_group=allowed, handover=handover)
        if planned is None:
            plan = now
        else:
            _refuse_drift(planned, now)
            if now.warnings != planned.warnings:  # read with the holders: their warnings
                plan = dataclasses.replace(planned, warnings=now.warnings)
        _refuse_recorded_groups(paths, plan.group_ids)
    except BaseException:
        locks.release()
        raise
    return Prepared(plan, locks)


def _refuse_drift(planned: HandoffPlan, now: HandoffPlan) -> None:
    drift = plan_drift(planned, now)
    if drift:
        raise PreflightRefusedError(
            "refusing the hand-off: the host changed after the session was planned: "
            + "; ".join(drift),
            fix="run the session again: it plans from the host as it is then "
            "(`handoff run --dry-run` shows that plan); nothing was changed",
        )


def _refuse_recorded_groups(paths: HostPaths, groups: Sequence[int]) -> None:
    for path in jr.list_journals(paths):
        other = jr.Journal.load(path)
        shared = set(other.groups) & set(groups)
        if shared:
            attach = " ".join(PciAddress.parse(d.address).short for d in other.devices)
            raise PreflightRefusedError(
                f"refusing the hand-off: IOMMU group {min(shared)} is still recorded as "
                f"handed off in {path} ({other.kind}, {other.owner})",
                fix=f"return it first: `handoff attach {attach}` (or `handoff recover`)",
            )


def qemu_owner(user: str | None) -> tuple[int, int] | None:
    """uid/gid for /dev/vfio/N when QEMU runs as ``user`` (None: QEMU runs as root)."""
    if user is None:
        return None
    entry = qemu_account(user)
    return entry.pw_uid, entry.pw_gid


class GpuHandoff:
    """Session resource: the profile's passthrough groups on vfio-pci while QEMU runs."""

    def __init__(
        self,
        profile: Profile,
        paths: HostPaths,
        *,
        writer: SysfsWriter | None = None,
        write_timeout: float = WRITE_TIMEOUT,
        report: Report = _log_report,
        memlock_check: Callable[[Profile, HostPaths], int | None] = check_memlock,
        planned: HandoffPlan | None = None,
        refusal: HandoffError | None = None,
    ) -> None:
        self.profile = profile
        # What the session plan decided from its read of the host (None, None: the
        # resource reads and plans at acquire itself).
        self.planned = planned
        self.refusal = refusal
        self.paths = paths
        self.engine = Engine(paths, writer or KernelWriter(), write_timeout=write_timeout)
        self.report = report
        self._memlock_check = memlock_check
        self.memlock_bytes: int | None = None
        self.plan: HandoffPlan | None = None
        self._locks: jr.Locks | None = None
        self._journal: jr.Journal | None = None
        self._returned: list[str] = []

    @property
    def name(self) -> str:
        return "gpu"

    async def acquire(self) -> None:
        # live = true groups are handoff.live.resource.LiveGpu's (their own journal).
        entries = [p for p in self.profile.passthrough if not p.live]
        if not entries:
            return
        self.memlock_bytes = self._memlock_check(self.profile, self.paths)
        pins, reset_warnings = preflight_resets(self.paths, self.engine.writer.module_loadable,
                                                self.profile)
        addresses = [p.address for p in entries]
        allowed = [a for p in entries for a in p.allow_in_group]
        owner = qemu_owner(self.profile.vm.user)
        groups = groups_of(self.paths, addresses)
        recovered = await recover(self.engine, kinds=(jr.Kind.SESSION,), groups=groups)
        for line in recovered.returned + recovered.discarded:
            self.report(f"recovered from an earlier session: {line}")
        planned, refusal = self.planned, self.refusal
        if recovered.returned:
            # A dead session's devices went back: the host changed under the plan, which
            # read them on vfio-pci. The one case planned again (as the tuning does).
            planned, refusal = None, None
        if refusal is not None:
            raise refusal
        prepared = await prepare(
            self.paths,
            self.engine.writer,
            addresses,
            allow_in_group=allowed,
            owner=f"handoff run {self.profile.name}",
            handover=self.profile.host_display.handover,
            planned=planned,
        )
        self._locks = prepared.locks
        self.plan = prepared.plan
        self.report("GPU hand-off plan:\n" + prepared.plan.render())
        for warning in reset_warnings:
            self.report(f"warning: {warning.text}\n  fix: {warning.fix}")
        journal = jr.Journal.begin(self.paths, self.profile.name, jr.Kind.SESSION,
                                   self.profile.name)
        try:
            await self.engine.detach(prepared.plan, journal, vfio_owner=owner, reset_pins=pins)
        except BaseException:
            prepared.locks.release()
            self._locks = None
            raise
        self._journal = journal
        moved = ", ".join(d.address.short for d in prepared.plan.detach_order)
        self.report(f"on vfio-pci: {moved}")

    def note_qemu_pid(self, pid: int) -> None:
        if self._journal is not None:
            self._journal.note_qemu(pid, jr.process_start_time(self.paths, pid))

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return

    async def release(self) -> None:
        journal = self._journal
        if journal is None:
            return
        try:
            self._returned = await self.engine.give_back(journal)
        finally:
            if journal.empty or not journal.path.exists():
                self._journal = None
            if self._locks is not None:
                self._locks.release()
                self._locks = None
        for line in self._returned:
            self.report(line)

    def status(self) -> JsonObject:
        devices: list[JsonObject] = []
        if self.plan is not None:
            for device in self.plan.detach_order:
                try:
                    now = read_device(self.paths, device.address)
                    driver: str | None = now.driver
                except HandoffError:
                    driver = None
                devices.append(
                    {
                        "address": str(device.address),
                        "ids": device.ids,
                        "original_driver": device.driver,
                        "driver": driver,
                    }
                )
        return {
            "groups": list(self.plan.group_ids) if self.plan else [],
            "devices": devices,
            "journal": str(self._journal.path) if self._journal else None,
            "memlock_bytes": self.memlock_bytes,
        }

