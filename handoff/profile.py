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

Entry points: :func:`load_profile` (a file) and :func:`parse_profile` (its
text) are pure apart from reading the file: relative paths resolve against
the profile's directory, and nothing on the host is looked up, so ``handoff
argv`` works on a machine without the disks. :func:`check_profile_on_host`
is the host half (vm.user exists and can open its files, disks and firmware
exist and are of the right kind), run by ``handoff run`` before any change.
:func:`profile_to_toml` writes a Profile back (tests round-trip every
profile through it).
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import pwd
import re
import stat
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from handoff.errors import PciAddressError, ProfileError
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



# --------------------------------------------------------------------------- loading

#: The TOML tables a profile may contain, and whether each is an array of tables.
_TABLES: dict[str, bool] = {
    "vm": False,
    "firmware": False,
    "disk": True,
    "network": True,
    "sound": False,
    "display": False,
    "passthrough": True,
    "input": False,
}

_VM_KEYS = (
    "name",
    "memory",
    "cpus",
    "sockets",
    "cores",
    "threads",
    "cpu_model",
    "cpu_flags",
    "hide_hypervisor",
    "accel",
    "machine",
    "user",
    "shutdown_timeout",
    "extra_args",
)
_FIRMWARE_KEYS = ("type", "code", "vars", "vars_template")
_DISK_KEYS = ("path", "format", "interface", "cache", "aio", "media", "readonly")
_NETWORK_KEYS = ("type", "model", "mac", "ifname", "bridge")
_SOUND_KEYS = ("model", "backend")
_DISPLAY_KEYS = ("vga", "frontend", "tablet")
_PASSTHROUGH_KEYS = ("address", "x_vga", "romfile", "multifunction", "allow_in_group")
_INPUT_KEYS = ("backend", "hotkey", "start_in", "devices", "exclude")

#: vm.name becomes a directory (/run/handoff/NAME) and QEMU's -name: no path
#: separators, no commas (QEMU's option separator), no leading dot or dash.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")
_MAC = re.compile(r"^[0-9a-fA-F]{2}(?::[0-9a-fA-F]{2}){5}$")
_IFNAME = re.compile(r"^[A-Za-z0-9_.:-]{1,15}$")
#: A CPU model or flag is pasted into QEMU's -cpu option: keep commas out.
_CPU_MODEL = re.compile(r"^[A-Za-z0-9_.-]+$")
_CPU_FLAG = re.compile(r"^[+-]?[A-Za-z0-9_.-]+(?:=[A-Za-z0-9_.-]+)?$")
_MACHINE = re.compile(r"^(?:q35|pc-q35-[0-9]+\.[0-9]+)$")
_MEMORY = re.compile(r"^\s*([0-9]+)\s*([A-Za-z]*)\s*$")
_MEMORY_UNITS = {
    "": 1,
    "m": 1,
    "mib": 1,
    "g": 1024,
    "gib": 1024,
    "t": 1024 * 1024,
    "tib": 1024 * 1024,
}
MIN_MEMORY_MIB = 16
MAX_MEMORY_MIB = 4 * 1024 * 1024  # 4 TiB
MAX_CPUS = 255
MAX_SHUTDOWN_TIMEOUT = 3600.0
#: q35's built-in AHCI controller (00:1f.2) has six ports: ide.0 .. ide.5.
SATA_PORTS = 6
_SELECTOR = re.compile(
    r"^(?:by-id:[^/\s][^/]*|path:\S+|usb:[0-9a-fA-F]{4}:[0-9a-fA-F]{4}|name:.+)$"
)
_SELECTOR_FORMS = "by-id:NAME, path:ID_PATH, usb:VVVV:PPPP or name:TEXT"

_E = TypeVar("_E", bound=Enum)


def _show(value: object) -> str:
    """A value as the person wrote it in TOML, with its type when that helps."""
    if isinstance(value, bool):
        return f"the boolean {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"the string {json.dumps(value, ensure_ascii=False)}"
    if isinstance(value, int):
        return f"the integer {value}"
    if isinstance(value, float):
        return f"the number {value}"
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list):
        shown = ", ".join(_literal(v) for v in value[:6])
        return f"the array [{shown}{', ...' if len(value) > 6 else ''}]"
    if isinstance(value, datetime.date | datetime.time):
        return f"the date/time {value.isoformat()}"
    return repr(value)


def _literal(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, dict):
        return "{...}"
    return str(value)


