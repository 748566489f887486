"""From the host's facts and the command's options to choices, each with its reason (pure).

Nothing here reads or changes the host: every function decides from a
:class:`~handoff.init.facts.InitFacts` taken beforehand. Whether a GPU's
IOMMU group can be handed over is the GPU engine's verdict
(:func:`handoff.pci.plan.group_verdict`, the one `handoff groups` prints);
this module only adds what `init` itself needs on top: never the boot GPU,
never a guess between several cards.

Rules (each stated again in the profile and on the terminal):

- GPU: display controllers (class 03) that are not the boot GPU and whose
  group is passable; one is taken, several are refused with a list. The
  group's every endpoint goes into [[passthrough]]; a host-needed co-member
  (NIC, storage) only on an explicit ``--gpu``, as ``allow_in_group`` with a
  comment naming it.
- CPU: the host keeps one physical core (all its SMT threads); the guest gets
  the rest, with the host's threads per core.
- Memory: the host keeps max(2 GiB, a quarter of its RAM); the guest gets the
  rest, rounded down to 256 MiB. On a host where that leaves the guest less
  than 1 GiB, the guest gets half.

Why it stays over 500 lines: each rule carries its own reasons and refusals (the
text `init` prints and writes as comments); they are one decision, read in
the order the profile is written.
"""

from __future__ import annotations

import enum
import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from handoff.base.errors import HandoffError, PciAddressError, PreflightRefusedError
from handoff.init.facts import CpuTopology, DiskFact, DiskKind, InitFacts, PciName
from handoff.init.guest_os import InitOs, OsChoice
from handoff.pci.address import PciAddress
from handoff.pci.model import PciDevice
from handoff.pci.plan import HostSnapshot, Passability, group_verdict, plan_handoff
from handoff.pci.rules import ACS_FIX, card_functions, host_need, stays
from handoff.profile import FirmwareType, InputBackend, parse_memory

SINGLE_GPU_DOC = "profiles/single-gpu.md"
NO_GPU = "none"  # --gpu none: a profile without passthrough
HOST_RESERVE_MIN_MIB = 2048
MEMORY_STEP_MIB = 256
SMALL_GUEST_MIB = 1024


class InitError(HandoffError):
    """`handoff init` cannot write a profile as asked; the fix says what to pass instead."""


# --------------------------------------------------------------------------- the request


@dataclass(frozen=True)
class InitRequest:
    """The command's options, as typed (validated here, not by argparse)."""

    name: str
    gpu: str | None = None
    disk: Path | None = None
    disk_size: str | None = None
    memory: str | None = None
    cpus: int | None = None
    input: InputBackend = InputBackend.QMP
    firmware: FirmwareType | None = None
    image_dir: Path | None = None  # where --disk-size creates NAME.qcow2
    guest_os: InitOs | None = None  # --os: the guest's part (handoff.init.guest_os)
    iso: Path | None = None  # --iso: the install ISO
    virtio_win: Path | None = None  # --virtio-win: the virtio-win driver ISO


# --------------------------------------------------------------------------- choices


class GpuReason(enum.Enum):
    """Why a display controller is not taken."""

    BOOT_GPU = "boot-gpu"
    HOST_NEEDED_CO_MEMBER = "host-needed-co-member"
    GROUP_REFUSED = "group-refused"
    NO_GROUP = "no-group"


@dataclass(frozen=True)
class GpuCandidate:
    """One display controller and what `init` thinks of it."""

    device: PciDevice
    name: PciName
    passable: bool
    reason: GpuReason | None = None
    why: str = ""
    fix: str = ""
    allow_in_group: tuple[PciDevice, ...] = ()  # host-needed co-members (explicit --gpu only)

    def describe(self) -> str:
        names = self.name.text()
        named = f" {names}" if names else ""
        return (
            f"{self.device.address.short} {self.device.class_name} [{self.device.ids}]{named} "
            f"(driver {self.device.driver or 'none'}, boot_vga {int(self.device.boot_vga)})"
        )


