"""One session, decided before anything happens: the complete QEMU argv and the host changes.

Pure: profile + :class:`HostFacts` (gathered by
:func:`handoff.session.host_facts.gather_host_facts`) → :class:`SessionPlan`.
``handoff run`` starts the plan's argv (with the real QMP fd), ``handoff argv``
and ``run --dry-run`` print it, preflight and ``handoff doctor PROFILE``
check the QEMU devices it names. So the command
shown is the command run: every device, monitor, socket path and trace option
is here, none is added later by a host resource.

The virtio input proxies' event nodes (``/dev/input/eventN``) exist only once
the proxies are created, yet the argv is fixed before: QEMU is given stable
links in its socket directory (``keyboard.evdev``, ``mouse.evdev``) that the
input resource points at the real nodes after creating them (QEMU follows a
symlink like any open).

The changes are listed in the order the session makes them; each names
what it touches. Nothing here imports trio, evdev, pyudev or an edge module.

The GPU hand-off and the host display hand-over are decided as typed values
(:mod:`handoff.session.changes`: the hand-off plan, the takeover) from the
facts' one read; the plan carries them, the resources execute them, and
their lines are printed from them.

Why it stays over 500 lines: every host change a session makes is put in
order here, one short function per capability, in the order the session
makes them; that one list is what ``--dry-run`` and ``handoff argv`` show,
so its order must not be assembled in several modules that could disagree.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from handoff.base.host import HostPaths
from handoff.base.run_layout import (
    CONTROL_SOCKET,
    QEMU_LOG,
    VNC_SOCKET,
    agent_socket_path,
    input_monitor_path,
    proxy_links,
    qemu_socket_dir,
    tpm_socket_path,
)
from handoff.pci.address import PciAddress
from handoff.profile import Accelerator, FirmwareType, InputBackend, InputMode, Profile, TpmType
from handoff.qemu.cmdline import (
    LaunchSpec,
    argv_devices,
    build_argv,
    input_args,
    monitor_chardev,
)
from handoff.qemu.hyperv import NO_PLATFORM, Platform, platform
from handoff.session.changes import (
    ChangeKind,
    HostChange,
    ProxyPlan,
    display_changes,
    gpu_changes,
    owner_text,
    plan_display,
    plan_gpu,
    plan_proxies,
)

if TYPE_CHECKING:  # the live, tuning, desk, UEFI, PCI and display planners: per profile
    from handoff.base.errors import HandoffError
    from handoff.desk.looking_glass import Ivshmem
    from handoff.desk.sound import SoundServer
    from handoff.display.model import Takeover
    from handoff.display.plan import DisplayFacts
    from handoff.live.windows import Bar
    from handoff.pci.plan import HandoffPlan, HostSnapshot
    from handoff.qemu.firmware_descriptors import FirmwareChoice, FirmwareDescriptor
    from handoff.tune.model import HostTuning
    from handoff.tune.plan import MemoryBackend, TunePlan

__all__ = [
    "MEMLOCK_HEADROOM",
    "MONITOR_FD_PLACEHOLDER",
    "ChangeKind",
    "HostChange",
    "HostFacts",
    "QemuOwner",
    "SessionPaths",
    "SessionPlan",
    "input_argv",
    "plan_session",
    "required_memlock",
]

#: The fd number a printed argv shows for QMP; a run passes its socketpair end's number.
MONITOR_FD_PLACEHOLDER = 3
#: Bytes beyond guest RAM QEMU must lock with passthrough: ROMs, MMIO mappings, its own.
MEMLOCK_HEADROOM = 1 << 30
_MIB = 1 << 20


def required_memlock(profile: Profile) -> int | None:
    """Bytes QEMU must be able to lock: guest RAM + 1 GiB, None without passthrough."""
    if not profile.passthrough:
        return None
    return profile.vm.memory_mib * _MIB + MEMLOCK_HEADROOM


@dataclass(frozen=True)
class QemuOwner:
    """The account QEMU runs as (``vm.user``)."""

    user: str
    uid: int
    gid: int


@dataclass(frozen=True)
class HostFacts:
    """What the plan needs to know of the host (gathered once, read-only).

    ``qemu_owner`` is None when QEMU runs as the supervisor's own user (no
    ``vm.user``, or an account ``handoff argv`` could not look up);
    ``iommu_groups`` maps each passthrough address to its group (None: not
    known here, e.g. no such device on this machine); ``tuning`` is the CPU
    topology, hugepage pools and cpufreq state (:mod:`handoff.tune.topology`).
    """

    accel: Accelerator
    accel_reason: str
    supervisor_uid: int
    qemu_owner: QemuOwner | None = None
    iommu_groups: tuple[tuple[PciAddress, int | None], ...] = ()
    # The BARs (sysfs resource) of each live = true function: its root port's windows.
    live_bars: tuple[tuple[PciAddress, tuple[Bar, ...]], ...] = ()
    tuning: HostTuning | None = None  # read only when the profile asks for tuning
    # QEMU's firmware descriptors (OVMF); its CPU/q35 properties (None: not probed,
    # every Hyper-V flag kept); Intel KVM with nesting (hv-evmcs).
    firmware_descriptors: tuple[FirmwareDescriptor, ...] = ()
    cpu_properties: frozenset[str] | None = None
    machine_options: frozenset[str] | None = None
    host_evmcs: bool = False
    sound: SoundServer | None = None  # [sound] user's server, read when the profile names one
    # The passthrough groups (not live) as sysfs shows them: members, drivers, overrides
    # (no holder scan: who holds a node is the resource's to check, under its locks).
    gpu: HostSnapshot | None = None
    live_gpu: HostSnapshot | None = None  # the live = true groups, alike
    display: DisplayFacts | None = None  # consoles, framebuffers, BARs: [host_display] handover

    def group_of(self, address: PciAddress) -> int | None:
        return dict(self.iommu_groups).get(address)


@dataclass(frozen=True)
class SessionPaths:
    """Every path a session uses."""

    run_dir: Path
    qemu_socket_dir: Path
    control_socket: Path
    log: Path
    input_monitor: Path | None
    vnc_socket: Path | None
    proxy_links: tuple[Path, Path] | None
    tpm_socket: Path | None = None
    agent_socket: Path | None = None


@dataclass(frozen=True)
class SessionPlan:
    """The complete argv (QMP on :data:`MONITOR_FD_PLACEHOLDER`), the paths and the changes."""

    profile: Profile
    facts: HostFacts
    launch: LaunchSpec
    paths: SessionPaths
    changes: tuple[HostChange, ...]
    argv: tuple[str, ...]
    tune: TunePlan | None = None
    # Lines to show before the session starts (Hyper-V flags this QEMU lacks).
    warnings: tuple[str, ...] = ()
    # The GPU hand-off decided from ``facts.gpu`` (None: no such facts here, e.g.
    # `handoff argv` for another machine), or why the host refuses it (preflight raises it).
    gpu: HandoffPlan | None = None
    gpu_refusal: HandoffError | None = None
    # The host display hand-over decided from ``facts.display`` and the hand-off, or why not.
    display: Takeover | None = None
    display_refusal: HandoffError | None = None
    proxies: ProxyPlan | None = None  # the virtio input proxies: links and node owner
    # The live = true groups' hand-off (moved at start, then by `handoff gpu`), or why not.
    live: HandoffPlan | None = None
    live_refusal: HandoffError | None = None

    @property
    def environment(self) -> tuple[tuple[str, str], ...]:
        """Variables QEMU gets beyond the supervisor's (the sound user's PulseAudio cookie)."""
        sound = self.facts.sound
        if sound is None:
            return ()
        if self.facts.qemu_owner is not None and sound.explicit:  # vm.user reads a copy
            from handoff.desk.sound import COOKIE_COPY

            return sound.environment(self.paths.qemu_socket_dir / COOKIE_COPY)
        return sound.environment()

    @property
    def notes(self) -> tuple[str, ...]:
        """What a person should know before the VM starts (no sound server, ...)."""
        sound = self.facts.sound
        note = sound.note() if sound is not None else None
        return (note,) if note is not None else ()

    def argv_with_monitor_fd(self, fd: int) -> tuple[str, ...]:
        """The argv QEMU runs when QMP is the inherited ``fd``: the plan's argv with that
        one value filled in (the QMP ``-chardev``); nothing else differs."""
        at = self.argv.index(monitor_chardev(MONITOR_FD_PLACEHOLDER))
        return (*self.argv[:at], monitor_chardev(fd), *self.argv[at + 1:])

    @property
    def scoped(self) -> bool:
        """QEMU starts in a scope of its own (cpu.isolate): the argv begins with systemd-run."""
        return self.tune is not None and self.tune.isolation is not None

    @property
    def devices(self) -> tuple[str, ...]:
        """The QEMU device names the argv instantiates (what preflight and doctor check)."""
        return argv_devices(self.argv)

    @property
    def memlock_bytes(self) -> int | None:
        """The RLIMIT_MEMLOCK QEMU gets (None: left as it is)."""
        return required_memlock(self.profile)


def _session_paths(profile: Profile, paths: HostPaths) -> SessionPaths:
    name = profile.name
    run_dir = paths.session_dir(name)
    backend = profile.input.backend
    return SessionPaths(
        run_dir=run_dir,
        qemu_socket_dir=qemu_socket_dir(paths, name),
        control_socket=run_dir / CONTROL_SOCKET,
        log=run_dir / QEMU_LOG,
        input_monitor=input_monitor_path(paths, name) if backend is InputBackend.QMP else None,
        # The VNC path is always given: build_argv uses it only for frontend = "vnc".
        vnc_socket=qemu_socket_dir(paths, name) / VNC_SOCKET,
        proxy_links=proxy_links(paths, name) if backend is InputBackend.VIRTIO else None,
        tpm_socket=(
            tpm_socket_path(paths, name) if profile.tpm.type is TpmType.EMULATED else None
        ),
        agent_socket=agent_socket_path(paths, name) if profile.guest_agent.enabled else None,
    )


def _launch(
    facts: HostFacts,
    where: SessionPaths,
    binary: str,
    trace_file: Path | None,
    tune: TunePlan | None = None,
    firmware: FirmwareChoice | None = None,
    guest: Platform = NO_PLATFORM,
    *,
    profile: Profile | None = None,
    dev: Path = Path("/dev"),
) -> LaunchSpec:
    return LaunchSpec(
        binary=binary,
        accel=facts.accel,
        monitor_fd=MONITOR_FD_PLACEHOLDER,
        vnc_socket=where.vnc_socket,
        trace_file=trace_file,
        input_monitor=where.input_monitor,
        virtio_input=where.proxy_links,
        start_paused=True,
        tpm_socket=where.tpm_socket,
        agent_socket=where.agent_socket,
        firmware=firmware,
        platform=guest,
        memory_backend=_memory_backend(profile, tune),
        ivshmem=_ivshmem(profile, dev),
        sound_server=facts.sound.socket if facts.sound and facts.sound.explicit else None,
        no_sound_server=facts.sound is not None and not facts.sound.reachable,
        virtiofs=tuple(
            (_share_socket(where.qemu_socket_dir, index), share.tag)
            for index, share in enumerate(profile.shares)
        ) if profile else (),
    )


def _ivshmem(profile: Profile | None, dev: Path) -> Ivshmem | None:
    if profile is None or not profile.looking_glass.enabled:
        return None
    from handoff.desk.looking_glass import plan_ivshmem

    return plan_ivshmem(profile.looking_glass, dev, profile.name)


def _share_socket(directory: Path, index: int) -> Path:
    from handoff.desk.share import socket_path

    return socket_path(directory, index)


def _memory_backend(profile: Profile | None, tune: TunePlan | None) -> MemoryBackend | None:
    """Guest RAM's backend: the tuning's hugetlb one; shared (share=on) with [[share]],
    whose virtiofsd maps guest RAM (a plain memfd without hugepages)."""
    backend = tune.backend if tune is not None else None
    if profile is None or not profile.shares:
        return backend
    from handoff.tune.model import HugepageSize
    from handoff.tune.plan import MemoryBackend  # start-up: only a profile that needs it

    if backend is None:
        return MemoryBackend(profile.vm.memory_mib, HugepageSize.NONE, shared=True)
    return replace(backend, shared=True)


def _run_dir_changes(where: SessionPaths, owner: QemuOwner | None) -> list[HostChange]:
    who = f"owned by {owner.user} ({owner.uid}:{owner.gid})" if owner else "owned by you"
    return [
        HostChange(ChangeKind.CREATE_RUN_DIR, str(where.run_dir), "0700, locked; removed after"),
        HostChange(
            ChangeKind.CREATE_RUN_DIR, str(where.qemu_socket_dir),
            f"0700 {who}, for QEMU's sockets; removed after",
        ),
    ]


def _tpm_changes(
    profile: Profile, where: SessionPaths, owner: QemuOwner | None
) -> list[HostChange]:
    """The VM's TPM state (created once, kept) and swtpm, started before QEMU."""
    state = profile.tpm.state
    if where.tpm_socket is None or state is None:
        return []
    who = f"{owner.user} ({owner.uid}:{owner.gid})" if owner else "you"
    return [
        HostChange(
            ChangeKind.CREATE_TPM_STATE, str(state),
            f"swtpm_setup --tpm2 with EK and platform certificates, 0700 owned by {who}, "
            "on first use only; kept (the VM's own, like its OVMF vars)",
        ),
        HostChange(
            ChangeKind.START_SWTPM, str(where.tpm_socket),
            f"swtpm socket --terminate as {who}, before QEMU; ends when QEMU hangs up",
        ),
    ]


