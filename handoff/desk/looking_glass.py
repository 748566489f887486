"""Looking Glass's IVSHMEM memory, decided: its size, its path, QEMU's part, the refusals. Pure.

The guest's Looking Glass host application copies each frame into the
IVSHMEM device's BAR 2; the client on the host maps the same memory (a file
under /dev/shm, or /dev/kvmfrN of the kvmfr module) and shows it. Two frames
of ``width x height`` at 4 bytes a pixel (8 with HDR) plus 10 MiB for the
cursor and the protocol's headers must fit, and a PCI BAR is a power of two,
so "auto" is that sum rounded up to one (Looking Glass's own table:
1920x1080 -> 32 MiB, 2560x1440 -> 64 MiB, 3840x2160 -> 128 MiB).

Never: read or write the host (the shm resource and doctor do, with what is
decided here).
"""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from pathlib import Path

from handoff.profile.model import LookingGlass, LookingGlassDevice

MIB = 1 << 20
#: Looking Glass's headroom beyond the frames: cursor shape, the KVMFR headers.
OVERHEAD_MIB = 10
FRAMES = 2
#: The client's escape (menu) key by default, and its option to choose another.
CLIENT_ESCAPE_KEY = "KEY_SCROLLLOCK"
CLIENT_ESCAPE_OPTION = "-m"
#: QEMU ids of the memory backend and the IVSHMEM device.
BACKEND_ID = "looking-glass"
DEVICE_ID = "looking-glass-ivshmem"
#: PCI vendor:device of ivshmem-plain (Red Hat's IVSHMEM), as a guest sees it.
IVSHMEM_ID = "1af4:1110"


def needed_bytes(width: int, height: int, hdr: bool) -> int:
    """The bytes the frames and the overhead take, before rounding."""
    pixel = 8 if hdr else 4
    return width * height * pixel * FRAMES + OVERHEAD_MIB * MIB


def next_power_of_two(value: int) -> int:
    """The smallest power of two >= ``value`` (value >= 1)."""
    return 1 << max(value - 1, 0).bit_length()


