"""Who holds a device node open: a scan of /proc/*/fd, as fuser(1) does.

A GPU whose /dev/dri/card0 is open in a compositor, or whose HDMI audio is
open in PipeWire, must not be unbound: the unbind blocks until every fd is
closed (or the driver crashes). Preflight names those processes so the user
can close them. The same scan finds another QEMU holding /dev/vfio/N.

A node matches by path (what ``readlink /proc/PID/fd/N`` prints) or, for
character devices, by device number, so a process inside a chroot (the
testbed's) or one that opened a by-path alias is found too.

NVIDIA's proprietary driver makes no DRM node for CUDA: programs and
nvidia-persistenced hold the card through /dev/nvidiaN (char 195:N, N the
card's "Device Minor" in /proc/driver/nvidia/gpus/ADDR/information), and an
unbind then blocks in the kernel ("non-zero usage count"). Those nodes are
the card's own. The driver-wide ones (/dev/nvidiactl 195:255,
/dev/nvidia-modeset 195:254, /dev/nvidia-uvm on a dynamic major, and ROCm's
/dev/kfd beside amdgpu's render node) are shared by every card of the
driver: :func:`vendor_nodes_of` lists them for a warning, not a refusal.

The holders edge: reads /proc and sysfs, never writes, never signals a
process; what it finds is a :class:`handoff.pci.model.Holder`.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from handoff.base.host import HostPaths
from handoff.pci.model import ComputeStack, Holder, PciDevice, compute_stack
from handoff.pci.sysfs import device_dir

# include/uapi/linux/major.h has no entry; the driver registers 195 itself
# (NV_MAJOR_DEVICE_NUMBER), cards on minors 0.., these two on the top ones.
NVIDIA_MAJOR = 195
NVIDIA_CTL_MINOR = 255
NVIDIA_MODESET_MINOR = 254


@dataclass(frozen=True)
class WatchedNode:
    """A /dev node and, when sysfs knows it, its ``major:minor``."""

    path: str
    rdev: int | None


def _sys_dev_number(sysdir: Path) -> int | None:
    """``major:minor`` from a sysfs class device's ``dev`` file, as an rdev."""
    try:
        text = (sysdir / "dev").read_text(encoding="ascii").strip()
        major, minor = text.split(":")
        return os.makedev(int(major), int(minor))
    except (OSError, ValueError):
        return None


def char_majors(paths: HostPaths) -> dict[str, int]:
    """Character-device majors by name, from /proc/devices (dynamic ones included)."""
    try:
        text = (paths.proc / "devices").read_text(encoding="ascii", errors="replace")
    except OSError:
        return {}
    majors: dict[str, int] = {}
    in_char = False
    for line in text.splitlines():
        if line.endswith(":"):
            in_char = line == "Character devices:"
            continue
        number, _, name = line.strip().partition(" ")
        if in_char and number.isdigit() and name:
            majors.setdefault(name.strip(), int(number))
    return majors


def nvidia_minor(paths: HostPaths, device: PciDevice) -> int | None:
    """The card's minor (N of /dev/nvidiaN) from the NVIDIA driver's procfs, if it has one.

    The file's lines are ``Key: \t value``; the one wanted is ``Device Minor``.
    """
    info = paths.proc / "driver" / "nvidia" / "gpus" / str(device.address) / "information"
    try:
        text = info.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "Device Minor":
            try:
                return int(value.strip())
            except ValueError:
                return None
    return None


def _nvidia_card_nodes(paths: HostPaths, device: PciDevice) -> list[WatchedNode]:
    minor = nvidia_minor(paths, device)
    if minor is None:
        return []
    return [WatchedNode(str(paths.dev / f"nvidia{minor}"), os.makedev(NVIDIA_MAJOR, minor))]


def _dynamic_node(paths: HostPaths, name: str, sys_class: Path | None = None) -> WatchedNode:
    """/dev/NAME on a dynamic major, minor 0: from sysfs when it has a class device."""
    rdev = _sys_dev_number(sys_class) if sys_class is not None else None
    if rdev is None:
        major = char_majors(paths).get(name)
        rdev = os.makedev(major, 0) if major is not None else None
    return WatchedNode(str(paths.dev / name), rdev)


def vendor_nodes_of(paths: HostPaths, device: PciDevice) -> tuple[WatchedNode, ...]:
    """The driver-wide nodes of ``device``'s compute stack (none for other drivers)."""
    stack = compute_stack(device)
    if stack is ComputeStack.NVIDIA:
        return (
            WatchedNode(str(paths.dev / "nvidiactl"), os.makedev(NVIDIA_MAJOR, NVIDIA_CTL_MINOR)),
            WatchedNode(
                str(paths.dev / "nvidia-modeset"), os.makedev(NVIDIA_MAJOR, NVIDIA_MODESET_MINOR)
            ),
            _dynamic_node(paths, "nvidia-uvm"),  # no class device: nvidia-modprobe mknods it
        )
    if stack is ComputeStack.ROCM:
        return (_dynamic_node(paths, "kfd", paths.sys / "class" / "kfd" / "kfd"),)
    return ()


