"""The tuning resource against a fake sysfs (fakecpu's kernel layout) and a recorded QMP reply.

The fake kernel (:class:`TuneKernel`) applies the semantics handoff relies
on: ``nr_hugepages`` grants at most what memory allows (a fragmented host
gives fewer pages than asked), ``scaling_governor`` refuses a governor not
offered, ``sched_setaffinity`` shows in ``/proc/<pid>/task/<tid>/status``.
Each write is recorded with the journal as it was at that moment, which is
how "journaled before the write" is checked.
"""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Callable, Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import (
    HugepagesRefusedError,
    IsolationRefusedError,
    PinningRefusedError,
    PreflightRefusedError,
)
from handoff.base.host import HostPaths
from handoff.profile import Accelerator, Profile, parse_profile
from handoff.session.plan import HostFacts, plan_session
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import CpuFreq
from handoff.tune.plan import TunePlan
from handoff.tune.recovery import recover_tuning, tune_journal_name, tune_lock_stem
from handoff.tune.resource import (
    TuneResource,
    affinity_targets,
    vcpu_threads,
)
from handoff.tune.topology import read_host
from tests.unit.fakecpu import SIZE_2M, CoreDef, machine, write_sysfs

#: QEMU 7.2's real reply to query-cpus-fast for -smp 2 (recorded on this project's host).
RECORDED_QUERY_CPUS_FAST = json.loads(
    '[{"thread-id": 15931, "props": {"core-id": 0, "thread-id": 0, "socket-id": 0}, '
    '"qom-path": "/machine/unattached/device[0]", "cpu-index": 0, "target": "x86_64"}, '
    '{"thread-id": 15932, "props": {"core-id": 1, "thread-id": 0, "socket-id": 0}, '
    '"qom-path": "/machine/unattached/device[2]", "cpu-index": 1, "target": "x86_64"}]'
)
QEMU_PID = 15930
EMULATOR_TIDS = (15930, 15933, 15934)  # main loop, RCU, a worker (as /proc/<qemu>/task lists)
BOOT_ID = "6dad839e-dcb7-441d-bdd7-99785b159941"

PROFILE = """
[vm]
name = "tuned"
memory = "64M"
cpus = 2
[cpu]
pin = "auto"
governor = "performance"
[memory]
hugepages = "2M"
"""


def journaled_settings(paths: HostPaths) -> list[dict[str, object]]:
    """The settings the "tuned" profile's journal holds now (none: no journal)."""
    path = jr.journal_path(paths, tune_journal_name("tuned"))
    if not path.exists():
        return []
    settings: list[dict[str, object]] = json.loads(path.read_text())["settings"]
    return settings


class TuneKernel:
    """The SysfsWriter: nr_hugepages, scaling_governor and compact_memory as the kernel does."""

    def __init__(self, paths: HostPaths, *, grantable: int = 1 << 20, compaction: int = 0) -> None:
        self.paths = paths
        self.grantable = grantable  # free pages the kernel can still find for a pool
        self.compaction = compaction  # pages compact_memory makes findable besides
        self.writes: list[tuple[str, str, list[dict[str, object]]]] = []

    def write(self, path: Path, value: str) -> None:
        self.writes.append((str(path), value, journaled_settings(self.paths)))
        if path.name == "nr_hugepages":
            now = int(path.read_text())
            wanted = int(value)
            granted = wanted if wanted <= now else min(wanted, now + self.grantable)
            self.grantable -= granted - now  # pages taken from free memory, or given back
            free = path.parent / "free_hugepages"
            free.write_text(f"{int(free.read_text()) + granted - now}\n")
            path.write_text(f"{granted}\n")
        elif path.name == "scaling_governor":
            offered = (path.parent / "scaling_available_governors").read_text().split()
            if value not in offered:
                raise OSError(errno.EINVAL, "Invalid argument")
            path.write_text(value + "\n")
        elif path.name == "compact_memory":
            self.grantable += self.compaction
        else:
            raise OSError(errno.EACCES, "Permission denied")

    def module_loadable(self, module: str) -> bool:
        return False

    def load_module(self, module: str) -> None:
        raise AssertionError("tuning never loads a module")


class FakeVm:
    """QEMU as the resource sees it: its pid and a QMP answering with the recorded reply."""

    def __init__(self, reply: object = RECORDED_QUERY_CPUS_FAST) -> None:
        self.reply = reply
        self.commands: list[str] = []

    @property
    def pid(self) -> int:
        return QEMU_PID

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        self.commands.append(command)
        assert command == "query-cpus-fast"
        return self.reply


