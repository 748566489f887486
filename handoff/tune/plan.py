"""The tuning part of a session plan: pinning, hugepages, governor, isolation (pure).

:func:`plan_tuning` turns a profile's ``[cpu]``/``[memory]`` and ``[vm]``
topology plus what :func:`handoff.tune.topology.read_host` read into one
:class:`TunePlan`, or refuses (a :class:`handoff.base.errors.TuneError` naming
the numbers) before anything changes. The session plan
(:mod:`handoff.session.plan`) lists its host changes and puts its memory
backend in QEMU's argv; the tuning resource (:mod:`handoff.tune.resource`)
applies it.

Memory placement: with hugepages and pinned vCPUs on more than one NUMA node
the backend interleaves over those nodes (the split
:mod:`handoff.tune.hugepages` assumed when it raised each node's pool); on
one node it binds there; unpinned or on a one-node host no policy is given.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

from handoff.base.errors import IsolationRefusedError, TuneError
from handoff.profile.model import Cpu, Memory, Vm, guest_topology
from handoff.tune.governor import GovernorPlan, plan_governor
from handoff.tune.hugepages import HugepagePlan, plan_hugepages
from handoff.tune.isolation import IsolationPlan, plan_isolation
from handoff.tune.model import HostTuning, HugepageSize
from handoff.tune.pinning import PinPlan, plan_pinning

_T = TypeVar("_T")


class NumaPolicy(enum.Enum):
    """The memory backend's ``policy`` (QEMU's HostMemPolicy)."""

    BIND = "bind"
    INTERLEAVE = "interleave"


@dataclass(frozen=True)
class MemoryBackend:
    """Guest RAM as ``memory-backend-memfd`` on hugetlb pages, preallocated."""

    size_mib: int
    page: HugepageSize
    host_nodes: tuple[int, ...] = ()
    # share=on: vhost-user devices ([[share]]'s virtiofsd) map guest RAM; with page
    # NONE the backend is a plain memfd (no hugetlb), used for that alone.
    shared: bool = False

    @property
    def policy(self) -> NumaPolicy | None:
        if not self.host_nodes:
            return None
        return NumaPolicy.BIND if len(self.host_nodes) == 1 else NumaPolicy.INTERLEAVE


#: Isolation needs systemd as PID 1 (set-property --runtime AllowedCPUs=) on cgroup v2.
ISOLATION_NEEDS = "systemd as PID 1 on the unified cgroup v2 hierarchy"


@dataclass(frozen=True)
class TunePlan:
    """Everything the profile's tuning asks for on this host."""

    pin: PinPlan
    hugepages: HugepagePlan | None
    governor: GovernorPlan
    isolation: IsolationPlan | None
    backend: MemoryBackend | None

    @property
    def active(self) -> bool:
        return bool(
            self.pin.active or self.hugepages or self.governor.targets or self.isolation
        )

    def lines(self) -> list[str]:
        """The plan as status lines a person reads (map first, then the reasons)."""
        out = self.pin.lines() if self.pin.active else []
        if self.hugepages is not None:
            out += list(self.hugepages.reasons)
        out += list(self.governor.reasons)
        if self.isolation is not None:
            out += list(self.isolation.reasons)
        return out


def isolation_refusal(host: HostTuning) -> IsolationRefusedError | None:
    """Why ``isolate = true`` cannot be applied on this host (None: it can)."""
    if host.init_system != "systemd":
        pid1 = host.init_system or "unknown"
        return IsolationRefusedError(
            f"cpu.isolate = true needs {ISOLATION_NEEDS}; PID 1 here is {pid1!r}. handoff "
            "confines host tasks only through systemd's own interface (set-property --runtime "
            "AllowedCPUs= on system.slice, user.slice and init.scope), so that systemd "
            "restores them itself at the next boot and never fights a second cgroup writer",
            fix="set cpu.isolate = false on this host (pinning still keeps the vCPUs on their "
            "cores), or boot it with systemd",
        )
    if not host.cgroup2:
        return IsolationRefusedError(
            f"cpu.isolate = true needs {ISOLATION_NEEDS}; /sys/fs/cgroup is not cgroup v2 "
            "(no cgroup.controllers), where AllowedCPUs= has no effect",
            fix="boot with systemd.unified_cgroup_hierarchy=1 (the default since systemd 247), "
            "or set cpu.isolate = false",
        )
    return None


@dataclass(frozen=True)
class TuneAttempt:
    """Each part of the tuning planned on its own: the part, or the TuneError refusing it.

    :func:`plan_tuning` (the session plan's) raises the first refusal; doctor
    (:mod:`handoff.checks.tune`) shows each part's verdict from the same
    attempt. A refused pinning leaves the other parts planned for no pinned CPUs.
    """

    pin: PinPlan | TuneError
    hugepages: HugepagePlan | TuneError | None
    governor: GovernorPlan | TuneError
    isolation: IsolationPlan | TuneError | None
    memory_mib: int
    page: HugepageSize

    def plan(self) -> TunePlan:
        """The whole plan; raises the first part's refusal (pin, pages, governor, isolation)."""
        pin, pages, governor, isolation = self.pin, self.hugepages, self.governor, self.isolation
        for part in (pin, pages, governor, isolation):
            if isinstance(part, TuneError):
                raise part
        assert not isinstance(pin, TuneError)
        assert not isinstance(pages, TuneError)
        assert not isinstance(governor, TuneError)
        assert not isinstance(isolation, TuneError)
        backend = None
        if pages is not None:
            nodes = tuple(t.node for t in pages.targets if t.node is not None)
            backend = MemoryBackend(self.memory_mib, self.page, nodes)
        return TunePlan(pin, pages, governor, isolation, backend)


def _attempt(plan: Callable[[], _T]) -> _T | TuneError:
    try:
        return plan()
    except TuneError as exc:
        return exc


def attempt_tuning(cpu: Cpu, memory: Memory, vm: Vm, host: HostTuning) -> TuneAttempt:
    """Every part of the tuning for ``vm`` on ``host``, each planned or refused."""
    topology = host.topology
    pin = _attempt(lambda: plan_pinning(topology, guest_topology(vm), cpu.pin, cpu.emulator))
    pinned = pin.vcpu_cpus if isinstance(pin, PinPlan) else frozenset[int]()
    pages = _attempt(lambda: plan_hugepages(
        vm.memory_mib, memory.hugepages, host.hugepages, host.cpu_flags, topology, pinned
    ))
    governor = _attempt(lambda: plan_governor(cpu.governor, sorted(pinned), host.cpufreq))
    isolation: IsolationPlan | TuneError | None = None
    if cpu.isolate:
        refusal = isolation_refusal(host)
        if isinstance(pin, PinPlan):
            emulator = pin.emulator
            isolation = _attempt(lambda: plan_isolation(topology.online, pinned, emulator))
        if refusal is not None and not isinstance(isolation, TuneError):
            isolation = refusal
    return TuneAttempt(pin, pages, governor, isolation, vm.memory_mib, memory.hugepages)


def plan_tuning(cpu: Cpu, memory: Memory, vm: Vm, host: HostTuning) -> TunePlan:
    """The tuning for ``vm`` on ``host``; raises a TuneError naming the numbers."""
    return attempt_tuning(cpu, memory, vm, host).plan()
