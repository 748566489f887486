"""The write-ahead journal of every host change, and the per-group locks.

Before handoff changes a device's binding it records, on disk, what the
device looked like (address, ids, original driver and module, original
driver_override) and which step it is about to take. A supervisor killed
with SIGKILL, or a power cut, leaves the journal behind; ``handoff recover``
(and the next ``handoff run``) reads it and returns every device. The file
is replaced atomically (temp file, fsync, rename, fsync of the directory) so
a crash leaves either the old or the new record, never half of one.

The journal records per-device state, not a session phase: detach and
return are operations on devices, usable before boot and after exit today
and during a live hand-off later. Host settings a session changes for
performance (a hugepage pool's size, a CPU's governor: kernel files with a
previous value to write back; a systemd slice's AllowedCPUs=) are recorded
the same way, as :class:`SettingRecord` s, by :mod:`handoff.tune.resource` in a journal of
their own (``<name>+tune.json``, locked by ``<run>/locks/tune-<name>.lock``
instead of group locks), and finished by the same ``handoff recover``.

It lives in ``<run>/journal/`` on tmpfs: it survives the death of the
supervisor but not a reboot, exactly like the bindings it describes. The
boot id is recorded as well, so a journal that somehow outlived a reboot
(a run directory on a persistent disk) is recognised as stale.

Locks: one ``flock`` per IOMMU group in ``<run>/locks/``, taken and
recorded (``<pid> <owner>``) with :mod:`handoff.rundir`'s helpers, the
same as a run directory's lock. The kernel drops
a flock when its holder dies, so a lock that cannot be taken always means a
live process owns the group; recovery never touches a group whose lock it
cannot take.

Why it stays over 500 lines: the record format, its atomic write and the
locks that guard it are one contract (a record is only read under the lock
it names); split, that contract would be spread over files.
"""

from __future__ import annotations

import contextlib
import enum
import functools
import json
import os
import signal
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoff.errors import JournalError, PreflightRefusedError
from handoff.host import HostPaths
from handoff.pci.sysfs import read_boot_id
from handoff.rundir import flock_nowait, read_holder, record_holder

JOURNAL_VERSION = 1

# Fault injection for the crash-recovery tests (realkernel): the process
# SIGKILLs itself right after the N-th journal write (1-based). Never set it
# outside tests.
CRASH_AFTER_ENV = "HANDOFF_TEST_CRASH_AFTER_JOURNAL_WRITE"


class Step(enum.StrEnum):
    """Where a device is. Every record is written (HOST) before the first change
    to any device; a device's step is written before its sysfs writes start
    and after they are verified; a returned device's record is dropped once
    verified. Return is idempotent from every state in between (the original
    driver and driver_override are all it needs), so a step per individual
    write would add journal writes, not information: each costs about as much
    as a sysfs write under emulation (bench/gpu_handoff.py)."""

    HOST = "host"  # recorded, not touched yet
    DETACHING = "detaching"  # driver_override → unbind → drivers_probe (→ bind) under way
    ON_VFIO = "on-vfio"  # verified on vfio-pci


class Kind(enum.StrEnum):
    """Who made the journal: a `handoff run` session or a manual `handoff detach`."""

    SESSION = "session"
    MANUAL = "manual"


def journal_dir(paths: HostPaths) -> Path:
    return paths.run / "journal"


def locks_dir(paths: HostPaths) -> Path:
    return paths.run / "locks"


@dataclass
class DeviceRecord:
    """What a device looked like before handoff touched it, and where it is now."""

    address: str
    ids: str
    group: int
    original_driver: str | None
    original_module: str | None
    original_override: str | None
    step: Step = Step.HOST


@dataclass
class NodeRecord:
    """/dev/vfio/N's ownership before handoff chowned it for the QEMU user."""

    path: str
    uid: int
    gid: int
    mode: int