def host(tmp_path: Path, *, cpufreq: bool = True) -> HostPaths:
    """4 cores without SMT, one node, cpufreq on each CPU, an empty 2M pool."""
    freq = {c: CpuFreq("schedutil", ("performance", "schedutil")) for c in range(4)}
    m = machine(
        "4c", [CoreDef((c,), c) for c in range(4)],
        hugepages={SIZE_2M: (3, 3)}, cpufreq=freq if cpufreq else None,
    )  # fmt: skip
    paths = write_sysfs(m, tmp_path)
    (paths.proc / "sys/kernel/random").mkdir(parents=True)
    (paths.proc / "sys/kernel/random/boot_id").write_text(BOOT_ID + "\n")
    (paths.proc / "sys/vm").mkdir(parents=True)
    (paths.proc / "sys/vm/compact_memory").write_text("")
    for tid in (*EMULATOR_TIDS, 15931, 15932):
        status = paths.proc / str(QEMU_PID) / "task" / str(tid) / "status"
        status.parent.mkdir(parents=True)
        status.write_text(f"Name:\tqemu\nCpus_allowed:\tf\nCpus_allowed_list:\t0-3\nPid:\t{tid}\n")
    return paths


def fake_setaffinity(
    paths: HostPaths, calls: list[tuple[int, frozenset[int]]]
) -> Callable[[int, frozenset[int]], None]:
    def setaffinity(tid: int, cpus: frozenset[int]) -> None:
        calls.append((tid, cpus))
        status = paths.proc / str(QEMU_PID) / "task" / str(tid) / "status"
        text = status.read_text().splitlines()
        out = [f"Cpus_allowed_list:\t{format_cpulist(cpus)}" if line.startswith(
            "Cpus_allowed_list:") else line for line in text]
        status.write_text("\n".join(out) + "\n")

    return setaffinity


def pool(paths: HostPaths) -> int:
    return int((paths.sys / "kernel/mm/hugepages/hugepages-2048kB/nr_hugepages").read_text())


def governor(paths: HostPaths, cpu: int) -> str:
    return (paths.sys / f"devices/system/cpu/cpu{cpu}/cpufreq/scaling_governor").read_text().strip()


def planned_tuning(profile: Profile, paths: HostPaths) -> TunePlan:
    """The session plan's tuning for ``profile`` on the fake host (as `handoff run` plans)."""
    facts = HostFacts(
        accel=Accelerator.TCG, accel_reason="", supervisor_uid=os.geteuid(), tuning=read_host(paths)
    )
    planned = plan_session(profile, facts, paths).tune
    assert planned is not None
    return planned


def resource(
    paths: HostPaths, kernel: TuneKernel, text: str = PROFILE, **kw: object
) -> TuneResource:
    profile = parse_profile(text, Path("/etc/handoff/tuned.toml"))
    lines: list[str] = []
    planned = planned_tuning(profile, paths)
    res = TuneResource(profile, paths, planned, writer=kernel, report=lines.append, **kw)  # type: ignore[arg-type]
    res.lines = lines  # type: ignore[attr-defined]
    return res


def journal_file(paths: HostPaths) -> Path:
    return jr.journal_path(paths, tune_journal_name("tuned"))


# --------------------------------------------------------------------------- acquire / release


def test_the_pool_is_raised_journaled_first_and_returns_to_exactly_its_value(
    tmp_path: Path,
) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    res = resource(paths, kernel)
    trio.run(res.acquire)
    # 64 MiB = 32 pages of 2M; 3 are free already, so the pool goes 3 -> 32.
    assert pool(paths) == 32
    pool_writes = [w for w in kernel.writes if w[0].endswith("nr_hugepages")]
    assert [v for _, v, _ in pool_writes] == ["32"]
    journaled = pool_writes[0][2]
    assert journaled
    assert journaled[0]["previous"] == "3"
    assert journaled[0]["value"] == "32"
    assert not any(w[0].endswith("compact_memory") for w in kernel.writes)  # not needed
    assert res.status()["pools"] == [
        {"pool": "the global pool", "size": "2M", "before": 3, "now": 32}
    ]
    trio.run(res.release)
    assert pool(paths) == 3
    assert not journal_file(paths).exists()
    trio.run(res.release)  # idempotent
    assert pool(paths) == 3


