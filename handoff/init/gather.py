"""Taking the host's facts for `handoff init`, read-only (the I/O edge).

PCI devices and IOMMU groups come from the GPU engine's own snapshot
(:func:`handoff.pci.snapshot.take_snapshot`), OVMF from the places
:func:`handoff.checks.qemu.check_ovmf` looks, keyboards and mice from udev
as the input layer finds them (:func:`handoff.input.devices.describe`).
Everything is read under a :class:`HostPaths`, so tests point it at a fake
tree mirroring the kernel's layout. Nothing here writes.
"""

from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

from handoff.base.errors import FirmwareError
from handoff.base.host import HostPaths
from handoff.checks.qemu import OVMF_CODE_CANDIDATES
from handoff.init.facts import (
    CpuTopology,
    DiskFact,
    DiskKind,
    InitFacts,
    InputDeviceFact,
    MonitorFact,
    OvmfFiles,
    PciName,
)
from handoff.init.pciids import pci_names
from handoff.input.devices import DeviceInfo, describe
from handoff.pci.snapshot import take_snapshot
from handoff.profile import Firmware, FirmwareType
from handoff.qemu.firmware_descriptors import choose_firmware
from handoff.qemu.firmware_search import DESCRIPTOR_DIRS, read_descriptors
from handoff.tune.topology import read_hugepages, read_mem_available, read_topology

PCI_IDS_CANDIDATES: tuple[Path, ...] = (
    Path("/usr/share/hwdata/pci.ids"),
    Path("/usr/share/misc/pci.ids"),
    Path("/usr/share/pci.ids"),
)
QCOW2_MAGIC = b"QFI\xfb"

InputLister = Callable[[], tuple[InputDeviceFact, ...]]
MonitorLister = Callable[[], "tuple[MonitorFact, ...] | None"]


def gather_facts(
    paths: HostPaths,
    module_loadable: Callable[[str], bool],
    *,
    disk: Path | None = None,
    inputs: InputLister | None = None,
    monitors: MonitorLister | None = None,
    pci_ids: Iterable[Path] = PCI_IDS_CANDIDATES,
    ovmf_candidates: Iterable[Path] = OVMF_CODE_CANDIDATES,
    descriptor_dirs: tuple[Path, ...] = DESCRIPTOR_DIRS,
    sessions: Path | None = None,
) -> InitFacts:
    """Everything `handoff init` decides from, read once.

    ``module_loadable``: whether vfio-pci could be loaded (it must load nothing).
    """
    snapshot = take_snapshot(paths, module_loadable)
    available = read_mem_available(paths)
    ids_file = next((p for p in pci_ids if p.is_file()), None)
    names: Mapping[tuple[int, int], PciName] = {}
    if ids_file is not None:
        wanted = {(d.vendor, d.device) for d in snapshot.devices.values()}
        with ids_file.open(encoding="utf-8", errors="replace") as handle:
            names = pci_names(handle, wanted)
    return InitFacts(
        pci=snapshot,
        cpu=read_cpu(paths),
        memory_mib=read_memory_mib(paths),
        ovmf=described_ovmf(descriptor_dirs) or find_ovmf(ovmf_candidates),
        names=names,
        pci_ids=ids_file,
        inputs=(inputs or udev_inputs)(),
        disk=None if disk is None else read_disk(paths, disk),
        hugepage_sizes_kib=tuple(pool.size_kib for pool in read_hugepages(paths)),
        mem_available_mib=None if available is None else available // 1024,
        monitors=(monitors or ddcutil_monitors)(),
        desktop_user=desktop_user(sessions or paths.logind),
    )


# --------------------------------------------------------------------------- monitors

#: Seconds `ddcutil detect` may take (it probes every I2C bus).
DETECT_TIMEOUT = 30.0