class SettingKind(enum.StrEnum):
    """What a recorded setting is, i.e. how it is written back."""

    SYSFS = "sysfs"  # a kernel file (nr_hugepages, scaling_governor): write the value back
    # A systemd unit's AllowedCPUs= (cpu.isolate): target is the unit,
    # previous the value `systemctl show -p AllowedCPUs` gave ("" = unset);
    # set back with `systemctl set-property --runtime`.
    ALLOWED_CPUS = "allowed-cpus"


@dataclass
class SettingRecord:
    """A host setting before handoff changed it: written to the journal before the change."""

    kind: SettingKind
    target: str  # the file (SYSFS), the unit (ALLOWED_CPUS)
    previous: str
    value: str
    what: str  # for people: "the global 2M hugepage pool", "CPU 3's cpufreq governor"


@dataclass
class Journal:
    """One journal file: the devices and nodes a session (or a manual detach) changed."""

    path: Path
    kind: Kind
    owner: str
    boot_id: str
    supervisor_pid: int
    devices: list[DeviceRecord] = field(default_factory=list)
    nodes: list[NodeRecord] = field(default_factory=list)
    settings: list[SettingRecord] = field(default_factory=list)
    lock: str | None = None  # a named lock in <run>/locks/ (tuning journals), else group locks
    qemu_pid: int | None = None
    qemu_start_time: int | None = None
    # A live group's step (handoff.live.state.LiveStep): which way it was moving.
    live: str | None = None
    writes: int = 0
    # Saves come from worker threads (the engine's step sequences); one at a time.
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)
    _ready: bool = field(default=False, repr=False, compare=False)
    _durable: bool = field(default=True, repr=False, compare=False)

    @classmethod
    def begin(cls, paths: HostPaths, name: str, kind: Kind, owner: str) -> Journal:
        """A new, empty journal ``<run>/journal/<name>.json`` of this boot and process.

        Nothing is written until the engine records the devices.
        """
        return cls(
            path=journal_path(paths, name),
            kind=kind,
            owner=owner,
            boot_id=read_boot_id(paths),
            supervisor_pid=os.getpid(),
        )

    # ------------------------------------------------------------------ persistence

    def to_json(self) -> dict[str, Any]:
        return {
            "version": JOURNAL_VERSION,
            "kind": self.kind.value,
            "owner": self.owner,
            "boot_id": self.boot_id,
            "supervisor_pid": self.supervisor_pid,
            "qemu_pid": self.qemu_pid,
            "qemu_start_time": self.qemu_start_time,
            "live": self.live,
            "devices": [{**vars(d), "step": d.step.value} for d in self.devices],
            "nodes": [vars(n).copy() for n in self.nodes],
            "settings": [{**vars(r), "kind": r.kind.value} for r in self.settings],
            "lock": self.lock,
        }

    @classmethod
    def load(cls, path: Path) -> Journal:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            _check_version(data)
            return cls(
                path=path,
                kind=Kind(data["kind"]),
                owner=str(data["owner"]),
                boot_id=str(data["boot_id"]),
                supervisor_pid=int(data["supervisor_pid"]),
                qemu_pid=data.get("qemu_pid"),
                qemu_start_time=data.get("qemu_start_time"),
                live=data.get("live"),
                devices=[_device_record(d) for d in data["devices"]],
                nodes=[NodeRecord(**n) for n in data["nodes"]],
                settings=[_setting_record(r) for r in data.get("settings", [])],
                lock=data.get("lock"),
            )
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise JournalError(
                f"cannot read the hand-off journal {path}: {exc}",
                fix="check the devices by hand (`handoff groups`), return them with "
                f"`handoff attach ADDRESS...`, then delete {path}",
            ) from exc

    def save(self) -> None:
        """Atomically replace the file: temp + fsync + rename + fsync(dir)."""
        with self._lock:
            self._save()

    def _save(self) -> None:
        directory = str(self.path.parent)
        target = str(self.path)
        tmp = f"{directory}/.{self.path.name}.tmp"
        data = json.dumps(self.to_json(), separators=(",", ":")).encode()
        try:
            if not self._ready:
                os.makedirs(directory, mode=0o700, exist_ok=True)
                self._durable = not _volatile(directory)
                self._ready = True
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
            try:
                os.write(fd, data)
                if self._durable:
                    os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, target)
            if self._durable:
                _fsync_dir(self.path.parent)
        except OSError as exc:
            raise JournalError(
                f"cannot write the hand-off journal {self.path}: {exc}",
                fix=f"make {directory} writable (it is on tmpfs under the run directory) "
                "and free some space",
            ) from exc
        self.writes += 1
        _maybe_crash()

    def remove(self) -> None:
        """Delete the journal: every change it recorded has been undone."""
        try:
            self.path.unlink()
            _fsync_dir(self.path.parent)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise JournalError(
                f"cannot delete the hand-off journal {self.path}: {exc}",
                fix=f"delete it by hand once `handoff groups` shows every device back: rm "
                f"{self.path}",
            ) from exc

    # ------------------------------------------------------------------ records

    def record(self, address: str) -> DeviceRecord:
        for rec in self.devices:
            if rec.address == address:
                return rec
        raise KeyError(address)

    def set_step(self, address: str, step: Step) -> None:
        """Write-ahead: persist the step a device is about to take."""
        self.record(address).step = step
        self.save()

    def drop_device(self, address: str) -> None:
        self.devices = [d for d in self.devices if d.address != address]
        self.save()

    def note_qemu(self, pid: int, start_time: int | None) -> None:
        self.qemu_pid = pid
        self.qemu_start_time = start_time
        self.save()

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted({d.group for d in self.devices}))

    @property
    def empty(self) -> bool:
        return not self.devices and not self.nodes and not self.settings

    def record_setting(self, record: SettingRecord) -> None:
        """Write-ahead: persist a setting's previous value before it is changed."""
        if not any(r.target == record.target for r in self.settings):
            self.settings.append(record)
            self.save()

    def drop_setting(self, target: str) -> None:
        self.settings = [r for r in self.settings if r.target != target]
        self.save()


