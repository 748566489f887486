"""Performance tuning as a session resource (see :mod:`handoff.session.resources`).

acquire (before QEMU starts)
    the session plan's tuning (``SessionPlan.tune``, planned once from the
    host facts the whole plan used; planned again from a fresh read only
    after a tuning journal a dead supervisor left for this profile is
    finished first, since that changed the pools and governors it counted);
    then, each change journaled before it is made: the hugepage pool(s)
    raised and the count verified (short: memory compacted and the pool
    raised again; still fewer pages than asked: the pool is given back and
    the session refused with the numbers and the boot-time fix, the host
    unchanged); the pinned CPUs' governors set
    (cpufreq absent: one status line). A failure undoes what was done.
vm_started (QMP connected, QEMU still paused under ``-S``)
    ``query-cpus-fast`` names each vCPU's thread; each gets its CPU set,
    every other thread of QEMU (``/proc/<qemu>/task``) the emulator set;
    each is verified from ``/proc/<qemu>/task/<tid>/status``
    (``Cpus_allowed_list``) and the map is reported. The session then sends
    ``cont``. Threads QEMU creates later inherit their creator's affinity
    (the main loop's: the emulator set). Affinities die with QEMU, so they
    are not journaled.
release (QEMU gone)
    governors and pools back to exactly their previous values, verified;
    the journal removed. ``handoff recover`` does the same from the journal
    after a supervisor SIGKILL (:mod:`handoff.tune.recovery`).

``cpu.isolate`` (systemd as PID 1 on cgroup v2, else refused when planned)
    QEMU starts in its own scope (the plan's argv wraps it in ``systemd-run
    --scope``, :mod:`handoff.tune.isolation`). At vm_started, before the
    pinning, the scope is verified (``/proc/<qemu>/cgroup`` names it, its
    ``cpuset.cpus`` holds the VM's CPUs), then system.slice, user.slice and
    init.scope get ``AllowedCPUs=<host CPUs>``, each journaled with its
    previous value first and verified from its ``cpuset.cpus``; release and
    ``handoff recover`` set them back like every other setting. The scope
    needs nothing: systemd collects it when QEMU exits.

Why it stays over 500 lines: pool, governors, isolation and pinning share one
journal and one lock, and release undoes them in the reverse of acquire's
order; apart, that order would live in no one place.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import trio

from handoff import journal as jr
from handoff.base import systemctl
from handoff.base.errors import (
    GovernorRefusedError,
    IsolationRefusedError,
    PinningRefusedError,
    QmpError,
    TuneError,
)
from handoff.base.host import HostPaths
from handoff.pci.ops import KernelWriter, SysfsWriter
from handoff.profile import Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle
from handoff.tune.cpulist import format_cpulist, parse_cpulist
from handoff.tune.hugepages import HugepagePlan, PoolTarget, check_raised
from handoff.tune.isolation import IsolationPlan, qemu_scope_unit
from handoff.tune.model import HugepagePool
from handoff.tune.pinning import PinPlan
from handoff.tune.plan import TunePlan, plan_tuning
from handoff.tune.recovery import recover_tuning, tune_journal_name, tune_lock_stem
from handoff.tune.settings import (
    Systemd,
    change_setting,
    confine_unit,
    restore_settings,
)
from handoff.tune.topology import cpu_root, read_host, read_hugepages

log = logging.getLogger("handoff.tune")

Report = Callable[[str], None]
SetAffinity = Callable[[int, frozenset[int]], None]


def _log_report(line: str) -> None:
    log.info("%s", line)


def pool_file(paths: HostPaths, target: PoolTarget, size_kib: int) -> Path:
    """The ``nr_hugepages`` file of one pool (node None: the global pool)."""
    name = f"hugepages-{size_kib}kB"
    if target.node is None:
        return paths.sys / "kernel/mm/hugepages" / name / "nr_hugepages"
    return paths.sys / f"devices/system/node/node{target.node}/hugepages" / name / "nr_hugepages"


def governor_file(paths: HostPaths, cpu: int) -> Path:
    return cpu_root(paths) / f"cpu{cpu}/cpufreq/scaling_governor"


# --------------------------------------------------------------------------- pinning (pure)


@dataclass(frozen=True)
class ThreadAffinity:
    """One QEMU thread, its role (``vCPU 3``, ``emulator``) and the CPUs it must run on."""

    tid: int
    role: str
    cpus: frozenset[int]


def vcpu_threads(reply: object) -> dict[int, int]:
    """vCPU index -> thread id, from ``query-cpus-fast``'s reply."""
    if not isinstance(reply, list):
        raise PinningRefusedError(
            f"query-cpus-fast answered {reply!r}, not a list of vCPUs",
            fix="use a QEMU that supports query-cpus-fast (2.12 or later)",
        )
    threads: dict[int, int] = {}
    for entry in reply:
        if isinstance(entry, Mapping) and "cpu-index" in entry and "thread-id" in entry:
            threads[int(entry["cpu-index"])] = int(entry["thread-id"])
    return threads