class _Reader:
    """Typed access to one parsed profile, raising ProfileErrors with key paths."""

    def __init__(self, source: Path) -> None:
        self.source = source
        base = source.parent
        self.base = base if base.is_absolute() else Path(os.path.abspath(base))

    def error(self, key: str | None, message: str, fix: str) -> ProfileError:
        return ProfileError(message, path=str(self.source), key=key, fix=fix)

    # -- structure

    def check_keys(self, table: Mapping[str, Any], prefix: str, allowed: Sequence[str]) -> None:
        for key in table:
            if key in allowed:
                continue
            where = f"[{prefix}]" if prefix else "the top level"
            full = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            expected = f"expected one of: {', '.join(allowed)}"
            if close:
                fix = f'did you mean "{close[0]}"? rename "{key}" to "{close[0]}"'
            elif not prefix and key in _VM_KEYS:
                fix = f'"{key}" belongs in the [vm] table: move it below a [vm] line'
            else:
                fix = f'remove "{key}" or use one of: {", ".join(allowed)}'
            raise self.error(full, f"unknown key {json.dumps(key)} in {where}; {expected}", fix)

    def table(self, data: Mapping[str, Any], name: str) -> dict[str, Any]:
        value = data.get(name, {})
        if not isinstance(value, dict):
            raise self.error(
                name,
                f"found {_show(value)}; expected a table [{name}]",
                f"write the settings below a [{name}] line, e.g. [{name}]",
            )
        return value

    def array_of_tables(self, data: Mapping[str, Any], name: str) -> list[dict[str, Any]]:
        value = data.get(name, [])
        if isinstance(value, dict):
            raise self.error(
                name,
                f"found a single table [{name}]; expected an array of tables [[{name}]]",
                f"write [[{name}]] (double brackets) above each {name} entry",
            )
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise self.error(
                name,
                f"found {_show(value)}; expected an array of tables [[{name}]]",
                f"write each {name} as its own [[{name}]] section",
            )
        return value

    # -- scalars

    def string(
        self, table: Mapping[str, Any], prefix: str, name: str, *, pattern: re.Pattern[str] | None,
        expected: str, fix: str,
    ) -> str | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if not isinstance(value, str):
            raise self.error(key, f"found {_show(value)}; expected {expected}", fix)
        if pattern is not None and not pattern.match(value):
            raise self.error(key, f"found {_show(value)}; expected {expected}", fix)
        return value

    def boolean(self, table: Mapping[str, Any], prefix: str, name: str, default: bool) -> bool:
        if name not in table:
            return default
        value = table[name]
        if not isinstance(value, bool):
            key = f"{prefix}.{name}"
            raise self.error(
                key,
                f"found {_show(value)}; expected true or false",
                f"write {name} = true or {name} = false (no quotes)",
            )
        return value

    def integer(
        self, table: Mapping[str, Any], prefix: str, name: str, low: int, high: int
    ) -> int | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if isinstance(value, bool) or not isinstance(value, int):
            example = value.strip() if isinstance(value, str) and value.strip().isdigit() else low
            raise self.error(
                key,
                f"found {_show(value)}; expected a whole number from {low} to {high}",
                f"write {name} = {example} (a number without quotes)",
            )
        if not low <= value <= high:
            raise self.error(
                key,
                f"found {_show(value)}; expected a whole number from {low} to {high}",
                f"choose a value between {low} and {high}",
            )
        return value

    def enum(
        self, table: Mapping[str, Any], prefix: str, name: str, kind: type[_E], default: _E
    ) -> _E:
        if name not in table:
            return default
        value = table[name]
        choices = [str(member.value) for member in kind]
        listed = ", ".join(json.dumps(c) for c in choices)
        key = f"{prefix}.{name}"
        if isinstance(value, str):
            for member in kind:
                if member.value == value:
                    return member
            close = difflib.get_close_matches(value, choices, n=1, cutoff=0.5)
            fix = (
                f'did you mean "{close[0]}"? write {name} = "{close[0]}"'
                if close
                else f'write {name} = "{choices[0]}" (choices: {listed})'
            )
        else:
            fix = f'write {name} = "{choices[0]}" with quotes (choices: {listed})'
        raise self.error(key, f"found {_show(value)}; expected one of {listed}", fix)

    def strings(
        self, table: Mapping[str, Any], prefix: str, name: str, *, expected: str, example: str
    ) -> tuple[str, ...] | None:
        if name not in table:
            return None
        value = table[name]
        key = f"{prefix}.{name}"
        if not isinstance(value, list):
            raise self.error(
                key, f"found {_show(value)}; expected an array of {expected}",
                f"write {name} = {example}",
            )
        for index, item in enumerate(value):
            if not isinstance(item, str):
                raise self.error(
                    f"{key}[{index}]",
                    f"found {_show(item)}; expected {expected}",
                    f"quote every entry: {name} = {example}",
                )
        return tuple(value)

    def path(self, table: Mapping[str, Any], prefix: str, name: str) -> Path | None:
        """A file path, absolute or relative to the profile's own directory."""
        raw = self.string(
            table, prefix, name, pattern=None,
            expected="a file path (absolute, or relative to the profile's directory)",
            fix=f'write {name} = "/full/path/to/the/file"',
        )
        if raw is None:
            return None
        key = f"{prefix}.{name}"
        if not raw.strip():
            raise self.error(
                key, f"found {_show(raw)}; expected a file path",
                f'write {name} = "/full/path/to/the/file"',
            )
        if raw.startswith("~"):
            raise self.error(
                key,
                f"found {_show(raw)}; expected an absolute path or one relative to "
                f"{self.base} (\"~\" is not expanded: QEMU may run as another user)",
                f'write the full path, e.g. {name} = "{os.path.expanduser(raw)}"',
            )
        if "\0" in raw or "\n" in raw:
            raise self.error(
                key, f"found {_show(raw)}; expected a file path without control characters",
                "remove the control characters from the path",
            )
        path = Path(raw)
        return path if path.is_absolute() else Path(os.path.normpath(self.base / path))

    def pci_address(self, value: object, key: str) -> PciAddress:
        if not isinstance(value, str):
            raise self.error(
                key, f"found {_show(value)}; expected a PCI address string such as \"01:00.0\"",
                'write the address in quotes as lspci prints it, e.g. "01:00.0"',
            )
        try:
            return PciAddress.parse(value)
        except PciAddressError as exc:
            raise self.error(
                key,
                f"found {_show(value)}; expected a PCI address such as \"01:00.0\" or "
                f"\"0000:01:00.0\" ({exc.message})",
                exc.fix or 'write it as lspci prints it, e.g. "01:00.0"',
            ) from None