@dataclass(frozen=True)
class GpuChoice:
    """The GPU handed over: its group's endpoints, in [[passthrough]] order."""

    gpu: GpuCandidate
    functions: tuple[PciDevice, ...]
    group: int
    allow_in_group: tuple[PciDevice, ...]
    reason: str
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class NoGpu:
    """A profile without passthrough (``--gpu none``)."""

    reason: str


@dataclass(frozen=True)
class CpuChoice:
    cpus: int
    sockets: int
    cores: int
    threads: int
    reason: str


@dataclass(frozen=True)
class MemoryChoice:
    mib: int
    reason: str
    hugepages: bool = False  # guest RAM on 2 MiB hugepages ([memory] hugepages = "2M")
    hugepages_reason: str = ""

    @property
    def text(self) -> str:
        return f"{self.mib // 1024}G" if self.mib % 1024 == 0 else f"{self.mib}M"


class DiskSource(enum.Enum):
    NONE = "none"
    BLOCK = "block"
    IMAGE = "image"
    NEW_IMAGE = "new-image"


@dataclass(frozen=True)
class DiskChoice:
    source: DiskSource
    path: Path | None
    qcow2: bool
    reason: str
    size_bytes: int | None = None  # NEW_IMAGE: the image qemu-img creates


@dataclass(frozen=True)
class FirmwareChoice:
    type: FirmwareType
    reason: str
    code: Path | None = None
    vars_template: Path | None = None


@dataclass(frozen=True)
class InputChoice:
    backend: InputBackend
    reason: str


@dataclass(frozen=True)
class InitPlan:
    """Every choice `handoff init` made, each with its reason."""

    name: str
    gpu: GpuChoice | NoGpu
    cpu: CpuChoice
    memory: MemoryChoice
    disk: DiskChoice
    firmware: FirmwareChoice
    input: InputChoice
    facts: InitFacts
    guest_os: OsChoice | None = None


# --------------------------------------------------------------------------- GPU


def structural(snapshot: HostSnapshot) -> HostSnapshot:
    """The snapshot without who holds what right now: a profile outlives open files."""
    return replace(snapshot, holders={}, vfio_holders={}, vendor_holders={}, fbcon_bound=False)


def _endpoints(snapshot: HostSnapshot, group: int) -> tuple[PciDevice, ...]:
    """The members that move with the group: not bridges, not a driverless host bridge
    (:func:`handoff.pci.rules.stays`: VFIO needs nothing done to them)."""
    return tuple(
        snapshot.devices[a]
        for a in snapshot.iommu.groups.get(group, ())
        if a in snapshot.devices and not stays(snapshot.devices[a])
    )


def _card_groups(device: PciDevice, snapshot: HostSnapshot) -> tuple[int, ...]:
    """The other IOMMU groups holding functions of ``device``'s card (a GPU's audio the
    IOMMU put apart): they are passed with it, or QEMU cannot reset the card."""
    groups = {
        f.iommu_group
        for f in card_functions(device, snapshot.devices)
        if f.iommu_group is not None and f.iommu_group != device.iommu_group
    }
    return tuple(sorted(groups))


def _passable_with_allowed(
    device: PciDevice, snapshot: HostSnapshot
) -> tuple[PciDevice, ...] | None:
    """The host-needed co-members whose acceptance makes the group passable, or None."""
    assert device.iommu_group is not None
    members = _endpoints(snapshot, device.iommu_group)
    needed = tuple(d for d in members if host_need(d, snapshot.devices) is not None)
    wanted = [d.address for d in members if host_need(d, snapshot.devices) is None]
    if not needed:
        return None
    try:
        plan_handoff(wanted, snapshot, allow_in_group=[d.address for d in needed])
    except PreflightRefusedError:
        return None
    return needed