def affinity_targets(
    pin: PinPlan, vcpus: Mapping[int, int], tasks: Iterable[int]
) -> list[ThreadAffinity]:
    """Each vCPU thread its set, every other task of QEMU the emulator set (pure).

    Refuses when QEMU reports another vCPU count than the plan pinned.
    """
    if sorted(vcpus) != list(range(len(pin.vcpus))):
        raise PinningRefusedError(
            f"QEMU reports vCPUs {sorted(vcpus)}, the plan pins {len(pin.vcpus)} "
            f"(0-{len(pin.vcpus) - 1})",
            fix="keep -smp out of vm.extra_args: vm.cpus/sockets/cores/threads are what "
            "the pinning plan reads",
        )
    out = [ThreadAffinity(vcpus[i], f"vCPU {i}", cpus) for i, cpus in enumerate(pin.vcpus)]
    vcpu_tids = set(vcpus.values())
    out += [
        ThreadAffinity(t, "emulator", pin.emulator) for t in sorted(tasks) if t not in vcpu_tids
    ]
    return out


def cpus_allowed(paths: HostPaths, pid: int, tid: int) -> frozenset[int] | None:
    """``Cpus_allowed_list`` of one thread (None: the thread is gone)."""
    try:
        text = (paths.proc / str(pid) / "task" / str(tid) / "status").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key == "Cpus_allowed_list":
            return parse_cpulist(value)
    return None


def qemu_tasks(paths: HostPaths, pid: int) -> list[int]:
    try:
        return sorted(int(d.name) for d in (paths.proc / str(pid) / "task").iterdir())
    except OSError as exc:
        raise PinningRefusedError(
            f"cannot list QEMU's threads (/proc/{pid}/task): {exc.strerror or exc}",
            fix="mount /proc; QEMU may have exited (its log says why)",
        ) from exc


def qemu_cgroup(paths: HostPaths, pid: int) -> str | None:
    """QEMU's cgroup v2 path (``machine.slice/x.scope``) from ``/proc/<pid>/cgroup``."""
    try:
        text = (paths.proc / str(pid) / "cgroup").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("0::"):
            return line[3:].strip("/") or None
    return None


def _real_setaffinity(tid: int, cpus: frozenset[int]) -> None:
    os.sched_setaffinity(tid, cpus)


# --------------------------------------------------------------------------- the resource


