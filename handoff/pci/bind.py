"""Moving devices to vfio-pci and back: the driver_override sequence, verified.

The sequence is the one libvirt's virpci.c uses (virPCIDeviceBindToStub /
virPCIDeviceUnbindFromStub), per device:

detach
    write ``vfio-pci`` to ``driver_override`` → write the address to the
    current driver's ``unbind`` → write it to ``/sys/bus/pci/drivers_probe``
    → verify the ``driver`` link is vfio-pci (else ``drivers/vfio-pci/bind``,
    else roll back and fail) → /dev/vfio/N exists.
return
    unbind from vfio-pci → restore the original ``driver_override`` (a
    newline clears it) → ``drivers_probe`` → verify the original driver is
    back (else ``drivers/<orig>/bind``).

Never ``new_id``/``remove_id`` (they match every device with those ids, the
host's twin GPU too) and never ``modprobe -r``.

Every write goes through a :class:`SysfsWriter` (the real kernel, or the
unit tests' emulated driver core) in a worker thread under a deadline: a
write to ``unbind`` can block in the kernel for ever (a driver waiting for
its users), and the supervisor must report that instead of hanging. The
kernel's bind/unbind/drivers_probe are synchronous, so the driver link is
verified immediately after the write, without sleeping.

Return is idempotent from every intermediate state, so the same code undoes
a partial detach (rollback), a finished session, and a journal left by a
supervisor that was killed.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, TypeVar

import trio

from handoff.errors import BindError, HandoffError, HostError, SysfsTimeoutError, SysfsWriteError
from handoff.host import HostPaths
from handoff.pci import journal as jr
from handoff.pci.address import PciAddress
from handoff.pci.holders import Holder, vfio_group_users
from handoff.pci.plan import HandoffPlan
from handoff.pci.sysfs import (
    VFIO_DRIVER,
    VFIO_MODULE,
    Binding,
    driver_loaded,
    drivers_dir,
    drivers_probe_path,
    read_binding,
    read_boot_id,
    vfio_group_node,
)

log = logging.getLogger("handoff.pci")
_T = TypeVar("_T")

# Seconds one device's step sequence (its 3-4 sysfs writes, read-backs and
# journal writes) may take before it is reported stuck. A GPU driver's unbind
# can legitimately take seconds (amdgpu tears down its display and memory).
WRITE_TIMEOUT = 20.0
VFIO_NODE_TIMEOUT = 2.0  # seconds for /dev/vfio/N to appear after the bind (devtmpfs)
MODPROBE_TIMEOUT = 60.0

# Fault injection for the crash-recovery tests (realkernel), test-only: never set
# them outside tests. Read once at import. With CRASH_AFTER_SYSFS_ENV=N the process
# SIGKILLs itself right after the N-th sysfs write of its KernelWriter (1-based),
# like journal.CRASH_AFTER_ENV for journal writes; with PAUSE_AFTER_SYSFS_ENV=N it
# SIGSTOPs itself there instead (SIGCONT resumes it), holding its locks mid-hand-off.
CRASH_AFTER_SYSFS_ENV = "HANDOFF_TEST_CRASH_AFTER_SYSFS_WRITE"
PAUSE_AFTER_SYSFS_ENV = "HANDOFF_TEST_PAUSE_AFTER_SYSFS_WRITE"


class SysfsWriter(Protocol):
    """The only way handoff changes the kernel's driver bindings.

    Production writes the file and runs modprobe; the unit tests install an
    emulated driver core that applies the kernel's semantics to a fake tree.
    ``write`` raises OSError with the kernel's errno, exactly as write(2) does.
    """

    def write(self, path: Path, value: str) -> None: ...

    def module_loadable(self, module: str) -> bool: ...

    def load_module(self, module: str) -> None: ...


@dataclass
class WriteFaults:
    """Test-only fault injection after the N-th successful sysfs write (see above)."""

    crash_after: int | None = None
    pause_after: int | None = None
    count: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str]) -> WriteFaults:
        def number(name: str) -> int | None:
            text = environ.get(name, "").strip()
            return int(text) if text else None

        return cls(number(CRASH_AFTER_SYSFS_ENV), number(PAUSE_AFTER_SYSFS_ENV))

    def signal_after(self, count: int) -> signal.Signals | None:
        """The signal the process sends itself after its ``count``-th write. Pure."""
        if self.crash_after is not None and count >= self.crash_after:
            return signal.SIGKILL
        if self.pause_after is not None and count == self.pause_after:
            return signal.SIGSTOP
        return None

    def after_write(self) -> None:
        if self.crash_after is None and self.pause_after is None:
            return
        with self._lock:
            self.count += 1
            sig = self.signal_after(self.count)
        if sig is not None:
            os.kill(os.getpid(), sig)


_WRITE_FAULTS = WriteFaults.from_environment(os.environ)


class KernelWriter:
    """The real kernel: write(2) on sysfs attributes, modprobe(8) for modules."""

    def write(self, path: Path, value: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        try:
            os.write(fd, value.encode())
        finally:
            os.close(fd)
        _WRITE_FAULTS.after_write()

    def module_loadable(self, module: str) -> bool:
        try:
            result = subprocess.run(
                ["modprobe", "--dry-run", "--quiet", module],
                capture_output=True,
                timeout=MODPROBE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
        return result.returncode == 0

    def load_module(self, module: str) -> None:
        try:
            result = subprocess.run(
                ["modprobe", module], capture_output=True, timeout=MODPROBE_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise HostError(
                f"cannot run `modprobe {module}`: {exc}", fix="install kmod (modprobe)"
            ) from exc
        if result.returncode != 0:
            raise HostError(
                f"`modprobe {module}` failed: {result.stderr.decode(errors='replace').strip()}",
                fix=f"check that the module {module} exists for this kernel and is not "
                "blacklisted in /etc/modprobe.d",
            )


_ERRNO_FIXES = {
    errno.EBUSY: "the device or driver is busy: close the programs using it (`handoff groups` "
    "names them) and look at `dmesg` for the driver's reason",
    errno.EACCES: "writing sysfs needs root: run handoff as root (or with CAP_SYS_ADMIN)",
    errno.EPERM: "writing sysfs needs root: run handoff as root (or with CAP_SYS_ADMIN)",
    errno.ENODEV: "the device is not bound to that driver, or it vanished from the bus: "
    "check `handoff groups` and `dmesg`",
    errno.ENOENT: "the attribute does not exist: the device was removed or the driver is not "
    "loaded; check `handoff groups` and `dmesg`",
    errno.EINVAL: "the driver refused the device: `dmesg` says why",
}


class _AbandonedError(Exception):
    """Raised in a worker thread whose caller gave up on it: make no further change."""


@dataclass
class _Ticket:
    """Shared between one worker thread and its caller.

    The caller sets ``abandoned`` when the deadline passes or it is cancelled;
    the thread checks it before every journal write and sysfs write, so a
    thread that was stuck in the kernel and later returns changes nothing
    more. ``path``/``value`` name the write in progress for the error.
    """

    abandoned: bool = False
    address: str = ""
    path: Path | None = None
    value: str = ""

    def describe(self) -> str:
        shown = self.value.strip() or "\\n"
        return f"writing {shown!r} to {self.path}"


@dataclass
class Engine:
    """Applies plans and journals to the host through one :class:`SysfsWriter`.

    Each device's step sequence (journal write, sysfs write, read-back,
    next step...) runs as one call in a worker thread under
    ``write_timeout``: one thread hand-off per device instead of one per
    write (a cross-thread wake-up costs milliseconds under emulation), and
    the journal's fsyncs stay off the event loop.
    """

    paths: HostPaths
    writer: SysfsWriter
    write_timeout: float = WRITE_TIMEOUT
    # Devices whose step thread was abandoned while stuck in the kernel: a
    # rollback leaves them in the journal (their write may still land later)
    # for `handoff recover` to finish once the kernel lets go.
    stuck: dict[str, str] = field(default_factory=dict)

    # ------------------------------------------------------------------ primitives

    async def _in_thread(self, budget: float, work: Callable[..., _T], *args: object) -> _T:
        """Run ``work(ticket, *args)`` in a worker thread, reported stuck after ``budget`` s.

        One thread hand-off for a whole step sequence: a cross-thread wake-up
        costs milliseconds under emulation, and fsync stays off the event loop.
        """
        ticket = _Ticket()
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

    def _write(self, ticket: _Ticket, path: Path, value: str) -> None:
        """One sysfs write (in the worker thread), its errno turned into a named error."""
        if ticket.abandoned:
            raise _AbandonedError
        ticket.path, ticket.value = path, value
        try:
            self.writer.write(path, value)
        except OSError as exc:
            code = exc.errno or 0
            name = errno.errorcode.get(code, str(code))
            shown = value.strip() or "\\n"
            raise SysfsWriteError(
                f"writing {shown!r} to {path} failed: {name} ({os.strerror(code)})",
                fix=_ERRNO_FIXES.get(code, "look at `dmesg` for the kernel's reason"),
            ) from exc
        finally:
            ticket.path = None

    @staticmethod
    def _step(ticket: _Ticket, journal: jr.Journal, address: str, step: str) -> None:
        """Write-ahead: the step a device is about to take, unless the caller gave up."""
        if ticket.abandoned:
            raise _AbandonedError
        ticket.path, ticket.value = journal.path, "the journal"
        try:
            journal.set_step(address, step)
        finally:
            ticket.path = None

    async def write(self, path: Path, value: str) -> None:
        """One sysfs write in a worker thread under the deadline (for manual use)."""

        def work(ticket: _Ticket) -> None:
            self._write(ticket, path, value)

        await self._in_thread(self.write_timeout, work)

    def read(self, address: PciAddress) -> Binding:
        """The device's driver and driver_override now (BindError if it vanished)."""
        binding = read_binding(self.paths, address)
        if binding is None:
            raise BindError(
                f"{address.short} vanished from the bus",
                fix="check `dmesg` (surprise removal, or a device that fell off the bus)",
            )
        return binding

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
    ) -> None:
        """Move every device of ``plan`` to vfio-pci, journaled; all or nothing.

        On any failure (or cancellation) every device is returned, reverse
        order, before the error propagates: a partial detach never stays.
        """
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
        try:
            await self.ensure_module(VFIO_DRIVER, VFIO_MODULE)
            addresses = [device.address for device in plan.detach_order]
            budget = self.write_timeout * max(1, len(addresses))
            await self._in_thread(budget, self._detach_all, addresses, journal)
            for group in plan.group_ids:
                await self._wait_vfio_node(group)
            if vfio_owner is not None:
                for group in plan.group_ids:
                    self._chown_node(vfio_group_node(self.paths, group), vfio_owner, journal)
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
        self, ticket: _Ticket, addresses: Sequence[PciAddress], journal: jr.Journal
    ) -> None:
        """The journal's first record, then every device in order. Worker thread."""
        if ticket.abandoned:
            raise _AbandonedError
        journal.save()
        for address in addresses:
            self._detach_one(ticket, address, journal)

    def _detach_one(self, ticket: _Ticket, address: PciAddress, journal: jr.Journal) -> str:
        """driver_override → unbind → drivers_probe → verify (→ bind). Worker thread."""
        name = str(address)
        ticket.address = name
        override = f"{self.paths.sys}/bus/pci/devices/{name}/driver_override"
        current = self.read(address)
        if current.driver == VFIO_DRIVER and current.driver_override == VFIO_DRIVER:
            self._step(ticket, journal, name, jr.STEP_ON_VFIO)
            return name
        self._step(ticket, journal, name, jr.STEP_DETACHING)
        self._write(ticket, Path(override), VFIO_DRIVER)
        if current.driver is not None and current.driver != VFIO_DRIVER:
            self._write(ticket, drivers_dir(self.paths) / current.driver / "unbind", name)
        if current.driver != VFIO_DRIVER:
            self._write(ticket, drivers_probe_path(self.paths), name)
        now = self.read(address)
        if now.driver != VFIO_DRIVER:
            try:
                self._write(ticket, drivers_dir(self.paths) / VFIO_DRIVER / "bind", name)
            except SysfsWriteError as exc:
                raise BindError(
                    f"{address.short} did not bind to vfio-pci (it is on "
                    f"{now.driver or 'no driver'}): {exc.message}",
                    fix=exc.fix,
                ) from exc
            now = self.read(address)
            if now.driver != VFIO_DRIVER:
                raise BindError(
                    f"{address.short} is on {now.driver or 'no driver'} after binding it to "
                    "vfio-pci",
                    fix="look at `dmesg` for vfio-pci's reason",
                )
        self._step(ticket, journal, name, jr.STEP_ON_VFIO)
        return name

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

    def _chown_node(self, node: Path, owner: tuple[int, int], journal: jr.Journal) -> None:
        st = node.stat()
        if not any(n.path == str(node) for n in journal.nodes):
            journal.nodes.append(
                jr.NodeRecord(
                    path=str(node), uid=st.st_uid, gid=st.st_gid, mode=st.st_mode & 0o7777
                )
            )
            journal.save()
        os.chown(node, owner[0], owner[1])

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
        budget = self.write_timeout * max(1, len(records))
        notes, failed = await self._in_thread(budget, self._return_all, records, journal)
        failures += failed
        if failures:
            raise BindError(
                "could not return every device:\n" + "\n".join(f"  - {f}" for f in failures),
                fix=f"fix the cause, then `handoff recover` (the journal {journal.path} "
                "keeps what is left)",
            )
        journal.remove()
        return notes

    def _return_all(
        self, ticket: _Ticket, records: Sequence[jr.DeviceRecord], journal: jr.Journal
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
        self, ticket: _Ticket, record: jr.DeviceRecord, journal: jr.Journal, checked: set[int]
    ) -> str:
        """vfio-pci unbind → driver_override restored → drivers_probe → verify (→ bind).

        Idempotent from any state the detach (or a crash) left. Worker thread;
        the record leaves the journal once the device is back.
        """
        ticket.address = record.address
        note = self._return_steps(ticket, record, journal, checked)
        if ticket.abandoned:
            raise _AbandonedError
        journal.drop_device(record.address)
        return note

    def _return_steps(
        self, ticket: _Ticket, record: jr.DeviceRecord, journal: jr.Journal, checked: set[int]
    ) -> str:
        address = PciAddress.parse(record.address)
        override = Path(f"{self.paths.sys}/bus/pci/devices/{record.address}/driver_override")
        found = read_binding(self.paths, address)
        if found is None:
            return f"{address.short} is gone from the bus; nothing to return"
        original = record.original_driver
        current = found
        if current.driver == original and current.driver_override == record.original_override:
            return f"{address.short} is on {original or 'no driver'}, as before"
        if current.driver not in (None, VFIO_DRIVER, original):
            raise BindError(
                f"{address.short} is on {current.driver}, neither vfio-pci nor its original "
                f"{original or 'no driver'}: something else rebound it; handoff leaves it",
                fix=f"check who bound it; to return it by hand: echo {record.address} > "
                f"/sys/bus/pci/drivers/{current.driver}/unbind, then `handoff attach "
                f"{address.short}`",
            )
        # No journal write here: the record (original driver and override) is all a
        # recovery needs from any state below, and it is dropped once verified.
        if ticket.abandoned:
            raise _AbandonedError
        driver = current.driver
        if driver == VFIO_DRIVER and original != VFIO_DRIVER:
            # Unbinding vfio-pci under an open group blocks until the user lets go:
            # name the user instead (one check per group and return).
            users: tuple[Holder, ...] | None = None
            if record.group not in checked:
                users = vfio_group_users(self.paths, vfio_group_node(self.paths, record.group))
            if users is not None:
                who = ", ".join(h.describe() for h in users) or "a process handoff cannot see"
                raise BindError(
                    f"{address.short} cannot leave vfio-pci: /dev/vfio/{record.group} is still "
                    f"open ({who})",
                    fix="stop that process (the VM using the group), then `handoff recover`",
                )
            checked.add(record.group)
            self._write(ticket, drivers_dir(self.paths) / VFIO_DRIVER / "unbind", record.address)
            driver = None
        self._write(ticket, override, record.original_override or "\n")
        if original is None:
            return f"{address.short} is back on no driver"
        if driver is None:
            self._write(ticket, drivers_probe_path(self.paths), record.address)
        now = self.read(address)
        if now.driver != original:
            if now.driver is None:
                try:
                    self._write(ticket, drivers_dir(self.paths) / original / "bind", record.address)
                except SysfsWriteError as exc:
                    raise BindError(
                        f"{address.short} did not return to {original}: {exc.message}",
                        fix=exc.fix,
                    ) from exc
                now = self.read(address)
            if now.driver != original:
                raise BindError(
                    f"{address.short} is on {now.driver or 'no driver'} instead of {original}",
                    fix=f"echo {record.address} > /sys/bus/pci/drivers/{original}/bind, and "
                    "look at `dmesg`",
                )
        return f"{address.short} is back on {original}"


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


