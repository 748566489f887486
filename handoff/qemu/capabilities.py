"""What the installed QEMU can do, and refusing profiles it cannot run.

QEMU reports a missing device or backend only when it starts, as one line
on stderr; distributions also split QEMU into modules (Debian's
qemu-system-gui holds the GTK/SDL displays and the PulseAudio backend), so
a profile that works on one machine fails on the next. handoff asks the
binary up front (``-version``, ``-device help``, ``-accel help``,
``-audiodev help``, ``-display help``, ``-machine help``, ``-help``, the CPU
and q35 machine properties for the Hyper-V flags) and
refuses before any host change, naming the profile key and what to install.

Probing is I/O and costs a few QEMU starts, so the answer is cached per
binary path, modification time and size: an upgrade of QEMU is noticed.
"""

from __future__ import annotations

import itertools
import os
import re
import shutil
import subprocess
from collections.abc import Iterable
from pathlib import Path

from handoff.base.errors import QemuError, QemuNotFoundError, QemuUnsupportedError
from handoff.base.host import HostPaths
from handoff.profile import (
    Accelerator,
    AudioBackend,
    DiskInterface,
    DiskMedia,
    DisplayFrontend,
    NetworkType,
    Profile,
    SoundModel,
)
from handoff.qemu import probe_cache
from handoff.qemu.cmdline import NIC_DEVICE, VGA_DEVICE
from handoff.qemu.probe_cache import QemuCapabilities

#: The oldest QEMU whose option syntax build_argv uses throughout (-blockdev,
#: -audiodev with hda-duplex,audiodev=, socket chardev fd=, on/off booleans).
MIN_VERSION = (6, 2, 0)

#: Seconds one ``qemu-system-x86_64 -X help`` may take before we give up.
PROBE_TIMEOUT = 20.0

_INSTALL_QEMU = "apt-get install qemu-system-x86 (or your distribution's qemu-system package)"
_GUI_PACKAGE = "apt-get install qemu-system-gui (Debian/Ubuntu ship it as a separate package)"


_cache: dict[tuple[str, int, int], QemuCapabilities] = {}

#: The access list of QEMU's setuid bridge helper (network type = "bridge").
BRIDGE_ACL = Path("/etc/qemu/bridge.conf")


def find_qemu(binary: str) -> Path:
    """The executable ``binary`` names (a path, or a name looked up in PATH)."""
    found = shutil.which(binary)
    if found is None:
        where = "is not executable" if os.path.exists(binary) else "was not found"
        raise QemuNotFoundError(
            f"QEMU ({binary}) {where}",
            fix=_INSTALL_QEMU,
        )
    return Path(found).resolve()


def probe(binary: str = "qemu-system-x86_64") -> QemuCapabilities:
    """Ask ``binary`` what it supports; cached per path + mtime + size, and on disk."""
    path = find_qemu(binary)
    stat = path.stat()
    key = (str(path), stat.st_mtime_ns, stat.st_size)
    cached = _cache.get(key) or probe_cache.load(path)
    if cached is not None:
        _cache[key] = cached
        return cached
    version_text = _ask(path, "-version")
    caps = QemuCapabilities(
        binary=path,
        version=parse_version(version_text, path),
        devices=parse_device_help(_ask(path, "-device", "help")),
        accelerators=parse_listing(_ask(path, "-accel", "help")),
        audio_drivers=parse_listing(_ask(path, "-audiodev", "help")),
        display_backends=parse_listing(_ask(path, "-display", "help"))
        | ({"vnc"} if re.search(r"^-vnc ", _ask(path, "-help"), re.MULTILINE) else set()),
        machines=parse_machine_help(_ask(path, "-machine", "help")),
        cpu_properties=parse_option_help(_ask(path, "-device", "max-x86_64-cpu,help")),
        machine_options=parse_option_help(_ask(path, "-machine", "q35,help")),
    )
    _cache[key] = caps
    probe_cache.store(path, caps)
    return caps


def _ask(path: Path, *args: str) -> str:
    """stdout of ``path args``; QEMU's complaints about missing modules go to stderr."""
    try:
        done = subprocess.run(
            [str(path), *args],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "LC_ALL": "C"},
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise QemuError(
            f"{path} {' '.join(args)} did not answer within {PROBE_TIMEOUT:g} s",
            fix=f"run `{path} {' '.join(args)}` by hand to see what it waits for",
        ) from None
    except OSError as exc:
        raise QemuNotFoundError(
            f"{path} cannot be run: {exc.strerror}", fix=_INSTALL_QEMU
        ) from None
    if done.returncode != 0:
        tail = done.stderr.strip().splitlines()[-1:] or ["(no message)"]
        raise QemuError(
            f"{path} {' '.join(args)} failed with exit status {done.returncode}: {tail[0]}",
            fix=f"check the QEMU installation ({_INSTALL_QEMU})",
        )
    return done.stdout


