"""Which host CPUs each vCPU and QEMU's other threads run on (pure).

``plan_pinning`` turns the host's topology, the guest's ``-smp`` topology
and ``cpu.pin`` / ``cpu.emulator`` into a :class:`PinPlan`, or refuses with
a :class:`PinningRefusedError` that names the numbers. The rules:

**The host keeps its first physical core** (the core of the lowest online
CPU, with all its SMT siblings): interrupts, the kernel's housekeeping and
QEMU's own I/O threads run there. ``auto`` never gives it to a vCPU.

**Guest cores map onto whole host cores**, in the order QEMU numbers
vCPUs (socket by socket, core by core, thread by thread: guest core ``g``
holds vCPUs ``g*T .. g*T+T-1``):

- ``threads = 2`` (any T > 1): guest core ``g`` gets one host core with
  exactly T online SMT siblings; its vCPU ``g*T + t`` is pinned to the core's
  t-th thread (ascending CPU number). The guest then knows which of its CPUs
  share a core, as they really do. A host without such cores (SMT off, or an
  E-core-only pool) is refused with the fix ``threads = 1``.
- ``threads = 1`` on an SMT host: each vCPU gets a whole physical core and is
  pinned to **all** its siblings (``"2,8"``, the form of the issue's own
  example and of libvirt's ``<vcpupin cpuset='2,8'/>``). The guest believes
  its CPUs are separate cores; putting two of them on one core's siblings
  would make its scheduler spread work over what is really one core's
  execution units (the Arch wiki's CPU-pinning advice: keep a core's
  siblings with one guest core, and leave a core to the host). The sibling
  the vCPU is not running on stays idle rather than going to the emulator
  or the host; a guest that wants both threads declares ``threads = 2``.

**Where the cores come from**, in order of preference: P-cores before
E-cores on hybrid Intel (E-cores only when the P-cores run out, and only for
``threads = 1``: E-cores have no siblings); then the smallest scope that
holds every core the guest needs: one L3 domain (one CCX/CCD), else one NUMA
node, else one package, else the whole machine. Among scopes that fit, one
that is not the host's own (so the VM does not share its L3 with the host
and the emulator) wins, then the one with more free cores, then the lowest
CPU number. Within a scope cores are taken lowest CPU first.

**Explicit lists** (one host CPU list per vCPU) are checked, not changed.
Refused: a count that is not the guest's vCPU count; a CPU that is offline
or not on this host; two vCPUs sharing a CPU (the list overlaps itself);
and a list that contradicts the guest topology:

- with ``threads = T > 1``, the vCPUs of one guest core must all be on one
  host physical core (the guest is told they are SMT siblings);
- no host physical core may carry vCPUs of two different guest cores (the
  guest is told they are separate cores).

Only told, not refused: an explicit list that uses the host's first core,
or spreads the guest over several L3 domains.

**Emulator threads**: ``auto`` is every online CPU not pinned to a vCPU
(the host's first core at least); an explicit list must be online and
disjoint from the vCPUs' CPUs. Either way it is never empty.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

from handoff.base.errors import PinningRefusedError
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import (
    CoreKind,
    EmulatorSpec,
    GuestTopology,
    HostTopology,
    PhysicalCore,
    PinMode,
    PinSpec,
)


@dataclass(frozen=True)
class PinPlan:
    """vCPU index -> host CPU set, the emulator's CPU set, and why (lines a person reads)."""

    vcpus: tuple[frozenset[int], ...]
    emulator: frozenset[int]
    reasons: tuple[str, ...]

    @property
    def active(self) -> bool:
        return bool(self.vcpus)

    @property
    def vcpu_cpus(self) -> frozenset[int]:
        return frozenset().union(*self.vcpus)

    def lines(self) -> list[str]:
        """The map as status lines: one per vCPU, the emulator, then the reasons."""
        if not self.active:
            return list(self.reasons)
        out = [f"vCPU {i} -> {_cpus(s)}" for i, s in enumerate(self.vcpus)]
        out.append(f"emulator -> {_cpus(self.emulator)}")
        return out + list(self.reasons)


def _cpus(cpus: frozenset[int] | Sequence[int]) -> str:
    return f"CPU {next(iter(cpus))}" if len(cpus) == 1 else f"CPUs {format_cpulist(cpus)}"