def _setting_record(data: dict[str, Any]) -> SettingRecord:
    record = SettingRecord(**data)
    record.kind = SettingKind(record.kind)
    return record


def _device_record(data: dict[str, Any]) -> DeviceRecord:
    record = DeviceRecord(**data)
    record.step = Step(record.step)
    return record


def _check_version(data: dict[str, Any]) -> None:
    if data.get("version") != JOURNAL_VERSION:
        raise ValueError(f"unknown journal version {data.get('version')!r}")


_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})


@functools.lru_cache(maxsize=8)
def _volatile(directory: str) -> bool:
    """Whether ``directory`` is on tmpfs/ramfs (the default /run/handoff is).

    There fsync has nothing to flush: a SIGKILLed process's writes are in
    the page cache either way, and a power cut clears the journal together
    with the bindings it records. The rename stays: it is what makes a save
    atomic. On a disk (a run directory under /tmp, say) every save fsyncs.
    """
    best, fstype = "", ""
    try:
        with open("/proc/self/mountinfo", encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                fs = fields[fields.index("-") + 1]
                inside = directory == point or directory.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fs
    except (OSError, ValueError, IndexError):
        return False
    return fstype in _VOLATILE_FS


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_CRASH_AFTER = os.environ.get(CRASH_AFTER_ENV)


def _maybe_crash() -> None:
    """Test-only fault injection: SIGKILL after the N-th journal write of this process."""
    limit = _CRASH_AFTER
    if not limit:
        return
    _maybe_crash.count = getattr(_maybe_crash, "count", 0) + 1  # type: ignore[attr-defined]
    if _maybe_crash.count >= int(limit):  # type: ignore[attr-defined]
        os.kill(os.getpid(), signal.SIGKILL)


def journal_path(paths: HostPaths, name: str) -> Path:
    """``<run>/journal/<name>.json``; ``name`` is a profile name or ``manual-<groups>``."""
    return journal_dir(paths) / f"{name}.json"


def list_journals(paths: HostPaths) -> list[Path]:
    directory = journal_dir(paths)
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []


def find_journal_for(paths: HostPaths, address: str) -> Journal | None:
    """The journal recording ``address``, if any."""
    for path in list_journals(paths):
        journal = Journal.load(path)
        if any(d.address == address for d in journal.devices):
            return journal
    return None


def process_start_time(paths: HostPaths, pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if the pid is gone.

    With the start time a recycled pid is not mistaken for the recorded QEMU.
    """
    try:
        text = (paths.proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def process_alive(paths: HostPaths, pid: int, start_time: int | None) -> bool:
    if not (paths.proc / str(pid)).exists():
        return False
    if start_time is None:
        return True
    now = process_start_time(paths, pid)
    return now is None or now == start_time


# --------------------------------------------------------------------------- locks


class GroupLocks:
    """flock()s on ``<run>/locks/iommu-group-N.lock``, one per group, held together."""

    def __init__(self, fds: dict[int, int]) -> None:
        self._fds = fds

    @property
    def groups(self) -> tuple[int, ...]:
        return tuple(sorted(self._fds))

    def release(self) -> None:
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}


def _lock_path(paths: HostPaths, group: int) -> Path:
    return locks_dir(paths) / f"iommu-group-{group}.lock"


def lock_groups(paths: HostPaths, groups: Iterable[int], owner: str) -> GroupLocks:
    """Take every group's lock without waiting, or refuse naming the holder."""
    directory = locks_dir(paths)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    taken: dict[int, int] = {}
    try:
        for group in sorted(set(groups)):
            taken[group] = _lock_one(paths, group, owner)
    except BaseException:
        GroupLocks(taken).release()
        raise
    return GroupLocks(taken)


def _lock_one(paths: HostPaths, group: int, owner: str) -> int:
    """One group's lock, recorded as ours, or a refusal naming its holder."""
    path = _lock_path(paths, group)
    fd = flock_nowait(path)
    if fd is None:
        holder = read_holder(path)
        who = holder.describe() if holder is not None else "unknown pid"
        raise PreflightRefusedError(
            f"refusing the hand-off: another handoff ({who}) holds IOMMU group {group} "
            f"(lock {path})",
            fix="stop that session first (`handoff status`), or wait for it to end",
        )
    record_holder(fd, owner)
    return fd


def lock_named(paths: HostPaths, stem: str, owner: str, what: str) -> GroupLocks:
    """Take ``<run>/locks/<stem>.lock`` without waiting, or refuse naming its holder.

    A journal's named lock (:attr:`Journal.lock`) is what its group locks are
    to a device journal: held by the live session, taken by recovery.
    """
    directory = locks_dir(paths)
    directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = directory / f"{stem}.lock"
    fd = flock_nowait(path)
    if fd is None:
        holder = read_holder(path)
        who = holder.describe() if holder is not None else "unknown pid"
        raise PreflightRefusedError(
            f"another handoff ({who}) holds {what} (lock {path})",
            fix="stop that session first (`handoff status`), or wait for it to end",
        )
    record_holder(fd, owner)
    return GroupLocks({-1: fd})


def lock_journal(paths: HostPaths, journal: Journal, owner: str) -> GroupLocks:
    """The locks a journal's changes are made and undone under: its named lock or its groups."""
    if journal.lock is not None:
        return lock_named(paths, journal.lock, owner, f"the changes of {journal.path}")
    return lock_groups(paths, journal.groups, owner)


@contextlib.contextmanager
def held_groups(paths: HostPaths, groups: Iterable[int], owner: str) -> Iterator[GroupLocks]:
    locks = lock_groups(paths, groups, owner)
    try:
        yield locks
    finally:
        locks.release()
