"""How many hugepages the guest's RAM needs, which pool to raise, and the check after (pure).

Pages = RAM / page size; RAM must be a whole number of pages. Free pages
already in the pool (reserved at boot with ``hugepages=N``, say) are used
first; the pool is raised only by what is missing, and returns to exactly
its previous count afterwards (:attr:`HugepagePlan.restore`).

Which pool: on a host with more than one NUMA node, the node(s) of the
pinned CPUs, so the guest's memory is local to its vCPUs; with vCPUs on
several nodes the pages are split evenly (what ``policy=interleave`` over
those nodes allocates), lower nodes taking the remainder. Without pinning,
or on a one-node host, the global pool (``/sys/kernel/mm/hugepages``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from handoff.base.errors import HugepagesRefusedError
from handoff.tune.model import HostTopology, HugepagePool, HugepageSize, PagePool

_MIB_PER_KIB = 1024


@dataclass(frozen=True)
class PoolTarget:
    """One pool to raise: node None is the global pool."""

    node: int | None
    before: int  # nr_hugepages now (restored afterwards)
    target: int  # nr_hugepages to write
    wanted: int  # pages of the guest's RAM this pool holds

    @property
    def where(self) -> str:
        return "the global pool" if self.node is None else f"NUMA node {self.node}"


@dataclass(frozen=True)
class HugepagePlan:
    size: HugepageSize
    pages: int
    targets: tuple[PoolTarget, ...]
    reasons: tuple[str, ...]

    @property
    def restore(self) -> Mapping[int | None, int]:
        """Pool (node, None = global) -> the nr_hugepages to write back afterwards."""
        return {t.node: t.before for t in self.targets}


def _mib(kib: int) -> str:
    return f"{kib // (1024 * 1024)} GiB" if kib % (1024 * 1024) == 0 else f"{kib // 1024} MiB"


def plan_hugepages(
    ram_mib: int,
    size: HugepageSize,
    pools: Iterable[HugepagePool],
    cpu_flags: frozenset[str],
    topology: HostTopology,
    pinned: frozenset[int] = frozenset(),
) -> HugepagePlan | None:
    """The pools to raise for ``ram_mib`` of guest RAM, None for hugepages = none."""
    if size is HugepageSize.NONE:
        return None
    if size is HugepageSize.SIZE_1G and "pdpe1gb" not in cpu_flags:
        raise HugepagesRefusedError(
            "memory.hugepages = 1G: this CPU has no 1 GiB pages (no pdpe1gb in /proc/cpuinfo)",
            fix='use hugepages = "2M"',
        )
    pool = next((p for p in pools if p.size_kib == size.kib), None)
    if pool is None:
        raise HugepagesRefusedError(
            f"memory.hugepages = {size.label}: the kernel offers no {size.label} pool "
            f"(no /sys/kernel/mm/hugepages/hugepages-{size.kib}kB)",
            fix="build the kernel with CONFIG_HUGETLBFS, or choose a size listed in "
            "/sys/kernel/mm/hugepages",
        )
    ram_kib = ram_mib * _MIB_PER_KIB
    if ram_kib % size.kib:
        low = ram_kib // size.kib * size.kib
        raise HugepagesRefusedError(
            f"memory.hugepages = {size.label}: the guest's RAM ({ram_mib} MiB) is not a whole "
            f"number of {size.label} pages",
            fix=f"set vm.memory to {_mib(low)} or {_mib(low + size.kib)}"
            if low
            else f"set vm.memory to {_mib(size.kib)}, or use smaller pages",
        )
    pages = ram_kib // size.kib
    nodes = sorted({n for c in pinned if (n := _node_of(topology, c)) is not None})
    if len(topology.nodes) > 1 and nodes and all(n in pool.nodes for n in nodes):
        targets = _node_targets(pages, nodes, pool.nodes)
        why = f"pinned vCPUs on NUMA node{'s' if len(nodes) > 1 else ''} " + ", ".join(
            str(n) for n in nodes
        )
    else:
        targets = (_target(None, pages, pool.whole),)
        why = "one NUMA node" if len(topology.nodes) <= 1 else "vCPUs not pinned"
    reasons = [f"{pages} pages of {size.label} for {ram_mib} MiB ({why})"]
    reasons += [
        f"{t.where}: {t.before} -> {t.target} pages"
        if t.target != t.before
        else f"{t.where}: {t.before} pages, enough free already"
        for t in targets
    ]
    return HugepagePlan(size, pages, targets, tuple(reasons))


def _node_of(topology: HostTopology, cpu: int) -> int | None:
    host_cpu = topology.by_cpu.get(cpu)
    return None if host_cpu is None else host_cpu.node


def _target(node: int | None, wanted: int, pool: PagePool) -> PoolTarget:
    missing = max(0, wanted - pool.available)
    return PoolTarget(node, pool.total, pool.total + missing, wanted)


def _node_targets(
    pages: int, nodes: list[int], per_node: Mapping[int, PagePool]
) -> tuple[PoolTarget, ...]:
    share, extra = divmod(pages, len(nodes))
    return tuple(
        _target(n, share + (1 if i < extra else 0), per_node[n]) for i, n in enumerate(nodes)
    )


def check_raised(plan: HugepagePlan, after: HugepagePool) -> HugepagesRefusedError | None:
    """After writing the targets: the refusal to raise (after giving pages back), or None.

    The kernel grants what it can find: on a fragmented or busy host fewer
    pages than asked (1 GiB pages especially). The refusal names each pool's
    numbers and the boot-time fix, which reserves the pages before memory
    fragments.
    """
    short: list[str] = []
    for t in plan.targets:
        got = after.whole.total if t.node is None else after.nodes.get(t.node, PagePool(0, 0)).total
        if got < t.target:
            short.append(f"{t.where}: asked for {t.target} (was {t.before}), the kernel gave {got}")
    if not short:
        return None
    label = plan.size.label
    boot = f"hugepagesz={label} hugepages={plan.pages}"
    if any(t.node is not None for t in plan.targets):
        per_node = ",".join(f"{t.node}:{t.wanted}" for t in plan.targets)
        boot = f"hugepagesz={label} hugepages={per_node}"
    return HugepagesRefusedError(
        f"memory.hugepages = {label}: the guest needs {plan.pages} pages of {label} "
        f"({_mib(plan.pages * plan.size.kib)}); "
        + "; ".join(short)
        + " (memory is too fragmented or too little is free); the pool was given back",
        fix=f"reserve the pages at boot: add `{boot}` to the kernel command line "
        f"(with `default_hugepagesz={label}` if hugetlbfs should use them by default), "
        "or lower vm.memory",
    )