def ddcutil_monitors() -> tuple[MonitorFact, ...] | None:
    """The monitors `ddcutil detect --terse` finds; None without ddcutil (nothing is asked)."""
    ddcutil = shutil.which("ddcutil")
    if ddcutil is None:
        return None
    try:
        done = subprocess.run([ddcutil, "detect", "--terse"], capture_output=True, text=True,
                              timeout=DETECT_TIMEOUT, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return ()
    return parse_detect(done.stdout)


def parse_detect(text: str) -> tuple[MonitorFact, ...]:
    """``ddcutil detect --terse``: a "Display N" (or "Invalid display") line, then indented
    "I2C bus: /dev/i2c-N" and "Monitor: MFG:MODEL:SERIAL" lines per monitor."""
    found: list[MonitorFact] = []
    display: int | None = None
    bus: int | None = None
    model = ""
    started = False
    for line in [*text.splitlines(), ""]:
        head = re.match(r"^(Display (\d+)|Invalid display)", line)
        if head or not line.strip():
            if started and bus is not None:
                found.append(MonitorFact(display, bus, model))
            started, display, bus, model = bool(head), None, None, ""
            if head and head[2]:
                display = int(head[2])
            continue
        if (m := re.match(r"^\s+I2C bus:\s+/dev/i2c-(\d+)", line)) is not None:
            bus = int(m[1])
        elif (m := re.match(r"^\s+Monitor:\s+(.*\S)", line)) is not None:
            model = m[1]
    return tuple(found)


# --------------------------------------------------------------------------- desktop user


def desktop_user(sessions: Path) -> str | None:
    """The user of the active graphical (x11/wayland) session, else of any graphical one."""
    try:
        entries = sorted(p for p in sessions.iterdir() if not p.suffix)
    except OSError:
        return None
    found: list[tuple[bool, str]] = []
    for entry in entries:
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        props = dict(line.partition("=")[::2] for line in text.splitlines())
        if props.get("TYPE") in ("x11", "wayland") and props.get("USER"):
            found.append((props.get("ACTIVE") == "1", props["USER"]))
    found.sort(key=lambda item: not item[0])
    return found[0][1] if found else None


# --------------------------------------------------------------------------- CPU and RAM


def read_cpu(paths: HostPaths) -> CpuTopology:
    """The CPU summary init words its choice in, from tuning's topology reader
    (:func:`handoff.tune.topology.read_topology`: P/E cores, SMT per core)."""
    topology = read_topology(paths)
    if not topology.cpus:
        return CpuTopology(logical=os.cpu_count() or 1)
    return CpuTopology.of(topology)


def read_memory_mib(paths: HostPaths) -> int:
    """MemTotal from /proc/meminfo, in MiB."""
    for line in (paths.proc / "meminfo").read_text().splitlines():
        key, _, value = line.partition(":")
        if key == "MemTotal":
            return int(value.split()[0]) // 1024
    raise ValueError(f"{paths.proc / 'meminfo'} has no MemTotal line")


# --------------------------------------------------------------------------- OVMF


def vars_template_for(code: Path) -> Path:
    """The vars template beside an OVMF code image (OVMF_CODE_4M.fd → OVMF_VARS_4M.fd)."""
    name = code.name.replace("CODE", "VARS").replace("code", "vars")
    return code.with_name(name)


def described_ovmf(dirs: tuple[Path, ...] = DESCRIPTOR_DIRS) -> OvmfFiles | None:
    """Plain UEFI (no Secure Boot) as QEMU's firmware descriptors describe it, the way
    ``handoff run`` chooses it; None when no descriptor names installed files."""
    if not dirs:
        return None
    try:
        choice = choose_firmware(
            Firmware(type=FirmwareType.OVMF), "q35", read_descriptors(dirs)
        )
    except FirmwareError:
        return None
    if choice is None:
        return None
    code, template = choice.firmware.code, choice.firmware.vars_template
    if code is None or template is None or not (code.is_file() and template.is_file()):
        return None
    return OvmfFiles(code, template)


def find_ovmf(candidates: Iterable[Path] = OVMF_CODE_CANDIDATES) -> OvmfFiles | None:
    """The first installed code image whose vars template is installed too."""
    for code in candidates:
        template = vars_template_for(code)
        if code.is_file() and template.is_file():
            return OvmfFiles(code, template)
    return None


# --------------------------------------------------------------------------- input devices


def input_fact(info: DeviceInfo) -> InputDeviceFact | None:
    """A keyboard or mouse the input layer would take → the selector that names it."""
    if info.is_proxy or (info.keyboard is False and info.mouse is False):
        return None
    if info.by_id:
        selector = f"by-id:{sorted(info.by_id)[0]}"
    elif info.id_path:
        selector = f"path:{info.id_path}"
    elif info.vendor and info.product and info.vendor != "0000":
        selector = f"usb:{info.vendor}:{info.product}"
    else:
        selector = f"name:{info.name}"
    if info.keyboard is None and info.mouse is None:
        kinds = "unclassified"
    else:
        kinds = ", ".join(k for k, on in (("keyboard", info.keyboard), ("mouse", info.mouse)) if on)
    return InputDeviceFact(info.name, selector, kinds)


def udev_inputs() -> tuple[InputDeviceFact, ...]:
    """The host's keyboards and mice now, as the input layer's udev discovery sees them."""
    try:
        import pyudev

        context = pyudev.Context()
        found = [describe(device) for device in context.list_devices(subsystem="input")]
    except Exception:  # no udev database, or pyudev cannot ask it: the profile says so
        return ()
    facts = (input_fact(info) for info in found if info is not None)
    return tuple(sorted({f for f in facts if f is not None}, key=lambda f: (f.selector, f.name)))


# --------------------------------------------------------------------------- disks


def read_disk(
    paths: HostPaths, path: Path, *, stat_path: Callable[[Path], os.stat_result] = os.stat
) -> DiskFact:
    """What ``path`` is: a block device (and what uses it), an image file, or neither."""
    try:
        st = stat_path(path)
    except FileNotFoundError:
        return DiskFact(path, DiskKind.MISSING)
    except OSError:
        return DiskFact(path, DiskKind.OTHER)
    if stat.S_ISREG(st.st_mode):
        with path.open("rb") as handle:
            return DiskFact(path, DiskKind.FILE, qcow2=handle.read(4) == QCOW2_MAGIC)
    if not stat.S_ISBLK(st.st_mode):
        return DiskFact(path, DiskKind.OTHER)
    device = _devnum(st.st_rdev)
    users = [
        (mount, dev)
        for mount, dev in read_mounts(paths, stat_path)
        if device in block_ancestors(paths, dev)
    ]
    mounts = tuple(dict.fromkeys(mount for mount, _ in users))
    return DiskFact(path, DiskKind.BLOCK, mounts=mounts, root="/" in mounts)


def _devnum(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def read_mounts(
    paths: HostPaths, stat_path: Callable[[Path], os.stat_result] = os.stat
) -> list[tuple[str, str]]:
    """(mount point, major:minor) of every mount and active swap device.

    The source device (``/dev/sda2``) is preferred to mountinfo's own
    major:minor, which on btrfs is an anonymous device.
    """
    found: list[tuple[str, str]] = []
    try:
        text = (paths.proc / "self" / "mountinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        source = line.split(" - ", 1)[1].split()
        devnum = _source_devnum(source[1] if len(source) > 1 else "", stat_path)
        found.append((_unescape(fields[4]), devnum or fields[2]))
    try:
        swaps = (paths.proc / "swaps").read_text().splitlines()[1:]
    except OSError:
        swaps = []
    for line in swaps:
        devnum = _source_devnum(line.split()[0] if line.split() else "", stat_path)
        if devnum:
            found.append(("[swap]", devnum))
    return found


def _unescape(text: str) -> str:
    return text.replace("\\040", " ").replace("\\011", "\t").replace("\\134", "\\")


def _source_devnum(source: str, stat_path: Callable[[Path], os.stat_result]) -> str | None:
    if not source.startswith("/dev/"):
        return None
    try:
        st = stat_path(Path(source))
    except OSError:
        return None
    return _devnum(st.st_rdev) if stat.S_ISBLK(st.st_mode) else None


def block_ancestors(paths: HostPaths, devnum: str) -> set[str]:
    """``devnum`` and every block device under it: its whole disk, an LVM volume's or
    dm-crypt's slaves (/sys/dev/block/M:m/slaves), recursively."""
    seen: set[str] = set()
    todo = [devnum]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        node = paths.sys / "dev" / "block" / current
        try:
            real = node.resolve(strict=True)
        except OSError:
            continue
        if (real / "partition").exists():
            todo.extend(_dev_of(real.parent))
        slaves = real / "slaves"
        if slaves.is_dir():
            for slave in slaves.iterdir():
                todo.extend(_dev_of(slave.resolve()))
    return seen


def _dev_of(block_dir: Path) -> list[str]:
    try:
        return [(block_dir / "dev").read_text().strip()]
    except OSError:
        return []