def plan_pinning(
    topology: HostTopology, guest: GuestTopology, pin: PinSpec, emulator: EmulatorSpec
) -> PinPlan:
    """The pinning for this host and guest, or PinningRefusedError naming the numbers."""
    if pin.mode is PinMode.NONE:
        return PinPlan((), frozenset(), ("pin = none: vCPU and emulator threads float",))
    if pin.mode is PinMode.AUTO:
        vcpus, reasons = _auto(topology, guest)
    else:
        vcpus, reasons = _explicit(topology, guest, pin.lists)
    emu, emu_reason = _emulator(topology, vcpus, emulator)
    return PinPlan(vcpus, emu, (*reasons, emu_reason))


# --------------------------------------------------------------------------- auto


def _auto(
    topology: HostTopology, guest: GuestTopology
) -> tuple[tuple[frozenset[int], ...], list[str]]:
    host_core = topology.cores[0]
    need = guest.guest_cores
    eligible = _eligible(topology, guest, host_core)
    reasons = [f"the host keeps its first core ({host_core.label})"]
    if topology.hybrid:
        chosen = _hybrid(eligible, need, host_core, reasons)
    else:
        chosen = _choose(eligible, need, host_core, reasons)
    vcpus: list[frozenset[int]] = []
    for g, core in enumerate(chosen):
        if guest.threads == 1:
            vcpus.append(frozenset(core.cpus))
        else:
            vcpus.extend(frozenset({core.cpus[t]}) for t in range(guest.threads))
        first = g * guest.threads
        last = first + guest.threads - 1
        who = f"vCPU {first}" if first == last else f"vCPUs {first}-{last}"
        reasons.append(f"guest core {g} ({who}) -> host core {core.label}")
    return tuple(vcpus), reasons


def _eligible(
    topology: HostTopology, guest: GuestTopology, host_core: PhysicalCore
) -> list[PhysicalCore]:
    """The cores auto may use, or a refusal when there are too few."""
    free = [c for c in topology.cores if c is not host_core]
    need = guest.guest_cores
    t = guest.threads
    if t == 1:
        eligible = free
        per = "a whole one per vCPU (threads = 1)"
    else:
        eligible = [c for c in free if len(c.cpus) == t]
        per = f"each with {t} SMT threads (threads = {t})"
        if not any(len(c.cpus) == t for c in topology.cores):
            raise PinningRefusedError(
                f"cpu.pin = auto: the guest declares threads = {t} but no core of this host "
                f"has {t} online SMT threads{_smt_note(topology)}",
                fix=f"declare the guest as cores = {guest.vcpus // guest.sockets}, threads = 1 "
                "(each vCPU then gets a whole core), or turn SMT on in the firmware setup",
            )
    if len(eligible) < need:
        raise PinningRefusedError(
            f"cpu.pin = auto: the guest's {guest.describe()} need {need} physical "
            f"core{'s' if need != 1 else ''}, "
            f"{per}; this host has {len(eligible) + (1 if _fits(host_core, t) else 0)} such "
            f"cores, {len(eligible)} after keeping its first core ({host_core.label}) for "
            "the host",
            fix=f"give the guest at most {len(eligible) * t} vCPUs"
            + (
                ", or declare threads = 2 to use both SMT threads of each core"
                if t == 1 and any(len(c.cpus) == 2 for c in free)
                else ""
            )
            + ", or list the host CPUs yourself in cpu.pin",
        )
    return eligible


def _fits(core: PhysicalCore, threads: int) -> bool:
    return threads == 1 or len(core.cpus) == threads


def _smt_note(topology: HostTopology) -> str:
    offline = topology.offline
    parts = []
    if topology.smt_control and topology.smt_control != "on":
        parts.append(f"SMT is {topology.smt_control} in /sys/devices/system/cpu/smt/control")
    if offline:
        parts.append(f"offline CPUs {format_cpulist(offline)}")
    return f" ({'; '.join(parts)})" if parts else ""


def _hybrid(
    eligible: list[PhysicalCore], need: int, host_core: PhysicalCore, reasons: list[str]
) -> list[PhysicalCore]:
    """P-cores first; E-cores only for what the P-cores cannot hold."""
    p_cores = [c for c in eligible if c.kind is not CoreKind.EFFICIENCY]
    e_cores = [c for c in eligible if c.kind is CoreKind.EFFICIENCY]
    if len(p_cores) >= need:
        reasons.append(f"P-cores only: {len(p_cores)} free, the guest needs {need}")
        return _choose(p_cores, need, host_core, reasons)
    reasons.append(
        f"the guest needs {need} cores, {len(p_cores)} P-cores are free: "
        f"the last {need - len(p_cores)} guest cores go to E-cores"
    )
    return _choose(p_cores, len(p_cores), host_core, reasons) + _choose(
        e_cores, need - len(p_cores), host_core, reasons
    )