def auto_size_mib(width: int, height: int, hdr: bool) -> int:
    """"auto": :func:`needed_bytes` in MiB, rounded up to a power of two."""
    return next_power_of_two(-(-needed_bytes(width, height, hdr) // MIB))


def size_mib(lg: LookingGlass) -> int:
    """The IVSHMEM size in MiB the profile asks for (explicit, or auto)."""
    return lg.size_mib if lg.size_mib is not None else auto_size_mib(lg.width, lg.height, lg.hdr)


def describe_need(lg: LookingGlass) -> str:
    """"1920x1080 SDR needs 25.8 MiB" for messages."""
    need = needed_bytes(lg.width, lg.height, lg.hdr) / MIB
    return f"{lg.width}x{lg.height} {'HDR' if lg.hdr else 'SDR'} needs {need:.1f} MiB"


def size_problem(lg: LookingGlass) -> tuple[str, str] | None:
    """Why an explicit size cannot work (message, fix), or None.

    Too small cuts the picture (the client shows only part of the frame or
    none); not a power of two is refused by QEMU (a PCI BAR must be one).
    """
    if lg.size_mib is None:
        return None
    auto = auto_size_mib(lg.width, lg.height, lg.hdr)
    if lg.size_mib * MIB < needed_bytes(lg.width, lg.height, lg.hdr):
        return (
            f"found {lg.size_mib} MiB; {describe_need(lg)} (two frames + {OVERHEAD_MIB} MiB)",
            f'write size = "auto" (here {auto} MiB), or size = "{auto}M"',
        )
    if lg.size_mib & (lg.size_mib - 1):
        bigger = next_power_of_two(lg.size_mib)
        return (
            f"found {lg.size_mib} MiB; expected a power of two (the IVSHMEM BAR is one)",
            f'write size = "{bigger}M", or size = "auto" (here {auto} MiB)',
        )
    return None


@dataclass(frozen=True)
class Ivshmem:
    """QEMU's part: ``memory-backend-file`` on ``path`` (share=on) + ``ivshmem-plain``."""

    path: Path
    size_mib: int


def shm_path(dev: Path, vm_name: str) -> Path:
    """The per-VM shared-memory file: ``/dev/shm/looking-glass-NAME``."""
    return dev / "shm" / f"looking-glass-{vm_name}"


def kvmfr_path(dev: Path, index: int) -> Path:
    return dev / f"kvmfr{index}"


def memory_path(lg: LookingGlass, dev: Path, vm_name: str) -> Path:
    """Where QEMU maps the memory: the shm file or the kvmfr device."""
    if lg.device is LookingGlassDevice.KVMFR:
        return kvmfr_path(dev, lg.kvmfr_index)
    return shm_path(dev, vm_name)


def plan_ivshmem(lg: LookingGlass, dev: Path, vm_name: str) -> Ivshmem | None:
    """The IVSHMEM device the profile asks for (None: Looking Glass off)."""
    if not lg.enabled:
        return None
    return Ivshmem(memory_path(lg, dev, vm_name), size_mib(lg))


def client_command(path: Path) -> str:
    """What the desktop user runs: the client on this file. ``-s``: no SPICE (handoff
    offers none: keyboard and mouse reach the guest through its own forwarding)."""
    return shlex.join(["looking-glass-client", "-f", str(path), "-s"])


# --------------------------------------------------------------------------- kvmfr


@dataclass(frozen=True)
class KvmfrFacts:
    """What the host says about /dev/kvmfrN, read by the edge.

    ``kind``: "char", "missing" or another file type ("regular file"...);
    ``driver``: the name /proc/devices gives the node's major (None: unknown);
    ``static_sizes``: /sys/module/kvmfr/parameters/static_size_mb, one per
    device (empty: the module is not loaded).
    """

    kind: str
    driver: str | None
    static_sizes: tuple[int, ...]


def kvmfr_fix(lg: LookingGlass, owner: str | None) -> str:
    """The commands that make /dev/kvmfrN right (contrib/ has both files)."""
    size = size_mib(lg)
    sizes = ",".join([str(size)] * (lg.kvmfr_index + 1))
    who = owner or "YOUR_USER"
    return (
        f"load the module with the size: `modprobe kvmfr static_size_mb={sizes}` (persist: "
        f"contrib/modprobe.d/kvmfr.conf), and let the client's user open the node: udev rule "
        f'SUBSYSTEM=="kvmfr", OWNER="{who}", GROUP="kvm", MODE="0660" '
        "(contrib/udev/99-kvmfr.rules)"
    )


def kvmfr_problem(lg: LookingGlass, path: Path, facts: KvmfrFacts) -> str | None:
    """Why ``path`` cannot serve as Looking Glass's memory (None: it can).

    QEMU itself would create a missing path as a regular file in /dev, and the
    guest would then write into a file nobody reads: refused here instead.
    """
    size = size_mib(lg)
    if facts.kind == "missing":
        return f"{path} does not exist (the kvmfr module is not loaded)"
    if facts.kind != "char":
        return (
            f"{path} is a {facts.kind}, not the kvmfr module's character device (QEMU "
            "makes a plain file there when the module was not loaded first)"
        )
    if facts.driver != "kvmfr":
        return f"{path} is a character device of {facts.driver or 'an unknown driver'}, not kvmfr"
    if len(facts.static_sizes) <= lg.kvmfr_index:
        return (
            f"the kvmfr module has {len(facts.static_sizes)} device(s) "
            f"(static_size_mb={','.join(map(str, facts.static_sizes))}), none for index "
            f"{lg.kvmfr_index}"
        )
    have = facts.static_sizes[lg.kvmfr_index]
    if have < size:
        return (
            f"{path} has {have} MiB (static_size_mb), smaller than the {size} MiB "
            f"Looking Glass needs ({describe_need(lg)})"
        )
    return None


def hotkey_clash(chords: dict[str, tuple[str, ...]]) -> str | None:
    """The profile key whose chord is the client's escape key alone (None: no clash)."""
    for key, chord in chords.items():
        if chord == (CLIENT_ESCAPE_KEY,):
            return key
    return None
