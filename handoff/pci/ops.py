"""One checked function per sysfs write: the PCI engine's only way to change the kernel.

Modelled on libvirt's src/util/virpci.c: each operation on a device's
binding (set or restore ``driver_override``, unbind from a driver,
``drivers_probe``, bind to a named driver) is one function that writes one
attribute through the :class:`SysfsWriter` and reads back that it had its
effect, raising a named error (:class:`SysfsWriteError` with the errno's
fix, :class:`BindError` when the kernel accepted the write but the device
is not where it should be). :mod:`handoff.pci.engine` composes them.

The functions run in a worker thread under a deadline (the engine's): a
write to ``unbind`` can block in the kernel for ever. Each takes a
:class:`Ticket` shared with the waiting caller; once the caller gives up
(``abandoned``) no further write is made. The kernel's bind/unbind/
drivers_probe are synchronous, so every read-back follows its write
without sleeping.

This module never decides what to do with a device (that is the engine's
job) and never uses ``new_id``/``remove_id`` or unloads a module.
"""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from handoff.base.errors import BindError, HostError, SysfsWriteError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.model import Binding
from handoff.pci.sysfs import (
    device_dir,
    driver_attr,
    driver_override_path,
    drivers_probe_path,
    read_binding,
)

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


def _modprobe(*args: str) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["modprobe", *args], capture_output=True, timeout=MODPROBE_TIMEOUT, check=False
    )


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
        return module_loadable(module)

    def load_module(self, module: str) -> None:
        try:
            result = _modprobe(module)
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


def module_loadable(module: str) -> bool:
    """Whether ``modprobe --dry-run`` would load ``module`` (reads, loads nothing)."""
    try:
        return _modprobe("--dry-run", "--quiet", module).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


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


def checked_write(writer: SysfsWriter, path: Path, value: str) -> None:
    """One sysfs write; a failure is a SysfsWriteError naming the errno and its fix."""
    try:
        writer.write(path, value)
    except OSError as exc:
        code = exc.errno or 0
        name = errno.errorcode.get(code, str(code))
        shown = value.strip() or "\\n"
        raise SysfsWriteError(
            f"writing {shown!r} to {path} failed: {name} ({os.strerror(code)})",
            fix=_ERRNO_FIXES.get(code, "look at `dmesg` for the kernel's reason"),
        ) from exc


def reset_function(paths: HostPaths, writer: SysfsWriter, address: PciAddress) -> None:
    """A PCI function's reset, once (the single-GPU hand-over's last resort)."""
    DeviceOps(paths, writer, Ticket(address=str(address)), address).reset()


def reprobe(paths: HostPaths, writer: SysfsWriter, address: PciAddress, driver: str) -> None:
    """A PCI function off ``driver`` and probed onto it again (verified): the driver
    registers its framebuffer afresh, which fbcon takes the consoles over on."""
    ops = DeviceOps(paths, writer, Ticket(address=str(address)), address)
    ops.unbind(driver)
    ops.probe_to(driver)


def platform_bind(
    paths: HostPaths, writer: SysfsWriter, driver: str, device: str, *, bind: bool
) -> None:
    """``/sys/bus/platform/drivers/<driver>/{bind,unbind}`` of ``device`` (a firmware
    framebuffer such as efi-framebuffer.0); the caller reads the result back."""
    path = paths.sys / "bus" / "platform" / "drivers" / driver / ("bind" if bind else "unbind")
    checked_write(writer, path, device)


def vtconsole_bind(paths: HostPaths, writer: SysfsWriter, node: str, *, bind: bool) -> None:
    """``/sys/class/vtconsole/<node>/bind``: a console on (1) or off (0) its framebuffer."""
    checked_write(writer, paths.sys / "class" / "vtconsole" / node / "bind", "1" if bind else "0")


class AbandonedError(Exception):
    """Raised in a worker thread whose caller gave up on it: make no further change."""


@dataclass
class Ticket:
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

    def check(self) -> None:
        """Raise :class:`AbandonedError` once the caller has given up."""
        if self.abandoned:
            raise AbandonedError

    def describe(self) -> str:
        shown = self.value.strip() or "\\n"
        return f"writing {shown!r} to {self.path}"