def parse_version(text: str, path: Path | str = "qemu") -> tuple[int, int, int]:
    """``QEMU emulator version 7.2.22 (Debian ...)`` → (7, 2, 22)."""
    match = re.search(r"version (\d+)\.(\d+)(?:\.(\d+))?", text)
    if match is None:
        raise QemuError(
            f"{path} -version printed no version: {text.strip()[:80]!r}",
            fix=f"check that {path} is QEMU ({_INSTALL_QEMU})",
        )
    return (int(match[1]), int(match[2]), int(match[3] or 0))


def parse_device_help(text: str) -> frozenset[str]:
    """Device names and aliases from ``-device help`` (``name "x", bus PCI, alias "y"``)."""
    names = set(re.findall(r'^name "([^"]+)"', text, re.MULTILINE))
    names |= set(re.findall(r'alias "([^"]+)"', text))
    return frozenset(names)


def parse_listing(text: str) -> frozenset[str]:
    """The names under a ``...:`` header (``-accel``/``-audiodev``/``-display help``)."""
    return frozenset(
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.rstrip().endswith(":")
    )


def parse_option_help(text: str) -> frozenset[str]:
    """Property names from ``-device TYPE,help`` / ``-machine M,help`` (``  name=<type> ...``)."""
    return frozenset(re.findall(r"^\s+([A-Za-z0-9_.-]+)=", text, re.MULTILINE))


def parse_machine_help(text: str) -> frozenset[str]:
    """Machine types (and their aliases) from ``-machine help``."""
    names: set[str] = set()
    for line in text.splitlines():
        if not line.strip() or line.startswith("Supported machines"):
            continue
        names.add(line.split()[0])
    return frozenset(names)


# --------------------------------------------------------------------------- checking


def device_origins(profile: Profile) -> dict[str, str]:
    """Which profile key makes build_argv add each device (for error messages)."""
    origins: dict[str, str] = {}
    for index, disk in enumerate(profile.disks):
        key = f"disk[{index}].interface"
        cdrom = disk.media is DiskMedia.CDROM
        if disk.interface is DiskInterface.VIRTIO:
            origins.setdefault("virtio-blk-pci", key)
        elif disk.interface is DiskInterface.SATA:
            origins.setdefault("ide-cd" if cdrom else "ide-hd", key)
        else:
            origins.setdefault("virtio-scsi-pci", key)
            origins.setdefault("scsi-cd" if cdrom else "scsi-hd", key)
    for index, net in enumerate(profile.networks):
        origins.setdefault(NIC_DEVICE[net.model], f"network[{index}].model")
    if profile.sound.model is SoundModel.HDA:
        origins["intel-hda"] = origins["hda-duplex"] = "sound.model"
    if profile.display.vga in VGA_DEVICE:
        origins[VGA_DEVICE[profile.display.vga]] = "display.vga"
    if profile.display.tablet:
        origins["qemu-xhci"] = origins["usb-tablet"] = "display.tablet"
    if profile.passthrough:
        origins["pcie-root-port"] = origins["vfio-pci"] = "passthrough[0].address"
    for flag, value in itertools.pairwise(profile.vm.extra_args):
        if flag == "-device":
            origins.setdefault(value.split(",", 1)[0], "vm.extra_args")
    return origins


def _device_fix(device: str) -> str:
    if device in ("qxl-vga", "qxl"):
        return "apt-get install qemu-system-modules-spice, or use display.vga = \"std\""
    if device.startswith("virtio-vga"):
        return "install your distribution's QEMU display modules, or use display.vga = \"std\""
    if device == "vfio-pci":
        return f"install a QEMU built with VFIO support ({_INSTALL_QEMU})"
    return (
        f"install a QEMU that has it ({_INSTALL_QEMU}); `qemu-system-x86_64 -device help` "
        "lists the devices yours has"
    )


