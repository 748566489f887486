"""The profile's data model: frozen dataclasses and enums. Pure declarations.

A :class:`Profile` is a whole, validated VM description; every value in it
is typed (enums, not strings, for every choice). The dataclass fields are
also the one declaration of the TOML layout: each section's accepted keys,
their order (error messages list them) and their names (field metadata
:data:`TOML_KEY` where a key is not named like its field) are derived from
them by :data:`SECTIONS`, for handoff.profile.parse and .render alike.

Never: read files, look anything up on the host, or parse text.

Why it stays over 500 lines: it is the one declaration of every section;
:data:`SECTIONS` and every key table derive from it, and split across
modules the sections' order (how they are read and written) would need a
second list to agree with.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import MISSING, Field, dataclass, field, fields
from enum import Enum, StrEnum
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

from handoff.pci.address import PciAddress
from handoff.pci.reset import ResetChoice
from handoff.tune.model import (
    EMULATOR_AUTO,
    PIN_NONE,
    EmulatorSpec,
    GuestTopology,
    HugepageSize,
    PinSpec,
)

#: Field metadata: the field's key in the profile's TOML when it differs from
#: the field's name; None for a field TOML does not set (Profile.source).
TOML_KEY = "toml_key"
#: Field metadata: the field's default depends on other keys (display.vga on
#: display.frontend), so rendering writes it even when it equals the default.
CONTEXT_DEFAULT = "context_default"

#: vm.name becomes ``<run root>/<name>``; these names under the run root hold
#: other things (QEMU's socket directories, the GPU journals), never a session.
RESERVED_NAMES = frozenset({"qemu", "journal", "control"})


class Accel(Enum):
    """Which accelerator QEMU uses; AUTO picks KVM only where it really works."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class Accelerator(StrEnum):
    """The accelerator QEMU gets (``vm.accel`` resolved on this host): ``-machine accel=``."""

    KVM = "kvm"
    TCG = "tcg"


class FirmwareType(Enum):
    SEABIOS = "seabios"
    OVMF = "ovmf"


class GuestOs(Enum):
    """``vm.os``: what the guest runs; "windows" gets Hyper-V enlightenments and
    the clock libvirt gives Windows (:mod:`handoff.qemu.hyperv`)."""

    OTHER = "other"
    WINDOWS = "windows"
    LINUX = "linux"


class HyperV(Enum):
    """``vm.hyperv``: the Hyper-V enlightenments; AUTO is ON for a Windows guest."""

    AUTO = "auto"
    ON = "on"
    OFF = "off"


@dataclass(frozen=True)
class Firmware:
    """BIOS or UEFI. For OVMF, ``code`` is read-only and ``vars`` is the VM's
    own writable copy, created from ``vars_template`` on first use. Left out,
    ``code`` and ``vars_template`` come from QEMU's firmware descriptors
    (:mod:`handoff.qemu.firmware_descriptors`); ``secure_boot`` picks one with
    Secure Boot and Microsoft's keys enrolled."""

    type: FirmwareType = FirmwareType.SEABIOS
    code: Path | None = None
    vars: Path | None = None
    vars_template: Path | None = None
    secure_boot: bool = False


class DiskFormat(Enum):
    RAW = "raw"
    QCOW2 = "qcow2"


class DiskInterface(Enum):
    VIRTIO = "virtio"
    SATA = "sata"
    SCSI = "scsi"


class DiskCache(Enum):
    NONE = "none"
    WRITEBACK = "writeback"
    WRITETHROUGH = "writethrough"
    DIRECTSYNC = "directsync"
    UNSAFE = "unsafe"


class DiskAio(Enum):
    THREADS = "threads"
    NATIVE = "native"
    IO_URING = "io_uring"


class DiskMedia(Enum):
    DISK = "disk"
    CDROM = "cdrom"