Key = Callable[[PhysicalCore], Hashable]
_LEVELS: tuple[tuple[str, Key], ...] = (
    ("L3 domain", lambda c: c.l3),
    ("NUMA node", lambda c: c.node),
    ("package", lambda c: c.package),
)


def _groups(cores: Sequence[PhysicalCore], key: Key) -> list[list[PhysicalCore]]:
    groups: dict[Hashable, list[PhysicalCore]] = {}
    for core in cores:
        groups.setdefault(key(core), []).append(core)
    return list(groups.values())


def _choose(
    cores: Sequence[PhysicalCore], need: int, host_core: PhysicalCore, reasons: list[str]
) -> list[PhysicalCore]:
    """``need`` cores from the smallest scope (L3, node, package) that holds them all."""
    if need == 0:
        return []
    l3_groups = _groups(cores, lambda c: c.l3)
    for name, key in _LEVELS:
        groups = _groups(cores, key)
        fitting = [g for g in groups if len(g) >= need]
        if not fitting or key(host_core) is None:
            continue
        best = min(fitting, key=lambda g: _preference(g, key, host_core))
        if len(groups) > 1:
            reasons.append(_why_scope(name, best, groups, fitting, key, host_core, need))
        picked = _fill(best, need, host_core)
        break
    else:
        picked = _fill(cores, need, host_core)
    spanned = {core.l3 for core in picked}
    if len(l3_groups) > 1 and len(spanned) > 1:
        largest = max(len(g) for g in l3_groups)
        reasons.append(
            f"no L3 domain has {need} free cores (the largest has {largest}): the guest spans "
            f"{len(spanned)} L3 domains, filling one before the next"
        )
    return picked


def _preference(
    group: Sequence[PhysicalCore], key: Key, host_core: PhysicalCore
) -> tuple[bool, int, int]:
    return (key(group[0]) == key(host_core), -len(group), group[0].cpus[0])


def _why_scope(
    name: str,
    best: Sequence[PhysicalCore],
    groups: Sequence[Sequence[PhysicalCore]],
    fitting: Sequence[Sequence[PhysicalCore]],
    key: Key,
    host_core: PhysicalCore,
    need: int,
) -> str:
    cpus = sorted(cpu for core in best for cpu in core.cpus)
    text = f"one {name} holds all {need} cores the guest needs: {_cpus(cpus)} ({len(best)} free)"
    others = [g for g in groups if g is not best]
    if len(fitting) > 1 and key(best[0]) != key(host_core):
        text += f", chosen over the host's own {name}"
    elif len(fitting) > 1:
        text += ", the one with the most free cores"
    else:
        counts = ", ".join(str(len(g)) for g in others)
        text += f"; the other{'s have' if len(others) > 1 else ' has'} {counts} free"
    return text


def _fill(cores: Sequence[PhysicalCore], need: int, host_core: PhysicalCore) -> list[PhysicalCore]:
    """The first ``need`` cores, whole L3 domains (and nodes) at a time, preferred ones first."""

    def order(core: PhysicalCore) -> tuple[bool, int, bool, int, int]:
        node_size = sum(1 for c in cores if c.node == core.node)
        l3_size = sum(1 for c in cores if c.l3 == core.l3 and c.node == core.node)
        return (
            core.node is not None and core.node == host_core.node,
            -node_size,
            core.l3 is not None and core.l3 == host_core.l3,
            -l3_size,
            core.cpus[0],
        )

    by_l3 = _groups(sorted(cores, key=order), lambda c: (c.node, c.l3))
    flat = [core for group in by_l3 for core in sorted(group, key=lambda c: c.cpus[0])]
    return flat[:need]


# --------------------------------------------------------------------------- explicit


def _explicit(
    topology: HostTopology, guest: GuestTopology, lists: tuple[frozenset[int], ...]
) -> tuple[tuple[frozenset[int], ...], list[str]]:
    if len(lists) != guest.vcpus:
        raise PinningRefusedError(
            f"cpu.pin lists {len(lists)} host CPU lists, but the guest has {guest.describe()}",
            fix=f'give exactly {guest.vcpus} lists, one per vCPU in order, or use pin = "auto"',
        )
    for index, cpus in enumerate(lists):
        _check_online(topology, cpus, f"cpu.pin[{index}] (vCPU {index})")
    _check_overlap(lists)
    _check_guest_topology(topology, guest, lists)
    return lists, _explicit_notes(topology, lists)