def parse_memory(value: object) -> int | None:
    """MiB from ``8192``, ``"8192M"``, ``"8G"``, ``"8GiB"``; None when not a size."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if not isinstance(value, str):
        return None
    match = _MEMORY.match(value)
    if match is None:
        return None
    factor = _MEMORY_UNITS.get(match[2].lower())
    if factor is None:
        return None
    return int(match[1]) * factor


def _parse_vm(r: _Reader, data: Mapping[str, Any]) -> Vm:
    if "vm" not in data:
        raise r.error(
            "vm", "the [vm] table is missing; expected at least vm.name and vm.memory",
            'add:\n    [vm]\n    name = "win10"\n    memory = "8G"',
        )
    t = r.table(data, "vm")
    r.check_keys(t, "vm", _VM_KEYS)
    if "name" not in t:
        raise r.error(
            "vm.name", "missing; expected a name for the VM",
            'add name = "win10" under [vm] (letters, digits, "_", "." and "-")',
        )
    name = r.string(
        t, "vm", "name", pattern=_NAME,
        expected='a name of 1-64 characters from A-Z a-z 0-9 "_" "." "-", not starting with '
        '"." or "-" (it becomes the run directory /run/handoff/NAME)',
        fix='rename it, e.g. name = "win10-gaming"',
    )
    assert name is not None
    if "memory" not in t:
        raise r.error(
            "vm.memory", "missing; expected the guest's RAM size",
            'add memory = "8G" under [vm] (or "8192M", "8GiB", or 8192 meaning MiB)',
        )
    raw_memory = t["memory"]
    memory = parse_memory(raw_memory)
    if memory is None:
        raise r.error(
            "vm.memory",
            f'found {_show(raw_memory)}; expected a size such as "8G", "8192M", "8GiB" '
            "or a whole number of MiB",
            'write memory = "8G" (units: M/MiB, G/GiB, T/TiB; a bare number means MiB)',
        )
    if not MIN_MEMORY_MIB <= memory <= MAX_MEMORY_MIB:
        raise r.error(
            "vm.memory",
            f"found {_show(raw_memory)} ({memory} MiB); expected between {MIN_MEMORY_MIB} MiB "
            f"and {MAX_MEMORY_MIB // (1024 * 1024)} TiB",
            'write a size such as memory = "8G"; a bare number means MiB, not bytes',
        )
    cpus = r.integer(t, "vm", "cpus", 1, MAX_CPUS)
    sockets = r.integer(t, "vm", "sockets", 1, MAX_CPUS)
    cores = r.integer(t, "vm", "cores", 1, MAX_CPUS)
    threads = r.integer(t, "vm", "threads", 1, MAX_CPUS)
    topology = (sockets, cores, threads)
    if cpus is None:
        cpus = (sockets or 1) * (cores or 1) * (threads or 1) if any(topology) else 2
    elif any(topology):
        product = (sockets or 1) * (cores or 1) * (threads or 1)
        if product != cpus:
            given = ", ".join(
                f"{n} = {v}" for n, v in zip(("sockets", "cores", "threads"), topology, strict=True)
                if v is not None
            )
            raise r.error(
                "vm.cpus",
                f"found cpus = {cpus} but {given} make {product} CPUs; expected "
                "sockets * cores * threads == cpus (an unset one counts as 1)",
                f"set cpus = {product}, or change sockets/cores/threads to multiply to {cpus}",
            )
    cpu_model = r.string(
        t, "vm", "cpu_model", pattern=_CPU_MODEL,
        expected='a QEMU CPU model name such as "host" or "max" (no commas: flags go in '
        "vm.cpu_flags)",
        fix='write cpu_model = "host" and put flags in cpu_flags = ["+invtsc"]',
    )
    cpu_flags = r.strings(
        t, "vm", "cpu_flags", expected="CPU flag strings", example='["+invtsc", "kvm=off"]'
    ) or ()
    for index, flag in enumerate(cpu_flags):
        if not _CPU_FLAG.match(flag):
            raise r.error(
                f"vm.cpu_flags[{index}]",
                f'found {_show(flag)}; expected one flag such as "+avx2", "-x2apic" or '
                '"kvm=off" (one per array entry, no commas)',
                'split it into separate entries: cpu_flags = ["+avx2", "kvm=off"]',
            )
    user = r.string(
        t, "vm", "user", pattern=_USER, expected="a Unix user name such as \"qemu\"",
        fix='write user = "qemu" (an existing unprivileged account), or remove the line',
    )
    shutdown_timeout = 120.0
    if "shutdown_timeout" in t:
        value = t["shutdown_timeout"]
        if isinstance(value, bool) or not isinstance(value, int | float) or not (
            0 < value <= MAX_SHUTDOWN_TIMEOUT
        ):
            raise r.error(
                "vm.shutdown_timeout",
                f"found {_show(value)}; expected seconds, a number above 0 and at most "
                f"{MAX_SHUTDOWN_TIMEOUT:g}",
                "write shutdown_timeout = 120 (seconds the guest gets to power off)",
            )
        shutdown_timeout = float(value)
    machine = r.string(
        t, "vm", "machine", pattern=_MACHINE,
        expected='"q35" or a versioned q35 machine such as "pc-q35-7.2" (handoff builds the '
        "q35 chipset's buses)",
        fix='write machine = "q35" (or remove the line)',
    ) or "q35"
    extra_args = r.strings(
        t, "vm", "extra_args", expected="QEMU argument strings",
        example='["-device", "virtio-rng-pci"]',
    ) or ()
    return Vm(
        name=name,
        memory_mib=memory,
        cpus=cpus,
        sockets=sockets,
        cores=cores,
        threads=threads,
        cpu_model=cpu_model,
        cpu_flags=cpu_flags,
        hide_hypervisor=r.boolean(t, "vm", "hide_hypervisor", False),
        accel=r.enum(t, "vm", "accel", Accel, Accel.AUTO),
        machine=machine,
        user=user,
        shutdown_timeout=shutdown_timeout,
        extra_args=extra_args,
    )


def _parse_firmware(r: _Reader, data: Mapping[str, Any], vm_name: str) -> Firmware:
    t = r.table(data, "firmware")
    r.check_keys(t, "firmware", _FIRMWARE_KEYS)
    kind = r.enum(t, "firmware", "type", FirmwareType, FirmwareType.SEABIOS)
    code = r.path(t, "firmware", "code")
    vars_ = r.path(t, "firmware", "vars")
    template = r.path(t, "firmware", "vars_template")
    if kind is FirmwareType.SEABIOS:
        for name in ("code", "vars", "vars_template"):
            if name in t:
                raise r.error(
                    f"firmware.{name}",
                    f'found {_show(t[name])} with type = "seabios"; expected {name} only for '
                    'type = "ovmf" (SeaBIOS is built into QEMU)',
                    f'remove {name}, or set type = "ovmf" for UEFI',
                )
        return Firmware()
    if code is None:
        raise r.error(
            "firmware.code",
            'missing for type = "ovmf"; expected the read-only OVMF code file',
            'add code = "/usr/share/OVMF/OVMF_CODE_4M.fd" (Debian: apt-get install ovmf)',
        )
    if vars_ is None and template is None:
        raise r.error(
            "firmware.vars",
            'missing for type = "ovmf"; expected the VM\'s own writable vars file or a '
            "vars_template to copy it from",
            'add vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd" (handoff copies it to '
            f'{vm_name}.OVMF_VARS.fd next to the profile) or vars = "/path/to/own_VARS.fd"',
        )
    if vars_ is None:
        vars_ = r.base / f"{vm_name}.OVMF_VARS.fd"
    if vars_ in (code, template):
        raise r.error(
            "firmware.vars",
            f"found {_show(t.get('vars'))}, the same file as code/vars_template; expected the "
            "VM's own copy (the guest writes its boot entries there)",
            "point vars at a per-VM file and set vars_template to the distribution's "
            "OVMF_VARS file",
        )
    return Firmware(type=kind, code=code, vars=vars_, vars_template=template)


def _parse_disks(r: _Reader, data: Mapping[str, Any]) -> tuple[Disk, ...]:
    disks: list[Disk] = []
    used: dict[Path, int] = {}
    sata = 0
    for index, t in enumerate(r.array_of_tables(data, "disk")):
        prefix = f"disk[{index}]"
        r.check_keys(t, prefix, _DISK_KEYS)
        path = r.path(t, prefix, "path")
        if path is None:
            raise r.error(
                f"{prefix}.path", "missing; expected the image file or block device",
                'add path = "/dev/vg/win-root" or path = "win.qcow2" (relative to the profile)',
            )
        media = r.enum(t, prefix, "media", DiskMedia, DiskMedia.DISK)
        default_interface = DiskInterface.SATA if media is DiskMedia.CDROM else (
            DiskInterface.VIRTIO
        )
        interface = r.enum(t, prefix, "interface", DiskInterface, default_interface)
        if media is DiskMedia.CDROM and interface is DiskInterface.VIRTIO:
            raise r.error(
                f"{prefix}.interface",
                'found the string "virtio" for a cdrom; expected "sata" or "scsi" (virtio-blk '
                "has no CD-ROM device, and installers boot from a CD-ROM)",
                'write interface = "sata" (or remove the line: cdroms default to sata)',
            )
        cache = r.enum(t, prefix, "cache", DiskCache, DiskCache.WRITEBACK)
        aio = r.enum(t, prefix, "aio", DiskAio, DiskAio.THREADS)
        if aio is DiskAio.NATIVE and cache not in (DiskCache.NONE, DiskCache.DIRECTSYNC):
            raise r.error(
                f"{prefix}.aio",
                f'found "native" with cache = "{cache.value}"; expected aio = "native" only with '
                'cache = "none" or "directsync" (Linux native AIO needs O_DIRECT)',
                'set cache = "none" (the seed\'s choice), or aio = "threads"',
            )
        if interface is DiskInterface.SATA:
            sata += 1
            if sata > SATA_PORTS:
                raise r.error(
                    f"{prefix}.interface",
                    f'found the {sata}th "sata" disk; expected at most {SATA_PORTS} (the ports '
                    "of q35's AHCI controller)",
                    'put further disks on interface = "scsi" or "virtio"',
                )
        readonly = r.boolean(t, prefix, "readonly", media is DiskMedia.CDROM)
        if media is DiskMedia.CDROM and not readonly:
            raise r.error(
                f"{prefix}.readonly",
                "found the boolean false for a cdrom; expected true (a CD-ROM is read-only)",
                "remove readonly, or make it a disk with media = \"disk\"",
            )
        if path in used:
            other = disks[used[path]]
            if not (readonly and other.readonly):
                raise r.error(
                    f"{prefix}.path",
                    f"found {_show(t['path'])}, already used by disk[{used[path]}]; expected "
                    "each writable image once (QEMU locks it; two writers corrupt it)",
                    "remove the duplicate [[disk]], or set readonly = true on both",
                )
        used.setdefault(path, index)
        disks.append(
            Disk(
                path=path,
                format=r.enum(t, prefix, "format", DiskFormat, DiskFormat.RAW),
                interface=interface,
                cache=cache,
                aio=aio,
                media=media,
                readonly=readonly,
            )
        )
    return tuple(disks)


def _parse_networks(r: _Reader, data: Mapping[str, Any]) -> tuple[Network, ...]:
    networks: list[Network] = []
    macs: dict[str, int] = {}
    for index, t in enumerate(r.array_of_tables(data, "network")):
        prefix = f"network[{index}]"
        r.check_keys(t, prefix, _NETWORK_KEYS)
        kind = r.enum(t, prefix, "type", NetworkType, NetworkType.USER)
        mac = r.string(
            t, prefix, "mac", pattern=_MAC,
            expected='a MAC address of six hex pairs such as "52:54:00:12:34:56"',
            fix='write mac = "52:54:00:12:34:56" (colons, six pairs), or remove it to let QEMU '
            "choose one",
        )
        if mac is not None:
            mac = mac.lower()
            if int(mac[:2], 16) & 1:
                raise r.error(
                    f"{prefix}.mac",
                    f"found {_show(t['mac'])}, a multicast address (lowest bit of the first "
                    "byte set); expected a unicast MAC",
                    'make the first byte even, e.g. "52:54:00:..." (QEMU\'s locally '
                    "administered prefix)",
                )
            if mac in macs:
                raise r.error(
                    f"{prefix}.mac",
                    f"found {_show(t['mac'])}, already used by network[{macs[mac]}]; expected "
                    "a MAC unique to this NIC",
                    "change one of the two MAC addresses",
                )
            macs[mac] = index
        ifname_expected = "a Linux interface name of 1-15 characters such as \"tap0\""
        ifname = r.string(
            t, prefix, "ifname", pattern=_IFNAME, expected=ifname_expected,
            fix='write ifname = "tap0"',
        )
        bridge = r.string(
            t, prefix, "bridge", pattern=_IFNAME,
            expected="a Linux bridge name of 1-15 characters such as \"br0\"",
            fix='write bridge = "br0"',
        )
        if kind is NetworkType.TAP and ifname is None:
            raise r.error(
                f"{prefix}.ifname",
                'missing for type = "tap"; expected the host tap interface',
                'add ifname = "tap0" (create it with: ip tuntap add dev tap0 mode tap user '
                "QEMU_USER)",
            )
        if kind is NetworkType.BRIDGE and bridge is None:
            raise r.error(
                f"{prefix}.bridge",
                'missing for type = "bridge"; expected the host bridge',
                'add bridge = "br0" (and allow it in /etc/qemu/bridge.conf: allow br0)',
            )
        if kind is not NetworkType.TAP and ifname is not None:
            raise r.error(
                f"{prefix}.ifname",
                f'found {_show(ifname)} with type = "{kind.value}"; expected ifname only for '
                'type = "tap"',
                'remove ifname, or set type = "tap"',
            )
        if kind is not NetworkType.BRIDGE and bridge is not None:
            raise r.error(
                f"{prefix}.bridge",
                f'found {_show(bridge)} with type = "{kind.value}"; expected bridge only for '
                'type = "bridge"',
                'remove bridge, or set type = "bridge"',
            )
        networks.append(
            Network(
                type=kind,
                model=r.enum(t, prefix, "model", NicModel, NicModel.VIRTIO),
                mac=mac,
                ifname=ifname,
                bridge=bridge,
            )
        )
    return tuple(networks)


def _parse_sound(r: _Reader, data: Mapping[str, Any]) -> Sound:
    t = r.table(data, "sound")
    r.check_keys(t, "sound", _SOUND_KEYS)
    model = r.enum(t, "sound", "model", SoundModel, SoundModel.NONE)
    backend = r.enum(t, "sound", "backend", AudioBackend, AudioBackend.NONE)
    if model is SoundModel.NONE and "backend" in t and backend is not AudioBackend.NONE:
        raise r.error(
            "sound.backend",
            f'found "{backend.value}" with model = "none"; expected a sound model for the '
            "backend to play",
            'add model = "hda" (the seed\'s -soundhw hda), or remove backend',
        )
    return Sound(model=model, backend=backend)


def default_vga(frontend: DisplayFrontend, legacy_vga_passthrough: bool) -> Vga:
    """display.vga when the profile leaves it out.

    A window or VNC socket with no video device shows only "Display output
    is not active", so a frontend gets the emulated "std" VGA, unless a
    passthrough device owns the legacy VGA ranges (x_vga = true)."""
    if frontend is DisplayFrontend.NONE or legacy_vga_passthrough:
        return Vga.NONE
    return Vga.STD


def _x_vga_requested(data: Mapping[str, Any]) -> bool:
    """Whether any [[passthrough]] says x_vga = true (read before it is validated)."""
    entries = data.get("passthrough", [])
    return isinstance(entries, list) and any(
        isinstance(t, dict) and t.get("x_vga") is True for t in entries
    )


def _parse_display(r: _Reader, data: Mapping[str, Any]) -> Display:
    t = r.table(data, "display")
    r.check_keys(t, "display", _DISPLAY_KEYS)
    frontend = r.enum(t, "display", "frontend", DisplayFrontend, DisplayFrontend.NONE)
    return Display(
        vga=r.enum(t, "display", "vga", Vga, default_vga(frontend, _x_vga_requested(data))),
        frontend=frontend,
        tablet=r.boolean(t, "display", "tablet", False),
    )


def _parse_passthrough(
    r: _Reader, data: Mapping[str, Any], display: Display
) -> tuple[Passthrough, ...]:
    devices: list[Passthrough] = []
    seen: dict[PciAddress, str] = {}
    vga_owner: str | None = None
    for index, t in enumerate(r.array_of_tables(data, "passthrough")):
        prefix = f"passthrough[{index}]"
        r.check_keys(t, prefix, _PASSTHROUGH_KEYS)
        if "address" not in t:
            raise r.error(
                f"{prefix}.address", "missing; expected the PCI address of the function",
                'add address = "01:00.0" (see `handoff groups` or lspci)',
            )
        address = r.pci_address(t["address"], f"{prefix}.address")
        if address in seen:
            raise r.error(
                f"{prefix}.address",
                f"found {_show(t['address'])}, which {seen[address]} already passes through; "
                "expected each PCI function once",
                f"remove the duplicate [[passthrough]] entry for {address.short}",
            )
        seen[address] = prefix
        x_vga = r.boolean(t, prefix, "x_vga", False)
        if x_vga:
            if vga_owner is not None:
                raise r.error(
                    f"{prefix}.x_vga",
                    f"found true, but {vga_owner} already has x_vga = true; expected one device "
                    "owning the legacy VGA ranges",
                    "keep x_vga = true only on the primary GPU's function 0",
                )
            if display.vga is not Vga.NONE:
                raise r.error(
                    f"{prefix}.x_vga",
                    f'found true with display.vga = "{display.vga.value}"; expected no emulated '
                    "VGA (both would claim the legacy VGA ranges)",
                    'set display.vga = "none" (the seed\'s -vga none), or x_vga = false',
                )
            vga_owner = prefix
        allowed = r.strings(
            t, prefix, "allow_in_group", expected="PCI address strings",
            example='["00:1f.0", "00:1f.3"]',
        ) or ()
        devices.append(
            Passthrough(
                address=address,
                x_vga=x_vga,
                romfile=r.path(t, prefix, "romfile"),
                multifunction=r.boolean(t, prefix, "multifunction", False),
                allow_in_group=tuple(
                    r.pci_address(item, f"{prefix}.allow_in_group[{i}]")
                    for i, item in enumerate(allowed)
                ),
            )
        )
    return tuple(devices)


def valid_key_names() -> frozenset[str]:
    """Every KEY_* and BTN_* name the kernel defines (python-evdev's table)."""
    from evdev import ecodes  # the C extension: imported only where names are checked

    return frozenset(
        name for name in ecodes.ecodes if name.startswith(("KEY_", "BTN_"))
    )


def _parse_input(r: _Reader, data: Mapping[str, Any]) -> Input:
    t = r.table(data, "input")
    r.check_keys(t, "input", _INPUT_KEYS)
    hotkey = r.strings(
        t, "input", "hotkey", expected="Linux key names",
        example='["KEY_LEFTCTRL", "KEY_RIGHTCTRL"]',
    )
    if hotkey is None:
        hotkey = Input().hotkey
    elif not hotkey:
        raise r.error(
            "input.hotkey", "found the empty array []; expected at least one key",
            'write hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL"] or ["KEY_SCROLLLOCK"]',
        )
    names = valid_key_names()
    for index, key_name in enumerate(hotkey):
        if key_name not in names:
            upper = key_name.upper()
            guess = upper if upper in names else f"KEY_{upper}" if f"KEY_{upper}" in names else None
            close = [guess] if guess else difflib.get_close_matches(upper, sorted(names), n=1)
            fix = (
                f'did you mean "{close[0]}"?'
                if close
                else "use a name from `evtest` or linux/input-event-codes.h, e.g. KEY_SCROLLLOCK"
            )
            raise r.error(
                f"input.hotkey[{index}]",
                f"found {_show(key_name)}; expected a Linux key name such as \"KEY_LEFTCTRL\" "
                "or \"KEY_SCROLLLOCK\"",
                fix,
            )
    if len(set(hotkey)) != len(hotkey):
        raise r.error(
            "input.hotkey", f"found {_show(list(hotkey))} with a repeated key; expected each key "
            "once", "remove the repeated key name",
        )
    selectors: dict[str, tuple[str, ...]] = {}
    for name in ("devices", "exclude"):
        items = r.strings(
            t, "input", name, expected=f"device selectors ({_SELECTOR_FORMS})",
            example='["by-id:usb-Logitech_USB_Receiver-event-kbd"]',
        ) or ()
        for index, item in enumerate(items):
            if not _SELECTOR.match(item):
                raise r.error(
                    f"input.{name}[{index}]",
                    f"found {_show(item)}; expected a selector of the form {_SELECTOR_FORMS}",
                    'write e.g. "by-id:usb-Logitech_USB_Receiver-event-kbd" (ls '
                    '/dev/input/by-id) or "usb:046d:c52b" (lsusb)',
                )
        selectors[name] = items
    return Input(
        backend=r.enum(t, "input", "backend", InputBackend, InputBackend.NONE),
        hotkey=hotkey,
        start_in=r.enum(t, "input", "start_in", InputMode, InputMode.HOST),
        devices=selectors["devices"],
        exclude=selectors["exclude"],
    )


def parse_profile(text: str, source: Path) -> Profile:
    """Validate profile TOML ``text`` read from ``source``. Pure: no host lookups.

    Relative paths are resolved against ``source``'s directory; host facts
    (the user exists, files exist) are :func:`check_profile_on_host`'s job.
    """
    reader = _Reader(source)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = re.search(r"line (\d+)", str(exc))
        where = f" at line {line[1]}" if line else ""
        lines = text.splitlines()
        shown = ""
        if line and 0 < int(line[1]) <= len(lines):
            shown = f"\n    {line[1]} | {lines[int(line[1]) - 1]}"
        raise reader.error(
            None,
            f"is not valid TOML{where}: {exc}{shown}",
            f"fix the syntax{where}: strings need quotes (name = \"win10\"), tables are "
            "[name], arrays of tables [[name]]",
        ) from None
    reader.check_keys(data, "", tuple(_TABLES))
    vm = _parse_vm(reader, data)
    display = _parse_display(reader, data)
    return Profile(
        vm=vm,
        source=source,
        firmware=_parse_firmware(reader, data, vm.name),
        disks=_parse_disks(reader, data),
        networks=_parse_networks(reader, data),
        sound=_parse_sound(reader, data),
        display=display,
        passthrough=_parse_passthrough(reader, data, display),
        input=_parse_input(reader, data),
    )


def load_profile(path: Path) -> Profile:
    """Read and validate the profile at ``path``.

    Raises :class:`handoff.errors.ProfileError` naming the file, key path,
    value, expectation and fix for every problem.
    """
    source = path if path.is_absolute() else Path(os.path.abspath(path))
    try:
        raw = source.read_bytes()
    except FileNotFoundError:
        raise ProfileError(
            "no such profile file",
            path=str(path),
            fix="check the path; commented examples are in profiles/ (profiles/demo.toml "
            "runs anywhere)",
        ) from None
    except IsADirectoryError:
        raise ProfileError(
            "is a directory, not a profile file", path=str(path),
            fix="name the .toml file inside it",
        ) from None
    except OSError as exc:
        raise ProfileError(
            f"cannot be read: {exc.strerror}", path=str(path),
            fix="check the file's permissions",
        ) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ProfileError(
            f"is not UTF-8 text (byte {exc.start})", path=str(path),
            fix="save the profile as UTF-8",
        ) from None
    return parse_profile(text, source)


# --------------------------------------------------------------------------- host checks


def check_profile_on_host(profile: Profile) -> None:
    """The host-dependent half of validation: the user exists, the files exist.

    Kept apart from :func:`parse_profile` so parsing stays pure (``handoff
    argv`` works on a machine without the disks) while ``handoff run`` and
    ``handoff doctor`` refuse before any host change.
    """
    src = str(profile.source)
    account: pwd.struct_passwd | None = None
    if profile.vm.user is not None:
        try:
            account = pwd.getpwnam(profile.vm.user)
        except KeyError:
            raise ProfileError(
                f"found the string {json.dumps(profile.vm.user)}; expected an existing user "
                "account on this host",
                path=src, key="vm.user",
                fix=f"create it (useradd --system --no-create-home {profile.vm.user}) or "
                "remove vm.user to run QEMU as the invoking user",
            ) from None
    fw = profile.firmware
    if fw.type is FirmwareType.OVMF:
        assert fw.code is not None
        _must_exist(src, "firmware.code", fw.code, "apt-get install ovmf")
        if fw.vars_template is not None:
            _must_exist(src, "firmware.vars_template", fw.vars_template, "apt-get install ovmf")
        elif fw.vars is not None:
            _must_exist(src, "firmware.vars", fw.vars, "set vars_template to copy it from")
    for index, disk in enumerate(profile.disks):
        key = f"disk[{index}].path"
        _must_exist(src, key, disk.path, "create the image (qemu-img create "
                    f"-f {disk.format.value} {disk.path} 64G) or correct the path")
        _check_disk_kind(src, key, disk.path)
    for index, dev in enumerate(profile.passthrough):
        if dev.romfile is not None:
            _must_exist(src, f"passthrough[{index}].romfile", dev.romfile,
                        "dump the card's ROM or correct the path")
    if account is not None and account.pw_uid != 0:
        _check_user_access(profile, account)


def _files_qemu_opens(profile: Profile) -> list[tuple[str, Path, bool]]:
    """(key, path, needs write) for every existing file QEMU itself opens."""
    files: list[tuple[str, Path, bool]] = []
    fw = profile.firmware
    if fw.type is FirmwareType.OVMF and fw.code is not None:
        files.append(("firmware.code", fw.code, False))
        if fw.vars is not None and fw.vars.exists():
            files.append(("firmware.vars", fw.vars, True))
    files += [
        (f"disk[{i}].path", disk.path, not disk.readonly) for i, disk in enumerate(profile.disks)
    ]
    files += [
        (f"passthrough[{i}].romfile", dev.romfile, False)
        for i, dev in enumerate(profile.passthrough)
        if dev.romfile is not None
    ]
    return files


def _check_user_access(profile: Profile, account: pwd.struct_passwd) -> None:
    """QEMU runs as vm.user: it must reach and open each file itself.

    Checked from the permission bits (owner, group incl. supplementary
    groups, other) of the file and of every directory above it; ACLs are
    not read, so a file granted by an ACL alone is reported too (the fix
    names the plain-permission way).
    """
    groups = set(os.getgrouplist(account.pw_name, account.pw_gid))

    def allowed(st: os.stat_result, bits: tuple[int, int, int]) -> bool:
        owner, group, other = bits
        if st.st_uid == account.pw_uid:
            return bool(st.st_mode & owner)
        if st.st_gid in groups:
            return bool(st.st_mode & group)
        return bool(st.st_mode & other)

    read = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)
    write = (stat.S_IWUSR, stat.S_IWGRP, stat.S_IWOTH)
    search = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
    for key, path, needs_write in _files_qemu_opens(profile):
        real = Path(os.path.realpath(path))
        for directory in reversed(real.parents):
            if not allowed(directory.stat(), search):
                raise ProfileError(
                    f"found {json.dumps(str(path))}, but vm.user {account.pw_name!r} cannot "
                    f"enter the directory {directory} on the way to it",
                    path=str(profile.source), key=key,
                    fix=f"chmod o+x {directory}, or move the file somewhere "
                    f"{account.pw_name} can reach",
                )
        st = real.stat()
        for wanted, bits, verb in ((True, read, "read"), (needs_write, write, "write")):
            if wanted and not allowed(st, bits):
                user = account.pw_name
                if real.parts[:2] == ("/", "dev"):
                    fix = (
                        f"give {user} this one device with a udev rule, e.g. in "
                        "/etc/udev/rules.d/60-handoff-disk.rules: "
                        f'ENV{{DM_LV_NAME}}=="{path.name}", OWNER="{user}" (group "disk" '
                        "would open every disk), or remove vm.user"
                    )
                else:
                    fix = f"chown {user} {path} (or chmod it), or remove vm.user"
                raise ProfileError(
                    f"found {json.dumps(str(path))}, but vm.user {user!r} (QEMU's "
                    f"user) cannot {verb} it",
                    path=str(profile.source), key=key, fix=fix,
                )


