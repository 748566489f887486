"""Profile TOML text → a validated :class:`~handoff.profile.model.Profile`.

Every refusal is a :class:`handoff.errors.ProfileError` naming the file, the
key path (``vm.memory``), the value found, what was expected and a fix.
Unknown keys are refused against the key lists handoff.profile.model derives
from its dataclasses, with a "did you mean" suggestion (a typo must never
silently become a default). Relative paths resolve against the profile's
directory.

Never: touch the host beyond :func:`load_profile` reading the one file it is
given (no user lookups, no existence checks: that is
handoff.checks.profile_files), and never import evdev (key names come from
handoff.input.keynames).

Why one long module: it is one reader (:class:`_Reader`) and one function per
section, and every error text a person can meet is here, pinned byte for byte
by tests/unit/bad_profiles/. Split per section, the shared reader and the
cross-section checks (cdrom vs interface, the input chords against each other,
[cpu] against [vm]'s topology) would be spread over files that cannot be read
alone.
"""

from __future__ import annotations

import datetime
import difflib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from enum import Enum
from pathlib import Path
from typing import Any, TypeVar

from handoff.errors import CpuListError, PciAddressError, ProfileError
from handoff.input.keynames import KEY_CODES
from handoff.pci.address import PciAddress
from handoff.profile.control import parse_control
from handoff.profile.hooks import parse_hooks
from handoff.profile.host_keys import with_host_keys
from handoff.profile.model import (
    RESERVED_NAMES,
    SECTION_KEYS,
    SECTIONS,
    Accel,
    AudioBackend,
    Disk,
    DiskAio,
    DiskCache,
    DiskFormat,
    DiskInterface,
    DiskMedia,
    Display,
    DisplayFrontend,
    Firmware,
    FirmwareType,
    HostDisplay,
    Input,
    InputBackend,
    InputMode,
    Network,
    NetworkType,
    NicModel,
    Passthrough,
    Profile,
    SelectorKind,
    Sound,
    SoundModel,
    Vga,
    Vm,
    default_vga,
)
from handoff.profile.model import Cpu as CpuSection
from handoff.profile.model import Memory as MemorySection
from handoff.profile.monitor import parse_monitor
from handoff.tune.cpulist import parse_cpulist
from handoff.tune.model import (
    EMULATOR_AUTO,
    PIN_AUTO,
    PIN_NONE,
    EmulatorSpec,
    HugepageSize,
    PinSpec,
)

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
#: A cpufreq governor name (scaling_available_governors lists such words), or "".
_GOVERNOR = re.compile(r"^[a-z0-9_]{0,32}$")
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
#: What may follow each selector kind's "KIND:".
_SELECTOR_VALUE: Mapping[SelectorKind, re.Pattern[str]] = {
    SelectorKind.BY_ID: re.compile(r"^[^/\s][^/]*$"),
    SelectorKind.PATH: re.compile(r"^\S+$"),
    SelectorKind.USB: re.compile(r"^[0-9a-fA-F]{4}:[0-9a-fA-F]{4}$"),
    SelectorKind.NAME: re.compile(r"^.+$"),
}
_SELECTOR_PLACEHOLDER: Mapping[SelectorKind, str] = {
    SelectorKind.BY_ID: "NAME",
    SelectorKind.PATH: "ID_PATH",
    SelectorKind.USB: "VVVV:PPPP",
    SelectorKind.NAME: "TEXT",
}
_FORMS = [f"{kind.value}:{_SELECTOR_PLACEHOLDER[kind]}" for kind in SelectorKind]
#: "by-id:NAME, path:ID_PATH, usb:VVVV:PPPP or name:TEXT"
_SELECTOR_FORMS = f"{', '.join(_FORMS[:-1])} or {_FORMS[-1]}"

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
            # [memory] is a section and vm.memory a key: a top-level `memory = "8G"`
            # is the [vm] key written above its table, not a malformed section.
            misplaced = not prefix and key in SECTION_KEYS["vm"] and not isinstance(
                table[key], dict
            )
            if key in allowed and not misplaced:
                continue
            where = f"[{prefix}]" if prefix else "the top level"
            full = f"{prefix}.{key}" if prefix else key
            close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
            close = [] if misplaced else close
            expected = f"expected one of: {', '.join(allowed)}"
            if close:
                fix = f'did you mean "{close[0]}"? rename "{key}" to "{close[0]}"'
            elif not prefix and key in SECTION_KEYS["vm"]:
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
    r.check_keys(t, "vm", SECTION_KEYS["vm"])
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
    if name in RESERVED_NAMES:
        raise r.error(
            "vm.name",
            f"found {_show(name)}; the run directory {RESERVED_NAMES_ROOT}/{name} holds "
            "other sessions' files",
            f'rename it, e.g. name = "{name}-vm"',
        )
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
    r.check_keys(t, "firmware", SECTION_KEYS["firmware"])
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
        r.check_keys(t, prefix, SECTION_KEYS["disk"])
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
        r.check_keys(t, prefix, SECTION_KEYS["network"])
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
    r.check_keys(t, "sound", SECTION_KEYS["sound"])
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