def test_governors_of_the_pinned_cpus_are_set_journaled_and_restored(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    res = resource(paths, kernel)
    trio.run(res.acquire)
    # auto on 4 single-thread cores keeps CPU 0 for the host: vCPUs on 1 and 2.
    assert res.plan is not None
    assert res.plan.pin.vcpus == (frozenset({1}), frozenset({2}))
    assert [governor(paths, c) for c in range(4)] == [
        "schedutil", "performance", "performance", "schedutil",
    ]
    for path, _value, journaled in kernel.writes:
        if path.endswith("scaling_governor"):
            assert any(r["target"] == path and r["previous"] == "schedutil" for r in journaled)
    trio.run(res.release)
    assert [governor(paths, c) for c in range(4)] == ["schedutil"] * 4


def test_a_short_raise_compacts_memory_and_raises_again(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths, grantable=10, compaction=40)  # fragmented until compacted
    res = resource(paths, kernel)
    trio.run(res.acquire)
    written = [(Path(p).name, v) for p, v, _ in kernel.writes if "cpufreq" not in p]
    assert written == [("nr_hugepages", "32"), ("compact_memory", "1"), ("nr_hugepages", "32")]
    assert pool(paths) == 32
    assert res.status()["compact_seconds"] is not None
    trio.run(res.release)
    assert pool(paths) == 3  # the value before the first write, not the short one


def test_fewer_pages_than_asked_gives_them_back_and_refuses_with_the_numbers(
    tmp_path: Path,
) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths, grantable=10)  # 10 more pages, compacted or not; 29 needed
    res = resource(paths, kernel)
    with pytest.raises(HugepagesRefusedError) as caught:
        trio.run(res.acquire)
    assert any(w[0].endswith("compact_memory") for w in kernel.writes)  # tried first
    assert "asked for 32 (was 3), the kernel gave 13" in caught.value.message
    assert "hugepagesz=2M hugepages=32" in (caught.value.fix or "")
    assert pool(paths) == 3
    assert [governor(paths, c) for c in range(4)] == ["schedutil"] * 4
    assert not journal_file(paths).exists()


def test_absent_cpufreq_is_one_status_line_and_nothing_is_journaled(tmp_path: Path) -> None:
    paths = host(tmp_path, cpufreq=False)
    kernel = TuneKernel(paths)
    text = PROFILE.replace('hugepages = "2M"', 'hugepages = "none"')
    res = resource(paths, kernel, text)
    trio.run(res.acquire)
    absent = [line for line in res.lines if "cpufreq absent" in line]  # type: ignore[attr-defined]
    assert len(absent) == 1
    assert "CPUs 1-2" in absent[0]
    assert kernel.writes == []
    assert not journal_file(paths).exists()


def test_isolation_without_systemd_is_refused_saying_why(tmp_path: Path) -> None:
    paths = host(tmp_path)
    (paths.proc / "1").mkdir(parents=True)
    (paths.proc / "1/comm").write_text("init\n")
    kernel = TuneKernel(paths)
    with pytest.raises(IsolationRefusedError) as caught:  # the session plan refuses
        resource(paths, kernel, PROFILE.replace("[cpu]", "[cpu]\nisolate = true"))
    assert "needs systemd as PID 1" in caught.value.message
    assert "'init'" in caught.value.message
    assert kernel.writes == []


