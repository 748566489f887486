"""Reading PCI devices and IOMMU groups from sysfs, under a configurable root.

The sysfs edge, read side: every sysfs path the PCI engine uses is built
here, and every reader returns a frozen :mod:`handoff.pci.model` value, so
the pure planner (:mod:`handoff.pci.plan`) can decide from a snapshot and
tests can build the same snapshot from a fake tree. This module must never
write: changes go through :mod:`handoff.pci.ops`.

Paths are those of the kernel's ABI (Documentation/ABI/testing/sysfs-bus-pci):
``/sys/bus/pci/devices/X`` are symlinks into ``/sys/devices/pci0000:00/...``;
``driver`` and ``iommu_group`` are symlinks whose last component is the name
we need.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from handoff.base.errors import PciError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.model import Binding, IommuState, PciDevice

_HEADER_OFFSET = 0x0E  # config space byte of the header type


# --------------------------------------------------------------------------- paths


def pci_devices_dir(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "devices"


def device_dir(paths: HostPaths, address: PciAddress) -> Path:
    return pci_devices_dir(paths) / str(address)


def drivers_dir(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "drivers"


def driver_override_path(paths: HostPaths, address: PciAddress) -> Path:
    return device_dir(paths, address) / "driver_override"


def driver_attr(paths: HostPaths, driver: str, name: str) -> Path:
    """``/sys/bus/pci/drivers/<driver>/<name>`` (``bind``, ``unbind``)."""
    return drivers_dir(paths) / driver / name


def drivers_probe_path(paths: HostPaths) -> Path:
    return paths.sys / "bus" / "pci" / "drivers_probe"


def iommu_groups_dir(paths: HostPaths) -> Path:
    return paths.sys / "kernel" / "iommu_groups"


def vfio_group_node(paths: HostPaths, group: int) -> Path:
    return paths.dev / "vfio" / str(group)


# --------------------------------------------------------------------------- small readers


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        return None
    except OSError:
        # Some attributes (e.g. of a device that vanished mid-read) fail with ENODEV.
        return None


def _read_hex(path: Path) -> int | None:
    text = _read_text(path)
    if text is None:
        return None
    try:
        return int(text, 16)
    except ValueError:
        return None


def _link_name(path: Path) -> str | None:
    """Last component of a symlink's target (``driver`` → ``vfio-pci``), None if absent."""
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _children(path: Path, prefix: str) -> tuple[str, ...]:
    try:
        names = os.listdir(path)
    except OSError:
        return ()
    return tuple(sorted(n for n in names if n.startswith(prefix)))


def _header_type(dev: Path) -> int | None:
    try:
        with open(dev / "config", "rb") as config:
            config.seek(_HEADER_OFFSET)
            byte = config.read(1)
    except OSError:
        return None
    return byte[0] if byte else None


# --------------------------------------------------------------------------- devices


def read_device(paths: HostPaths, address: PciAddress) -> PciDevice:
    """Read one function; PciError when it does not exist."""
    dev = device_dir(paths, address)
    vendor = _read_hex(dev / "vendor")
    device = _read_hex(dev / "device")
    class_code = _read_hex(dev / "class")
    if vendor is None or device is None or class_code is None:
        raise PciError(
            f"PCI device {address} does not exist ({dev} has no vendor/device/class)",
            fix="list the devices with `handoff groups` or `lspci -nn` and use one of those "
            "addresses",
        )
    override_text = _read_text(dev / "driver_override")
    group = _link_name(dev / "iommu_group")
    drm = _children(dev / "drm", "card") + _children(dev / "drm", "renderD")
    sound = tuple(
        int(name[4:]) for name in _children(dev / "sound", "card") if name[4:].isdigit()
    )
    driver = _link_name(dev / "driver")
    physfn = _link_name(dev / "physfn")
    return PciDevice(
        address=address,
        class_code=class_code,
        vendor=vendor,
        device=device,
        subsystem_vendor=_read_hex(dev / "subsystem_vendor"),
        subsystem_device=_read_hex(dev / "subsystem_device"),
        driver=driver,
        driver_module=_link_name(dev / "driver" / "module") if driver else None,
        driver_override=None if override_text in (None, "", "(null)") else override_text,
        driver_override_supported=(dev / "driver_override").exists(),
        iommu_group=int(group) if group is not None and group.isdigit() else None,
        boot_vga=_read_text(dev / "boot_vga") == "1",
        header_type=_header_type(dev),
        drm_nodes=drm,
        fb_nodes=_children(dev / "graphics", "fb"),
        sound_cards=sound,
        netdevs=_children(dev / "net", ""),
        physfn=_parse_or_none(physfn),
    )