def _input_changes(
    profile: Profile, facts: HostFacts, proxies: ProxyPlan | None
) -> list[HostChange]:
    selected = profile.input
    changes: list[HostChange] = []
    if proxies is not None:
        owner = facts.qemu_owner
        give = proxies.owner_uid is not None
        for role, link in zip(("keyboard", "mouse"), proxies.links, strict=True):
            changes.append(
                HostChange(
                    ChangeKind.CREATE_PROXY, "/dev/uinput",
                    f"a {role} proxy for the guest; removed after",
                )
            )
            if give and owner is not None:
                changes.append(
                    HostChange(
                        ChangeKind.CHOWN_NODE, f"the {role} proxy's /dev/input/eventN",
                        owner_text(owner),
                    )
                )
            changes.append(
                HostChange(
                    ChangeKind.LINK_PROXY, str(link),
                    f"symlink to the {role} proxy's /dev/input/eventN (QEMU opens it)",
                )
            )
    what = ", ".join(selected.devices) if selected.devices else "every keyboard and mouse"
    if selected.exclude:
        what += " except " + ", ".join(selected.exclude)
    when = "from the start" if selected.start_in is InputMode.GUEST else "after the hotkey"
    changes.append(
        HostChange(
            ChangeKind.GRAB_INPUT, what,
            f"grabbed while the guest has input ({when}: {'+'.join(selected.hotkey)}); "
            "released when the VM ends",
        )
    )
    return changes


