"""Change a kernel setting journaled, and put it back: the tuning's one way to write the host.

A setting (``nr_hugepages`` of a pool, a CPU's ``scaling_governor``) is a
kernel file with a value. :func:`change_setting` records its previous value
in the journal (write-ahead, :class:`handoff.journal.SettingRecord`),
writes the new one through the same :class:`handoff.pci.ops.SysfsWriter`
the PCI engine uses, and reads it back. :func:`restore_settings` writes each
previous value back, newest first, verifies it and drops the record; it is
what a session's release and ``handoff recover`` both call.

The kernel may accept a write yet hold another value (a hugepage pool it
could not fill): the read-back is the caller's to judge for the new value
(:func:`handoff.tune.hugepages.check_raised`), and must equal the previous
value exactly when restoring.

A systemd unit's ``AllowedCPUs=`` (``cpu.isolate``) is a setting too, made
through systemd's own interface (:class:`Systemd` over :mod:`handoff.base.systemctl`:
``systemctl show`` / ``systemctl set-property --runtime``; runtime only, so a
reboot forgets it)
and verified from the unit's ``cpuset.cpus`` in /sys/fs/cgroup.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

from handoff import journal as jr
from handoff.base import systemctl
from handoff.base.errors import HandoffError, SysfsWriteError, TuneError
from handoff.base.host import HostPaths
from handoff.tune.cpulist import format_cpulist, parse_cpulist


class SettingWriter(Protocol):
    """write(2) on a kernel file (:class:`handoff.pci.ops.KernelWriter` in production)."""

    def write(self, path: Path, value: str) -> None: ...


def read_setting(path: Path) -> str:
    try:
        return path.read_text().strip()
    except OSError as exc:
        raise TuneError(
            f"cannot read {path}: {exc.strerror or exc}",
            fix="mount sysfs and procfs (handoff reads the setting before changing it)",
        ) from exc


def write_setting(writer: SettingWriter, path: Path, value: str, what: str) -> str:
    """Write ``value`` to ``path``; the value the kernel holds afterwards."""
    try:
        writer.write(path, value)
    except OSError as exc:
        raise SysfsWriteError(
            f"cannot set {what} ({path}) to {value}: {exc.strerror or exc}",
            fix="run handoff as root (it writes kernel settings for the session)",
        ) from exc
    return read_setting(path)


def change_setting(
    journal: jr.Journal, writer: SettingWriter, path: Path, value: str, what: str
) -> str:
    """Journal ``path``'s current value, then write ``value``; returns the value read back.

    A setting already recorded keeps its first previous value (a retry does
    not forget what the host had).
    """
    previous = read_setting(path)
    journal.record_setting(
        jr.SettingRecord(jr.SettingKind.SYSFS, str(path), previous, value, what)
    )
    return write_setting(writer, path, value, what)


class Systemd:
    """AllowedCPUs= of systemd units through :mod:`handoff.base.systemctl`, read back from the
    cgroup tree. A systemctl that fails raises :class:`handoff.base.errors.SystemdError`."""

    def __init__(self, paths: HostPaths, runner: systemctl.Runner | None = None) -> None:
        self.sys = paths.sys
        self.cgroup_root = paths.sys / "fs/cgroup"
        self.runner: systemctl.Runner = runner or systemctl.SubprocessRunner()

    def allowed_cpus(self, unit: str) -> str:
        """The unit's AllowedCPUs= as systemd holds it ("" when unset: every CPU)."""
        return systemctl.allowed_cpus(self.runner, unit)

    def set_allowed_cpus(self, unit: str, value: str) -> None:
        systemctl.set_allowed_cpus(self.runner, unit, value)

    def active_state(self, unit: str) -> str:
        return systemctl.active_state(self.runner, unit)

    def online(self) -> frozenset[int]:
        """/sys/devices/system/cpu/online."""
        try:
            return parse_cpulist((self.sys / "devices/system/cpu/online").read_text().strip())
        except OSError as exc:
            raise TuneError(
                f"cannot read the online CPUs: {exc.strerror or exc}", fix="mount sysfs"
            ) from exc

    def has_cgroup(self, cgroup: str) -> bool:
        return (self.cgroup_root / cgroup).is_dir()

    def cpuset(self, cgroup: str) -> frozenset[int]:
        """``cpuset.cpus`` of a cgroup (a top-level unit's is its name); absent or "": none set."""
        try:
            text = (self.cgroup_root / cgroup / "cpuset.cpus").read_text()
        except FileNotFoundError:
            return frozenset()
        except OSError as exc:
            raise TuneError(
                f"cannot read {self.cgroup_root / cgroup / 'cpuset.cpus'}: {exc.strerror or exc}",
                fix="mount cgroup v2 on /sys/fs/cgroup",
            ) from exc
        return parse_cpulist(text.strip())


