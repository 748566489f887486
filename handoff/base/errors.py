"""The exception hierarchy of handoff.

Every error a person can cause or fix is a :class:`HandoffError`. The CLI
prints it without a traceback: the message says what is wrong and where,
``fix`` says what to do about it. Anything that is not a HandoffError is a
bug in handoff and keeps its traceback.

Exceptions are named after the state they report (the trio and qemu.qmp
habit), and grouped by the part of the host they concern, so callers can
catch exactly the family they can handle.
"""

from __future__ import annotations


class HandoffError(Exception):
    """Root of every error handoff reports to a person.

    ``message`` is the complete sentence shown to the user; ``fix`` is an
    optional, concrete next step (a command, a file to edit, a setting).
    """

    def __init__(self, message: str, *, fix: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        if self.fix:
            return f"{self.message}\n  fix: {self.fix}"
        return self.message


# --------------------------------------------------------------------------- profiles


class ProfileError(HandoffError):
    """A profile cannot be used as written.

    Carries the file, the dotted key path (``vm.memory``), the value found and
    what was expected, so the message can point at the exact line to edit.
    """

    def __init__(
        self,
        message: str,
        *,
        path: str,
        key: str | None = None,
        fix: str | None = None,
    ) -> None:
        where = f"{path}: {key}" if key else path
        super().__init__(f"{where}: {message}", fix=fix)
        self.path = path
        self.key = key


# --------------------------------------------------------------------------- firmware


class FirmwareError(HandoffError):
    """No UEFI firmware fits the profile (QEMU's descriptors), or the VM's vars file
    came from another template than the one the profile now asks for."""


# --------------------------------------------------------------------------- QEMU


class QemuError(HandoffError):
    """Something about QEMU itself: the binary, its options, its process."""


class QemuNotFoundError(QemuError):
    """The qemu-system binary is not installed or not executable."""


class QemuUnsupportedError(QemuError):
    """The installed QEMU lacks a device or option the profile needs."""


class QemuLaunchError(QemuError):
    """QEMU exited before its monitor answered (bad option, missing file, ...)."""


class QmpError(QemuError):
    """The QMP conversation failed: connection lost, command refused."""


# --------------------------------------------------------------------------- sessions


class SessionError(HandoffError):
    """The supervisor cannot start or reach a session."""


class SessionBusyError(SessionError):
    """Another supervisor holds this profile's run directory lock."""


class SessionNotRunningError(SessionError):
    """No supervisor answers on the profile's control socket."""


# --------------------------------------------------------------------------- PCI / GPU


class PciError(HandoffError):
    """Reading or changing PCI devices on the host failed."""


class PciAddressError(PciError):
    """A string is not a PCI address in a form handoff accepts."""


class PreflightRefusedError(PciError):
    """A read-only check refused the hand-off before anything was changed."""


class SysfsWriteError(PciError):
    """The kernel rejected a sysfs write (EBUSY, EACCES, ENODEV, ...)."""


class SysfsTimeoutError(SysfsWriteError):
    """A sysfs write did not return within its deadline: the kernel is stuck."""


class BindError(PciError):
    """A device did not end up on the driver it was moved to."""


class JournalError(PciError):
    """The hand-off journal on disk cannot be read or written."""


# --------------------------------------------------------------------------- input


class InputError(HandoffError):
    """Finding, grabbing or forwarding keyboards and mice failed."""


# --------------------------------------------------------------------------- host checks


class HostError(HandoffError):
    """The host lacks something handoff needs (permissions, limits, modules)."""


class SystemdError(HostError):
    """A systemctl command that had to succeed failed; the argv and status are kept."""

    def __init__(
        self, message: str, *, fix: str | None = None, argv: tuple[str, ...] = (),
        status: int | None = None,
    ) -> None:
        super().__init__(message, fix=fix)
        self.argv = argv
        self.status = status


# --------------------------------------------------------------------------- performance tuning


class TuneError(HandoffError):
    """A performance setting (pinning, hugepages, isolation, governor) cannot be used."""


class CpuListError(TuneError):
    """A string is not a CPU list in the kernel's syntax ("0-3,8,10-11")."""


class PinListError(CpuListError):
    """One vCPU's entry of cpu.pin is not a usable CPU list; ``index`` is that vCPU."""

    def __init__(self, message: str, *, index: int, fix: str | None = None) -> None:
        super().__init__(message, fix=fix)
        self.index = index


class PinningRefusedError(TuneError):
    """The vCPU pinning asked for does not fit this host or the guest topology."""


class HugepagesRefusedError(TuneError):
    """The hugepage pool cannot hold the guest's RAM (size, count, CPU support)."""


class GovernorRefusedError(TuneError):
    """The cpufreq governor asked for is not offered by the host's CPUs."""


class IsolationRefusedError(TuneError):
    """Confining host tasks away from the VM's CPUs would leave the host no CPU."""


# --------------------------------------------------------------------------- import / export


class InteropError(HandoffError):
    """A libvirt domain or KubeVirt manifest cannot be read or written as asked."""


class DomainImportError(InteropError):
    """A libvirt domain's XML is not a QEMU domain handoff can run."""


class ExportError(InteropError):
    """A profile cannot be written in the asked format (or to the asked file)."""


# --------------------------------------------------------------------------- TPM and guest agent


class TpmError(HandoffError):
    """The emulated TPM (swtpm) cannot be set up or started."""


class GuestAgentError(HandoffError):
    """The guest agent's channel cannot be used (its socket, its answers)."""
class DeskError(HandoffError):
    """Looking Glass's memory, a USB device, a shared folder or sound cannot be set up."""