def judge_gpu(device: PciDevice, facts: InitFacts) -> GpuCandidate:
    """Whether `init` may take this display controller, and why not (pure)."""
    snapshot = structural(facts.pci)
    name = facts.names.get((device.vendor, device.device), PciName())
    if device.boot_vga:
        return GpuCandidate(
            device, name, False, GpuReason.BOOT_GPU,
            "it is the boot GPU (boot_vga=1): the host's console and desktop run on it, and "
            "handoff never takes it (if the guest leaves it unusable the host has no screen)",
            f"single-GPU hosts: see {SINGLE_GPU_DOC} (give the host an integrated or second "
            "GPU and make that one primary in the firmware setup)",
        )
    if device.iommu_group is None:
        return GpuCandidate(
            device, name, False, GpuReason.NO_GROUP,
            "it has no IOMMU group: the IOMMU does not cover it",
            "check VT-d / AMD-Vi in the firmware setup and, on Intel, boot with intel_iommu=on",
        )
    verdict = group_verdict(device.iommu_group, snapshot)
    if verdict.verdict is not Passability.REFUSED:
        return GpuCandidate(device, name, True)
    allowed = _passable_with_allowed(device, snapshot)
    if allowed is not None:
        lost = ", ".join(
            f"{d.address.short} {d.class_name} ({host_need(d, snapshot.devices)})"
            for d in allowed
        )
        return GpuCandidate(
            device, name, False, GpuReason.HOST_NEEDED_CO_MEMBER,
            f"its IOMMU group {device.iommu_group} also holds {lost}, which the host loses "
            "while the VM runs",
            f"put the card in another slot (its own IOMMU group), or, if the host can do "
            f"without that, pass --gpu {device.address.short} (the profile then lists it in "
            f"allow_in_group); {ACS_FIX}",
            allowed,
        )
    return GpuCandidate(
        device, name, False, GpuReason.GROUP_REFUSED,
        f"its IOMMU group {device.iommu_group} cannot be passed through: {verdict.reason}",
        verdict.fix or "see `handoff groups`",
    )


def _iommu_off() -> InitError:
    return InitError(
        "no GPU can be passed through: the IOMMU is off (/sys/kernel/iommu_groups is empty), "
        "so no device can be isolated for a guest",
        fix="enable VT-d / AMD-Vi in the firmware setup; on Intel also boot with "
        "intel_iommu=on (README: \"2. Enable the IOMMU\"), then run `handoff groups`; "
        f"or write a profile without passthrough: --gpu {NO_GPU}",
    )


def _none_passable(judged: Sequence[GpuCandidate]) -> InitError:
    if not judged:
        return InitError(
            "no GPU can be passed through: this host has no display controller (PCI class 03)",
            fix=f"write a profile without passthrough: --gpu {NO_GPU}",
        )
    lines = [f"  - {c.describe()}: {c.why}\n    fix: {c.fix}" for c in judged]
    single = any(c.reason is GpuReason.BOOT_GPU for c in judged)
    fix = f"--gpu {NO_GPU} writes a profile without passthrough"
    if single and all(c.reason is GpuReason.BOOT_GPU for c in judged):
        fix = (
            f"this is a single-GPU host: read {SINGLE_GPU_DOC} (what to do with one GPU), "
            f"or {fix}"
        )
    return InitError("no GPU can be passed through:\n" + "\n".join(lines), fix=fix)


def _several(candidates: Sequence[GpuCandidate]) -> InitError:
    lines = [f"  {c.describe()}: --gpu {c.device.address.short}" for c in candidates]
    return InitError(
        f"{len(candidates)} GPUs can be passed through; handoff init will not guess which one "
        "the guest gets:\n" + "\n".join(lines),
        fix="run it again with --gpu ADDRESS for the guest's card (the host keeps the others)",
    )