def _parse_or_none(name: str | None) -> PciAddress | None:
    if name is None:
        return None
    try:
        return PciAddress.parse(name)
    except PciError:
        return None


def read_binding(paths: HostPaths, address: PciAddress) -> Binding | None:
    """The device's current driver and driver_override, None when it is gone.

    The hot path of detach and return (read back after every write): two
    system calls, where :func:`read_device` reads the whole device.
    """
    base = str(device_dir(paths, address))
    try:
        driver: str | None = os.path.basename(os.readlink(f"{base}/driver"))
    except FileNotFoundError:
        driver = None
    except OSError:
        return None
    try:
        fd = os.open(f"{base}/driver_override", os.O_RDONLY | os.O_CLOEXEC)
        try:
            override: str | None = os.read(fd, 4096).decode(errors="replace").strip()
        finally:
            os.close(fd)
    except FileNotFoundError:
        if not os.path.exists(f"{base}/config"):
            return None
        override = None
    except OSError:
        return None
    return Binding(driver, None if override in (None, "", "(null)") else override)


def iommu_group_of(paths: HostPaths, address: PciAddress) -> int | None:
    """The group number from the device's iommu_group link (None: no link, no device)."""
    name = _link_name(device_dir(paths, address) / "iommu_group")
    return int(name) if name is not None and name.isdigit() else None


def groups_of(paths: HostPaths, addresses: Iterable[PciAddress]) -> set[int]:
    """The IOMMU groups of ``addresses`` (an address in no group adds none)."""
    return {g for a in addresses if (g := iommu_group_of(paths, a)) is not None}


def list_addresses(paths: HostPaths) -> tuple[PciAddress, ...]:
    """Every PCI function the kernel knows, sorted."""
    names = _children(pci_devices_dir(paths), "")
    return tuple(sorted(a for name in names if (a := _parse_or_none(name)) is not None))


def read_devices(paths: HostPaths) -> dict[PciAddress, PciDevice]:
    """Every PCI function, read once. Devices that vanish while read are skipped."""
    devices: dict[PciAddress, PciDevice] = {}
    for address in list_addresses(paths):
        try:
            devices[address] = read_device(paths, address)
        except PciError:
            continue
    return devices


def group_members(paths: HostPaths, group: int) -> tuple[PciAddress, ...]:
    """The PCI functions of one IOMMU group, sorted (empty if the group is gone)."""
    addresses: list[PciAddress] = []
    for member in _children(iommu_groups_dir(paths) / str(group) / "devices", ""):
        try:
            addresses.append(PciAddress.parse(member))
        except PciError:
            continue  # a non-PCI device in the group (platform devices on ARM)
    return tuple(sorted(addresses))


def read_iommu(paths: HostPaths) -> IommuState:
    """The IOMMU units and groups (/sys/class/iommu, /sys/kernel/iommu_groups)."""
    groups: dict[int, tuple[PciAddress, ...]] = {}
    for name in _children(iommu_groups_dir(paths), ""):
        if name.isdigit():
            groups[int(name)] = group_members(paths, int(name))
    return IommuState(groups=groups, units=_children(paths.sys / "class" / "iommu", ""))


def driver_loaded(paths: HostPaths, driver: str) -> bool:
    """Whether a PCI driver is registered (``/sys/bus/pci/drivers/<driver>`` exists)."""
    return (drivers_dir(paths) / driver).is_dir()


def framebuffer_console_bound(paths: HostPaths) -> bool:
    """Whether a framebuffer console (fbcon) is bound to a virtual terminal.

    With fbcon bound, the boot GPU carries the host's text console; unbinding
    its driver under it is what leaves single-GPU users with a black screen or
    a hung unbind.
    """
    root = paths.sys / "class" / "vtconsole"
    for name in _children(root, "vtcon"):
        label = _read_text(root / name / "name") or ""
        if "frame buffer" in label and _read_text(root / name / "bind") == "1":
            return True
    return False