def check_supported(
    profile: Profile,
    argv_devices: Iterable[str],
    caps: QemuCapabilities,
    *,
    accel: Accelerator | None = None,
) -> None:
    """Refuse a profile the installed QEMU cannot run. Pure: ``caps`` holds the facts.

    ``argv_devices`` are the ``-device`` names of the argv that will run
    (:func:`handoff.qemu.cmdline.argv_devices`), including those host
    resources add; each missing one is reported against the profile key
    that asked for it.
    """
    source = str(profile.source)
    if caps.version < MIN_VERSION:
        raise QemuUnsupportedError(
            f"QEMU {caps.version_text} ({caps.binary}) is older than "
            f"{'.'.join(map(str, MIN_VERSION))}, the oldest whose options handoff uses",
            fix=f"install a newer QEMU ({_INSTALL_QEMU}, or your distribution's backports)",
        )
    if accel is not None and accel not in caps.accelerators:
        raise QemuUnsupportedError(
            f"{source}: vm.accel: this QEMU ({caps.binary}) has no {accel} accelerator "
            f"(it has: {', '.join(sorted(caps.accelerators))})",
            fix=f'set vm.accel = "auto", or install a QEMU built with {accel} ({_INSTALL_QEMU})',
        )
    machine = profile.vm.machine
    if machine not in caps.machines:
        known = sorted(m for m in caps.machines if "q35" in m)
        raise QemuUnsupportedError(
            f"{source}: vm.machine: found \"{machine}\"; this QEMU {caps.version_text} has no "
            f"such machine (q35 machines: {', '.join(known[:6])})",
            fix='write machine = "q35" (the newest q35 this QEMU has)',
        )
    origins = device_origins(profile)
    for device in dict.fromkeys(argv_devices):
        if device not in caps.devices:
            key = origins.get(device, "the arguments handoff's host resources add")
            raise QemuUnsupportedError(
                f"{source}: {key}: needs the QEMU device {device!r}, which this QEMU "
                f"{caps.version_text} ({caps.binary}) does not have",
                fix=_device_fix(device),
            )
    if profile.sound.model is not SoundModel.NONE:
        backend = profile.sound.backend
        driver = backend.value if backend is not AudioBackend.NONE else "none"
        if driver not in caps.audio_drivers:
            if backend is AudioBackend.PIPEWIRE:
                fix = 'use backend = "pa" (PipeWire serves it via pipewire-pulse), or QEMU >= 8.1'
            elif backend in (AudioBackend.PULSEAUDIO, AudioBackend.SDL):
                fix = _GUI_PACKAGE
            else:
                fix = f"install QEMU's {driver} audio module, or choose another backend"
            raise QemuUnsupportedError(
                f"{source}: sound.backend: found \"{backend.value}\"; this QEMU "
                f"{caps.version_text} has no {driver} audio driver (it has: "
                f"{', '.join(sorted(caps.audio_drivers))})",
                fix=fix,
            )
    frontend = profile.display.frontend
    if frontend.value not in caps.display_backends:
        if frontend in (DisplayFrontend.GTK, DisplayFrontend.SDL):
            fix = f'{_GUI_PACKAGE}, or frontend = "vnc" (a unix socket in the run directory)'
        else:
            fix = 'use frontend = "none"'
        raise QemuUnsupportedError(
            f"{source}: display.frontend: found \"{frontend.value}\"; this QEMU "
            f"{caps.version_text} has no {frontend.value} display (it has: "
            f"{', '.join(sorted(caps.display_backends))})",
            fix=fix,
        )


def bridge_acl_refusal(bridge: str, acl: Path, depth: int = 0) -> str | None:
    """Why qemu-bridge-helper would refuse ``bridge`` under ``acl`` (None: it allows it).

    The helper's own rules: ``allow NAME|all``, ``deny NAME|all``, ``include
    FILE``, ``#`` comments; a matching deny wins, and nothing matching denies.
    """
    verdict = _acl_rules(bridge, acl, depth)
    if isinstance(verdict, str):
        return verdict
    allowed, denied = verdict
    if denied:
        return f"{acl} denies it"
    if not allowed:
        return f"{acl} has no \"allow {bridge}\" (or \"allow all\") line"
    return None


def _acl_rules(bridge: str, acl: Path, depth: int) -> tuple[bool, bool] | str:
    """(allowed, denied) from ``acl`` and its includes, or why it cannot be read."""
    try:
        text = acl.read_text()
    except OSError as exc:
        return f"QEMU's bridge helper cannot read its access list {acl}: {exc.strerror}"
    allowed = denied = False
    for line in text.splitlines():
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        command, argument = words[0], words[1] if len(words) > 1 else ""
        if command == "include" and depth < 8:
            sub = _acl_rules(bridge, Path(argument), depth + 1)
            if isinstance(sub, str):
                return sub
            allowed, denied = allowed or sub[0], denied or sub[1]
        elif command in ("allow", "deny") and argument in ("all", bridge):
            allowed = allowed or command == "allow"
            denied = denied or command == "deny"
    return allowed, denied


def check_bridges(profile: Profile, paths: HostPaths, *, acl: Path = BRIDGE_ACL) -> None:
    """Refuse a ``type = "bridge"`` network QEMU's bridge helper would refuse at start.

    The kernel lists network interfaces in ``<sys>/class/net``; a bridge has a
    ``bridge/`` directory there.
    """
    net = paths.sys / "class" / "net"
    for index, network in enumerate(profile.networks):
        if network.type is not NetworkType.BRIDGE or network.bridge is None:
            continue
        key = f"{profile.source}: network[{index}].bridge"
        bridge = network.bridge
        refusal = bridge_acl_refusal(bridge, acl)
        if refusal is not None:
            raise QemuUnsupportedError(
                f'{key}: found "{bridge}"; {refusal}, so QEMU cannot attach to the bridge',
                fix=f"as root: mkdir -p {acl.parent} && echo 'allow {bridge}' >> {acl}",
            )
        if not (net / bridge / "bridge").is_dir():
            raise QemuUnsupportedError(
                f'{key}: found "{bridge}"; this host has no bridge of that name ({net})',
                fix=f"create it (ip link add {bridge} type bridge; ip link set {bridge} up) "
                "and add the LAN interface to it, or use type = \"user\"",
            )