def _x_vga_requested(data: Mapping[str, Any]) -> bool:
    """Whether any [[passthrough]] says x_vga = true (read before it is validated)."""
    entries = data.get("passthrough", [])
    return isinstance(entries, list) and any(
        isinstance(t, dict) and t.get("x_vga") is True for t in entries
    )


def _parse_display(r: _Reader, data: Mapping[str, Any]) -> Display:
    t = r.table(data, "display")
    r.check_keys(t, "display", SECTION_KEYS["display"])
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
        r.check_keys(t, prefix, SECTION_KEYS["passthrough"])
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
                live=r.boolean(t, prefix, "live", False),
                allow_in_group=tuple(
                    r.pci_address(item, f"{prefix}.allow_in_group[{i}]")
                    for i, item in enumerate(allowed)
                ),
            )
        )
    return tuple(devices)


def selector_kind(text: str) -> SelectorKind | None:
    """The kind of an input device selector ``KIND:VALUE``; None when it is not one."""
    prefix, sep, value = text.partition(":")
    kind = next((k for k in SelectorKind if k.value == prefix), None)
    if not sep or kind is None or not _SELECTOR_VALUE[kind].match(value):
        return None
    return kind


_UNIT_NAME = re.compile(r"^[A-Za-z0-9:_.@-]+\.(service|target|socket|scope|slice|mount)$")


def _parse_host_display(
    r: _Reader, data: Mapping[str, Any], passthrough: Sequence[Passthrough]
) -> HostDisplay:
    t = r.table(data, "host_display")
    r.check_keys(t, "host_display", SECTION_KEYS["host_display"])
    handover = r.boolean(t, "host_display", "handover", False)
    units = r.strings(
        t, "host_display", "stop_units", expected="systemd unit names",
        example='["display-manager.service"]',
    ) or ()
    for index, unit in enumerate(units):
        if not _UNIT_NAME.match(unit):
            raise r.error(
                f"host_display.stop_units[{index}]",
                f"found {_show(unit)}; expected a systemd unit name with its suffix",
                'write the full unit name, e.g. "display-manager.service" '
                "(`systemctl list-units --type=service`)",
            )
    if units and not handover:
        raise r.error(
            "host_display.stop_units",
            f"found {_show(list(units))} with handover = false; expected it only with "
            "handover = true",
            "add handover = true (single-GPU hosts only), or remove stop_units",
        )
    if handover and not any(not p.live for p in passthrough):
        raise r.error(
            "host_display.handover",
            "found true with no [[passthrough]] GPU; expected the host's GPU in [[passthrough]]",
            "add a [[passthrough]] entry with the GPU's address (`handoff groups`), or remove "
            "[host_display]",
        )
    return HostDisplay(handover=handover, stop_units=tuple(units))


def _parse_input(
    r: _Reader, data: Mapping[str, Any], handover: bool = False, live: bool = False
) -> Input:
    t = r.table(data, "input")
    r.check_keys(t, "input", SECTION_KEYS["input"])
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
    names = KEY_CODES.keys()
    gpu_hotkey = r.strings(
        t, "input", "gpu_hotkey", expected="Linux key names",
        example='["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_G"]',
    ) or ()
    for index, key_name in enumerate(gpu_hotkey):
        if key_name not in names:
            raise r.error(
                f"input.gpu_hotkey[{index}]",
                f"found {_show(key_name)}; expected a Linux key name such as \"KEY_G\"",
                "use a name from `evtest` or linux/input-event-codes.h",
            )
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
    escape = _parse_escape_hotkey(r, t, hotkey)
    _check_gpu_hotkey(r, t, gpu_hotkey, hotkey, escape, live)
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
            if selector_kind(item) is None:
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
        start_in=r.enum(
            t, "input", "start_in", InputMode, InputMode.GUEST if handover else InputMode.HOST
        ),
        devices=selectors["devices"],
        exclude=selectors["exclude"],
        gpu_hotkey=tuple(gpu_hotkey),
        follow_gpu=r.boolean(t, "input", "follow_gpu", False),
        escape_hotkey=escape,
    )


