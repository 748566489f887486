"""What performance tuning plans from, and what it is asked for (pure data).

The host side mirrors /sys (see :mod:`handoff.tune.topology`, which fills
it): the online CPUs with their place in the machine, the hugepage pools
and each CPU's cpufreq state. The planning side is what a profile's
``[cpu]`` and ``[memory]`` sections ask for, already parsed.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property

from handoff.base.errors import CpuListError, PinListError
from handoff.tune.cpulist import format_cpulist, parse_cpulist

# --------------------------------------------------------------------------- host


class CoreKind(enum.Enum):
    """Hybrid Intel core types (perf's cpu_core / cpu_atom PMUs); UNIFORM elsewhere."""

    PERFORMANCE = "P"
    EFFICIENCY = "E"
    UNIFORM = "-"


@dataclass(frozen=True)
class HostCpu:
    """One online logical CPU and where it sits (``/sys/devices/system/cpu/cpuN``).

    ``siblings`` is ``topology/thread_siblings_list`` (the CPU itself
    included; the kernel drops offline siblings); ``l3`` is the
    ``shared_cpu_list`` of its level-3 cache, None without one; ``node`` is
    its NUMA node, None without /sys/devices/system/node; ``die`` and
    ``cluster`` are None where the kernel has no such file.
    """

    cpu: int
    package: int
    core: int
    siblings: frozenset[int]
    die: int | None = None
    cluster: int | None = None
    l3: frozenset[int] | None = None
    kind: CoreKind = CoreKind.UNIFORM
    node: int | None = None


@dataclass(frozen=True)
class PhysicalCore:
    """The online SMT siblings of one physical core, ascending (``cpus[0]`` is its first thread)."""

    cpus: tuple[int, ...]
    package: int
    l3: frozenset[int] | None
    kind: CoreKind
    node: int | None

    @property
    def label(self) -> str:
        return f"CPUs {format_cpulist(self.cpus)}" if len(self.cpus) > 1 else f"CPU {self.cpus[0]}"


@dataclass(frozen=True)
class HostTopology:
    """The online CPUs (ascending) and the numbers the kernel knows but cannot run now."""

    cpus: tuple[HostCpu, ...]
    present: frozenset[int] = frozenset()
    smt_control: str | None = None  # /sys/devices/system/cpu/smt/control: on, off, forceoff, ...

    @cached_property
    def online(self) -> frozenset[int]:
        return frozenset(c.cpu for c in self.cpus)

    @cached_property
    def by_cpu(self) -> Mapping[int, HostCpu]:
        return {c.cpu: c for c in self.cpus}

    @property
    def offline(self) -> frozenset[int]:
        """Present (installed) CPUs that are not online: SMT switched off, hot-unplugged."""
        return self.present - self.online

    @cached_property
    def cores(self) -> tuple[PhysicalCore, ...]:
        """Physical cores ordered by their first online thread."""
        seen: dict[frozenset[int], PhysicalCore] = {}
        for c in self.cpus:
            key = (c.siblings & self.online) | {c.cpu}
            if key not in seen:
                seen[key] = PhysicalCore(tuple(sorted(key)), c.package, c.l3, c.kind, c.node)
        return tuple(sorted(seen.values(), key=lambda core: core.cpus[0]))

    @cached_property
    def core_of(self) -> Mapping[int, PhysicalCore]:
        return {cpu: core for core in self.cores for cpu in core.cpus}

    @property
    def hybrid(self) -> bool:
        return any(c.kind is not CoreKind.UNIFORM for c in self.cpus)

    @property
    def nodes(self) -> frozenset[int]:
        return frozenset(c.node for c in self.cpus if c.node is not None)


@dataclass(frozen=True)
class PagePool:
    """One hugepage pool's counters: ``nr_hugepages`` and ``free_hugepages`` (and resv)."""

    total: int
    free: int
    reserved: int = 0  # resv_hugepages: promised to mappings, not yet faulted (global only)

    @property
    def available(self) -> int:
        return max(0, self.free - self.reserved)


@dataclass(frozen=True)
class HugepagePool:
    """A hugepage size the kernel offers, globally and per NUMA node."""

    size_kib: int
    whole: PagePool
    nodes: Mapping[int, PagePool] = field(default_factory=dict)


@dataclass(frozen=True)
class CpuFreq:
    """One CPU's ``cpufreq/scaling_governor`` and ``scaling_available_governors``."""

    governor: str
    available: tuple[str, ...]


@dataclass(frozen=True)
class HostTuning:
    """Everything the planners read from one host, read once."""

    topology: HostTopology
    hugepages: tuple[HugepagePool, ...] = ()
    cpufreq: Mapping[int, CpuFreq] = field(default_factory=dict)  # CPUs without cpufreq absent
    cpu_flags: frozenset[str] = frozenset()  # /proc/cpuinfo flags (pdpe1gb for 1G pages)
    init_system: str | None = None  # /proc/1/comm ("systemd"), for isolation
    cgroup2: bool = False  # /sys/fs/cgroup/cgroup.controllers exists (unified hierarchy)
    mem_available_kib: int | None = None  # /proc/meminfo MemAvailable (doctor: room for a pool)


# --------------------------------------------------------------------------- requests


@dataclass(frozen=True)
class GuestTopology:
    """The guest's ``-smp cpus,sockets=S,cores=C,threads=T``: vCPU i is thread i % T of core i // T.

    QEMU numbers vCPUs socket by socket, core by core, thread by thread, so
    guest core ``g`` (counted over all sockets) holds vCPUs ``g*T .. g*T+T-1``.
    """

    sockets: int = 1
    cores: int = 1
    threads: int = 1

    def __post_init__(self) -> None:
        if min(self.sockets, self.cores, self.threads) < 1:
            raise ValueError(f"guest topology needs positive counts, got {self}")

    @property
    def vcpus(self) -> int:
        return self.sockets * self.cores * self.threads

    @property
    def guest_cores(self) -> int:
        """Cores the guest sees over all its sockets."""
        return self.sockets * self.cores

    def core_of(self, vcpu: int) -> int:
        return vcpu // self.threads

    def vcpus_of(self, guest_core: int) -> range:
        return range(guest_core * self.threads, (guest_core + 1) * self.threads)

    def describe(self) -> str:
        return (
            f"{self.vcpus} vCPUs (sockets={self.sockets}, cores={self.cores}, "
            f"threads={self.threads})"
        )


class PinMode(enum.Enum):
    NONE = "none"
    AUTO = "auto"
    EXPLICIT = "explicit"


@dataclass(frozen=True)
class PinSpec:
    """``cpu.pin``: none, auto, or one host CPU set per vCPU (index = vCPU)."""

    mode: PinMode
    lists: tuple[frozenset[int], ...] = ()

    @classmethod
    def explicit(cls, lists: Sequence[str]) -> PinSpec:
        """Parse ``["2,8", "3,9", ...]``; an error names the vCPU whose list is wrong."""
        parsed: list[frozenset[int]] = []
        for index, text in enumerate(lists):
            what = f"cpu.pin[{index}] (vCPU {index})"
            try:
                cpus = parse_cpulist(text, what=what)
            except CpuListError as exc:
                raise PinListError(exc.message, index=index, fix=exc.fix) from None
            if not cpus:
                raise PinListError(
                    f"{what} is empty: every vCPU needs at least one host CPU",
                    index=index, fix='give it a CPU list such as "2,8", or use pin = "auto"',
                )
            parsed.append(cpus)
        return cls(PinMode.EXPLICIT, tuple(parsed))


PIN_NONE = PinSpec(PinMode.NONE)
PIN_AUTO = PinSpec(PinMode.AUTO)


@dataclass(frozen=True)
class EmulatorSpec:
    """``cpu.emulator``: AUTO (cpus is None) or a host CPU list for QEMU's other threads."""

    cpus: frozenset[int] | None = None

    @property
    def auto(self) -> bool:
        return self.cpus is None


EMULATOR_AUTO = EmulatorSpec()


class HugepageSize(enum.Enum):
    """``memory.hugepages``; the value is the page size in KiB (0: none)."""

    NONE = 0
    SIZE_2M = 2048
    SIZE_1G = 1048576

    @property
    def kib(self) -> int:
        return self.value

    @property
    def label(self) -> str:
        return {0: "none", 2048: "2M", 1048576: "1G"}[self.value]
