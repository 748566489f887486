"""The record format of the device and setting journals: ``<run>/journal/<name>.json``.

Before handoff changes a device's binding it records, on disk, what the
device looked like (address, ids, original driver and module, original
driver_override) and which step it is about to take; before it changes a
host setting (a hugepage pool, a CPU's governor, a systemd unit's
AllowedCPUs=) it records the previous value. A supervisor killed with
SIGKILL leaves the journal behind; ``handoff recover`` (and the next
``handoff run``) reads it and puts everything back.

The record holds per-device state, not a session phase: detach and return
are operations on devices, usable before boot, after exit and during a live
hand-off (``live``: which way a live group was moving). The GPU hand-off
(``<profile>.json``, ``manual-<groups>.json``, group locks), the live
groups (``<profile>+live.json``) and the tuning (``<profile>+tune.json``,
a named lock) each write their own file in this one format. On disk it is
unchanged since version 1 (the ``step`` values, the keys), but for what the
reset ladder adds: the steps ``resetting`` and ``rescanning`` and a device's
``reset_method`` and ``outcome`` keys, written only when set.

It lives in ``<run>/journal/`` on tmpfs: it survives the death of the
supervisor but not a reboot, exactly like the bindings it describes. The
boot id is recorded as well, so a journal that somehow outlived a reboot
(a run directory on a persistent disk) is recognised as stale.
"""

from __future__ import annotations

import enum
import os
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from handoff.base.host import HostPaths
from handoff.journal import store
from handoff.journal.liveness import process_alive, read_boot_id
from handoff.journal.locks import Locks, lock_groups, lock_named
from handoff.journal.recover import Recoverer

JOURNAL_VERSION = 1
WHAT = "the hand-off journal"


class DeviceStep(enum.StrEnum):
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
    # The reset ladder (handoff.pci.revive), for a card that came back from the VM
    # dead (config space 0xffff) or vanished: written before its sysfs writes.
    RESETTING = "resetting"  # the kernel's reset of the function, once
    RESCANNING = "rescanning"  # remove + rescan of the card's functions


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
    step: DeviceStep = DeviceStep.HOST
    # A pinned [[passthrough]] reset: reset_method before the pin was written
    # (restored on return; None: not pinned). The reset ladder's outcome when it
    # gave up, for `handoff status` and `recover`.
    reset_method: str | None = None
    outcome: str | None = None


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
    proc: Path = field(default=HostPaths.proc, repr=False, compare=False)

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
            proc=paths.proc,
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
            "devices": [_device_json(d) for d in self.devices],
            "nodes": [vars(n).copy() for n in self.nodes],
            "settings": [{**vars(r), "kind": r.kind.value} for r in self.settings],
            "lock": self.lock,
        }

    @classmethod
    def load(cls, path: Path, proc: Path = HostPaths.proc) -> Journal:
        def build(data: dict[str, Any]) -> Journal:
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
                proc=proc,
            )

        return store.read_record(
            path, JOURNAL_VERSION, build, what=WHAT,
            fix="check the devices by hand (`handoff groups`), return them with "
            f"`handoff attach ADDRESS...`, then delete {path}",
        )

    def save(self) -> None:
        """Atomically replace the file (:func:`handoff.journal.store.write_atomic`)."""
        with self._lock:
            store.write_atomic(self.path, self.to_json(), what=WHAT, proc=self.proc)
            self.writes += 1

    def remove(self) -> None:
        """Delete the journal: every change it recorded has been undone."""
        store.remove_file(self.path, what=WHAT)

    # ------------------------------------------------------------------ records

    def record(self, address: str) -> DeviceRecord:
        for rec in self.devices:
            if rec.address == address:
                return rec
        raise KeyError(address)

    def set_step(self, address: str, step: DeviceStep) -> None:
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


def _device_json(record: DeviceRecord) -> dict[str, Any]:
    """A device's keys; the reset ones only when set (the version 1 layout otherwise)."""
    data = {**vars(record), "step": record.step.value}
    return {k: v for k, v in data.items() if v is not None or k not in _RESET_KEYS}


_RESET_KEYS = frozenset({"reset_method", "outcome"})


def _device_record(data: dict[str, Any]) -> DeviceRecord:
    record = DeviceRecord(**data)
    record.step = DeviceStep(record.step)
    return record


#: Between a profile's name and a capability's tag in a journal's name (``gaming+tune``):
#: never part of a profile name, so such a file is that capability's alone.
CAPABILITY_MARK = "+"


def capability_journal_name(profile: str, capability: str) -> str:
    """``<profile>+<capability>``: a capability's own journal beside the GPU's ones."""
    return f"{profile}{CAPABILITY_MARK}{capability}"


def capability_of(path: Path) -> str | None:
    """The capability tag of a journal file's name (``gaming+tune.json``: tune), else None."""
    _, mark, tag = path.stem.rpartition(CAPABILITY_MARK)
    return tag if mark else None


def journal_path(paths: HostPaths, name: str) -> Path:
    """``<run>/journal/<name>.json``; ``name`` is a profile name or ``manual-<groups>``."""
    return store.journal_dir(paths) / f"{name}.json"


def list_journals(paths: HostPaths) -> list[Path]:
    return store.list_files(store.journal_dir(paths))


def device_journals(paths: HostPaths) -> list[Path]:
    """The files of ``<run>/journal/`` holding device journals (no capability tag): the GPU
    hand-off's and the live groups' (told apart by ``live``)."""
    return [p for p in list_journals(paths) if capability_of(p) is None]


#: What a device journal of an earlier boot is discarded with.
DEVICES_AFTER_REBOOT = (
    "the reboot already returned every device to the kernel's default driver (and every "
    "setting to its boot value)"
)


def find_journal_for(paths: HostPaths, address: str) -> Journal | None:
    """The journal recording ``address``, if any."""
    for path in list_journals(paths):
        journal = Journal.load(path, paths.proc)
        if any(d.address == address for d in journal.devices):
            return journal
    return None


def lock_journal(paths: HostPaths, journal: Journal, owner: str) -> Locks:
    """The locks a journal's changes are made and undone under: its named lock or its groups."""
    if journal.lock is not None:
        return lock_named(paths, journal.lock, owner, f"the changes of {journal.path}")
    return lock_groups(paths, journal.groups, owner)


def qemu_in_use(paths: HostPaths, journal: Journal) -> str | None:
    """Why a device journal whose recorded QEMU still runs is left alone (None: it is gone)."""
    pid = journal.qemu_pid
    if pid is None or not process_alive(paths, pid, journal.qemu_start_time):
        return None
    return (
        f"its QEMU (pid {pid}) is still running and uses the devices; stop it (`kill {pid}`), "
        "then run `handoff recover` again"
    )


def device_recoverer(
    paths: HostPaths,
    name: str,
    *,
    wants: Callable[[Journal], bool],
    in_use: Callable[[Journal], str | None],
    finish: Callable[[Journal], Awaitable[list[str]]],
) -> Recoverer[Journal]:
    """A recoverer of the device journals (:func:`device_journals`), read and locked as
    every device journal is; the GPU hand-off and the live groups differ only in which
    journals they take (``wants``), when one is in use and how it is finished."""
    return Recoverer(
        name=name,
        journals=lambda: device_journals(paths),
        load=lambda path: Journal.load(path, paths.proc),
        wants=wants,
        lock=lambda journal: lock_journal(paths, journal, "handoff recover"),
        in_use=in_use,
        finish=finish,
        after_reboot=DEVICES_AFTER_REBOOT,
    )