def _check_gpu_hotkey(
    r: _Reader, t: Mapping[str, Any], gpu: Sequence[str], hotkey: Sequence[str],
    escape: Sequence[str], live: bool,
) -> None:
    """input.gpu_hotkey: a chord of its own (neither contains the hotkey or the escape
    chord nor is contained in one: pressing one would fire both), a live group to
    move and an input backend to read it."""
    if not gpu:
        return
    example = '["KEY_LEFTCTRL", "KEY_LEFTALT", "KEY_G"]'
    for key, other in (("input.hotkey", hotkey), ("input.escape_hotkey", escape)):
        if other and (set(gpu) <= set(other) or set(other) <= set(gpu)):
            raise r.error(
                "input.gpu_hotkey",
                f"found {_show(list(gpu))}, which overlaps {key} {_show(list(other))} (one "
                "chord inside the other: pressing one would fire both); expected a chord of "
                "its own",
                f"choose keys of its own, e.g. gpu_hotkey = {example}",
            )
    if not live:
        raise r.error(
            "input.gpu_hotkey",
            "found a chord with no [[passthrough]] live = true; expected a live group for "
            "it to move",
            "add live = true to the GPU's [[passthrough]] entries, or remove gpu_hotkey",
        )
    if t.get("backend", InputBackend.NONE.value) == InputBackend.NONE.value:
        raise r.error(
            "input.gpu_hotkey",
            'found a chord with backend = "none"; expected an input backend (handoff reads '
            "the keyboards only with one)",
            'add backend = "qmp" (or "virtio") to [input]',
        )


def _parse_escape_hotkey(
    r: _Reader, t: Mapping[str, Any], hotkey: Sequence[str]
) -> tuple[str, ...]:
    """input.escape_hotkey: Linux key names, another chord than the hotkey, with a backend."""
    escape = r.strings(
        t, "input", "escape_hotkey", expected="Linux key names",
        example='["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]',
    ) or ()
    for index, key_name in enumerate(escape):
        if key_name not in KEY_CODES:
            raise r.error(
                f"input.escape_hotkey[{index}]",
                f"found {_show(key_name)}; expected a Linux key name such as \"KEY_END\"",
                "use a name from `evtest` or linux/input-event-codes.h",
            )
    if escape and set(escape) == set(hotkey):
        raise r.error(
            "input.escape_hotkey", "found the same keys as input.hotkey; expected another chord",
            'add a key: ["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]',
        )
    if escape and t.get("backend", InputBackend.NONE.value) == InputBackend.NONE.value:
        raise r.error(
            "input.escape_hotkey",
            'found a chord with backend = "none"; expected an input backend (handoff reads '
            "the keyboards only with one)",
            'add backend = "qmp" (or "virtio") to [input]',
        )
    return tuple(escape)


_PIN_EXAMPLE = '["2,8", "3,9"]'


def _parse_pin(r: _Reader, t: Mapping[str, Any], vm: Vm) -> PinSpec:
    if "pin" not in t:
        return PIN_NONE
    value = t["pin"]
    expected = (
        f'"none", "auto" or an array with one host CPU list per vCPU such as {_PIN_EXAMPLE}'
    )
    if value == "none":
        return PIN_NONE
    if value == "auto":
        return PIN_AUTO
    if not isinstance(value, list):
        close = difflib.get_close_matches(value, ["none", "auto"], n=1, cutoff=0.5) if (
            isinstance(value, str)) else []
        fix = f'did you mean "{close[0]}"? write pin = "{close[0]}"' if close else (
            f'write pin = "auto", or pin = {_PIN_EXAMPLE} with one list per vCPU')
        raise r.error("cpu.pin", f"found {_show(value)}; expected {expected}", fix)
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise r.error(
                f"cpu.pin[{index}]", f"found {_show(item)}; expected a host CPU list string",
                f'quote every entry: pin = {_PIN_EXAMPLE}',
            )
    try:
        spec = PinSpec.explicit(value)
    except CpuListError as exc:
        at = _pin_index(value, exc)
        raise r.error(
            f"cpu.pin[{at}]" if at is not None else "cpu.pin",
            f"found {_show(value[at] if at is not None else value)}; {exc.message}",
            exc.fix or f"write pin = {_PIN_EXAMPLE}",
        ) from None
    if len(spec.lists) != vm.cpus:
        raise r.error(
            "cpu.pin",
            f"found {len(spec.lists)} CPU list{'s' if len(spec.lists) != 1 else ''}; expected "
            f"one per vCPU (vm.cpus = {vm.cpus})",
            f"give exactly {vm.cpus} lists, one per vCPU in order, or use pin = \"auto\"",
        )
    return spec


def _pin_index(value: Sequence[str], exc: CpuListError) -> int | None:
    """Which list PinSpec.explicit refused (its message names ``cpu.pin[i]``)."""
    found = re.search(r"cpu\.pin\[(\d+)\]", exc.message)
    return int(found[1]) if found and int(found[1]) < len(value) else None


