"""Profile TOML text → a validated :class:`~handoff.profile.model.Profile`.

Every refusal is a :class:`handoff.base.errors.ProfileError` naming the file, the
key path (``vm.memory``), the value found, what was expected and a fix.
Unknown keys are refused against the key lists handoff.profile.model derives
from its dataclasses, with a "did you mean" suggestion (a typo must never
silently become a default). Relative paths resolve against the profile's
directory.

Each section is one table of key → parser (handoff.profile.reader: the
parser carries the key's error text; a bool or enum key is read by its
declared type and default and needs no entry), read in the dataclass's field
order by :meth:`Reader.fields`, then the section's rules across keys (cdrom
vs interface, the input chords against each other, [cpu] against [vm]'s
topology). A new section lives in a module of its own that uses the same
reader and is called from :func:`parse_profile` with one line.

Why this module stays over 500 lines: it holds the eight sections whose
rules reach across each other ([[passthrough]] x_vga against display.vga,
[host_display] against [[passthrough]], firmware vars against vm.name); the
chord rules ([input]) and the tuning sections ([cpu], [memory]) stand alone
and live in handoff.profile.input_section and .tune_section.

Never: touch the host beyond :func:`load_profile` reading the one file it is
given (no user lookups, no existence checks: that is
handoff.checks.profile_files), and never import evdev (key names come from
handoff.input.keynames).
"""

from __future__ import annotations

import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from handoff.base.errors import ProfileError
from handoff.pci.address import PciAddress
from handoff.profile.control import CONTROL_KEYS, parse_control
from handoff.profile.guest import check_secure_boot
from handoff.profile.guest_agent import GUEST_AGENT_KEYS, parse_guest_agent
from handoff.profile.hooks import HOOK_KEYS, parse_hooks
from handoff.profile.host_keys import with_host_keys
from handoff.profile.input_section import INPUT_KEYS, parse_input
from handoff.profile.looking_glass import LG_KEYS, parse_looking_glass
from handoff.profile.model import (
    RESERVED_NAMES,
    SECTION_KEYS,
    SECTIONS,
    AudioBackend,
    Disk,
    DiskAio,
    DiskCache,
    DiskInterface,
    DiskMedia,
    Display,
    DisplayFrontend,
    Firmware,
    FirmwareType,
    HostDisplay,
    Network,
    NetworkType,
    Passthrough,
    Profile,
    Sound,
    SoundModel,
    Vga,
    Vm,
    default_vga,
)
from handoff.profile.monitor import MONITOR_KEYS, parse_monitor
from handoff.profile.reader import (
    Custom,
    FieldParser,
    File,
    Item,
    Reader,
    Text,
    Texts,
    Whole,
    matches,
    required,
    show,
)
from handoff.profile.reset import check_passthrough_resets
from handoff.profile.share import SHARE_KEYS, parse_shares
from handoff.profile.sound import SOUND_PARSERS, parse_sound_session
from handoff.profile.tpm import TPM_KEYS, parse_tpm
from handoff.profile.tune_section import (
    CPU_KEYS,
    MEMORY_KEYS,
    parse_cpu,
    parse_memory_section,
)
from handoff.profile.usb import USB_KEYS, parse_usb

#: The reader under its earlier name (section modules may import either).
_Reader = Reader

#: vm.name becomes a directory (/run/handoff/NAME) and QEMU's -name: no path
#: separators, no commas (QEMU's option separator), no leading dot or dash.
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}$")
#: Where the run directories are, as a person reads it in an error.
RESERVED_NAMES_ROOT = "/run/handoff"
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


# --------------------------------------------------------------------------- [vm]