def _desk_changes(profile: Profile, facts: HostFacts, launch: LaunchSpec) -> list[HostChange]:
    """Looking Glass's shm file (a kvmfr device is the module's: nothing to make)."""
    from handoff.profile import LookingGlassDevice

    lg = profile.looking_glass
    changes = []
    owner = facts.qemu_owner
    if launch.ivshmem is not None and lg.device is LookingGlassDevice.SHM:
        group = f"{owner.gid} (QEMU's group)" if owner else "QEMU's group"
        changes.append(HostChange(
            ChangeKind.CREATE_SHM, str(launch.ivshmem.path),
            f"{launch.ivshmem.size_mib} MiB, owner {lg.owner}, group {group}, mode 0660, for "
            "looking-glass-client; a stale one replaced; removed after",
        ))
    for share, (sock, _) in zip(profile.shares, launch.virtiofs, strict=True):
        who = owner.user if owner is not None else "the folder's owner"
        mode = "read-only" if share.readonly else "read-write"
        changes.append(HostChange(
            ChangeKind.START_VIRTIOFSD, f"{share.path} (tag {share.tag})",
            f"virtiofsd as {who} in a user namespace, {mode}, on {sock}; exits with QEMU",
        ))
    return changes


def _tune_plan(profile: Profile, facts: HostFacts) -> TunePlan | None:
    if not profile.tuned:
        return None
    if facts.tuning is None:
        raise ValueError("HostFacts.tuning is needed for a profile with [cpu]/[memory] tuning")
    from handoff.tune.plan import plan_tuning

    return plan_tuning(profile.cpu, profile.memory, profile.vm, facts.tuning)


