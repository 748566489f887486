"""Read the host's CPU topology, hugepage pools and cpufreq state (read-only edge).

Everything comes from sysfs under ``HostPaths.sys`` (and the CPU flags from
``HostPaths.proc``), so a fake tree works the same as the real one:

- ``devices/system/cpu/{online,present,smt/control}``;
- per online CPU ``cpuN/topology/{physical_package_id,die_id,cluster_id,
  core_id,thread_siblings_list}``, the level-3 entry of ``cpuN/cache/index*``
  and ``cpuN/cpufreq/scaling_{governor,available_governors}``;
- ``devices/system/node/nodeK/cpulist`` and ``nodeK/hugepages``;
- ``kernel/mm/hugepages/hugepages-<size>kB``;
- ``devices/cpu_core/cpus`` and ``devices/cpu_atom/cpus`` on hybrid Intel.

A missing optional file is normal (no cluster_id before Linux 5.16, no L3 on
some CPUs, no cpufreq in a VM, no NUMA without CONFIG_NUMA): the field is
None or the entry is absent, never an error.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from pathlib import Path

from handoff.base.host import HostPaths
from handoff.tune.cpulist import parse_cpulist
from handoff.tune.model import (
    CoreKind,
    CpuFreq,
    HostCpu,
    HostTopology,
    HostTuning,
    HugepagePool,
    PagePool,
)

_POOL_DIR = re.compile(r"hugepages-(\d+)kB")


def _text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except (FileNotFoundError, NotADirectoryError):
        return None


def _int(path: Path) -> int | None:
    text = _text(path)
    return int(text) if text is not None and text.lstrip("-").isdecimal() else None


def _cpus(path: Path) -> frozenset[int] | None:
    text = _text(path)
    return None if text is None else parse_cpulist(text, what=str(path))


def cpu_root(paths: HostPaths) -> Path:
    return paths.sys / "devices/system/cpu"


def read_online(paths: HostPaths) -> frozenset[int]:
    """``cpu/online``; a kernel without it (never seen) counts as the cpuN directories."""
    online = _cpus(cpu_root(paths) / "online")
    if online is not None:
        return online
    return frozenset(
        int(d.name[3:]) for d in cpu_root(paths).glob("cpu[0-9]*") if d.name[3:].isdecimal()
    )


def read_topology(paths: HostPaths) -> HostTopology:
    """The online CPUs with package, die, cluster, core, siblings, L3, core kind and node."""
    root = cpu_root(paths)
    online = read_online(paths)
    nodes = _read_nodes(paths)
    kinds = _read_kinds(paths)
    cpus = tuple(_read_cpu(root / f"cpu{n}", n, online, nodes, kinds) for n in sorted(online))
    present = _cpus(root / "present") or online
    return HostTopology(cpus, present=present | online, smt_control=_text(root / "smt/control"))


def _read_cpu(
    d: Path,
    cpu: int,
    online: frozenset[int],
    nodes: Mapping[int, int],
    kinds: Mapping[int, CoreKind],
) -> HostCpu:
    topo = d / "topology"
    core = _int(topo / "core_id")
    return HostCpu(
        cpu=cpu,
        package=_int(topo / "physical_package_id") or 0,
        core=cpu if core is None else core,
        siblings=((_cpus(topo / "thread_siblings_list") or frozenset()) & online) | {cpu},
        die=_int(topo / "die_id"),
        cluster=_int(topo / "cluster_id"),
        l3=_read_l3(d / "cache", online),
        kind=kinds.get(cpu, CoreKind.UNIFORM),
        node=nodes.get(cpu),
    )


def _read_l3(cache: Path, online: frozenset[int]) -> frozenset[int] | None:
    """The level-3 cache's shared_cpu_list (index3 on x86; found by its ``level`` file)."""
    for index in sorted(cache.glob("index[0-9]*")):
        if _int(index / "level") == 3:
            shared = _cpus(index / "shared_cpu_list")
            if shared is not None:
                return shared & online
    return None


