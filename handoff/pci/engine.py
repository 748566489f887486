"""Moving devices to vfio-pci and back: the checked operations composed, journaled.

The sequence is the one libvirt's virpci.c uses (virPCIDeviceBindToStub /
virPCIDeviceUnbindFromStub), per device, each step one checked function of
:mod:`handoff.pci.ops`:

detach
    ``driver_override`` = vfio-pci → unbind from the current driver →
    ``drivers_probe`` → on vfio-pci (else ``drivers/vfio-pci/bind``, else
    roll back and fail) → /dev/vfio/N exists.
return
    unbind from vfio-pci → the original ``driver_override`` back (a newline
    clears it) → ``drivers_probe`` → on the original driver (else
    ``drivers/<orig>/bind``).

Never ``new_id``/``remove_id`` (they match every device with those ids, the
host's twin GPU too) and never ``modprobe -r``.

Each device's step sequence (journal write, sysfs writes, read-backs)
runs as one call in a worker thread under a deadline: one thread hand-off
per device instead of one per write (a cross-thread wake-up costs
milliseconds under emulation), and the journal's fsyncs stay off the event
loop. A write that blocks in the kernel is reported, not waited on.

Return is idempotent from every intermediate state, so the same code undoes
a partial detach (rollback), a finished session, and a journal left by a
supervisor that was killed (:mod:`handoff.pci.recovery`). This module
decides nothing about which devices move (:mod:`handoff.pci.plan` does) and
never writes sysfs except through :mod:`handoff.pci.ops`.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import trio

from handoff import journal as jr
from handoff.base.errors import BindError, HandoffError, HostError, SysfsTimeoutError
from handoff.base.host import HostPaths
from handoff.pci import revive as ladder_edge
from handoff.pci.address import PciAddress
from handoff.pci.holders import vfio_group_users
from handoff.pci.model import VFIO_DRIVER, VFIO_MODULE
from handoff.pci.ops import DeviceOps, SysfsWriter, Ticket
from handoff.pci.plan import HandoffPlan
from handoff.pci.reset import Health
from handoff.pci.reset_sysfs import function_health, read_reset_method
from handoff.pci.revive import LadderResult, SystemLog, revive
from handoff.pci.sysfs import driver_loaded, drivers_dir, read_binding, vfio_group_node

log = logging.getLogger("handoff.pci")
_T = TypeVar("_T")

# Seconds one device's step sequence (its 3-4 sysfs writes, read-backs and
# journal writes) may take before it is reported stuck. A GPU driver's unbind
# can legitimately take seconds (amdgpu tears down its display and memory).
WRITE_TIMEOUT = 20.0
VFIO_NODE_TIMEOUT = 2.0  # seconds for /dev/vfio/N to appear after the bind (devtmpfs)


@dataclass
class Engine:
    """Applies plans and journals to the host through one :class:`SysfsWriter`."""

    paths: HostPaths
    writer: SysfsWriter
    write_timeout: float = WRITE_TIMEOUT
    # Devices whose step thread was abandoned while stuck in the kernel: a
    # rollback leaves them in the journal (their write may still land later)
    # for `handoff recover` to finish once the kernel lets go.
    stuck: dict[str, str] = field(default_factory=dict)
    # Where the reset ladder's steps go besides the log; None: the system journal
    # (handoff.pci.revive.system_log, looked up when used).
    syslog: SystemLog | None = None

    # ------------------------------------------------------------------ primitives

    async def _in_thread(self, budget: float, work: Callable[..., _T], *args: object) -> _T:
        """Run ``work(ticket, *args)`` in a worker thread, reported stuck after ``budget`` s."""
        ticket = Ticket()
        try:
            with trio.fail_after(budget):
                try:
                    return await trio.to_thread.run_sync(
                        work, ticket, *args, abandon_on_cancel=True
                    )
                except BaseException:
                    ticket.abandoned = True
                    if ticket.path is not None:  # given up on while inside a write
                        self.stuck[ticket.address] = ticket.describe()
                    raise
        except trio.TooSlowError as exc:
            what = self.stuck.get(ticket.address, "a step of the hand-off")
            raise SysfsTimeoutError(
                f"{what} did not return within {budget:g} s: the kernel is stuck "
                "in this write (the thread is left behind and will change nothing more)",
                fix="look at `dmesg` for a hung task or a driver waiting for its users; "
                "close every program using the device; a reboot may be needed to free it; "
                "then `handoff recover`",
            ) from exc

    def _ops(self, ticket: Ticket, address: PciAddress) -> DeviceOps:
        ticket.address = str(address)
        return DeviceOps(self.paths, self.writer, ticket, address)

    @staticmethod
    def _step(ticket: Ticket, journal: jr.Journal, address: str, step: jr.DeviceStep) -> None:
        """Write-ahead: the step a device is about to take, unless the caller gave up."""
        ticket.check()
        ticket.path, ticket.value = journal.path, "the journal"
        try:
            journal.set_step(address, step)
        finally:
            ticket.path = None

    async def ensure_module(self, driver: str, module: str | None) -> None:
        """Load ``module`` when ``driver`` is not registered (never unloads anything)."""
        if driver_loaded(self.paths, driver) or module is None:
            return
        await trio.to_thread.run_sync(self.writer.load_module, module)
        if not driver_loaded(self.paths, driver):
            raise HostError(
                f"`modprobe {module}` succeeded but {drivers_dir(self.paths) / driver} "
                "does not exist",
                fix=f"check `dmesg` and that {module} provides the PCI driver {driver}",
            )

    # ------------------------------------------------------------------ detach

    async def detach(
        self,
        plan: HandoffPlan,
        journal: jr.Journal,
        *,
        vfio_owner: tuple[int, int] | None = None,
        reset_pins: Mapping[PciAddress, str] | None = None,
    ) -> None:
        """Move every device of ``plan`` to vfio-pci, journaled; all or nothing.

        ``reset_pins`` (a pinned ``[[passthrough]] reset``, as
        :func:`handoff.pci.reset.pin_value` decided) are written to the
        functions' ``reset_method``, their previous value journaled first.

        On any failure (or cancellation) every device is returned, reverse
        order, before the error propagates: a partial detach never stays.
        """
        _record_devices(plan, journal)
        try:
            await self.ensure_module(VFIO_DRIVER, VFIO_MODULE)
            addresses = [device.address for device in plan.detach_order]
            budget = self.write_timeout * max(1, len(addresses))
            await self._in_thread(budget, self._detach_all, addresses, journal,
                                  dict(reset_pins or {}))
            for group in plan.group_ids:
                await self._wait_vfio_node(group)
            if vfio_owner is not None:
                for group in plan.group_ids:
                    _chown_node(vfio_group_node(self.paths, group), vfio_owner, journal)
        except (Exception, trio.Cancelled, KeyboardInterrupt) as failure:
            rollback: HandoffError | None = None
            with trio.CancelScope(shield=True):
                try:
                    await self.give_back(journal)
                except HandoffError as exc:
                    rollback = exc
            if rollback is not None and isinstance(failure, HandoffError):
                raise type(failure)(
                    f"{failure.message}\nand returning the devices failed too: "
                    f"{rollback.message}",
                    fix="run `handoff recover` once the cause is fixed; "
                    f"the journal {journal.path} keeps what is left to return",
                ) from failure
            if rollback is not None:
                # Cancelled / interrupted: that must propagate; the journal keeps the rest.
                log.warning("returning the devices after an interruption failed: %s", rollback)
            raise

    def _detach_all(
        self,
        ticket: Ticket,
        addresses: Sequence[PciAddress],
        journal: jr.Journal,
        pins: Mapping[PciAddress, str],
    ) -> None:
        """The journal's first record, then every device in order. Worker thread."""
        ticket.check()
        journal.save()
        for address in addresses:
            self._detach_one(ticket, address, journal, pins.get(address))

    def _detach_one(
        self, ticket: Ticket, address: PciAddress, journal: jr.Journal, pin: str | None = None
    ) -> None:
        """(reset_method pinned →) driver_override → unbind → drivers_probe → on vfio-pci
        (→ bind). Worker thread."""
        name = str(address)
        ops = self._ops(ticket, address)
        current = ops.binding()
        record = journal.record(name)
        if pin is not None and record.reset_method is None:
            # Journaled with the next step, before the write.
            record.reset_method = read_reset_method(self.paths, address) or ""
        if current.driver == VFIO_DRIVER and current.driver_override == VFIO_DRIVER:
            self._step(ticket, journal, name, jr.DeviceStep.ON_VFIO)
            if pin is not None:
                ops.set_reset_method(pin)
            return
        self._step(ticket, journal, name, jr.DeviceStep.DETACHING)
        if pin is not None:
            ops.set_reset_method(pin)
        ops.set_override(VFIO_DRIVER)
        if current.driver != VFIO_DRIVER:
            if current.driver is not None:
                ops.unbind(current.driver)
            ops.probe_to(VFIO_DRIVER)
        self._step(ticket, journal, name, jr.DeviceStep.ON_VFIO)

    async def _wait_vfio_node(self, group: int) -> None:
        """/dev/vfio/N appears when the group's first device binds (devtmpfs: at once)."""
        node = vfio_group_node(self.paths, group)
        with trio.move_on_after(VFIO_NODE_TIMEOUT):
            # Bounded poll: a file appearing has no event to wait on (devtmpfs is
            # synchronous; this only runs where udev creates the node).
            while not node.exists():  # noqa: ASYNC110
                await trio.sleep(0.01)
        if not node.exists():
            raise BindError(
                f"{node} did not appear within {VFIO_NODE_TIMEOUT:g} s although IOMMU group "
                f"{group} is on vfio-pci",
                fix="mount devtmpfs on /dev (or let udev create the node) and check `dmesg`",
            )

    # ------------------------------------------------------------------ return

    async def give_back(self, journal: jr.Journal) -> list[str]:
        """Return every device the journal records, VGA first; remove the journal.

        Devices that cannot be returned stay in the journal (so `handoff
        recover` can try again) and a BindError lists them after every
        other device was handled.
        """
        failures: list[HandoffError] = _restore_nodes(journal)
        records = list(reversed(journal.devices))
        for record in records:
            original = record.original_driver
            if original in (None, VFIO_DRIVER) or driver_loaded(self.paths, original):
                continue
            try:
                await self.ensure_module(original, record.original_module)
            except HandoffError as exc:
                failures.append(exc)
        budget = self.write_timeout * (2 + len(records))
        ladder = LadderResult()
        if any(function_health(self.paths, PciAddress.parse(r.address)) is not Health.ALIVE
               for r in records):
            ladder = await self._in_thread(budget, self._revive, journal)
        for record in records:
            if record.address in ladder.given_up:
                failures.append(BindError(record.outcome or record.address,
                                          fix=ladder.given_up[record.address]))
        records = [r for r in records if r.address not in ladder.given_up]
        budget = self.write_timeout * max(1, len(records))
        notes, failed = await self._in_thread(budget, self._return_all, records, journal)
        notes = ladder.notes + notes
        failures += failed
        if failures:
            for note in ladder.notes:
                log.info("%s", note)
            raise BindError(
                "could not return every device:\n" + "\n".join(f"  - {f}" for f in failures),
                fix=f"fix the cause, then `handoff recover` (the journal {journal.path} "
                "keeps what is left)",
            )
        journal.remove()
        return notes

    def _revive(self, ticket: Ticket, journal: jr.Journal) -> LadderResult:
        """The reset ladder for a card that came back dead (handoff.pci.revive). Worker thread."""
        return revive(self.paths, self.writer, ticket, journal,
                      self.syslog or ladder_edge.system_log)

    def _return_all(
        self, ticket: Ticket, records: Sequence[jr.DeviceRecord], journal: jr.Journal
    ) -> tuple[list[str], list[HandoffError]]:
        """Every device back, each failure collected so the others still return."""
        notes: list[str] = []
        failures: list[HandoffError] = []
        checked: set[int] = set()
        for record in records:
            if record.address in self.stuck:
                failures.append(
                    SysfsTimeoutError(
                        f"{record.address} stays in the journal: {self.stuck[record.address]} "
                        "was still stuck in the kernel"
                    )
                )
                continue
            try:
                notes.append(self._return_one(ticket, record, journal, checked))
            except HandoffError as exc:
                failures.append(exc)
        return notes, failures

    def _return_one(
        self, ticket: Ticket, record: jr.DeviceRecord, journal: jr.Journal, checked: set[int]
    ) -> str:
        """Return one device; its record leaves the journal once it is back. Worker thread."""
        note = self._return_steps(self._ops(ticket, PciAddress.parse(record.address)), record,
                                  checked)
        ticket.check()
        journal.drop_device(record.address)
        return note

    def _return_steps(self, ops: DeviceOps, record: jr.DeviceRecord, checked: set[int]) -> str:
        """vfio-pci unbind → driver_override restored → drivers_probe → on the original (→ bind).

        Idempotent from any state the detach (or a crash) left. No journal
        write here: the record (original driver and override) is all a
        recovery needs from any state below, and it is dropped once verified.
        """
        short = ops.address.short
        current = read_binding(self.paths, ops.address)
        if current is None:
            return f"{short} is gone from the bus; nothing to return"
        if record.reset_method is not None:
            ops.set_reset_method(record.reset_method)
        original = record.original_driver
        if current.driver == original and current.driver_override == record.original_override:
            return f"{short} is on {original or 'no driver'}, as before"
        if current.driver not in (None, VFIO_DRIVER, original):
            raise BindError(
                f"{short} is on {current.driver}, neither vfio-pci nor its original "
                f"{original or 'no driver'}: something else rebound it; handoff leaves it",
                fix=f"check who bound it; to return it by hand: echo {record.address} > "
                f"/sys/bus/pci/drivers/{current.driver}/unbind, then `handoff attach "
                f"{short}`",
            )
        ops.ticket.check()
        driver = current.driver
        if driver == VFIO_DRIVER and original != VFIO_DRIVER:
            self._refuse_open_group(record, short, checked)
            ops.unbind(VFIO_DRIVER)
            driver = None
        ops.set_override(record.original_override)
        if original is None:
            return f"{short} is back on no driver"
        ops.probe_to(original, probe=driver is None)
        return f"{short} is back on {original}"

    def _refuse_open_group(self, record: jr.DeviceRecord, short: str, checked: set[int]) -> None:
        """Unbinding vfio-pci under an open group blocks until the user lets go: name the
        user instead (one check per group and return)."""
        if record.group not in checked:
            users = vfio_group_users(self.paths, vfio_group_node(self.paths, record.group))
            if users is not None:
                who = ", ".join(h.describe() for h in users) or "a process handoff cannot see"
                raise BindError(
                    f"{short} cannot leave vfio-pci: /dev/vfio/{record.group} is still "
                    f"open ({who})",
                    fix="stop that process (the VM using the group), then `handoff recover`",
                )
        checked.add(record.group)


