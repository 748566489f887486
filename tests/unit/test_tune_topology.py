"""Reading the host: topology, hugepage pools and cpufreq from sysfs, under HostPaths.

Every table machine is written as the kernel lays out sysfs (tests/unit/fakecpu.py)
and read back; a missing optional file is a None, never an error; and the reader
runs on this machine's real /sys.
"""

import os
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from handoff.tune.cpulist import parse_cpulist
from handoff.tune.model import CoreKind, CpuFreq
from handoff.tune.topology import read_cpu_flags, read_host, read_hugepages, read_topology
from tests.unit import fakecpu
from tests.unit.fakecpu import Machine


@pytest.mark.parametrize("build", fakecpu.TABLE, ids=lambda b: b.__name__)
def test_every_table_machine_reads_back_from_its_sysfs(
    build: Callable[[], Machine], tmp_path: Path
) -> None:
    m = build()
    paths = fakecpu.write_sysfs(m, tmp_path)
    assert read_host(paths) == m.tuning


def test_siblings_l3_and_core_ids_come_from_the_kernels_files(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.ryzen_8c16t_2ccx(), tmp_path)
    topo = read_topology(paths)
    cpu5 = topo.by_cpu[5]
    assert cpu5.siblings == {5, 13}
    assert cpu5.core == 5
    assert cpu5.l3 == parse_cpulist("4-7,12-15")
    assert [core.cpus for core in topo.cores][:3] == [(0, 8), (1, 9), (2, 10)]
    assert len(topo.cores) == 8


def test_hybrid_cores_are_told_apart_by_cpu_core_and_cpu_atom(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.intel_hybrid_8p8e(), tmp_path)
    topo = read_topology(paths)
    assert topo.hybrid
    assert {c.cpu for c in topo.cpus if c.kind is CoreKind.PERFORMANCE} == set(range(16))
    assert {c.cpu for c in topo.cpus if c.kind is CoreKind.EFFICIENCY} == set(range(16, 24))
    assert topo.by_cpu[17].siblings == {17}
    assert topo.by_cpu[17].cluster == 8


def test_smt_off_siblings_are_offline_not_cores(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.smt_off_8c(), tmp_path)
    topo = read_topology(paths)
    assert topo.online == set(range(8))
    assert topo.offline == set(range(8, 16))
    assert topo.smt_control == "off"
    assert all(len(core.cpus) == 1 for core in topo.cores)


def test_numa_nodes_and_per_node_pools(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.numa_2node(), tmp_path)
    topo = read_topology(paths)
    assert topo.nodes == {0, 1}
    assert topo.by_cpu[24].node == 1
    (pool_2m, pool_1g) = read_hugepages(paths)
    assert (pool_2m.size_kib, pool_1g.size_kib) == (2048, 1048576)
    assert set(pool_2m.nodes) == {0, 1}


def test_pool_counters_are_read_globally_and_per_node(tmp_path: Path) -> None:
    m = fakecpu.machine(
        "numa pools",
        [fakecpu.CoreDef((0,), 0, node=0), fakecpu.CoreDef((1,), 1, node=1)],
        hugepages={2048: (12, 5)},
        node_hugepages={(0, 2048): (8, 1), (1, 2048): (4, 4)},
    )
    paths = fakecpu.write_sysfs(m, tmp_path)
    (h,) = paths.sys.joinpath("kernel/mm/hugepages").iterdir()
    h.joinpath("resv_hugepages").write_text("2\n")
    (pool,) = read_hugepages(paths)
    assert (pool.whole.total, pool.whole.free, pool.whole.reserved) == (12, 5, 2)
    assert pool.whole.available == 3
    assert (pool.nodes[0].total, pool.nodes[0].free) == (8, 1)
    assert (pool.nodes[1].total, pool.nodes[1].free) == (4, 4)


def test_missing_optional_files_are_normal(tmp_path: Path) -> None:
    """No cluster_id (before 5.16), no die_id, no L3, no cpufreq, no NUMA, no smt/ directory."""
    paths = fakecpu.write_sysfs(fakecpu.intel_4c8t(), tmp_path)
    cpu_dir = paths.sys / "devices/system/cpu"
    for n in range(8):
        (cpu_dir / f"cpu{n}/topology/cluster_id").unlink()
        (cpu_dir / f"cpu{n}/topology/die_id").unlink()
        shutil.rmtree(cpu_dir / f"cpu{n}/cache/index3")
        (cpu_dir / f"cpu{n}/cpufreq").unlink()
    shutil.rmtree(cpu_dir / "smt")
    shutil.rmtree(cpu_dir / "cpufreq")
    host = read_host(paths)
    cpu = host.topology.by_cpu[3]
    assert (cpu.cluster, cpu.die, cpu.l3, cpu.node) == (None, None, None, None)
    assert cpu.siblings == {3, 7}
    assert host.cpufreq == {}
    assert host.topology.smt_control is None
    assert host.topology.nodes == frozenset()


def test_no_hugetlb_no_cpuinfo_no_topology_directory(tmp_path: Path) -> None:
    """A kernel without HugeTLB, a /proc without cpuinfo, an online CPU without topology/."""
    m = fakecpu.intel_4c8t()
    paths = fakecpu.write_sysfs(m, tmp_path)
    shutil.rmtree(paths.sys / "kernel/mm/hugepages")
    (paths.proc / "cpuinfo").unlink()
    shutil.rmtree(paths.sys / "devices/system/cpu/cpu2/topology")
    host = read_host(paths)
    assert host.hugepages == ()
    assert host.cpu_flags == frozenset()
    cpu2 = host.topology.by_cpu[2]
    assert (cpu2.core, cpu2.siblings, cpu2.package) == (2, frozenset({2}), 0)


def test_cpufreq_is_read_through_the_policy_link(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.intel_4c8t(), tmp_path)
    assert (paths.sys / "devices/system/cpu/cpu5/cpufreq").is_symlink()
    host = read_host(paths)
    assert host.cpufreq[5] == CpuFreq("powersave", ("performance", "powersave"))


def test_cpu_flags_come_from_proc_cpuinfo(tmp_path: Path) -> None:
    paths = fakecpu.write_sysfs(fakecpu.intel_4c8t(), tmp_path)
    assert "pdpe1gb" in read_cpu_flags(paths)


def test_the_reader_works_on_this_machines_real_sys() -> None:
    """This machine's /sys: whatever it has (here 2 CPUs, no SMT siblings, no cpufreq)."""
    paths = HostPaths()
    host = read_host(paths)
    topo = host.topology
    online = parse_cpulist(Path("/sys/devices/system/cpu/online").read_text())
    assert topo.online == online
    assert len(topo.online) == os.cpu_count()
    in_cores = [cpu for core in topo.cores for cpu in core.cpus]
    assert sorted(in_cores) == sorted(online)  # every online CPU in exactly one core
    for cpu in topo.cpus:
        expected = Path(f"/sys/devices/system/cpu/cpu{cpu.cpu}/topology/thread_siblings_list")
        if expected.exists():
            assert cpu.siblings == parse_cpulist(expected.read_text()) & online
    assert set(host.cpufreq) <= online
    assert all(pool.size_kib > 0 for pool in host.hugepages)