def _vm_name(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> str:
    required(
        r, t, prefix, key, "a name for the VM",
        'add name = "win10" under [vm] (letters, digits, "_", "." and "-")',
    )
    name = r.string(
        t, prefix, key, pattern=_NAME,
        expected='a name of 1-64 characters from A-Z a-z 0-9 "_" "." "-", not starting with '
        '"." or "-" (it becomes the run directory /run/handoff/NAME)',
        fix='rename it, e.g. name = "win10-gaming"',
    )
    assert name is not None
    if name in RESERVED_NAMES:
        raise r.error(
            "vm.name",
            f"found {show(name)}; the run directory {RESERVED_NAMES_ROOT}/{name} holds "
            "other sessions' files",
            f'rename it, e.g. name = "{name}-vm"',
        )
    return name


def _vm_memory(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> int:
    raw_memory = required(
        r, t, prefix, key, "the guest's RAM size",
        'add memory = "8G" under [vm] (or "8192M", "8GiB", or 8192 meaning MiB)',
    )
    memory = parse_memory(raw_memory)
    if memory is None:
        raise r.error(
            "vm.memory",
            f'found {show(raw_memory)}; expected a size such as "8G", "8192M", "8GiB" '
            "or a whole number of MiB",
            'write memory = "8G" (units: M/MiB, G/GiB, T/TiB; a bare number means MiB)',
        )
    if not MIN_MEMORY_MIB <= memory <= MAX_MEMORY_MIB:
        raise r.error(
            "vm.memory",
            f"found {show(raw_memory)} ({memory} MiB); expected between {MIN_MEMORY_MIB} MiB "
            f"and {MAX_MEMORY_MIB // (1024 * 1024)} TiB",
            'write a size such as memory = "8G"; a bare number means MiB, not bytes',
        )
    return memory


def _seconds(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> float:
    if key not in t:
        return float(default)
    value = t[key]
    if isinstance(value, bool) or not isinstance(value, int | float) or not (
        0 < value <= MAX_SHUTDOWN_TIMEOUT
    ):
        raise r.error(
            f"{prefix}.{key}",
            f"found {show(value)}; expected seconds, a number above 0 and at most "
            f"{MAX_SHUTDOWN_TIMEOUT:g}",
            "write shutdown_timeout = 120 (seconds the guest gets to power off)",
        )
    return float(value)


VM_KEYS: Mapping[str, FieldParser] = {
    "name": Custom(_vm_name),
    "memory": Custom(_vm_memory),
    "cpus": Whole(1, MAX_CPUS),
    "sockets": Whole(1, MAX_CPUS),
    "cores": Whole(1, MAX_CPUS),
    "threads": Whole(1, MAX_CPUS),
    "cpu_model": Text(
        _CPU_MODEL,
        expected='a QEMU CPU model name such as "host" or "max" (no commas: flags go in '
        "vm.cpu_flags)",
        fix='write cpu_model = "host" and put flags in cpu_flags = ["+invtsc"]',
    ),
    "cpu_flags": Texts(
        "CPU flag strings", '["+invtsc", "kvm=off"]',
        Item(
            matches(_CPU_FLAG),
            'one flag such as "+avx2", "-x2apic" or "kvm=off" (one per array entry, no commas)',
            'split it into separate entries: cpu_flags = ["+avx2", "kvm=off"]',
        ),
    ),
    "machine": Text(
        _MACHINE,
        expected='"q35" or a versioned q35 machine such as "pc-q35-7.2" (handoff builds the '
        "q35 chipset's buses)",
        fix='write machine = "q35" (or remove the line)',
    ),
    "user": Text(
        _USER, expected="a Unix user name such as \"qemu\"",
        fix='write user = "qemu" (an existing unprivileged account), or remove the line',
    ),
    "shutdown_timeout": Custom(_seconds),
    "extra_args": Texts("QEMU argument strings", '["-device", "virtio-rng-pci"]'),
}


def _parse_vm(r: Reader, data: Mapping[str, Any]) -> Vm:
    if "vm" not in data:
        raise r.error(
            "vm", "the [vm] table is missing; expected at least vm.name and vm.memory",
            'add:\n    [vm]\n    name = "win10"\n    memory = "8G"',
        )
    t = r.section(data, "vm")
    v = r.fields(t, "vm", Vm, VM_KEYS)
    topology = (v["sockets"], v["cores"], v["threads"])
    product = (v["sockets"] or 1) * (v["cores"] or 1) * (v["threads"] or 1)
    if "cpus" not in t:
        v["cpus"] = product if any(topology) else 2
    elif any(topology) and product != v["cpus"]:
        given = ", ".join(
            f"{n} = {x}" for n, x in zip(("sockets", "cores", "threads"), topology, strict=True)
            if x is not None
        )
        raise r.error(
            "vm.cpus",
            f"found cpus = {v['cpus']} but {given} make {product} CPUs; expected "
            "sockets * cores * threads == cpus (an unset one counts as 1)",
            f"set cpus = {product}, or change sockets/cores/threads to multiply to {v['cpus']}",
        )
    return Vm(**v)


# --------------------------------------------------------------------------- [firmware]

FIRMWARE_KEYS: Mapping[str, FieldParser] = {
    "code": File(), "vars": File(), "vars_template": File(),
}


def _parse_firmware(r: Reader, data: Mapping[str, Any], vm_name: str) -> Firmware:
    t = r.section(data, "firmware")
    v = r.fields(t, "firmware", Firmware, FIRMWARE_KEYS)
    if v["type"] is FirmwareType.SEABIOS:
        for name in ("code", "vars", "vars_template"):
            if name in t:
                raise r.error(
                    f"firmware.{name}",
                    f'found {show(t[name])} with type = "seabios"; expected {name} only for '
                    'type = "ovmf" (SeaBIOS is built into QEMU)',
                    f'remove {name}, or set type = "ovmf" for UEFI',
                )
        return Firmware()
    # code and vars_template left out come from QEMU's firmware descriptors
    # (handoff.qemu.firmware_descriptors); vars defaults to a copy next to the profile.
    if v["vars"] is None:
        v["vars"] = r.base / f"{vm_name}.OVMF_VARS.fd"
    if v["vars"] in (v["code"], v["vars_template"]):
        raise r.error(
            "firmware.vars",
            f"found {show(t.get('vars'))}, the same file as code/vars_template; expected the "
            "VM's own copy (the guest writes its boot entries there)",
            "point vars at a per-VM file and set vars_template to the distribution's "
            "OVMF_VARS file",
        )
    return Firmware(**v)


# --------------------------------------------------------------------------- [[disk]]


def _disk_path(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> Path:
    path = r.path(t, prefix, key)
    if path is None:
        raise r.error(
            f"{prefix}.path", "missing; expected the image file or block device",
            'add path = "/dev/vg/win-root" or path = "win.qcow2" (relative to the profile)',
        )
    return path


DISK_KEYS: Mapping[str, FieldParser] = {"path": Custom(_disk_path)}


def _parse_disks(r: Reader, data: Mapping[str, Any]) -> tuple[Disk, ...]:
    disks: list[Disk] = []
    used: dict[Path, int] = {}
    sata = 0
    for index, t in enumerate(r.array_of_tables(data, "disk")):
        prefix = f"disk[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["disk"])
        cdrom = r.enum(t, prefix, "media", DiskMedia, DiskMedia.DISK) is DiskMedia.CDROM
        v = r.fields(t, prefix, Disk, DISK_KEYS, defaults={
            "interface": DiskInterface.SATA if cdrom else DiskInterface.VIRTIO, "readonly": cdrom,
        })
        if cdrom and v["interface"] is DiskInterface.VIRTIO:
            raise r.error(
                f"{prefix}.interface",
                'found the string "virtio" for a cdrom; expected "sata" or "scsi" (virtio-blk '
                "has no CD-ROM device, and installers boot from a CD-ROM)",
                'write interface = "sata" (or remove the line: cdroms default to sata)',
            )
        cache = v["cache"]
        if v["aio"] is DiskAio.NATIVE and cache not in (DiskCache.NONE, DiskCache.DIRECTSYNC):
            raise r.error(
                f"{prefix}.aio",
                f'found "native" with cache = "{cache.value}"; expected aio = "native" only with '
                'cache = "none" or "directsync" (Linux native AIO needs O_DIRECT)',
                'set cache = "none" (the seed\'s choice), or aio = "threads"',
            )
        if v["interface"] is DiskInterface.SATA:
            sata += 1
            if sata > SATA_PORTS:
                raise r.error(
                    f"{prefix}.interface",
                    f'found the {sata}th "sata" disk; expected at most {SATA_PORTS} (the ports '
                    "of q35's AHCI controller)",
                    'put further disks on interface = "scsi" or "virtio"',
                )
        if cdrom and not v["readonly"]:
            raise r.error(
                f"{prefix}.readonly",
                "found the boolean false for a cdrom; expected true (a CD-ROM is read-only)",
                "remove readonly, or make it a disk with media = \"disk\"",
            )
        path = v["path"]
        if path in used and not (v["readonly"] and disks[used[path]].readonly):
            raise r.error(
                f"{prefix}.path",
                f"found {show(t['path'])}, already used by disk[{used[path]}]; expected "
                "each writable image once (QEMU locks it; two writers corrupt it)",
                "remove the duplicate [[disk]], or set readonly = true on both",
            )
        used.setdefault(path, index)
        disks.append(Disk(**v))
    return tuple(disks)


# --------------------------------------------------------------------------- [[network]]

NETWORK_KEYS: Mapping[str, FieldParser] = {
    "mac": Text(
        _MAC, expected='a MAC address of six hex pairs such as "52:54:00:12:34:56"',
        fix='write mac = "52:54:00:12:34:56" (colons, six pairs), or remove it to let QEMU '
        "choose one",
    ),
    "ifname": Text(
        _IFNAME, expected="a Linux interface name of 1-15 characters such as \"tap0\"",
        fix='write ifname = "tap0"',
    ),
    "bridge": Text(
        _IFNAME, expected="a Linux bridge name of 1-15 characters such as \"br0\"",
        fix='write bridge = "br0"',
    ),
}


def _parse_networks(r: Reader, data: Mapping[str, Any]) -> tuple[Network, ...]:
    networks: list[Network] = []
    macs: dict[str, int] = {}
    for index, t in enumerate(r.array_of_tables(data, "network")):
        prefix = f"network[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["network"])
        v = r.fields(t, prefix, Network, NETWORK_KEYS)
        kind, ifname, bridge = v["type"], v["ifname"], v["bridge"]
        if v["mac"] is not None:
            mac = v["mac"] = v["mac"].lower()
            if int(mac[:2], 16) & 1:
                raise r.error(
                    f"{prefix}.mac",
                    f"found {show(t['mac'])}, a multicast address (lowest bit of the first "
                    "byte set); expected a unicast MAC",
                    'make the first byte even, e.g. "52:54:00:..." (QEMU\'s locally '
                    "administered prefix)",
                )
            if mac in macs:
                raise r.error(
                    f"{prefix}.mac",
                    f"found {show(t['mac'])}, already used by network[{macs[mac]}]; expected "
                    "a MAC unique to this NIC",
                    "change one of the two MAC addresses",
                )
            macs[mac] = index
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
        for name, value, own in (("ifname", ifname, NetworkType.TAP),
                                 ("bridge", bridge, NetworkType.BRIDGE)):
            if kind is not own and value is not None:
                raise r.error(
                    f"{prefix}.{name}",
                    f'found {show(value)} with type = "{kind.value}"; expected {name} only for '
                    f'type = "{own.value}"',
                    f'remove {name}, or set type = "{own.value}"',
                )
        networks.append(Network(**v))
    return tuple(networks)


# --------------------------------------------------------------------------- [sound], [display]


def _parse_sound(r: Reader, data: Mapping[str, Any]) -> Sound:
    t = r.section(data, "sound")
    sound = Sound(**r.fields(t, "sound", Sound, SOUND_PARSERS))
    if sound.model is SoundModel.NONE and "backend" in t and sound.backend is not AudioBackend.NONE:
        raise r.error(
            "sound.backend",
            f'found "{sound.backend.value}" with model = "none"; expected a sound model for the '
            "backend to play",
            'add model = "hda" (the seed\'s -soundhw hda), or remove backend',
        )
    return sound


def _x_vga_requested(data: Mapping[str, Any]) -> bool:
    """Whether any [[passthrough]] says x_vga = true (read before it is validated)."""
    entries = data.get("passthrough", [])
    return isinstance(entries, list) and any(
        isinstance(t, dict) and t.get("x_vga") is True for t in entries
    )


def _parse_display(r: Reader, data: Mapping[str, Any]) -> Display:
    t = r.section(data, "display")
    frontend = r.enum(t, "display", "frontend", DisplayFrontend, DisplayFrontend.NONE)
    vga = default_vga(frontend, _x_vga_requested(data))
    return Display(**r.fields(t, "display", Display, {}, defaults={"vga": vga}))


# --------------------------------------------------------------------------- [[passthrough]]


def _address(r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any) -> PciAddress:
    raw = required(
        r, t, prefix, key, "the PCI address of the function",
        'add address = "01:00.0" (see `handoff groups` or lspci)',
    )
    return r.pci_address(raw, f"{prefix}.{key}")


def _addresses(
    r: Reader, t: Mapping[str, Any], prefix: str, key: str, default: Any
) -> tuple[PciAddress, ...]:
    items = r.strings(
        t, prefix, key, expected="PCI address strings", example='["00:1f.0", "00:1f.3"]'
    ) or ()
    return tuple(r.pci_address(item, f"{prefix}.{key}[{i}]") for i, item in enumerate(items))


PASSTHROUGH_KEYS: Mapping[str, FieldParser] = {
    "address": Custom(_address),
    "romfile": File(),
    "allow_in_group": Custom(_addresses),
}


def _parse_passthrough(
    r: Reader, data: Mapping[str, Any], display: Display
) -> tuple[Passthrough, ...]:
    devices: list[Passthrough] = []
    seen: dict[PciAddress, str] = {}
    vga_owner: str | None = None
    for index, t in enumerate(r.array_of_tables(data, "passthrough")):
        prefix = f"passthrough[{index}]"
        r.check_keys(t, prefix, SECTION_KEYS["passthrough"])
        device = Passthrough(**r.fields(t, prefix, Passthrough, PASSTHROUGH_KEYS))
        address = device.address
        if address in seen:
            raise r.error(
                f"{prefix}.address",
                f"found {show(t['address'])}, which {seen[address]} already passes through; "
                "expected each PCI function once",
                f"remove the duplicate [[passthrough]] entry for {address.short}",
            )
        seen[address] = prefix
        if device.x_vga:
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
        devices.append(device)
    return tuple(devices)


# --------------------------------------------------------------------------- [host_display]

_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+\.(service|target|socket|scope|slice|mount)$")

HOST_DISPLAY_KEYS: Mapping[str, FieldParser] = {
    "stop_units": Texts(
        "systemd unit names", '["display-manager.service"]',
        Item(
            matches(_UNIT_NAME), "a systemd unit name with its suffix",
            'write the full unit name, e.g. "display-manager.service" '
            "(`systemctl list-units --type=service`)",
        ),
    ),
}


def _parse_host_display(
    r: Reader, data: Mapping[str, Any], passthrough: Sequence[Passthrough]
) -> HostDisplay:
    t = r.section(data, "host_display")
    host = HostDisplay(**r.fields(t, "host_display", HostDisplay, HOST_DISPLAY_KEYS))
    if host.stop_units and not host.handover:
        raise r.error(
            "host_display.stop_units",
            f"found {show(list(host.stop_units))} with handover = false; expected it only with "
            "handover = true",
            "add handover = true (single-GPU hosts only), or remove stop_units",
        )
    if host.handover and not any(not p.live for p in passthrough):
        raise r.error(
            "host_display.handover",
            "found true with no [[passthrough]] GPU; expected the host's GPU in [[passthrough]]",
            "add a [[passthrough]] entry with the GPU's address (`handoff groups`), or remove "
            "[host_display]",
        )
    return host


# --------------------------------------------------------------------------- the whole profile


#: Section → its key table (the keys a bool/enum field's type does not read).
KEY_TABLES: Mapping[str, Mapping[str, FieldParser]] = {
    "vm": VM_KEYS, "firmware": FIRMWARE_KEYS, "disk": DISK_KEYS, "network": NETWORK_KEYS,
    "sound": SOUND_PARSERS, "display": {}, "passthrough": PASSTHROUGH_KEYS,
    "host_display": HOST_DISPLAY_KEYS, "input": INPUT_KEYS, "cpu": CPU_KEYS,
    "memory": MEMORY_KEYS, "tpm": TPM_KEYS, "guest_agent": GUEST_AGENT_KEYS,
    "control": CONTROL_KEYS, "hook": HOOK_KEYS, "monitor": MONITOR_KEYS,
    "looking_glass": LG_KEYS, "usb": USB_KEYS, "share": SHARE_KEYS,
}


def parse_profile(text: str, source: Path) -> Profile:
    """Validate profile TOML ``text`` read from ``source``. Pure: no host lookups.

    Relative paths are resolved against ``source``'s directory; host facts
    (the user exists, files exist) are handoff.checks.profile_files' job.
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
    reader.check_keys(data, "", tuple(s.name for s in SECTIONS))
    vm = _parse_vm(reader, data)
    display = _parse_display(reader, data)
    passthrough = _parse_passthrough(reader, data, display)
    check_passthrough_resets(source, passthrough)
    host_display = _parse_host_display(reader, data, passthrough)
    return Profile(
        vm=vm,
        source=source,
        firmware=check_secure_boot(reader, data, _parse_firmware(reader, data, vm.name)),
        disks=_parse_disks(reader, data),
        networks=_parse_networks(reader, data),
        sound=parse_sound_session(reader, data, _parse_sound(reader, data), vm),
        display=display,
        passthrough=passthrough,
        host_display=host_display,
        input=with_host_keys(reader, data, parse_input(
            reader, data, host_display.handover, any(p.live for p in passthrough))),
        cpu=parse_cpu(reader, data, vm),
        memory=parse_memory_section(reader, data, vm),
        tpm=parse_tpm(reader, data, vm.name),
        guest_agent=parse_guest_agent(reader, data),
        control=parse_control(reader, data),
        hooks=parse_hooks(reader, data),
        monitor=parse_monitor(reader, data, any(p.live for p in passthrough)),
        looking_glass=parse_looking_glass(reader, data, vm),
        usb=parse_usb(reader, data),
        shares=parse_shares(reader, data, vm),
    )


def load_profile(path: Path) -> Profile:
    """Read and validate the profile at ``path``.

    Raises :class:`handoff.base.errors.ProfileError` naming the file, key path,
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