def _check_disk_kind(source: str, key: str, path: Path) -> None:
    """A disk is a regular file, or a block device named under /dev.

    The QEMU argv picks the block driver from the path alone (host_device
    under /dev, file elsewhere) so it stays pure; this is where the host
    confirms it. QEMU's file driver refuses a block device, and a
    directory (the seed guide's warning: a Btrfs subvolume is a file
    system, not a block device) is no disk at all.
    """
    mode = path.stat().st_mode
    shown = json.dumps(str(path))
    under_dev = path.parts[:2] == ("/", "dev")
    if stat.S_ISDIR(mode):
        raise ProfileError(
            f"found {shown}, a directory; expected a disk image file or a block device "
            "(a Btrfs subvolume is a file system, not a block device)",
            path=source, key=key,
            fix="point path at an image file inside it (qemu-img create -f raw DIR/disk.img "
            "64G) or at a block device such as an LVM volume (/dev/VG/LV)",
        )
    if stat.S_ISBLK(mode) and not under_dev:
        raise ProfileError(
            f"found {shown}, a block device outside /dev; expected block devices by their "
            "/dev name (handoff gives them to QEMU's host_device driver)",
            path=source, key=key,
            fix=f"write the /dev path, e.g. path = \"{os.path.realpath(path)}\"",
        )
    if under_dev and not (stat.S_ISBLK(mode) or stat.S_ISREG(mode)):
        raise ProfileError(
            f"found {shown}, which is neither a block device nor a regular file",
            path=source, key=key,
            fix="point path at the disk's block device (ls -l /dev/VG/ or lsblk)",
        )


