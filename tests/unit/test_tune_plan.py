"""The tuning part of the session plan: typed host changes in order, and the RAM backend in argv.

Goldens on the README's worked example (Ryzen 7 3700X, two CCX) and on a
two-node host, where the backend interleaves over the pinned nodes the pool
planner split the pages over.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from handoff.base.errors import HugepagesRefusedError, PinningRefusedError
from handoff.base.host import HostPaths
from handoff.profile import parse_profile
from handoff.qemu.cmdline import memory_backend_object
from handoff.session.plan import ChangeKind, HostFacts, SessionPlan, plan_session
from handoff.tune.model import CpuFreq, HugepageSize
from handoff.tune.plan import MemoryBackend, NumaPolicy, plan_tuning
from tests.unit.fakecpu import numa_2node, ryzen_8c16t_2ccx

PATHS = HostPaths(run=Path("/run/handoff"))
SOURCE = Path("/etc/handoff/tuned.toml")

WORKED = """
[vm]
name = "tuned"
memory = "16G"
cpus = 8
sockets = 1
cores = 4
threads = 2
[cpu]
pin = "auto"
governor = "performance"
[memory]
hugepages = "2M"
"""


def facts(tuning: object) -> HostFacts:
    return HostFacts(accel="kvm", accel_reason="", supervisor_uid=0, tuning=tuning)  # type: ignore[arg-type]


def ryzen() -> HostFacts:
    m = ryzen_8c16t_2ccx()
    freq = {c: CpuFreq("schedutil", ("performance", "schedutil")) for c in range(16)}
    return facts(replace(m.tuning, cpufreq=freq))


def plan(text: str, host: HostFacts) -> SessionPlan:
    return plan_session(parse_profile(text, SOURCE), host, PATHS)


def test_the_worked_example_pins_ccx_1_and_lists_every_change_in_order() -> None:
    p = plan(WORKED, ryzen())
    assert p.tune is not None
    assert p.tune.pin.vcpus == tuple(frozenset({c}) for c in (4, 12, 5, 13, 6, 14, 7, 15))
    tuning = [c for c in p.changes if c.kind.name in {
        "RAISE_HUGEPAGES", "SET_GOVERNOR", "PIN_VCPUS", "SET_EMULATOR_AFFINITY",
    }]  # fmt: skip
    assert [c.describe() for c in tuning] == [
        "raise-hugepages: the global pool: 0 -> 8192 pages of 2M (compacted first), back to 0 "
        "after",
        *[f"set-governor: CPU {c}: schedutil -> performance, back after"
          for c in (4, 5, 6, 7, 12, 13, 14, 15)],
        *[f"pin-vcpus: vCPU {i}: thread affinity CPUs {c} (query-cpus-fast thread-id), gone "
          "with QEMU" for i, c in enumerate((4, 12, 5, 13, 6, 14, 7, 15))],
        "set-emulator-affinity: QEMU's other threads: affinity CPUs 0-3,8-11 "
        "(/proc/<qemu>/task), gone with QEMU",
    ]  # fmt: skip
    kinds = [c.kind for c in p.changes]
    # Pool and governors before QEMU starts (with the run directory), pins once it runs.
    assert kinds.index(ChangeKind.RAISE_HUGEPAGES) < kinds.index(ChangeKind.PIN_VCPUS)
    assert kinds[:2] == [ChangeKind.CREATE_RUN_DIR, ChangeKind.CREATE_RUN_DIR]


def test_hugepages_put_a_preallocated_memfd_backend_in_the_argv_run_starts() -> None:
    p = plan(WORKED, ryzen())
    argv = list(p.argv)
    assert argv[argv.index("-machine") + 1] == "q35,accel=kvm,memory-backend=ram"
    assert argv[argv.index("-m") + 1] == "16384M"
    assert argv[argv.index("-object") + 1] == (
        "memory-backend-memfd,id=ram,size=16384M,hugetlb=on,hugetlbsize=2M,prealloc=on"
    )
    assert p.argv_with_monitor_fd(7)[argv.index("-object") + 1] == argv[argv.index("-object") + 1]


def test_without_tuning_the_argv_and_changes_are_as_before() -> None:
    text = WORKED.split("[cpu]")[0]
    p = plan(text, facts(None))
    assert p.tune is None
    assert "-object" not in p.argv
    assert "memory-backend=ram" not in " ".join(p.argv)
    assert {c.kind for c in p.changes} == {ChangeKind.CREATE_RUN_DIR}


def test_pinned_vcpus_on_two_nodes_interleave_the_backend_over_them() -> None:
    m = numa_2node()  # node 0: CPUs 0-7,16-23; node 1: CPUs 8-15,24-31
    two = '[vm]\nname = "n"\nmemory = "2G"\ncpus = 2\n[cpu]\npin = ["1", "9"]\n' \
        '[memory]\nhugepages = "2M"\n'
    p = plan(two, facts(m.tuning))
    assert p.tune is not None
    assert p.tune.backend is not None
    assert p.tune.backend.host_nodes == (0, 1)
    assert [(t.node, t.wanted) for t in p.tune.hugepages.targets] == [(0, 512), (1, 512)]  # type: ignore[union-attr]
    assert "policy=interleave,host-nodes=0-1" in " ".join(p.argv)
    one = plan(two.replace('"9"', '"2"'), facts(m.tuning))
    assert one.tune is not None
    assert one.tune.backend is not None
    assert one.tune.backend.policy is NumaPolicy.BIND
    assert "policy=bind,host-nodes=0-0" in " ".join(one.argv)


@pytest.mark.parametrize(
    ("backend", "expected"),
    [
        (MemoryBackend(1024, HugepageSize.SIZE_2M),
         "memory-backend-memfd,id=ram,size=1024M,hugetlb=on,hugetlbsize=2M,prealloc=on"),
        (MemoryBackend(2048, HugepageSize.SIZE_1G, (1,)),
         "memory-backend-memfd,id=ram,size=2048M,hugetlb=on,hugetlbsize=1G,prealloc=on,"
         "policy=bind,host-nodes=1-1"),
        (MemoryBackend(2048, HugepageSize.SIZE_2M, (0, 1)),
         "memory-backend-memfd,id=ram,size=2048M,hugetlb=on,hugetlbsize=2M,prealloc=on,"
         "policy=interleave,host-nodes=0-1"),
        (MemoryBackend(2048, HugepageSize.SIZE_2M, (0, 2)),
         '{"qom-type":"memory-backend-memfd","id":"ram","size":2147483648,"hugetlb":true,'
         '"hugetlbsize":2097152,"prealloc":true,"policy":"interleave","host-nodes":[0,2]}'),
    ],
)  # fmt: skip
def test_the_backend_object_in_the_form_qemu_7_2_accepts(
    backend: MemoryBackend, expected: str
) -> None:
    assert memory_backend_object(backend) == expected


def test_a_refused_tuning_refuses_the_plan_before_anything_runs() -> None:
    m = ryzen_8c16t_2ccx()
    too_many = WORKED.replace("cpus = 8", "cpus = 16").replace("cores = 4", "cores = 8")
    with pytest.raises(PinningRefusedError, match="physical cores"):
        plan(too_many, facts(m.tuning))
    no_1g = replace(m.tuning, cpu_flags=frozenset())
    with pytest.raises(HugepagesRefusedError, match="pdpe1gb"):
        plan(WORKED.replace('"2M"', '"1G"'), facts(no_1g))


def test_the_tuning_plan_s_lines_show_the_map_then_the_reasons() -> None:
    host = ryzen().tuning
    assert host is not None
    profile = parse_profile(WORKED, SOURCE)
    tune = plan_tuning(profile.cpu, profile.memory, profile.vm, host)
    lines = tune.lines()
    assert lines[0] == "vCPU 0 -> CPU 4"
    assert "emulator -> CPUs 0-3,8-11" in lines
    assert any(line.startswith("8192 pages of 2M for 16384 MiB") for line in lines)