def _take(candidate: GpuCandidate, facts: InitFacts, reason: str) -> GpuChoice:
    device = candidate.device
    assert device.iommu_group is not None
    allowed = {d.address for d in candidate.allow_in_group}
    groups = (device.iommu_group, *_card_groups(device, facts.pci))
    members = [
        d for g in groups for d in _endpoints(facts.pci, g) if d.address not in allowed
    ]
    functions = tuple(sorted(members, key=lambda d: (d.address != device.address, d.address)))
    notes = [
        f"{d.address.short} is in use now: {h.describe()}; close it before `handoff run`"
        for d in functions
        for h in facts.pci.holders.get(d.address, ())
    ]
    return GpuChoice(
        candidate, functions, device.iommu_group, candidate.allow_in_group, reason, tuple(notes)
    )


def choose_gpu(facts: InitFacts, requested: str | None) -> GpuChoice | NoGpu:
    """The GPU the guest gets (see the module docstring), or an InitError with the fix."""
    if requested == NO_GPU:
        return NoGpu("--gpu none: no passthrough; the guest gets an emulated display")
    if requested is not None:
        return _requested_gpu(facts, requested)
    if not facts.pci.iommu.enabled:
        raise _iommu_off()
    displays = sorted(
        (d for d in facts.pci.devices.values() if d.is_display and not d.is_bridge),
        key=lambda d: d.address,
    )
    judged = [judge_gpu(d, facts) for d in displays]
    passable = [c for c in judged if c.passable]
    if not passable:
        raise _none_passable(judged)
    if len(passable) > 1:
        raise _several(passable)
    others = [c for c in judged if not c.passable]
    why = "; ".join(f"{c.device.address.short} not: {c.why.split(': ')[0]}" for c in others)
    reason = (
        f"{passable[0].device.address.short} is the only GPU whose IOMMU group can be passed "
        "through" + (f" ({why})" if why else "")
    )
    return _take(passable[0], facts, reason)


def _requested_gpu(facts: InitFacts, text: str) -> GpuChoice:
    try:
        address = PciAddress.parse(text)
    except PciAddressError as exc:
        raise InitError(
            f"--gpu {text}: not a PCI address",
            fix=f"write it as 01:00.0 (see `handoff groups`), or --gpu {NO_GPU}",
        ) from exc
    device = facts.pci.devices.get(address)
    if device is None:
        raise InitError(
            f"--gpu {text}: there is no PCI device {address} on this host",
            fix="`handoff groups` lists the devices and their IOMMU groups",
        )
    if not device.is_display:
        raise InitError(
            f"--gpu {text}: {device.describe()} is not a display controller",
            fix="name the GPU's VGA/display function; other devices go into [[passthrough]] "
            "by hand",
        )
    if not facts.pci.iommu.enabled:
        raise _iommu_off()
    judged = judge_gpu(device, facts)
    if judged.reason is GpuReason.HOST_NEEDED_CO_MEMBER:
        lost = ", ".join(f"{d.address.short}" for d in judged.allow_in_group)
        return _take(
            judged, facts,
            f"--gpu {address.short}: asked for, although the host loses {lost} while the VM "
            "runs (allow_in_group)",
        )
    if not judged.passable:
        raise InitError(f"--gpu {text}: {judged.describe()}: {judged.why}", fix=judged.fix)
    return _take(judged, facts, f"--gpu {address.short}: asked for; its group is passable")


# --------------------------------------------------------------------------- CPU and memory