def _must_exist(source: str, key: str, path: Path, fix: str) -> None:
    if not path.exists():
        raise ProfileError(
            f"found {json.dumps(str(path))}; expected an existing file, but it does not exist",
            path=source, key=key, fix=fix,
        )


def ensure_firmware_vars(profile: Profile) -> Path | None:
    """Create the VM's OVMF vars file from its template on first use.

    Returns the vars path (None for SeaBIOS). The copy is written to a
    temporary name and renamed, so a crash never leaves a half file that
    the next boot would mistake for the VM's settings.
    """
    fw = profile.firmware
    if fw.type is not FirmwareType.OVMF or fw.vars is None:
        return None
    if fw.vars.exists():
        return fw.vars
    if fw.vars_template is None:
        raise ProfileError(
            f"found {json.dumps(str(fw.vars))}, which does not exist, and no vars_template",
            path=str(profile.source), key="firmware.vars",
            fix='add vars_template = "/usr/share/OVMF/OVMF_VARS_4M.fd"',
        )
    tmp = fw.vars.with_name(f".{fw.vars.name}.tmp")
    tmp.write_bytes(fw.vars_template.read_bytes())
    if profile.vm.user is not None and os.geteuid() == 0:
        # QEMU writes the guest's boot entries here as vm.user.
        account = pwd.getpwnam(profile.vm.user)
        os.chown(tmp, account.pw_uid, account.pw_gid)
    os.replace(tmp, fw.vars)
    return fw.vars