def test_a_pinning_the_host_cannot_give_changes_nothing(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    text = PROFILE.replace("cpus = 2", "cpus = 4")  # 4 cores, one kept: 3 for 4 vCPUs
    with pytest.raises(PinningRefusedError):  # the session plan refuses
        resource(paths, kernel, text)
    assert kernel.writes == []
    assert pool(paths) == 3


# --------------------------------------------------------------------------- pinning


def test_vcpu_and_emulator_threads_are_pinned_from_the_recorded_reply_and_verified(
    tmp_path: Path,
) -> None:
    paths = host(tmp_path)
    calls: list[tuple[int, frozenset[int]]] = []
    res = resource(paths, TuneKernel(paths), setaffinity=fake_setaffinity(paths, calls))
    trio.run(res.acquire)
    vm = FakeVm()

    async def started() -> None:
        await res.vm_started(vm, None, None)  # type: ignore[arg-type]  # uses neither

    trio.run(started)
    assert vm.commands == ["query-cpus-fast"]
    by_tid = dict(calls)
    assert by_tid[15931] == frozenset({1})
    assert by_tid[15932] == frozenset({2})
    assert {by_tid[t] for t in EMULATOR_TIDS} == {frozenset({0, 3})}
    threads = res.status()["threads"]
    assert {t["tid"]: t["cpus"] for t in threads} == {
        15931: "1", 15932: "2", 15930: "0,3", 15933: "0,3", 15934: "0,3",
    }
    assert "pinned: vCPU 0 (thread 15931) -> CPUs 1" in res.lines  # type: ignore[attr-defined]
    trio.run(res.release)


def test_an_affinity_the_kernel_did_not_take_is_refused(tmp_path: Path) -> None:
    paths = host(tmp_path)
    res = resource(paths, TuneKernel(paths), setaffinity=lambda tid, cpus: None)
    trio.run(res.acquire)

    async def started() -> None:
        await res.vm_started(FakeVm(), None, None)  # type: ignore[arg-type]  # uses neither

    with pytest.raises(PinningRefusedError, match="runs on CPUs 0-3 after pinning it to 1"):
        trio.run(started)
    trio.run(res.release)


def test_qemu_reporting_another_vcpu_count_is_refused() -> None:
    from handoff.tune.pinning import PinPlan

    pin = PinPlan((frozenset({1}), frozenset({2})), frozenset({0}), ())
    with pytest.raises(PinningRefusedError, match="QEMU reports vCPUs"):
        affinity_targets(pin, vcpu_threads(RECORDED_QUERY_CPUS_FAST[:1]), [1, 2])


# --------------------------------------------------------------------------- recover


def _abandon(paths: HostPaths, kernel: TuneKernel) -> None:
    """A session that acquired and then lost its supervisor (SIGKILL: no release)."""
    res = resource(paths, kernel)
    trio.run(res.acquire)
    res.note_qemu_pid(999_999)  # a QEMU that is gone too
    assert res._locks is not None
    res._locks.release()  # the kernel drops a dead process's flock


def test_recover_finishes_a_killed_supervisors_pool_and_governors(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    _abandon(paths, kernel)
    assert pool(paths) == 32
    assert governor(paths, 1) == "performance"
    report = trio.run(recover_tuning, paths, kernel)
    assert report.ok, report.lines()
    assert pool(paths) == 3
    assert [governor(paths, c) for c in range(4)] == ["schedutil"] * 4
    assert not journal_file(paths).exists()
    assert any("hugepage pool back to 3" in line for line in report.returned)


def test_the_next_run_of_the_profile_finishes_the_leftover_first(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    _abandon(paths, kernel)
    res = resource(paths, kernel)
    trio.run(res.acquire)
    assert any("recovered from an earlier session" in x for x in res.lines)  # type: ignore[attr-defined]
    trio.run(res.release)
    assert pool(paths) == 3  # not 32: the leftover's previous value was kept


def test_recover_discards_a_journal_of_an_earlier_boot_without_writing(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    _abandon(paths, kernel)
    data = json.loads(journal_file(paths).read_text())
    journal_file(paths).write_text(json.dumps({**data, "boot_id": "another-boot"}))
    before = len(kernel.writes)
    report = trio.run(recover_tuning, paths, kernel)
    assert report.discarded
    assert len(kernel.writes) == before
    assert not journal_file(paths).exists()


def test_recover_leaves_a_live_sessions_tuning_alone(tmp_path: Path) -> None:
    paths = host(tmp_path)
    kernel = TuneKernel(paths)
    res = resource(paths, kernel)
    trio.run(res.acquire)  # holds its lock, as a live supervisor does
    report = trio.run(recover_tuning, paths, kernel)
    assert report.refused
    assert pool(paths) == 32
    with pytest.raises(PreflightRefusedError):
        jr.lock_named(paths, tune_lock_stem("tuned"), "test", "x")
    trio.run(res.release)
    assert pool(paths) == 3


def test_a_device_journal_without_settings_loads_as_before(tmp_path: Path) -> None:
    paths = host(tmp_path)
    journal = jr.Journal.begin(paths, "gpu", jr.Kind.SESSION, "gpu")
    journal.save()
    data = json.loads(journal.path.read_text())
    del data["settings"], data["lock"]  # a journal written before tuning existed
    journal.path.write_text(json.dumps(data))
    loaded = jr.Journal.load(journal.path)
    assert loaded.settings == []
    assert loaded.lock is None
    assert replace(loaded, path=journal.path).empty