def confine_unit(journal: jr.Journal, systemd: Systemd, unit: str, cpus: frozenset[int]) -> None:
    """Journal ``unit``'s AllowedCPUs=, then set it to ``cpus``, verified from cpuset.cpus."""
    value = format_cpulist(cpus)
    previous = systemd.allowed_cpus(unit)
    what = f"{unit}'s AllowedCPUs"
    journal.record_setting(
        jr.SettingRecord(jr.SettingKind.ALLOWED_CPUS, unit, previous, value, what)
    )
    systemd.set_allowed_cpus(unit, value)
    if not systemd.has_cgroup(unit):
        # No tasks, no cgroup (user.slice with nobody logged in): systemd applies
        # the property when the unit starts; what it holds is what can be checked.
        held = systemd.allowed_cpus(unit)
        if parse_cpulist(held) != cpus:
            raise TuneError(
                f"{unit} holds AllowedCPUs={held} after setting {value}",
                fix=f"check `systemctl show -p AllowedCPUs {unit}`; or set cpu.isolate = false",
            )
        return
    now = systemd.cpuset(unit)
    if now != cpus:
        raise TuneError(
            f"{unit} runs on CPUs {format_cpulist(now) or '(all)'} after AllowedCPUs={value} "
            f"({systemd.cgroup_root / unit / 'cpuset.cpus'})",
            fix="the cpuset controller must be available (cgroup v2, `cat "
            "/sys/fs/cgroup/cgroup.controllers`); or set cpu.isolate = false",
        )


def _restore_unit(systemd: Systemd, record: jr.SettingRecord) -> str | None:
    """The unit's AllowedCPUs= back; None when verified, else what is wrong.

    Unset (""): first every online CPU, then unset. systemd writes a unit's
    cpuset.cpus only while the unit itself asks for CPUs; unsetting alone
    may leave the confined value in the file while a sibling (QEMU's scope)
    keeps the controller on. So "unset" is verified as: no cpuset.cpus, an
    empty one, or one holding every online CPU.
    """
    unit, previous = record.target, record.previous
    online = systemd.online()
    if not previous:
        systemd.set_allowed_cpus(unit, format_cpulist(online))
    systemd.set_allowed_cpus(unit, previous)
    held = systemd.allowed_cpus(unit)
    now = systemd.cpuset(unit)
    free = not previous and (not now or now >= online)
    if held != previous or not (free or now == parse_cpulist(previous)):
        return (
            f"{record.what} reads {held!r} (cpuset.cpus {format_cpulist(now)!r}) after "
            f"setting back {previous!r}"
        )
    return None


def _restore_file(writer: SettingWriter, record: jr.SettingRecord) -> str | None:
    path = Path(record.target)
    now = write_setting(writer, path, record.previous, record.what)
    if now != record.previous:
        return f"{record.what} ({path}) reads {now} after writing back {record.previous}"
    return None


def restore_settings(
    journal: jr.Journal, writer: SettingWriter, systemd: Systemd | None = None
) -> list[str]:
    """Every recorded setting back to its previous value, newest first, verified.

    A setting that does not go back stays in the journal (``handoff
    recover`` tries again) and a TuneError lists it after the others were
    handled. Returns one line per restored setting. ``systemd`` is needed
    only for AllowedCPUs records (None: systemctl on the real host).
    """
    notes: list[str] = []
    failures: list[str] = []
    for record in reversed(list(journal.settings)):
        try:
            if record.kind is jr.SettingKind.ALLOWED_CPUS:
                wrong = _restore_unit(systemd or Systemd(HostPaths()), record)
            else:
                wrong = _restore_file(writer, record)
        except HandoffError as exc:
            failures.append(exc.message)
            continue
        if wrong is not None:
            failures.append(wrong)
            continue
        journal.drop_setting(record.target)
        notes.append(f"{record.what} back to {record.previous or '(unset: every CPU)'}")
    if failures:
        raise TuneError(
            "could not restore every host setting:\n" + "\n".join(f"  - {f}" for f in failures),
            fix=f"fix the cause, then `handoff recover` (the journal {journal.path} keeps what "
            "is left)",
        )
    return notes