@dataclass(frozen=True)
class Disk:
    """A raw file, qcow2 image, block device (the seed's LVM volume) or ISO."""

    path: Path
    format: DiskFormat = DiskFormat.RAW
    interface: DiskInterface = DiskInterface.VIRTIO
    cache: DiskCache = DiskCache.WRITEBACK
    aio: DiskAio = DiskAio.THREADS
    media: DiskMedia = DiskMedia.DISK
    readonly: bool = False


class NetworkType(Enum):
    USER = "user"
    TAP = "tap"
    BRIDGE = "bridge"


class NicModel(Enum):
    VIRTIO = "virtio"
    E1000E = "e1000e"
    RTL8139 = "rtl8139"


@dataclass(frozen=True)
class Network:
    type: NetworkType = NetworkType.USER
    model: NicModel = NicModel.VIRTIO
    mac: str | None = None
    ifname: str | None = None  # tap: the host tap interface (tap0)
    bridge: str | None = None  # bridge: the host bridge (br0), via qemu-bridge-helper


class SoundModel(Enum):
    NONE = "none"
    HDA = "hda"  # -device intel-hda -device hda-duplex (the seed's -soundhw hda)


class AudioBackend(Enum):
    NONE = "none"
    PIPEWIRE = "pipewire"
    PULSEAUDIO = "pa"
    ALSA = "alsa"
    SDL = "sdl"


@dataclass(frozen=True)
class Sound:
    """``user``: whose sound server (their desktop session's PulseAudio or
    pipewire-pulse) QEMU plays to; ``latency_ms``: the backend's buffer."""

    model: SoundModel = SoundModel.NONE
    backend: AudioBackend = AudioBackend.NONE
    user: str | None = None
    latency_ms: int = 20


class Vga(Enum):
    """The emulated video device. Left out, it is "std" when display.frontend
    shows something and no passthrough device has x_vga, else "none"."""

    NONE = "none"  # the passthrough GPU is the display
    STD = "std"  # for installing the OS before passthrough
    VIRTIO = "virtio"
    QXL = "qxl"


class DisplayFrontend(Enum):
    NONE = "none"
    GTK = "gtk"
    SDL = "sdl"
    VNC = "vnc"  # on a unix socket in the run directory, never a network port


def default_vga(frontend: DisplayFrontend, legacy_vga_passthrough: bool) -> Vga:
    """display.vga when the profile leaves it out.

    A window or VNC socket with no video device shows only "Display output
    is not active", so a frontend gets the emulated "std" VGA, unless a
    passthrough device owns the legacy VGA ranges (x_vga = true)."""
    if frontend is DisplayFrontend.NONE or legacy_vga_passthrough:
        return Vga.NONE
    return Vga.STD


@dataclass(frozen=True)
class Display:
    vga: Vga = field(default=Vga.NONE, metadata={CONTEXT_DEFAULT: True})
    frontend: DisplayFrontend = DisplayFrontend.NONE
    tablet: bool = False  # usb-tablet (the seed's -usbdevice tablet)


@dataclass(frozen=True)
class Passthrough:
    """One PCI function the profile hands to the guest.

    The plan grows it to its whole IOMMU group; ``allow_in_group`` lists
    co-members a person has explicitly accepted to lose while the VM runs
    (otherwise a storage controller, LPC bridge, SMBus, host bridge or NIC in
    the same group refuses the hand-off).
    """

    address: PciAddress
    x_vga: bool = False
    romfile: Path | None = None
    multifunction: bool = False
    allow_in_group: tuple[PciAddress, ...] = ()
    live: bool = False  # may move between host and running guest (`handoff gpu`)
    # The kernel's reset_method for the session (auto: as it is; handoff.pci.reset).
    reset: ResetChoice = ResetChoice.AUTO


@dataclass(frozen=True)
class HostDisplay:
    """``[host_display]``: a single-GPU host hands its only (boot) GPU to the guest.

    ``handover`` lifts the boot-GPU refusal: the host's display (``stop_units``,
    the framebuffer consoles, the firmware framebuffer) is taken down before
    the hand-off and brought back after it, each step journaled and verified
    (:mod:`handoff.display`). Off by default.
    """

    handover: bool = False
    stop_units: tuple[str, ...] = ()  # systemd units stopped before, started after