def nodes_of(paths: HostPaths, device: PciDevice) -> tuple[WatchedNode, ...]:
    """The /dev nodes through which the host uses ``device``: DRM, fbdev, ALSA, /dev/nvidiaN."""
    sysdev = device_dir(paths, device.address)
    nodes: list[WatchedNode] = _nvidia_card_nodes(paths, device)
    for name in device.drm_nodes:
        nodes.append(
            WatchedNode(str(paths.dev / "dri" / name), _sys_dev_number(sysdev / "drm" / name))
        )
    for name in device.fb_nodes:
        nodes.append(
            WatchedNode(str(paths.dev / name), _sys_dev_number(sysdev / "graphics" / name))
        )
    for card in device.sound_cards:
        card_dir = sysdev / "sound" / f"card{card}"
        try:
            entries = sorted(os.listdir(card_dir))
        except OSError:
            entries = []
        # controlC0, pcmC0D0p, hwC0D0, midiC0D0 ...: every node of that card.
        for entry in entries:
            if f"C{card}" in entry and not entry.startswith("card"):
                nodes.append(
                    WatchedNode(str(paths.dev / "snd" / entry), _sys_dev_number(card_dir / entry))
                )
        nodes.append(WatchedNode(str(paths.dev / "snd" / f"controlC{card}"), None))
    # Deduplicate (controlC<n> may have been listed already).
    seen: dict[str, WatchedNode] = {}
    for node in nodes:
        if node.path not in seen or seen[node.path].rdev is None:
            seen[node.path] = node
    return tuple(seen.values())


def _command(proc: Path, pid: str) -> str:
    try:
        return (proc / pid / "comm").read_text(encoding="utf-8", errors="replace").strip()
    except OSError:
        return "?"


def find_holders(paths: HostPaths, nodes: Iterable[WatchedNode]) -> dict[str, tuple[Holder, ...]]:
    """For each node path, the processes holding it open (every fd of every pid).

    Processes that exit or deny access during the scan are skipped: the scan
    is advisory for user-visible holders; the kernel's own refusal (EBUSY)
    and the write deadline cover the rest.
    """
    watched = list(nodes)
    if not watched:
        return {}
    by_path = {node.path: node for node in watched}
    by_rdev: Mapping[int, WatchedNode] = {
        node.rdev: node for node in watched if node.rdev is not None
    }
    found: dict[str, list[Holder]] = {node.path: [] for node in watched}
    proc = str(paths.proc)
    try:
        pids = [name for name in os.listdir(proc) if name.isdigit()]
    except OSError:
        pids = []
    me = str(os.getpid())
    # Plain strings and os.* here: this loop runs over every fd of every
    # process, and pathlib's per-object cost dominated it.
    for pid in pids:
        if pid == me:
            continue
        fd_dir = f"{proc}/{pid}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        matched: set[str] = set()
        for fd in fds:
            link = f"{fd_dir}/{fd}"
            try:
                target = os.readlink(link)
            except OSError:
                continue
            node = by_path.get(target)
            if node is None and by_rdev and target.startswith("/"):
                try:
                    st = os.stat(link)
                except OSError:
                    st = None
                if st is not None and stat.S_ISCHR(st.st_mode):
                    node = by_rdev.get(st.st_rdev)
            if node is not None and node.path not in matched:
                matched.add(node.path)
                found[node.path].append(Holder(int(pid), _command(paths.proc, pid), node.path))
    return {path: tuple(holders) for path, holders in found.items() if holders}


def node_holders(paths: HostPaths, node: Path) -> tuple[Holder, ...]:
    """Every process holding ``node`` (e.g. /dev/vfio/N) open."""
    rdev: int | None
    try:
        st = os.stat(node)
        rdev = st.st_rdev if stat.S_ISCHR(st.st_mode) else None
    except OSError:
        rdev = None
    result = find_holders(paths, [WatchedNode(str(node), rdev)])
    return result.get(str(node), ())


def vfio_group_users(paths: HostPaths, node: Path) -> tuple[Holder, ...] | None:
    """Who holds a VFIO group open; None when nobody does.

    The kernel lets one process open a group at a time (EBUSY for the
    next), so one open() answers the question; only when the group is busy
    is /proc scanned to name the holder (an empty tuple when the scan cannot
    see it: another PID namespace). A node that is not a character device
    (a fake tree) is answered by the scan alone.
    """
    try:
        st = os.stat(node)
    except OSError:
        return None
    if stat.S_ISCHR(st.st_mode):
        try:
            fd = os.open(node, os.O_RDWR | os.O_CLOEXEC)
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                return None
        else:
            os.close(fd)
            return None
    return node_holders(paths, node) or (None if not stat.S_ISCHR(st.st_mode) else ())