def choose_cpu(facts: InitFacts, requested: int | None) -> CpuChoice:
    """Leave the host one physical core; the guest's topology follows the host's SMT
    (on a hybrid Intel: the guest gets P-cores, never SMT claimed on E-cores)."""
    cpu = facts.cpu
    threads = cpu.p_threads if cpu.hybrid else cpu.threads_per_core
    limit = cpu.p_cores * cpu.p_threads if cpu.hybrid else cpu.logical
    if requested is not None:
        if requested < 1 or requested > cpu.logical:
            raise InitError(
                f"--cpus {requested}: this host has {cpu.logical} logical CPUs",
                fix=f"pass --cpus between 1 and {cpu.logical} (leave it out: {_auto_cpus(cpu)})",
            )
        if requested % threads == 0 and requested <= limit:
            return CpuChoice(requested, 1, requested // threads, threads,
                             f"--cpus {requested}: {requested // threads} cores x {threads} "
                             "threads, like the host's SMT")
        return CpuChoice(requested, 1, requested, 1,
                         f"--cpus {requested}: not a multiple of the host's {threads} threads "
                         "per core" + (" on its P-cores" if cpu.hybrid else "")
                         + ", so one thread per core")
    cpus = _auto_cpus(cpu)
    if cpu.hybrid:
        return CpuChoice(
            cpus, 1, cpus // threads, threads,
            f"host: {cpu.logical} logical CPUs = {cpu.cores} cores ({cpu.p_cores} P-cores x "
            f"{threads} threads + {cpu.e_cores} E-cores x 1 thread); a guest's cores are all "
            f"alike, so it gets {cpus // threads} P-cores x {threads} threads (pin = \"auto\" "
            "puts them on P-cores) and the host keeps one P-core and the E-cores",
        )
    if cpu.cores <= 1:
        return CpuChoice(cpus, 1, cpus, 1,
                         f"the host has one physical core: the guest shares it ({cpus} vCPU)")
    return CpuChoice(
        cpus, 1, cpus // threads, threads,
        f"host: {cpu.logical} logical CPUs = {cpu.cores} cores x {threads} threads; the host "
        f"keeps one core, the guest gets {cpus // threads} cores x {threads} threads",
    )


def _auto_cpus(cpu: CpuTopology) -> int:
    if cpu.hybrid:
        return max(1, cpu.p_cores - 1) * cpu.p_threads
    if cpu.cores <= 1:
        return 1
    return max(cpu.threads_per_core, (cpu.cores - 1) * cpu.threads_per_core)


def choose_memory(facts: InitFacts, requested: str | None) -> MemoryChoice:
    """The host keeps max(2 GiB, 1/4 of RAM); the guest gets the rest, in 256 MiB steps."""
    total = facts.memory_mib
    if requested is not None:
        mib = parse_memory(requested)
        if mib is None or mib <= 0:
            raise InitError(
                f"--memory {requested}: not a size",
                fix="write it like 8G, 8192M or 8GiB (a bare number means MiB)",
            )
        if mib >= total:
            raise InitError(
                f"--memory {requested}: this host has {total} MiB of RAM in all",
                fix=f"leave the host some: at most {_max_memory(total)}M (leave it out: "
                f"{_auto_memory(total)[0]} MiB)",
            )
        return _with_hugepages(
            facts, MemoryChoice(mib, f"--memory {requested}: {mib} MiB of the host's {total} MiB")
        )
    mib, rule = _auto_memory(total)
    return _with_hugepages(facts, MemoryChoice(mib, rule))


HUGEPAGE_2M_KIB = 2048


def _with_hugepages(facts: InitFacts, choice: MemoryChoice) -> MemoryChoice:
    """2 MiB hugepages where the host allows: the kernel offers them and the memory free
    now (MemAvailable) holds the guest's pool; `handoff run` raises the pool for the
    session and gives it back after."""
    if HUGEPAGE_2M_KIB not in facts.hugepage_sizes_kib:
        return replace(choice, hugepages_reason=(
            "no 2 MiB hugepages: this kernel offers none (/sys/kernel/mm/hugepages has no "
            "hugepages-2048kB), so guest RAM stays on normal pages"))
    available = facts.mem_available_mib
    if available is None or available < choice.mib:
        now = "unknown" if available is None else f"{available} MiB"
        return replace(choice, hugepages_reason=(
            f"no hugepages yet: the guest's {choice.mib} MiB do not fit in the memory free now "
            f"(MemAvailable {now}), so the pool could not be filled at start; reserve it at "
            f"boot (hugepagesz=2M hugepages={choice.mib // 2}) and set hugepages = \"2M\""))
    return replace(choice, hugepages=True, hugepages_reason=(
        f"guest RAM on 2 MiB hugepages: the kernel offers them and {available} MiB are free "
        f"now; `handoff run` raises the pool by {choice.mib // 2} pages for the session and "
        "gives them back after"))