def _tune_before(tune: TunePlan) -> list[HostChange]:
    """The changes made before QEMU starts: pool, governors, host isolation."""
    changes: list[HostChange] = []
    pages = tune.hugepages
    if pages is not None:
        for t in pages.targets:
            label = pages.size.label
            detail = (
                f"{t.before} -> {t.target} pages of {label} (compacted first), "
                f"back to {t.before} after"
                if t.target != t.before
                else f"{t.before} pages of {label}, {t.wanted} of them free already: unchanged"
            )
            changes.append(HostChange(ChangeKind.RAISE_HUGEPAGES, t.where, detail))
    governor = tune.governor
    for cpu, name in sorted(governor.targets.items()):
        changes.append(
            HostChange(
                ChangeKind.SET_GOVERNOR, f"CPU {cpu}",
                f"{governor.restore[cpu]} -> {name}, back after",
            )
        )
    return changes


def scoped_argv(profile: Profile, tune: TunePlan | None, argv: tuple[str, ...]) -> tuple[str, ...]:
    """QEMU's argv, wrapped in ``systemd-run --scope`` when the tuning isolates the host."""
    if tune is None or tune.isolation is None:
        return argv
    from handoff.tune.isolation import scope_argv

    return scope_argv(profile.name, tune.isolation, argv, profile.vm.user)