class SelectorKind(Enum):
    """How an input device selector (``KIND:VALUE``) names a device."""

    BY_ID = "by-id"  # by-id:NAME, a /dev/input/by-id link name
    PATH = "path"  # path:ID_PATH, udev's ID_PATH
    USB = "usb"  # usb:VVVV:PPPP, vendor:product in hex
    NAME = "name"  # name:TEXT, the kernel device name (exact)


class InputBackend(Enum):
    NONE = "none"  # no input hand-off
    QMP = "qmp"  # input-send-event: any guest, no guest driver
    VIRTIO = "virtio"  # uinput proxies + virtio-input-host-pci: full fidelity


class InputMode(Enum):
    HOST = "host"
    GUEST = "guest"


@dataclass(frozen=True)
class Input:
    """Which keyboards and mice are handed off, and how.

    ``hotkey`` is a chord of Linux key names (``KEY_LEFTCTRL``); pressing all of
    them toggles host/guest and is never forwarded. ``devices`` and
    ``exclude`` are selectors ``KIND:VALUE``, KIND one of :class:`SelectorKind`.
    An empty ``devices`` means every keyboard and mouse.
    """

    backend: InputBackend = InputBackend.NONE
    hotkey: tuple[str, ...] = ("KEY_LEFTCTRL", "KEY_RIGHTCTRL")
    # Defaults to the guest with [host_display] handover (the host has no screen).
    start_in: InputMode = field(default=InputMode.HOST, metadata={CONTEXT_DEFAULT: True})
    devices: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()
    gpu_hotkey: tuple[str, ...] = ()  # a chord that toggles the live GPU groups
    follow_gpu: bool = False  # keyboard and mouse go where the live GPU goes
    escape_hotkey: tuple[str, ...] = ()  # held 2 s: stop the VM (the Ctrl-C ladder)
    host_keys: tuple[str, ...] = ()  # in guest mode to the host ("handoff host keys")


class LookingGlassDevice(Enum):
    """Where ``[looking_glass]``'s shared memory lives."""

    SHM = "shm"  # a per-VM file under /dev/shm, made before QEMU starts
    KVMFR = "kvmfr"  # /dev/kvmfrN of the kvmfr module (DMA-capable; loaded by the person)


@dataclass(frozen=True)
class LookingGlass:
    """``[looking_glass]``: an IVSHMEM device for the Looking Glass client.

    ``size_mib`` None is "auto": from ``width`` x ``height`` (and ``hdr``),
    :func:`handoff.desk.looking_glass.auto_size_mib`. ``owner`` is the desktop
    user who runs ``looking-glass-client``: the shm file is theirs.
    """

    enabled: bool = False
    width: int = 1920
    height: int = 1080
    hdr: bool = False
    size_mib: int | None = field(default=None, metadata={TOML_KEY: "size"})
    owner: str | None = None
    device: LookingGlassDevice = LookingGlassDevice.SHM
    kvmfr_index: int = 0


@dataclass(frozen=True)
class Usb:
    """``[[usb]]``: one host USB device for the guest, by ``device = "VID:PID"`` or by
    ``port = "BUS-PORT[.PORT...]"`` (exactly one). QEMU's usb-host attaches whatever
    matches whenever it is plugged in, so re-plugging works."""

    device: str | None = None  # "046d:c52b", lower case
    port: str | None = None  # "1-2.3"


@dataclass(frozen=True)
class Share:
    """``[[share]]``: a host folder the guest mounts by ``tag`` (virtiofs, served by
    virtiofsd as a helper process of the session)."""

    path: Path
    tag: str
    readonly: bool = False