def _parse_emulator(r: _Reader, t: Mapping[str, Any]) -> EmulatorSpec:
    text = r.string(
        t, "cpu", "emulator", pattern=None,
        expected='"auto" or a host CPU list such as "0-1,8-9"',
        fix='write emulator = "auto" (the CPUs no vCPU uses), or a list such as "0,8"',
    )
    if text is None or text == "auto":
        return EMULATOR_AUTO
    try:
        cpus = parse_cpulist(text, what="cpu.emulator")
    except CpuListError as exc:
        raise r.error(
            "cpu.emulator", f"found {_show(text)}; expected \"auto\" or a CPU list ({exc.message})",
            exc.fix or 'write emulator = "auto"',
        ) from None
    if not cpus:
        raise r.error(
            "cpu.emulator", f"found {_show(text)}; expected \"auto\" or a non-empty CPU list",
            'write emulator = "auto", or a list such as "0,8"',
        )
    return EmulatorSpec(cpus)


def _parse_cpu(r: _Reader, data: Mapping[str, Any], vm: Vm) -> CpuSection:
    t = r.table(data, "cpu")
    r.check_keys(t, "cpu", SECTION_KEYS["cpu"])
    pin = _parse_pin(r, t, vm)
    emulator = _parse_emulator(r, t)
    isolate = r.boolean(t, "cpu", "isolate", False)
    governor = r.string(
        t, "cpu", "governor", pattern=_GOVERNOR,
        expected='a cpufreq governor name such as "performance", or "" to leave it alone',
        fix='write governor = "performance" (see scaling_available_governors), or remove it',
    ) or ""
    unpinned = pin == PIN_NONE
    if unpinned and "emulator" in t:
        raise r.error(
            "cpu.emulator", f"found {_show(t['emulator'])} with pin = \"none\"; expected "
            "emulator only with pinned vCPUs", 'set pin = "auto", or remove emulator',
        )
    if unpinned and isolate:
        raise r.error(
            "cpu.isolate", 'found the boolean true with pin = "none"; expected pinned vCPUs '
            "(isolation keeps host tasks off the vCPUs' CPUs)",
            'set pin = "auto" (or a list), or isolate = false',
        )
    if unpinned and governor:
        raise r.error(
            "cpu.governor", f"found {_show(governor)} with pin = \"none\"; expected a governor "
            "only for pinned CPUs (it is set on the CPUs the vCPUs run on)",
            'set pin = "auto" (or a list), or remove governor',
        )
    return CpuSection(pin=pin, emulator=emulator, isolate=isolate, governor=governor)


_HUGEPAGES = {size.label: size for size in HugepageSize}


def _size(mib: int) -> str:
    return f"{mib // 1024}G" if mib % 1024 == 0 else f"{mib}M"


def _parse_memory_section(r: _Reader, data: Mapping[str, Any], vm: Vm) -> MemorySection:
    t = r.table(data, "memory")
    r.check_keys(t, "memory", SECTION_KEYS["memory"])
    if "hugepages" not in t:
        return MemorySection()
    value = t["hugepages"]
    listed = ", ".join(json.dumps(label) for label in _HUGEPAGES)
    size = _HUGEPAGES.get(value) if isinstance(value, str) else None
    if size is None:
        close = difflib.get_close_matches(str(value).upper(), ["2M", "1G"], n=1, cutoff=0.5)
        fix = (f'did you mean "{close[0]}"? write hugepages = "{close[0]}"' if close
               else f'write hugepages = "2M" (choices: {listed})')
        raise r.error("memory.hugepages", f"found {_show(value)}; expected one of {listed}", fix)
    page_mib = size.kib // 1024
    if page_mib and vm.memory_mib % page_mib:
        low = vm.memory_mib // page_mib * page_mib
        sizes = " or ".join(json.dumps(_size(m)) for m in (low, low + page_mib) if m)
        raise r.error(
            "memory.hugepages",
            f"found {_show(value)} with vm.memory = {vm.memory_mib} MiB; expected a guest RAM "
            f"that is a whole number of {size.label} pages",
            f"set vm.memory = {sizes}, or use smaller pages",
        )
    return MemorySection(hugepages=size)


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
    host_display = _parse_host_display(reader, data, passthrough)
    return Profile(
        vm=vm,
        source=source,
        firmware=_parse_firmware(reader, data, vm.name),
        disks=_parse_disks(reader, data),
        networks=_parse_networks(reader, data),
        sound=_parse_sound(reader, data),
        display=display,
        passthrough=passthrough,
        host_display=host_display,
        input=with_host_keys(reader, data, _parse_input(
            reader, data, host_display.handover, any(p.live for p in passthrough))),
        cpu=_parse_cpu(reader, data, vm),
        memory=_parse_memory_section(reader, data, vm),
        control=parse_control(reader, data),
        hooks=parse_hooks(reader, data),
        monitor=parse_monitor(reader, data, any(p.live for p in passthrough)),
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