def _isolation_changes(name: str, tune: TunePlan) -> list[HostChange]:
    """QEMU's scope (made by systemd-run as QEMU starts), then the host's units confined."""
    iso = tune.isolation
    if iso is None:
        return []
    from handoff.tune.isolation import qemu_scope_unit

    changes = [
        HostChange(
            ChangeKind.QEMU_SCOPE, qemu_scope_unit(name),
            f"QEMU started in it (systemd-run --scope, machine.slice), AllowedCPUs="
            f"{iso.qemu_scope}, gone with QEMU",
        )
    ]
    changes += [
        HostChange(
            ChangeKind.ISOLATE_HOST, unit,
            f"AllowedCPUs={value} (systemctl set-property --runtime) once QEMU is in its "
            "scope, previous value back after",
        )
        for unit, value in iso.units
    ]
    return changes


def _tune_after_start(tune: TunePlan) -> list[HostChange]:
    """Affinities set once QMP names the vCPU threads; they die with QEMU (not journaled)."""
    pin = tune.pin
    if not pin.active:
        return []
    from handoff.tune.cpulist import format_cpulist

    changes = [
        HostChange(
            ChangeKind.PIN_VCPUS, f"vCPU {i}",
            f"thread affinity CPUs {format_cpulist(cpus)} (query-cpus-fast thread-id), "
            "gone with QEMU",
        )
        for i, cpus in enumerate(pin.vcpus)
    ]
    changes.append(
        HostChange(
            ChangeKind.SET_EMULATOR_AFFINITY, "QEMU's other threads",
            f"affinity CPUs {format_cpulist(pin.emulator)} (/proc/<qemu>/task), gone with QEMU",
        )
    )
    return changes


#: A live group's hotplug: q35's ACPI PCI hotplug, pinned (QEMU's q35 default since 6.1).
#: It answers device_del in 0.3-0.8 s with a guest OS (Linux measured; Windows ejects
#: through ACPI too, "Safely Remove Hardware"), where native PCIe hotplug costs Linux
#: its 5 s attention-button wait (6-9 s measured). Without a guest OS ACPI never answers
#: (native does, in 0.1 s): vm.extra_args may end with the ``=off`` form for that.
LIVE_HOTPLUG_GLOBAL = "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=on"


def live_argv(argv: tuple[str, ...], profile: Profile, facts: HostFacts) -> tuple[str, ...]:
    """``argv`` with each live slot's root port given windows for its functions' BARs
    (:mod:`handoff.live.windows`) and the hotplug mechanism pinned before the ports.

    Unchanged without live groups. A function whose BARs are not known (not on this
    host, ``handoff argv`` elsewhere) adds no window.
    """
    if not any(p.live for p in profile.passthrough):
        return argv
    from handoff.live.sequence import live_slots
    from handoff.live.windows import size_windows

    slots = live_slots(profile.passthrough)
    bars = dict(facts.live_bars)
    options: dict[str, str] = {}
    for slot in slots:
        windows = size_windows([bars.get(f.address, ()) for f in slot.functions])
        options[f"pcie-root-port,id={slot.bus},"] = "".join(
            f",{name}={value}" for name, value in windows.qemu_options()
        )
    out: list[str] = []
    pinned = False
    for flag, value in zip(argv, (*argv[1:], ""), strict=True):
        if flag == "-device" and value.startswith("pcie-root-port,") and not pinned:
            out += ["-global", LIVE_HOTPLUG_GLOBAL]
            pinned = True
        out.append(flag)
    for index in range(len(out) - 1):
        if out[index] == "-device":
            for head, extra in options.items():
                if out[index + 1].startswith(head):
                    out[index + 1] += extra
    return tuple(out)