@dataclass(frozen=True)
class Vm:
    name: str
    memory_mib: int = field(metadata={TOML_KEY: "memory"})
    cpus: int = 2
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    cpu_model: str | None = None  # None: "host" under KVM, "max" under TCG
    cpu_flags: tuple[str, ...] = ()  # e.g. ("kvm=off",) to hide the hypervisor
    hide_hypervisor: bool = False  # adds kvm=off and hv-vendor-id for guest drivers
    os: GuestOs = GuestOs.OTHER
    hyperv: HyperV = HyperV.AUTO
    accel: Accel = Accel.AUTO
    machine: str = "q35"
    user: str | None = None  # run QEMU as this unprivileged user
    shutdown_timeout: float = 120.0  # seconds the guest gets to power off
    extra_args: tuple[str, ...] = ()  # appended verbatim to QEMU's argv


@dataclass(frozen=True)
class Cpu:
    """``[cpu]``: where the vCPUs and QEMU's other threads run, and the host around them.

    ``pin``: none (threads float), auto (planned from the host's topology) or
    one host CPU list per vCPU; ``emulator``: QEMU's other threads (auto: the
    CPUs no vCPU uses); ``isolate``: host tasks kept off the vCPUs' CPUs while
    the VM runs; ``governor``: the pinned CPUs' cpufreq governor for the
    session ("" leaves it alone).
    """

    pin: PinSpec = PIN_NONE
    emulator: EmulatorSpec = EMULATOR_AUTO
    isolate: bool = False
    governor: str = ""


@dataclass(frozen=True)
class Memory:
    """``[memory]``: guest RAM on hugetlb pages of this size (reserved before QEMU starts)."""

    hugepages: HugepageSize = HugepageSize.NONE


class TpmType(Enum):
    """``[tpm] type``: no TPM, or a TPM 2.0 emulated by swtpm (:mod:`handoff.tpm`)."""

    NONE = "none"
    EMULATED = "emulated"


@dataclass(frozen=True)
class Tpm:
    """``[tpm]``: the guest's TPM 2.0. ``state`` is the VM's own swtpm state directory
    (kept across runs like the OVMF vars copy; left out: ``<name>.tpm`` next to the
    profile)."""

    type: TpmType = TpmType.NONE
    state: Path | None = None


@dataclass(frozen=True)
class GuestAgent:
    """``[guest_agent]``: a virtio-serial port for qemu-ga (org.qemu.guest_agent.0).

    handoff asks it only guest-sync, guest-ping, guest-get-osinfo and
    guest-shutdown (the shutdown ladder's first rung)."""

    enabled: bool = False


def guest_topology(vm: Vm) -> GuestTopology:
    """The guest's -smp topology: sockets/cores/threads as given (unset = 1), or, with
    none given, QEMU's default for a bare ``-smp N`` on q35 since 6.2: one socket of N
    cores (``query-cpus-fast`` on 7.2 reports core-id 0..N-1, socket-id 0)."""
    if vm.sockets is None and vm.cores is None and vm.threads is None:
        return GuestTopology(cores=vm.cpus)
    return GuestTopology(vm.sockets or 1, vm.cores or 1, vm.threads or 1)


class MonitorFollow(Enum):
    """What the monitor's input follows: keyboard and mouse, or a live GPU."""

    INPUT = "input"
    GPU = "gpu"


@dataclass(frozen=True)
class Monitor:
    """``[monitor]``: switch the monitor's input (DDC/CI VCP 0x60, through ddcutil).

    ``ddc_bus`` is /dev/i2c-N, ``ddc_display`` ddcutil's display number (one of
    them); ``guest_input``/``host_input`` are VCP 0x60 values (names in the
    profile are MCCS names, handoff.monitor.mccs)."""

    ddc_bus: int | None = None
    ddc_display: int | None = None
    guest_input: int | None = None
    host_input: int | None = None
    follow: MonitorFollow = MonitorFollow.INPUT

    @property
    def configured(self) -> bool:
        return self.guest_input is not None or self.host_input is not None


class HookEvent(Enum):
    """When a ``[[hook]]`` runs: input moved, a live GPU moved, the VM started or stopped."""

    GUEST = "guest"
    HOST = "host"
    GPU_GUEST = "gpu-guest"
    GPU_HOST = "gpu-host"
    START = "start"
    STOP = "stop"