@dataclass
class DeviceOps:
    """The checked sysfs operations on one device, in a worker thread under ``ticket``."""

    paths: HostPaths
    writer: SysfsWriter
    ticket: Ticket
    address: PciAddress

    def _write(self, path: Path, value: str) -> None:
        """One sysfs write, its errno turned into a named error."""
        self.ticket.check()
        self.ticket.path, self.ticket.value = path, value
        try:
            checked_write(self.writer, path, value)
        finally:
            self.ticket.path = None

    def reset(self) -> None:
        """Write 1 to the function's ``reset`` (the kernel tries its ``reset_method`` s)."""
        self._write(device_dir(self.paths, self.address) / "reset", "1")

    def binding(self) -> Binding:
        """The device's driver and driver_override now (BindError if it vanished)."""
        binding = read_binding(self.paths, self.address)
        if binding is None:
            raise BindError(
                f"{self.address.short} vanished from the bus",
                fix="check `dmesg` (surprise removal, or a device that fell off the bus)",
            )
        return binding

    def set_override(self, driver: str | None) -> None:
        """Write ``driver_override`` (None clears it with a newline) and read it back."""
        self._write(driver_override_path(self.paths, self.address), driver or "\n")
        now = self.binding().driver_override
        if now != driver:
            raise BindError(
                f"{self.address.short}'s driver_override reads {now or '(null)'} after "
                f"writing {driver or 'a newline'}",
                fix="look at `dmesg`; the kernel needs driver_override (3.16 or later)",
            )

    def unbind(self, driver: str) -> None:
        """Write the address to ``drivers/<driver>/unbind``; the device has left it."""
        self._write(driver_attr(self.paths, driver, "unbind"), str(self.address))
        now = self.binding().driver
        if now == driver:
            raise BindError(
                f"{self.address.short} is still on {driver} after unbinding it",
                fix="look at `dmesg` for the driver's reason",
            )

    def probe(self) -> None:
        """Write the address to ``drivers_probe`` (the kernel picks the driver)."""
        self._write(drivers_probe_path(self.paths), str(self.address))

    def bind(self, driver: str) -> None:
        """Write the address to ``drivers/<driver>/bind``; the device is on ``driver``."""
        try:
            self._write(driver_attr(self.paths, driver, "bind"), str(self.address))
        except SysfsWriteError as exc:
            raise BindError(
                f"{self.address.short} did not bind to {driver} (it is on no driver): "
                f"{exc.message}",
                fix=exc.fix,
            ) from exc
        self.expect(driver)

    def expect(self, driver: str) -> None:
        """The device is on ``driver`` (BindError naming where it is instead)."""
        now = self.binding().driver
        if now != driver:
            raise BindError(
                f"{self.address.short} is on {now or 'no driver'} instead of {driver}",
                fix=f"echo {self.address} > /sys/bus/pci/drivers/{driver}/bind, and look "
                "at `dmesg`",
            )

    def probe_to(self, driver: str, *, probe: bool = True) -> None:
        """``drivers_probe`` (unless already probed) and verify; bind by name if nothing took it.

        The fallback is virpci.c's: a probe can be lost (another driver's
        probe raced it, a udev rule unbound it), the named driver's ``bind``
        is then tried once.
        """
        if probe:
            self.probe()
        if self.binding().driver is None:
            self.bind(driver)
        else:
            self.expect(driver)

    # ------------------------------------------------------------------ the reset ladder
    # (handoff.pci.revive; its first rung is reset() above)

    def remove(self) -> None:
        """Write 1 to ``remove``: the function leaves the bus (its driver lets go first)."""
        self._write(device_dir(self.paths, self.address) / "remove", "1")
        if device_dir(self.paths, self.address).exists():
            raise BindError(
                f"{self.address.short} is still on the bus after writing its remove",
                fix="look at `dmesg` for the kernel's reason",
            )

    def rescan(self) -> None:
        """Write 1 to /sys/bus/pci/rescan; the function is back on the bus afterwards.

        The kernel's rescan is synchronous (pci_rescan_bus: enumerate, add,
        probe drivers), so the read-back follows the write.
        """
        self._write(self.paths.sys / "bus" / "pci" / "rescan", "1")
        if not device_dir(self.paths, self.address).is_dir():
            raise BindError(
                f"{self.address.short} did not come back after a rescan of the PCI bus",
                fix="look at `dmesg` (the card may need its power removed: a cold boot)",
            )

    def set_reset_method(self, methods: str) -> None:
        """Write ``reset_method`` (``""``: none, the kernel's ``echo >``) and read it back."""
        path = device_dir(self.paths, self.address) / "reset_method"
        self._write(path, methods or "\n")
        try:
            now = path.read_text(encoding="ascii", errors="replace").split()
        except OSError as exc:
            raise BindError(
                f"cannot read back {path}: {exc}", fix="look at `dmesg`"
            ) from exc
        if now != methods.split():
            raise BindError(
                f"{path} reads {' '.join(now) or '(empty)'} after writing "
                f"{methods or 'an empty line'}",
                fix="look at `dmesg` for the kernel's reason",
            )