# --------------------------------------------------------------------------- rendering


def profile_to_toml(profile: Profile) -> str:
    """The profile as TOML that :func:`parse_profile` reads back to an equal Profile.

    Only values that differ from the defaults are written; paths are written
    absolute. Used by tests (round trip) and to show the effective profile.
    """
    out: list[str] = []

    def emit(
        table: str, obj: object, *, array: bool = False, rename: Mapping[str, str] | None = None
    ) -> None:
        rename = rename or {}
        default = type(obj)() if table not in ("vm", "disk", "passthrough") else None
        lines: list[str] = []
        for f in fields(obj):  # type: ignore[arg-type]
            value = getattr(obj, f.name)
            if default is not None and getattr(default, f.name) == value and (
                (table, f.name) != ("display", "vga")  # its default depends on frontend
            ):
                continue
            if value is None or (table == "vm" and value == f.default):
                continue
            lines.append(f"{rename.get(f.name, f.name)} = {_toml_value(value)}")
        if lines or array or table == "vm":
            out.append(f"[[{table}]]" if array else f"[{table}]")
            out.extend(lines)
            out.append("")

    emit("vm", profile.vm, rename={"memory_mib": "memory"})
    emit("firmware", profile.firmware)
    for disk in profile.disks:
        emit("disk", disk, array=True)
    for net in profile.networks:
        emit("network", net, array=True)
    emit("sound", profile.sound)
    emit("display", profile.display)
    for dev in profile.passthrough:
        emit("passthrough", dev, array=True)
    emit("input", profile.input)
    return "\n".join(out)


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, Enum):
        return json.dumps(value.value)
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str | Path | PciAddress):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, tuple | list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot render {value!r} as TOML")