@dataclass(frozen=True)
class Hook:
    """``[[hook]]``: a program run (argv, no shell) on an event, killed after ``timeout`` s."""

    on: HookEvent
    run: tuple[str, ...]
    timeout: float = 5.0


@dataclass(frozen=True)
class Control:
    """``[control]``: who besides root may run status/switch/gpu/stop for a root session.

    ``users`` are account names (the systemd unit has no SUDO_UID to go by);
    members of a ``handoff`` group, and the user who ran ``sudo``/``pkexec``,
    may too (handoff.control.users)."""

    users: tuple[str, ...] = ()


@dataclass(frozen=True)
class Profile:
    """A whole, validated VM description. ``source`` is the file it came from.

    Each field but ``source`` is one TOML section, named by :data:`TOML_KEY`;
    a tuple field is an array of tables (``[[disk]]``)."""

    vm: Vm
    source: Path = field(metadata={TOML_KEY: None})
    firmware: Firmware = field(default_factory=Firmware)
    disks: tuple[Disk, ...] = field(default=(), metadata={TOML_KEY: "disk"})
    networks: tuple[Network, ...] = field(default=(), metadata={TOML_KEY: "network"})
    sound: Sound = field(default_factory=Sound)
    display: Display = field(default_factory=Display)
    passthrough: tuple[Passthrough, ...] = ()
    host_display: HostDisplay = field(default_factory=HostDisplay)
    input: Input = field(default_factory=Input)
    cpu: Cpu = field(default_factory=Cpu)
    memory: Memory = field(default_factory=Memory)
    tpm: Tpm = field(default_factory=Tpm)
    guest_agent: GuestAgent = field(default_factory=GuestAgent)
    control: Control = field(default_factory=Control)
    hooks: tuple[Hook, ...] = field(default=(), metadata={TOML_KEY: "hook"})
    monitor: Monitor = field(default_factory=Monitor)
    looking_glass: LookingGlass = field(default_factory=LookingGlass)
    usb: tuple[Usb, ...] = ()
    shares: tuple[Share, ...] = field(default=(), metadata={TOML_KEY: "share"})

    @property
    def tuned(self) -> bool:
        """Whether the profile asks for any performance tuning ([cpu], [memory])."""
        return self.cpu != Cpu() or self.memory != Memory()

    @property
    def name(self) -> str:
        return self.vm.name


# --------------------------------------------------------------------------- the key table


def toml_name(f: Field[Any]) -> str | None:
    """The TOML key a dataclass field is read from (None: not from TOML)."""
    name: str | None = f.metadata.get(TOML_KEY, f.name)
    return name


def toml_keys(cls: type[Any]) -> tuple[str, ...]:
    """The TOML keys of one section's dataclass, in field order."""
    return tuple(name for f in fields(cls) if (name := toml_name(f)) is not None)


def field_default(f: Field[Any]) -> object:
    """The field's declared default, or MISSING when it has none."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return f.default


@dataclass(frozen=True)
class Section:
    """One TOML section of a profile: ``[name]``, or ``[[name]]`` when ``array``."""

    name: str  # the TOML table name
    attr: str  # the Profile field holding it
    kind: type[Any]  # the dataclass of one entry
    array: bool

    @property
    def keys(self) -> tuple[str, ...]:
        return toml_keys(self.kind)


def _sections() -> tuple[Section, ...]:
    hints = get_type_hints(Profile)
    sections: list[Section] = []
    for f in fields(Profile):
        name = toml_name(f)
        if name is None:
            continue
        hint = hints[f.name]
        array = get_origin(hint) is tuple
        sections.append(Section(name, f.name, get_args(hint)[0] if array else hint, array))
    return tuple(sections)


#: Every section a profile may contain, in the order they are read and written.
SECTIONS: tuple[Section, ...] = _sections()
#: Section name → its accepted keys (the "expected one of" lists).
SECTION_KEYS: Mapping[str, tuple[str, ...]] = {s.name: s.keys for s in SECTIONS}