def _firmware(profile: Profile, facts: HostFacts) -> FirmwareChoice | None:
    """The UEFI build from QEMU's descriptors (None: SeaBIOS; its module loads for OVMF only)."""
    if profile.firmware.type is not FirmwareType.OVMF:
        return None
    from handoff.qemu.firmware_descriptors import choose_firmware

    return choose_firmware(profile.firmware, profile.vm.machine,
                           facts.firmware_descriptors, source=str(profile.source))


def plan_session(
    profile: Profile,
    facts: HostFacts,
    paths: HostPaths,
    *,
    binary: str = "qemu-system-x86_64",
    trace_file: Path | None = None,
) -> SessionPlan:
    """The session ``profile`` gives on a host with ``facts``.

    Raises :class:`handoff.base.errors.ProfileError` for a profile that cannot run
    under the chosen accelerator (``cpu_model = "host"`` without KVM), and
    :class:`handoff.base.errors.FirmwareError` when no UEFI build fits. The plan's
    profile has the chosen firmware's code and vars template filled in.
    """
    where = _session_paths(profile, paths)
    tune = _tune_plan(profile, facts)
    firmware = _firmware(profile, facts)
    if firmware is not None:
        profile = replace(profile, firmware=firmware.firmware)
    guest = platform(
        profile, facts.accel, cpu_properties=facts.cpu_properties,
        machine_options=facts.machine_options, host_evmcs=facts.host_evmcs,
    )
    launch = _launch(facts, where, binary, trace_file, tune, firmware, guest, profile=profile,
                     dev=paths.dev)
    argv = scoped_argv(profile, tune, live_argv(tuple(build_argv(profile, launch)), profile, facts))
    changes = _run_dir_changes(where, facts.qemu_owner)
    gpu, gpu_refusal = plan_gpu(profile, facts)
    display, display_refusal = plan_display(profile, facts, gpu)
    changes += display_changes(display)
    live, live_refusal = plan_gpu(profile, facts, live=True)
    changes += gpu_changes(profile, facts, paths.dev, gpu, live)
    changes += _desk_changes(profile, facts, launch)
    backend = profile.input.backend
    proxy_plan = plan_proxies(facts, where.proxy_links)
    grabs: list[HostChange] = []
    if backend is not InputBackend.NONE:
        *proxies, grab = _input_changes(profile, facts, proxy_plan)
        changes += proxies
        grabs.append(grab)
    if tune is not None:
        changes += _tune_before(tune)
    memlock = required_memlock(profile)
    if memlock is not None:
        changes.append(
            HostChange(
                ChangeKind.RAISE_MEMLOCK, "QEMU's RLIMIT_MEMLOCK",
                f"{memlock // _MIB} MiB (guest RAM + 1 GiB), for the QEMU process only",
            )
        )
    changes += _tpm_changes(profile, where, facts.qemu_owner)
    if tune is not None:
        changes += _isolation_changes(profile.name, tune) + _tune_after_start(tune)
    changes += grabs  # devices are grabbed once the VM runs
    return SessionPlan(
        profile, facts, launch, where, tuple(changes), argv, tune, warnings=guest.warnings,
        gpu=gpu, gpu_refusal=gpu_refusal, display=display, display_refusal=display_refusal,
        proxies=proxy_plan, live=live, live_refusal=live_refusal,
    )


def input_argv(profile: Profile, paths: HostPaths) -> tuple[str, ...]:
    """The input backend's part of the plan's argv (for tests that start QEMU themselves)."""
    where = _session_paths(profile, paths)
    launch = LaunchSpec(input_monitor=where.input_monitor, virtio_input=where.proxy_links)
    return tuple(input_args(launch))