def _check_online(topology: HostTopology, cpus: frozenset[int], what: str) -> None:
    bad = cpus - topology.online
    if not bad:
        return
    offline = bad & topology.present
    absent = bad - topology.present
    parts = []
    if offline:
        parts.append(f"{_cpus(sorted(offline))} offline{_smt_note(topology)}")
    if absent:
        parts.append(f"{_cpus(sorted(absent))} not on this host")
    raise PinningRefusedError(
        f"{what} names {' and '.join(parts)}",
        fix=f"use online CPUs only: {format_cpulist(topology.online)} "
        "(/sys/devices/system/cpu/online)",
    )


def _check_overlap(lists: tuple[frozenset[int], ...]) -> None:
    for i, first in enumerate(lists):
        for j in range(i + 1, len(lists)):
            shared = first & lists[j]
            if shared:
                raise PinningRefusedError(
                    f"cpu.pin overlaps itself: vCPU {i} and vCPU {j} both list "
                    f"{_cpus(sorted(shared))}",
                    fix="give every vCPU its own host CPUs (no CPU in two lists)",
                )


def _check_guest_topology(
    topology: HostTopology, guest: GuestTopology, lists: tuple[frozenset[int], ...]
) -> None:
    owner: dict[PhysicalCore, int] = {}
    for g in range(guest.guest_cores):
        vcpus = guest.vcpus_of(g)
        cores = {topology.core_of[cpu] for v in vcpus for cpu in lists[v]}
        if guest.threads > 1 and len(cores) != 1:
            where = ", ".join(sorted(c.label for c in cores))
            raise PinningRefusedError(
                f"cpu.pin contradicts the guest topology: guest core {g} (vCPUs "
                f"{vcpus[0]}-{vcpus[-1]}) is declared with threads = {guest.threads}, so the guest "
                f"treats them as SMT siblings, but they are pinned to different host cores "
                f"({where})",
                fix="pin each guest core's vCPUs to the SMT siblings of one host core "
                "(see thread_siblings_list), or declare threads = 1",
            )
        for core in cores:
            other = owner.setdefault(core, g)
            if other != g:
                raise PinningRefusedError(
                    f"cpu.pin contradicts the guest topology: guest cores {other} and {g} "
                    f"(vCPU {guest.vcpus_of(other)[0]} and vCPU {vcpus[0]}) share the host core "
                    f"{core.label}; the guest schedules them as separate cores",
                    fix="give each guest core its own host core, or declare the guest with "
                    "threads = 2 and pin each vCPU pair to one core's SMT siblings",
                )


def _explicit_notes(topology: HostTopology, lists: tuple[frozenset[int], ...]) -> list[str]:
    used = frozenset().union(*lists)
    notes = ["cpu.pin lists the host CPUs of each vCPU (checked, not changed)"]
    host_core = topology.cores[0]
    shared = used & set(host_core.cpus)
    if shared:
        notes.append(
            f"note: vCPUs use {_cpus(sorted(shared))} of the host's first core: the host's "
            "interrupts and housekeeping compete with them"
        )
    domains = {topology.by_cpu[cpu].l3 for cpu in used} - {None}
    if len(domains) > 1:
        notes.append(f"note: the vCPUs span {len(domains)} L3 domains")
    return notes


# --------------------------------------------------------------------------- emulator


def _emulator(
    topology: HostTopology, vcpus: tuple[frozenset[int], ...], spec: EmulatorSpec
) -> tuple[frozenset[int], str]:
    pinned = frozenset().union(*vcpus)
    if spec.cpus is None:
        rest = topology.online - pinned
        if not rest:
            raise PinningRefusedError(
                f"cpu.emulator = auto: every online CPU ({format_cpulist(topology.online)}) "
                "is pinned to a vCPU, none is left for QEMU's main loop and I/O threads",
                fix="leave at least one core out of cpu.pin, or give the guest fewer vCPUs",
            )
        return rest, f"emulator threads on the CPUs no vCPU uses ({format_cpulist(rest)})"
    if not spec.cpus:
        raise PinningRefusedError(
            "cpu.emulator is an empty CPU list", fix='give a CPU list, or use emulator = "auto"'
        )
    _check_online(topology, spec.cpus, "cpu.emulator")
    clash = spec.cpus & pinned
    if clash:
        raise PinningRefusedError(
            f"cpu.emulator shares {_cpus(sorted(clash))} with the vCPUs: QEMU's I/O would "
            "steal time from them",
            fix=f"use CPUs no vCPU is pinned to ({format_cpulist(topology.online - pinned)}), "
            'or emulator = "auto"',
        )
    return spec.cpus, f"emulator threads on cpu.emulator ({format_cpulist(spec.cpus)})"
