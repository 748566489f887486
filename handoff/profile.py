"""Profiles: a VM described in TOML, turned into typed, validated values.

A profile is the only thing a person writes. Everything downstream (the QEMU
argv, the PCI plan, the input plan) is derived from a :class:`Profile` by pure
functions, so the profile must be complete and checked before anything runs:
every error names the file, the key path (``vm.memory``), the value found,
what was expected and a fix, and unknown keys are refused with a
"did you mean" suggestion (a typo must never silently become a default).

The TOML layout (see profiles/*.toml for commented examples)::

    [vm]          name, memory, cpus, cpu model and flags, accel, machine,
                  user (QEMU runs unprivileged), shutdown_timeout, extra_args
    [firmware]    type = "seabios" | "ovmf", code, vars, vars_template
    [[disk]]      path, format, interface, cache, aio, media, readonly
    [[network]]   type = "user" | "tap" | "bridge", model, mac, ifname, bridge
    [sound]       model = "hda" | "none", backend
    [display]     vga, frontend, tablet
    [[passthrough]]  address, x_vga, romfile, multifunction, allow_in_group
    [input]       backend, hotkey, start_in, devices, exclude
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path

from handoff.pci.address import PciAddress


class Accel(Enum):
    """Which accelerator QEMU uses; AUTO picks KVM only where it really works."""

    AUTO = "auto"
    KVM = "kvm"
    TCG = "tcg"


class FirmwareType(Enum):
    SEABIOS = "seabios"
    OVMF = "ovmf"


@dataclass(frozen=True)
class Firmware:
    """BIOS or UEFI. For OVMF, ``code`` is read-only and ``vars`` is the VM's
    own writable copy, created from ``vars_template`` on first use."""

    type: FirmwareType = FirmwareType.SEABIOS
    code: Path | None = None
    vars: Path | None = None
    vars_template: Path | None = None


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
    model: SoundModel = SoundModel.NONE
    backend: AudioBackend = AudioBackend.NONE


class Vga(Enum):
    NONE = "none"  # the passthrough GPU is the display
    STD = "std"  # for installing the OS before passthrough
    VIRTIO = "virtio"
    QXL = "qxl"


class DisplayFrontend(Enum):
    NONE = "none"
    GTK = "gtk"
    SDL = "sdl"
    VNC = "vnc"  # on a unix socket in the run directory, never a network port


@dataclass(frozen=True)
class Display:
    vga: Vga = Vga.NONE
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
    ``exclude`` are selectors: ``by-id:NAME`` (a /dev/input/by-id link name),
    ``path:ID_PATH``, ``usb:VVVV:PPPP`` (vendor:product) or ``name:TEXT`` (the
    kernel device name). An empty ``devices`` means every keyboard and mouse.
    """

    backend: InputBackend = InputBackend.NONE
    hotkey: tuple[str, ...] = ("KEY_LEFTCTRL", "KEY_RIGHTCTRL")
    start_in: InputMode = InputMode.HOST
    devices: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()


@dataclass(frozen=True)
class Vm:
    name: str
    memory_mib: int
    cpus: int = 2
    sockets: int | None = None
    cores: int | None = None
    threads: int | None = None
    cpu_model: str | None = None  # None: "host" under KVM, "max" under TCG
    cpu_flags: tuple[str, ...] = ()  # e.g. ("kvm=off",) to hide the hypervisor
    hide_hypervisor: bool = False  # adds kvm=off and hv-vendor-id for guest drivers
    accel: Accel = Accel.AUTO
    machine: str = "q35"
    user: str | None = None  # run QEMU as this unprivileged user
    shutdown_timeout: float = 120.0  # seconds the guest gets to power off
    extra_args: tuple[str, ...] = ()  # appended verbatim to QEMU's argv


@dataclass(frozen=True)
class Profile:
    """A whole, validated VM description. ``source`` is the file it came from."""

    vm: Vm
    source: Path
    firmware: Firmware = field(default_factory=Firmware)
    disks: tuple[Disk, ...] = ()
    networks: tuple[Network, ...] = ()
    sound: Sound = field(default_factory=Sound)
    display: Display = field(default_factory=Display)
    passthrough: tuple[Passthrough, ...] = ()
    input: Input = field(default_factory=Input)

    @property
    def name(self) -> str:
        return self.vm.name


def load_profile(path: Path) -> Profile:
    """Read and validate the profile at ``path``.

    Raises :class:`handoff.errors.ProfileError` naming the file, key path,
    value, expectation and fix for every problem.
    """
    raise NotImplementedError("filled in by the profile parser")
