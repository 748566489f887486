"""Real CPU topologies as data, and as fake sysfs trees laid out as the kernel lays them out.

A machine is described core by core (:class:`CoreDef`: its CPUs, core_id,
package, L3 domain, NUMA node, hybrid kind); :func:`machine` turns that into
the :class:`HostTuning` the planners read, and :func:`write_sysfs` writes
the tree the kernel would show for it, so the reader can be tested against
it:

- ``sys/devices/system/cpu/{online,present,possible,offline,smt/control}``;
- ``cpuN/online`` (not for cpu0, as on x86), and for online CPUs only
  ``cpuN/topology/*`` and ``cpuN/cache/index0..3/{level,type,shared_cpu_list,
  shared_cpu_map,id}`` (the kernel removes both when a CPU goes offline);
- ``cpuN/nodeK`` -> ``../../node/nodeK``, ``node/nodeK/{cpulist,cpumap,
  hugepages/hugepages-<kB>/*}``, ``node/{online,possible,has_cpu}``;
- ``cpuN/cpufreq`` -> ``../cpufreq/policyN`` with ``scaling_governor`` and
  ``scaling_available_governors``;
- ``sys/kernel/mm/hugepages/hugepages-<kB>/{nr,free,resv,surplus}_hugepages``;
- ``sys/devices/cpu_core/cpus`` and ``cpu_atom/cpus`` on hybrid Intel;
- ``proc/cpuinfo`` with a flags line.

The numbering of each table machine is what Linux shows on that CPU
(siblings ``n, n+4`` on a 4c/8t Intel, ``n, n+8`` on an 8c/16t Ryzen,
adjacent ``2k, 2k+1`` P-core pairs then single E-cores on Alder Lake).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from handoff.base.host import HostPaths
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import (
    CoreKind,
    CpuFreq,
    HostCpu,
    HostTopology,
    HostTuning,
    HugepagePool,
    PagePool,
)

SIZE_2M, SIZE_1G = 2048, 1048576
X86_FLAGS = frozenset({"fpu", "vme", "pse", "msr", "pae", "pse36", "sse2", "ht", "lm", "pdpe1gb"})


@dataclass(frozen=True)
class CoreDef:
    """One physical core: its logical CPUs (online ones; ``offline`` siblings apart)."""

    cpus: tuple[int, ...]
    core_id: int
    package: int = 0
    die: int = 0
    cluster: int | None = None
    l3: int | None = 0  # L3 domain number within the machine; None: no L3
    kind: CoreKind = CoreKind.UNIFORM
    node: int | None = None


@dataclass(frozen=True)
class Machine:
    """A named machine: what the planners see, and what to write to sysfs for it."""

    name: str
    tuning: HostTuning

    @property
    def topology(self) -> HostTopology:
        return self.tuning.topology


def machine(
    name: str,
    cores: Sequence[CoreDef],
    *,
    offline: frozenset[int] = frozenset(),
    smt_control: str | None = "on",
    hugepages: Mapping[int, tuple[int, int]] | None = None,
    node_hugepages: Mapping[tuple[int, int], tuple[int, int]] | None = None,
    cpufreq: Mapping[int, CpuFreq] | None = None,
    flags: frozenset[str] = X86_FLAGS,
) -> Machine:
    """A machine from its cores; ``hugepages`` is size -> (total, free), per node (node, size)."""
    l3_sets: dict[int, set[int]] = {}
    for core in cores:
        if core.l3 is not None:
            l3_sets.setdefault(core.l3, set()).update(core.cpus)
    cpus = [
        HostCpu(
            cpu=cpu,
            package=core.package,
            core=core.core_id,
            siblings=frozenset(core.cpus),
            die=core.die,
            cluster=core.cluster,
            l3=None if core.l3 is None else frozenset(l3_sets[core.l3]),
            kind=core.kind,
            node=core.node,
        )
        for core in cores
        for cpu in core.cpus
    ]
    cpus.sort(key=lambda c: c.cpu)
    online = frozenset(c.cpu for c in cpus)
    topology = HostTopology(tuple(cpus), present=online | offline, smt_control=smt_control)
    nodes = sorted(topology.nodes)
    sizes = hugepages or {SIZE_2M: (0, 0), SIZE_1G: (0, 0)}
    per_node = node_hugepages or {}
    pools = tuple(
        HugepagePool(
            size,
            PagePool(total, free),
            {n: PagePool(*per_node.get((n, size), (0, 0))) for n in nodes},
        )
        for size, (total, free) in sorted(sizes.items())
    )
    tuning = HostTuning(topology, pools, dict(cpufreq or {}), flags)
    return Machine(name, tuning)


# --------------------------------------------------------------------------- the table


def intel_4c8t() -> Machine:
    """Core i7-7700: 4 cores, siblings n and n+4, one L3."""
    cores = [CoreDef((i, i + 4), core_id=i, cluster=i) for i in range(4)]
    freq = {cpu: CpuFreq("powersave", ("performance", "powersave")) for cpu in range(8)}
    return machine("4c/8t Intel", cores, cpufreq=freq)


def ryzen_6c12t() -> Machine:
    """Ryzen 5 5600X (Zen 3): 6 cores in one CCX (one L3), siblings n and n+6."""
    cores = [CoreDef((i, i + 6), core_id=i, cluster=i) for i in range(6)]
    return machine("6c/12t Ryzen 1 CCX", cores)


def ryzen_8c16t_2ccx() -> Machine:
    """Ryzen 7 3700X (Zen 2): two CCX of 4 cores, each with its own L3; siblings n, n+8."""
    cores = [CoreDef((i, i + 8), core_id=i, cluster=i, l3=i // 4) for i in range(8)]
    freq = {
        cpu: CpuFreq(
            "schedutil",
            ("conservative", "ondemand", "userspace", "powersave", "performance", "schedutil"),
        )
        for cpu in range(16)
    }
    return machine("8c/16t Ryzen 2 CCX", cores, cpufreq=freq)


def ryzen_16c32t_2ccd() -> Machine:
    """Ryzen 9 5950X (Zen 3): two CCDs of 8 cores, one L3 each; siblings n, n+16."""
    cores = [CoreDef((i, i + 16), core_id=i, cluster=i, l3=i // 8) for i in range(16)]
    return machine("16c/32t Ryzen 2 CCD", cores)


def intel_hybrid_8p8e() -> Machine:
    """Core i9-12900K: 8 P-cores with SMT (CPUs 2k, 2k+1), 8 E-cores without (16-23)."""
    p_cores = [
        CoreDef((2 * i, 2 * i + 1), core_id=4 * i, cluster=i, kind=CoreKind.PERFORMANCE)
        for i in range(8)
    ]
    e_cores = [
        CoreDef((16 + j,), core_id=32 + j, cluster=8 + j // 4, kind=CoreKind.EFFICIENCY)
        for j in range(8)
    ]
    return machine("hybrid 8P+8E Intel", p_cores + e_cores)


def smt_off_8c() -> Machine:
    """The 3700X booted with SMT off (``nosmt``): CPUs 8-15 present but offline."""
    cores = [CoreDef((i,), core_id=i, cluster=i, l3=i // 4) for i in range(8)]
    return machine("8c SMT off", cores, offline=frozenset(range(8, 16)), smt_control="off")


def numa_2node() -> Machine:
    """Two-socket Xeon, 8c/16t per socket: node p = package p, siblings n, n+16."""
    cores = [
        CoreDef((p * 8 + i, 16 + p * 8 + i), core_id=i, package=p, l3=p, node=p)
        for p in range(2)
        for i in range(8)
    ]
    return machine(
        "2-node NUMA Xeon",
        cores,
        hugepages={SIZE_2M: (0, 0), SIZE_1G: (0, 0)},
        node_hugepages={(0, SIZE_2M): (0, 0), (1, SIZE_2M): (0, 0)},
    )


TABLE = (
    intel_4c8t,
    ryzen_6c12t,
    ryzen_8c16t_2ccx,
    ryzen_16c32t_2ccd,
    intel_hybrid_8p8e,
    smt_off_8c,
    numa_2node,
)


# --------------------------------------------------------------------------- sysfs


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n")


def _mask(cpus: Sequence[int] | frozenset[int]) -> str:
    value = sum(1 << c for c in cpus)
    return f"{value:08x}"


def write_sysfs(m: Machine, root: Path) -> HostPaths:
    """Write ``m`` as the kernel shows it under ``root/sys`` and ``root/proc``."""
    paths = HostPaths(sys=root / "sys", proc=root / "proc", dev=root / "dev", run=root / "run")
    topo = m.topology
    cpu_dir = paths.sys / "devices/system/cpu"
    present = topo.present
    _write(cpu_dir / "online", format_cpulist(topo.online))
    _write(cpu_dir / "present", format_cpulist(present))
    _write(cpu_dir / "possible", format_cpulist(present))
    _write(cpu_dir / "offline", format_cpulist(present - topo.online))
    if topo.smt_control is not None:
        _write(cpu_dir / "smt/control", topo.smt_control)
    for cpu in sorted(present):
        d = cpu_dir / f"cpu{cpu}"
        d.mkdir(parents=True, exist_ok=True)
        if cpu != 0:
            _write(d / "online", "1" if cpu in topo.online else "0")
    for c in topo.cpus:
        _write_cpu(m, paths, c)
    _write_nodes(m, paths)
    _write_hugepages(m, paths)
    if topo.hybrid:
        for pmu, kind in (("cpu_core", CoreKind.PERFORMANCE), ("cpu_atom", CoreKind.EFFICIENCY)):
            _write(
                paths.sys / "devices" / pmu / "cpus",
                format_cpulist(x.cpu for x in topo.cpus if x.kind is kind),
            )
            _write(paths.sys / "devices" / pmu / "type", "8" if pmu == "cpu_atom" else "4")
    flags = " ".join(sorted(m.tuning.cpu_flags))
    blocks = [
        f"processor\t: {c.cpu}\nvendor_id\t: GenuineIntel\nflags\t\t: {flags}\n" for c in topo.cpus
    ]
    _write(paths.proc / "cpuinfo", "\n".join(blocks))
    return paths


def _write_cpu(m: Machine, paths: HostPaths, c: HostCpu) -> None:
    topo = m.topology
    d = paths.sys / f"devices/system/cpu/cpu{c.cpu}"
    t = d / "topology"
    package_cpus = [x.cpu for x in topo.cpus if x.package == c.package]
    _write(t / "physical_package_id", str(c.package))
    _write(t / "die_id", str(c.die if c.die is not None else 0))
    if c.cluster is not None:
        _write(t / "cluster_id", str(c.cluster))
    _write(t / "core_id", str(c.core))
    for name, cpus in (
        ("thread_siblings", c.siblings),
        ("core_cpus", c.siblings),
        ("core_siblings", package_cpus),
        ("package_cpus", package_cpus),
        ("die_cpus", package_cpus),
    ):
        _write(t / f"{name}_list", format_cpulist(cpus))
        _write(t / name, _mask(cpus))
    caches = [
        (1, "Data", c.siblings),
        (1, "Instruction", c.siblings),
        (2, "Unified", c.siblings),
    ]
    if c.l3 is not None:
        caches.append((3, "Unified", c.l3))
    for index, (level, kind, shared) in enumerate(caches):
        i = d / "cache" / f"index{index}"
        _write(i / "level", str(level))
        _write(i / "type", kind)
        _write(i / "shared_cpu_list", format_cpulist(shared))
        _write(i / "shared_cpu_map", _mask(shared))
        _write(i / "id", str(min(shared)))
    if c.node is not None:
        os.symlink(f"../../node/node{c.node}", d / f"node{c.node}")
    freq = m.tuning.cpufreq.get(c.cpu)
    if freq is not None:
        policy = paths.sys / f"devices/system/cpu/cpufreq/policy{c.cpu}"
        _write(policy / "scaling_governor", freq.governor)
        _write(policy / "scaling_available_governors", " ".join(freq.available))
        _write(policy / "affected_cpus", str(c.cpu))
        os.symlink(f"../cpufreq/policy{c.cpu}", d / "cpufreq")


def _write_nodes(m: Machine, paths: HostPaths) -> None:
    nodes = sorted(m.topology.nodes)
    if not nodes:
        return
    base = paths.sys / "devices/system/node"
    for name in ("online", "possible", "has_cpu"):
        _write(base / name, format_cpulist(nodes))
    for n in nodes:
        cpus = [c.cpu for c in m.topology.cpus if c.node == n]
        _write(base / f"node{n}/cpulist", format_cpulist(cpus))
        _write(base / f"node{n}/cpumap", _mask(cpus))
        for pool in m.tuning.hugepages:
            counts = pool.nodes.get(n, PagePool(0, 0))
            h = base / f"node{n}/hugepages/hugepages-{pool.size_kib}kB"
            _write(h / "nr_hugepages", str(counts.total))
            _write(h / "free_hugepages", str(counts.free))
            _write(h / "surplus_hugepages", "0")


def _write_hugepages(m: Machine, paths: HostPaths) -> None:
    for pool in m.tuning.hugepages:
        h = paths.sys / f"kernel/mm/hugepages/hugepages-{pool.size_kib}kB"
        _write(h / "nr_hugepages", str(pool.whole.total))
        _write(h / "free_hugepages", str(pool.whole.free))
        _write(h / "resv_hugepages", str(pool.whole.reserved))
        _write(h / "surplus_hugepages", "0")
        _write(h / "nr_overcommit_hugepages", "0")