def _max_memory(total: int) -> int:
    return max(MEMORY_STEP_MIB, total - HOST_RESERVE_MIN_MIB)


def _auto_memory(total: int) -> tuple[int, str]:
    reserve = max(HOST_RESERVE_MIN_MIB, total // 4)
    guest = (total - reserve) // MEMORY_STEP_MIB * MEMORY_STEP_MIB
    if guest >= SMALL_GUEST_MIB:
        return guest, (
            f"host RAM {total} MiB; the host keeps max(2 GiB, 1/4) = {reserve} MiB, the guest "
            f"gets {guest} MiB"
        )
    half = max(MEMORY_STEP_MIB, total // 2 // MEMORY_STEP_MIB * MEMORY_STEP_MIB)
    return half, (
        f"host RAM {total} MiB is too little to keep 2 GiB for the host and give the guest "
        f"1 GiB; the guest gets half: {half} MiB"
    )


# --------------------------------------------------------------------------- disk

_SIZE = re.compile(r"^\s*(\d+)\s*([KMGT]?)(i?B)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1 << 30, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
MIN_IMAGE_BYTES = 1 << 20


def parse_size(text: str) -> int | None:
    """Bytes from ``64G``, ``500M``, ``1T``, ``64GiB`` (a bare number means GiB); None if not."""
    match = _SIZE.match(text)
    if match is None:
        return None
    return int(match[1]) * _SIZE_UNITS[match[2].lower()]


def choose_disk(request: InitRequest, fact: DiskFact | None, image_exists: bool) -> DiskChoice:
    """--disk (a block device that nothing uses, or an image), --disk-size, or none."""
    if request.disk is not None and request.disk_size is not None:
        raise InitError("--disk and --disk-size exclude each other",
                        fix="pass --disk PATH for an existing disk or --disk-size SIZE for a "
                        "new image, not both")
    if request.disk_size is not None:
        return _new_image(request, image_exists)
    if request.disk is None:
        return DiskChoice(DiskSource.NONE, None, False,
                          "no --disk: the profile says how to add one (and the guest has none)")
    assert fact is not None
    return _existing_disk(fact)


def _new_image(request: InitRequest, image_exists: bool) -> DiskChoice:
    assert request.disk_size is not None
    assert request.image_dir is not None
    size = parse_size(request.disk_size)
    if size is None or size < MIN_IMAGE_BYTES:
        raise InitError(f"--disk-size {request.disk_size}: not a disk size",
                        fix="write it like 64G, 500M or 1T (at least 1M)")
    path = request.image_dir / f"{request.name}.qcow2"
    if image_exists:
        raise InitError(f"--disk-size: {path} exists already; handoff init never overwrites "
                        "a disk image",
                        fix=f"use it with --disk {path}, or move it away first")
    return DiskChoice(DiskSource.NEW_IMAGE, path, True,
                      f"--disk-size {request.disk_size}: a new qcow2 image {path} (it grows "
                      "as the guest writes)", size_bytes=size)


def _existing_disk(fact: DiskFact) -> DiskChoice:
    path = fact.path
    if fact.kind is DiskKind.MISSING:
        raise InitError(f"--disk {path}: no such file or block device",
                        fix="name an existing block device or image, or create a new image "
                        "with --disk-size SIZE")
    if fact.kind is DiskKind.OTHER:
        raise InitError(f"--disk {path}: neither a block device nor an image file",
                        fix="a disk is a block device (LVM volume, partition, whole disk) or "
                        "an image file; a directory or file system cannot be one")
    if fact.kind is DiskKind.BLOCK:
        if fact.root:
            raise InitError(
                f"--disk {path}: it holds the host's root file system",
                fix="give the guest its own block device (an LVM volume or a spare disk), or "
                "an image (--disk-size SIZE)")
        if fact.mounts:
            where = ", ".join(fact.mounts)
            raise InitError(
                f"--disk {path}: it is in use on the host (mounted at {where}); a guest writing "
                "to it would corrupt that file system",
                fix=f"unmount it first (umount {fact.mounts[0]}) and remove it from "
                "/etc/fstab, or give the guest another device")
        return DiskChoice(DiskSource.BLOCK, path, False,
                          f"--disk {path}: a block device nothing on the host uses; raw, "
                          "virtio, cache none (O_DIRECT) as the seed does")
    kind = "qcow2" if fact.qcow2 else "raw"
    return DiskChoice(DiskSource.IMAGE, path, fact.qcow2, f"--disk {path}: a {kind} image file")


# --------------------------------------------------------------------------- firmware, input


def choose_firmware(facts: InitFacts, requested: FirmwareType | None) -> FirmwareChoice:
    """OVMF when the distribution's files are installed, else SeaBIOS with a note."""
    ovmf = facts.ovmf
    if requested is FirmwareType.SEABIOS:
        return FirmwareChoice(FirmwareType.SEABIOS, "--firmware seabios: legacy BIOS")
    if ovmf is None:
        if requested is FirmwareType.OVMF:
            raise InitError(
                "--firmware ovmf: no OVMF files found in the usual places",
                fix="apt-get install ovmf (Debian), dnf install edk2-ovmf (Fedora), emerge "
                "sys-firmware/edk2-ovmf (Gentoo); or --firmware seabios")
        return FirmwareChoice(
            FirmwareType.SEABIOS,
            "OVMF is not installed, so SeaBIOS (QEMU's built-in BIOS); most modern GPUs and "
            "Windows 11 want UEFI: install ovmf and run handoff init again")
    return FirmwareChoice(
        FirmwareType.OVMF,
        f"OVMF (UEFI) is installed: {ovmf.code}; the VM's own vars copy is made from "
        f"{ovmf.vars_template} on its first run",
        ovmf.code, ovmf.vars_template)


def choose_input(backend: InputBackend) -> InputChoice:
    reasons = {
        InputBackend.QMP: "qmp: keyboard and mouse handed over with both Ctrl keys; works with "
        "any guest, no driver",
        InputBackend.VIRTIO: "virtio: full fidelity; the guest needs virtio-input drivers",
        InputBackend.NONE: "none: no keyboard or mouse hand-off",
    }
    return InputChoice(backend, reasons[backend])


# --------------------------------------------------------------------------- all of it


def choose_guest_os(request: InitRequest, firmware: FirmwareChoice) -> OsChoice | None:
    """--os: the guest OS and its ISOs; it needs UEFI (Secure Boot)."""
    if request.guest_os is None:
        if request.iso is not None or request.virtio_win is not None:
            raise InitError("--iso and --virtio-win go with --os",
                            fix="add --os windows11 (or windows10, linux)")
        return None
    label = request.guest_os.value
    if firmware.type is not FirmwareType.OVMF:
        raise InitError(
            f"--os {label}: the guest wants UEFI with Secure Boot, and "
            + ("--firmware seabios asks for a BIOS" if request.firmware is FirmwareType.SEABIOS
               else "OVMF is not installed"),
            fix="apt-get install ovmf (Debian) and leave out --firmware")
    if request.virtio_win is not None and not request.guest_os.windows:
        raise InitError(f"--virtio-win: the drivers are for Windows, not --os {label}",
                        fix="leave out --virtio-win")
    return OsChoice(request.guest_os, request.iso, request.virtio_win)


def plan_init(facts: InitFacts, request: InitRequest, *, image_exists: bool = False) -> InitPlan:
    """Every choice, or the first InitError (nothing has been written yet)."""
    firmware = choose_firmware(facts, request.firmware)
    return InitPlan(
        name=request.name,
        gpu=choose_gpu(facts, request.gpu),
        cpu=choose_cpu(facts, request.cpus),
        memory=choose_memory(facts, request.memory),
        disk=choose_disk(request, facts.disk, image_exists),
        firmware=firmware,
        input=choose_input(request.input),
        facts=facts,
        guest_os=choose_guest_os(request, firmware),
    )