def _record_devices(plan: HandoffPlan, journal: jr.Journal) -> None:
    """Every device of the plan into the journal (in memory) as it is before any change."""
    for device in plan.detach_order:
        if any(r.address == str(device.address) for r in journal.devices):
            continue
        journal.devices.append(
            jr.DeviceRecord(
                address=str(device.address),
                ids=device.ids,
                group=device.iommu_group if device.iommu_group is not None else -1,
                original_driver=device.driver,
                original_module=device.driver_module,
                original_override=device.driver_override,
            )
        )


def _chown_node(node: Path, owner: tuple[int, int], journal: jr.Journal) -> None:
    """/dev/vfio/N to the QEMU user, its previous owner and mode journaled first."""
    st = node.stat()
    if not any(n.path == str(node) for n in journal.nodes):
        journal.nodes.append(
            jr.NodeRecord(path=str(node), uid=st.st_uid, gid=st.st_gid, mode=st.st_mode & 0o7777)
        )
        journal.save()
    os.chown(node, owner[0], owner[1])


def _restore_nodes(journal: jr.Journal) -> list[HandoffError]:
    """Give /dev/vfio/N back its recorded owner and mode (a vanished node needs nothing)."""
    failures: list[HandoffError] = []
    for node in list(journal.nodes):
        path = Path(node.path)
        try:
            os.chown(path, node.uid, node.gid)
            os.chmod(path, node.mode)
        except FileNotFoundError:
            pass
        except OSError as exc:
            failures.append(
                HostError(
                    f"cannot restore the owner of {path}: {exc}",
                    fix=f"chown {node.uid}:{node.gid} {path}",
                )
            )
            continue
        journal.nodes.remove(node)
        journal.save()
    return failures