def _read_nodes(paths: HostPaths) -> Mapping[int, int]:
    """CPU -> NUMA node from ``node/nodeK/cpulist``; empty without NUMA in sysfs."""
    result: dict[int, int] = {}
    for node_dir in _node_dirs(paths):
        for cpu in _cpus(node_dir / "cpulist") or ():
            result[cpu] = int(node_dir.name[4:])
    return result


def _node_dirs(paths: HostPaths) -> Iterable[Path]:
    base = paths.sys / "devices/system/node"
    return sorted(
        (d for d in base.glob("node[0-9]*") if d.name[4:].isdecimal()),
        key=lambda d: int(d.name[4:]),
    )


def _read_kinds(paths: HostPaths) -> Mapping[int, CoreKind]:
    """P-cores from /sys/devices/cpu_core/cpus, E-cores from cpu_atom/cpus (hybrid Intel)."""
    result: dict[int, CoreKind] = {}
    for pmu, kind in (("cpu_atom", CoreKind.EFFICIENCY), ("cpu_core", CoreKind.PERFORMANCE)):
        for cpu in _cpus(paths.sys / "devices" / pmu / "cpus") or ():
            result[cpu] = kind
    return result


def read_hugepages(paths: HostPaths) -> tuple[HugepagePool, ...]:
    """Every hugepage size the kernel offers, smallest first, with per-node counts."""
    pools: list[HugepagePool] = []
    base = paths.sys / "kernel/mm/hugepages"
    for d in sorted(base.glob("hugepages-*kB"), key=lambda p: _size_of(p) or 0):
        size = _size_of(d)
        if size is None:
            continue
        whole = PagePool(
            _int(d / "nr_hugepages") or 0,
            _int(d / "free_hugepages") or 0,
            _int(d / "resv_hugepages") or 0,
        )
        per_node = {
            int(n.name[4:]): PagePool(
                _int(n / "hugepages" / d.name / "nr_hugepages") or 0,
                _int(n / "hugepages" / d.name / "free_hugepages") or 0,
            )
            for n in _node_dirs(paths)
            if (n / "hugepages" / d.name).is_dir()
        }
        pools.append(HugepagePool(size, whole, per_node))
    return tuple(pools)


def _size_of(d: Path) -> int | None:
    match = _POOL_DIR.fullmatch(d.name)
    return int(match.group(1)) if match else None


def read_cpufreq(paths: HostPaths, cpus: Iterable[int]) -> Mapping[int, CpuFreq]:
    """Governor and available governors of each CPU that has cpufreq (others are left out)."""
    result: dict[int, CpuFreq] = {}
    for cpu in cpus:
        d = cpu_root(paths) / f"cpu{cpu}" / "cpufreq"
        governor = _text(d / "scaling_governor")
        if governor is None:
            continue
        available = tuple((_text(d / "scaling_available_governors") or "").split())
        result[cpu] = CpuFreq(governor, available)
    return result


def read_cpu_flags(paths: HostPaths) -> frozenset[str]:
    """The first processor's flags in /proc/cpuinfo (``pdpe1gb``: 1 GiB pages)."""
    for line in (_text(paths.proc / "cpuinfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "flags":
            return frozenset(value.split())
    return frozenset()


def read_mem_available(paths: HostPaths) -> int | None:
    """``MemAvailable`` of /proc/meminfo in KiB (None without it)."""
    for line in (_text(paths.proc / "meminfo") or "").splitlines():
        key, sep, value = line.partition(":")
        if sep and key == "MemAvailable" and value.split() and value.split()[0].isdecimal():
            return int(value.split()[0])
    return None


def read_host(paths: HostPaths) -> HostTuning:
    """Everything the planners need, read once."""
    topology = read_topology(paths)
    return HostTuning(
        topology=topology,
        hugepages=read_hugepages(paths),
        cpufreq=read_cpufreq(paths, sorted(topology.online)),
        cpu_flags=read_cpu_flags(paths),
        init_system=_text(paths.proc / "1/comm"),
        cgroup2=(paths.sys / "fs/cgroup/cgroup.controllers").is_file(),
        mem_available_kib=read_mem_available(paths),
    )