# --------------------------------------------------------------------------- recovery


@dataclass
class RecoveryReport:
    """What `handoff recover` did: devices returned, journals it had to leave alone."""

    returned: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed

    def lines(self) -> list[str]:
        out = [f"returned: {note}" for note in self.returned]
        out += [f"discarded: {note}" for note in self.discarded]
        out += [f"left alone: {note}" for note in self.refused]
        out += [f"FAILED: {note}" for note in self.failed]
        return out or ["nothing to recover: no hand-off journal"]


async def recover(
    engine: Engine,
    *,
    kinds: tuple[str, ...] = (jr.KIND_SESSION, jr.KIND_MANUAL),
    groups: set[int] | None = None,
) -> RecoveryReport:
    """Finish every journal left by a supervisor that died; return its devices.

    A journal whose groups are still locked belongs to a live handoff and is
    left alone; one whose recorded QEMU is still running is left alone too
    (its devices are in use: stop that QEMU first). A journal from an earlier
    boot is discarded: the reboot already reset every binding.
    """
    report = RecoveryReport()
    paths = engine.paths
    boot_id = read_boot_id(paths)
    for path in jr.list_journals(paths):
        try:
            journal = jr.Journal.load(path)
        except HandoffError as exc:
            report.failed.append(str(exc))
            continue
        if journal.boot_id != boot_id:
            journal.remove()
            report.discarded.append(
                f"{path} is from an earlier boot ({journal.boot_id}): the reboot already "
                "returned every device to the kernel's default driver"
            )
            continue
        if journal.kind not in kinds:
            continue
        if groups is not None and not groups.intersection(journal.groups):
            continue
        try:
            locks = jr.lock_groups(paths, journal.groups, "handoff recover")
        except HandoffError as exc:
            report.refused.append(f"{path}: {exc.message}")
            continue
        try:
            pid = journal.qemu_pid
            if pid is not None and jr.process_alive(paths, pid, journal.qemu_start_time):
                report.refused.append(
                    f"{path}: its QEMU (pid {pid}) is still running and uses the devices; "
                    f"stop it (`kill {pid}`), then run `handoff recover` again"
                )
                continue
            try:
                report.returned += await engine.give_back(journal)
            except HandoffError as exc:
                report.failed.append(f"{path}: {exc}")
        finally:
            locks.release()
    return report