class TuneResource:
    """Session resource: hugepage pool and governors for the session, QEMU's threads pinned."""

    def __init__(
        self,
        profile: Profile,
        paths: HostPaths,
        plan: TunePlan,
        *,
        writer: SysfsWriter | None = None,
        setaffinity: SetAffinity = _real_setaffinity,
        report: Report = _log_report,
        runner: systemctl.Runner | None = None,
    ) -> None:
        self.profile = profile
        self.paths = paths
        self.writer: SysfsWriter = writer or KernelWriter()
        self.setaffinity = setaffinity
        self.systemd = Systemd(paths, runner)
        self._isolated: list[tuple[str, str]] = []  # (unit, AllowedCPUs) confined and verified
        self._scope: str | None = None  # QEMU's scope's cgroup, verified
        self._isolate_seconds: float | None = None
        self.report = report
        self.planned = plan  # the session plan's tuning
        self.plan: TunePlan | None = None  # what acquire applied
        self.memlock_bytes: int | None = None
        self._journal: jr.Journal | None = None
        self._locks: jr.Locks | None = None
        self._affinity: list[ThreadAffinity] = []
        self._pool: JsonObject | None = None  # the pools raised and the seconds it took
        self._pin_seconds: float | None = None
        self._released: list[str] = []

    @property
    def name(self) -> str:
        return "tune"

    # ------------------------------------------------------------------ acquire

    def _replan(self) -> TunePlan:
        """The tuning planned again from the host as it is now (after a leftover's undo)."""
        p = self.profile
        return plan_tuning(p.cpu, p.memory, p.vm, read_host(self.paths))

    async def acquire(self) -> None:
        plan = self.planned
        if plan.isolation is not None:
            await trio.to_thread.run_sync(self._check_scope_free)
        # A leftover's raised pool would look like free pages already there:
        # undo it first, then plan from the host as it really is.
        if await self._finish_left_behind():
            plan = self._replan()
        self.plan = plan
        for line in plan.lines():
            self.report(f"tuning: {line}")
        if not self._needs_journal(plan):
            return
        locks = jr.lock_named(
            self.paths, tune_lock_stem(self.profile.name), f"handoff run {self.profile.name}",
            f"the tuning of profile {self.profile.name}",
        )
        journal = jr.Journal.begin(
            self.paths, tune_journal_name(self.profile.name), jr.Kind.SESSION, self.profile.name
        )
        journal.lock = tune_lock_stem(self.profile.name)
        try:
            if plan.hugepages is not None:
                await trio.to_thread.run_sync(self._raise_pool, plan.hugepages, journal)
            self._set_governors(plan, journal)
        except BaseException:
            self._undo(journal)
            locks.release()
            raise
        self._journal, self._locks = journal, locks

    @staticmethod
    def _needs_journal(plan: TunePlan) -> bool:
        pages = plan.hugepages
        raise_pool = pages is not None and any(t.target != t.before for t in pages.targets)
        return raise_pool or bool(plan.governor.targets) or plan.isolation is not None

    async def _finish_left_behind(self) -> bool:
        """A tuning journal of this profile left by a SIGKILLed supervisor: undo it first."""
        path = jr.journal_path(self.paths, tune_journal_name(self.profile.name))
        if not path.exists():
            return False
        report = await recover_tuning(self.paths, self.writer, self.systemd, only=path)
        for line in report.returned + report.discarded:
            self.report(f"recovered from an earlier session: {line}")
        if not report.ok:
            raise TuneError(
                "a tuning journal of an earlier session cannot be finished: "
                + "; ".join(report.refused + report.failed),
                fix="see the message; then `handoff recover`",
            )
        return True

    def _raise_pool(self, pages: HugepagePlan, journal: jr.Journal) -> None:
        """Raise each pool (journaled first), verify; if short, compact memory and raise again.

        Compaction (``vm/compact_memory``) makes free 2M/1G blocks out of
        fragmented memory; on a host with enough free blocks it only costs
        time (a few ms per GiB, bench/tune.py), so it runs when the first
        raise falls short. Still short: the pool is given back and the session
        refused with the numbers and the boot-time fix.
        """
        started = time.monotonic()
        self._write_targets(pages, journal)
        refusal = check_raised(pages, self._pool_now(pages))
        compact_s: float | None = None
        if refusal is not None and self._compact():
            compact_s = time.monotonic() - started
            self._write_targets(pages, journal)
            refusal = check_raised(pages, self._pool_now(pages))
        if refusal is not None:
            restore_settings(journal, self.writer)
            raise refusal
        total = time.monotonic() - started
        self._pool = {
            "pools": [
                {"pool": t.where, "size": pages.size.label, "before": t.before, "now": t.target}
                for t in pages.targets
            ],
            "compact_seconds": None if compact_s is None else round(compact_s, 4),
            "raise_seconds": round(total, 4),
        }
        how = "" if compact_s is None else ", memory compacted first"
        self.report(
            f"hugepages: {pages.pages} x {pages.size.label} reserved (pool raised in "
            f"{total:.3f} s{how})"
        )

    def _write_targets(self, pages: HugepagePlan, journal: jr.Journal) -> None:
        label = pages.size.label
        for t in pages.targets:
            if t.target == t.before:
                continue
            what = (f"the global {label} hugepage pool" if t.node is None
                    else f"NUMA node {t.node}'s {label} hugepage pool")
            change_setting(journal, self.writer, pool_file(self.paths, t, pages.size.kib),
                           str(t.target), what)

    def _pool_now(self, pages: HugepagePlan) -> HugepagePool:
        return next(p for p in read_hugepages(self.paths) if p.size_kib == pages.size.kib)

    def _compact(self) -> bool:
        """``vm/compact_memory``: fewer, larger free blocks for the pool (absent: skipped)."""
        path = self.paths.proc / "sys/vm/compact_memory"
        if not path.exists():
            return False
        try:
            self.writer.write(path, "1")
        except OSError as exc:
            log.debug("compact_memory: %s", exc)
            return False
        return True

    def _set_governors(self, plan: TunePlan, journal: jr.Journal) -> None:
        for cpu, name in sorted(plan.governor.targets.items()):
            what = f"CPU {cpu}'s cpufreq governor"
            now = change_setting(journal, self.writer, governor_file(self.paths, cpu), name, what)
            if now != name:
                raise GovernorRefusedError(
                    f"{what} reads {now!r} after writing {name!r}",
                    fix='set cpu.governor = "" to leave it alone, and check `dmesg`',
                )
        if plan.governor.targets:
            cpus = format_cpulist(plan.governor.targets)
            self.report(f"governor: CPUs {cpus} on {next(iter(plan.governor.targets.values()))}")

    def _undo(self, journal: jr.Journal) -> None:
        try:
            restore_settings(journal, self.writer, self.systemd)
        finally:
            if journal.empty:
                journal.remove()

    # ------------------------------------------------------------------ QEMU

    def note_qemu_pid(self, pid: int) -> None:
        if self._journal is not None:
            self._journal.note_qemu(pid, jr.process_start_time(self.paths, pid))

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        plan = self.plan
        if plan is not None and plan.isolation is not None:
            started = time.monotonic()
            await trio.to_thread.run_sync(self.isolate, vm.pid, plan.isolation)
            self._isolate_seconds = round(time.monotonic() - started, 4)
        if plan is None or not plan.pin.active:
            return
        started = time.monotonic()
        try:
            reply = await vm.execute("query-cpus-fast")
        except QmpError as exc:
            raise PinningRefusedError(
                f"query-cpus-fast failed: {exc}", fix="see QEMU's log (`handoff status`)"
            ) from exc
        targets = affinity_targets(plan.pin, vcpu_threads(reply), qemu_tasks(self.paths, vm.pid))
        self._affinity = self.pin_threads(vm.pid, targets)
        self._pin_seconds = round(time.monotonic() - started, 4)
        for line in self.map_lines():
            self.report(f"pinned: {line}")

    def _check_scope_free(self) -> None:
        """Refuse before any change when QEMU's scope name is taken (another QEMU runs in it)."""
        unit = qemu_scope_unit(self.profile.name)
        state = self.systemd.active_state(unit)
        if state in {"active", "activating", "deactivating", "reloading"}:
            raise IsolationRefusedError(
                f"QEMU's scope {unit} already exists ({state}): another QEMU of "
                f"profile {self.profile.name} still runs in it",
                fix=f"`systemctl status {unit}` names it; stop it (`systemctl stop {unit}`), "
                "then run again",
            )

    def isolate(self, pid: int, iso: IsolationPlan) -> None:
        """QEMU's scope verified, then each host unit confined (journaled first, verified)."""
        journal = self._journal
        assert journal is not None, "acquire opens the journal when isolation is planned"
        unit = qemu_scope_unit(self.profile.name)
        cgroup = qemu_cgroup(self.paths, pid)
        if cgroup is None or cgroup.rsplit("/", 1)[-1] != unit:
            raise IsolationRefusedError(
                f"QEMU (pid {pid}) runs in cgroup {cgroup or '(unknown)'}, not in its scope "
                f"{unit}: host tasks are not confined without it",
                fix="start the session with `handoff run` (its argv begins with systemd-run "
                "--scope); `handoff argv PROFILE` prints it",
            )
        cpus = self.systemd.cpuset(cgroup)
        if cpus != iso.vm_cpus:
            raise IsolationRefusedError(
                f"QEMU's scope {unit} has CPUs {format_cpulist(cpus) or '(all)'}, the plan "
                f"gives it {iso.qemu_scope} (/sys/fs/cgroup/{cgroup}/cpuset.cpus)",
                fix="check the cpuset controller (/sys/fs/cgroup/cgroup.controllers) and "
                "machine.slice's AllowedCPUs=; or set cpu.isolate = false",
            )
        self._scope = cgroup
        for name, value in iso.units:
            confine_unit(journal, self.systemd, name, iso.host_cpus)
            self._isolated.append((name, value))
        self.report(
            f"isolated: {', '.join(n for n, _ in iso.units)} on CPUs "
            f"{format_cpulist(iso.host_cpus)}; QEMU in {unit} on CPUs {iso.qemu_scope}"
        )

    def pin_threads(self, pid: int, targets: Sequence[ThreadAffinity]) -> list[ThreadAffinity]:
        """Set and verify each thread's affinity; threads that exited meanwhile are skipped."""
        done: list[ThreadAffinity] = []
        for t in targets:
            try:
                self.setaffinity(t.tid, t.cpus)
            except ProcessLookupError:
                continue
            except OSError as exc:
                raise PinningRefusedError(
                    f"cannot pin QEMU's {t.role} thread {t.tid} to CPUs "
                    f"{format_cpulist(t.cpus)}: {exc.strerror or exc}",
                    fix="the supervisor's cpuset must include the VM's CPUs (a cgroup or "
                    "systemd AllowedCPUs= limiting handoff?); run handoff as root",
                ) from exc
            now = cpus_allowed(self.paths, pid, t.tid)
            if now is None:
                continue
            if now != t.cpus:
                raise PinningRefusedError(
                    f"QEMU's {t.role} thread {t.tid} runs on CPUs {format_cpulist(now)} after "
                    f"pinning it to {format_cpulist(t.cpus)} (/proc/{pid}/task/{t.tid}/status)",
                    fix="something else sets QEMU's affinity (a cgroup cpuset, a tuning "
                    "daemon): stop it, or set cpu.pin = \"none\"",
                )
            done.append(t)
        return done

    def map_lines(self) -> list[str]:
        """``vCPU 0 (thread 1234) -> CPUs 4,12`` per vCPU, then the emulator threads."""
        lines = [
            f"{t.role} (thread {t.tid}) -> CPUs {format_cpulist(t.cpus)}"
            for t in self._affinity
            if t.role != "emulator"
        ]
        emulator = [t.tid for t in self._affinity if t.role == "emulator"]
        if emulator and self.plan is not None:
            lines.append(
                f"emulator ({len(emulator)} threads) -> CPUs "
                f"{format_cpulist(self.plan.pin.emulator)}"
            )
        return lines

    # ------------------------------------------------------------------ release

    async def release(self) -> None:
        """Governors and pools back (verified), the journal removed. Idempotent.

        The affinities need nothing: they went with QEMU's threads.
        """
        journal = self._journal
        if journal is None:
            return
        try:
            self._released = restore_settings(journal, self.writer, self.systemd)
            journal.remove()
            self._journal = None
        finally:
            if self._journal is None and self._locks is not None:
                self._locks.release()
                self._locks = None
        for line in self._released:
            self.report(f"restored {line}")

    def status(self) -> JsonObject:
        """Flat fields and lists of flat objects: ``handoff status`` prints one line per item.

        ``threads``: each pinned QEMU thread (tid, role, CPUs) as verified;
        ``pools``: each hugepage pool raised (size, before, now); ``governors``:
        each CPU whose governor was set; the ``*_seconds`` what each step took.
        """
        plan = self.plan
        pool = self._pool or {}
        return {
            "emulator": format_cpulist(plan.pin.emulator) if plan and plan.pin.active else None,
            "threads": [
                {"tid": t.tid, "role": t.role, "cpus": format_cpulist(t.cpus)}
                for t in self._affinity
            ],
            "pools": pool.get("pools", []),
            "governors": [
                {"cpu": cpu, "governor": name}
                for cpu, name in sorted(plan.governor.targets.items())
            ] if plan else [],
            "isolated_units": [
                {"unit": unit, "allowed_cpus": value} for unit, value in self._isolated
            ],
            "qemu_scope": self._scope,
            "qemu_scope_cpus": plan.isolation.qemu_scope if plan and plan.isolation else None,
            "isolate_seconds": self._isolate_seconds,
            "pin_seconds": self._pin_seconds,
            "compact_seconds": pool.get("compact_seconds"),
            "raise_seconds": pool.get("raise_seconds"),
            "journal": str(self._journal.path) if self._journal else None,
        }
