"""Taking the read-only snapshot of the host that preflight decides from.

The one place that gathers everything :func:`handoff.pci.plan.plan_handoff`
needs (devices, groups, holders of the devices' nodes, of their compute
drivers' shared nodes and of /dev/vfio/N, the framebuffer console, vfio-pci
availability), so the planner itself stays pure and tests can build the
same snapshot from a fake tree. An edge that only reads: it never writes
sysfs nor loads a module, and holds no writer.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable, Mapping

from handoff.base.errors import PciError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.holders import WatchedNode, find_holders, nodes_of, vendor_nodes_of
from handoff.pci.model import VFIO_DRIVER, VFIO_MODULE, Holder, PciDevice
from handoff.pci.plan import HostSnapshot
from handoff.pci.sysfs import (
    driver_loaded,
    framebuffer_console_bound,
    list_addresses,
    read_device,
    read_devices,
    read_iommu,
    vfio_group_node,
)


def take_snapshot(
    paths: HostPaths,
    module_loadable: Callable[[str], bool],
    *,
    groups: Iterable[int] | None = None,
    addresses: Iterable[PciAddress] = (),
    scan_holders: bool = True,
) -> HostSnapshot:
    """Read the host once: every device, or only ``groups``' members plus ``addresses``.

    A hand-off only needs its own groups (and the requested devices, to name
    one that does not exist or has no group); reading just those keeps
    preflight cheap on a machine with a hundred PCI functions.
    ``module_loadable`` answers whether vfio-pci could be loaded when it is
    not (``modprobe --dry-run`` on the host, modules.dep of the tree doctor
    looks at); it must not load anything.
    """
    iommu = read_iommu(paths)
    if groups is None:
        devices = read_devices(paths)
        wanted = set(iommu.groups)
    else:
        wanted = set(groups)
        requested = set(addresses)
        scope = {a for g in wanted for a in iommu.groups.get(g, ())} | requested
        # The other functions of the requested cards, wherever the IOMMU put them: the
        # planner refuses a GPU whose audio sits in a group not handed over.
        slots = {a.slot_address for a in requested}
        if slots:
            scope |= {a for a in list_addresses(paths) if a.slot_address in slots}
        devices = {}
        for address in sorted(scope):
            try:
                devices[address] = read_device(paths, address)
            except PciError:
                continue
    holders: dict[PciAddress, tuple[Holder, ...]] = {}
    vfio_holders: dict[int, tuple[Holder, ...]] = {}
    vendor_holders: dict[PciAddress, tuple[Holder, ...]] = {}
    if scan_holders and wanted:
        watched = _watched_nodes(paths, devices, iommu.groups, wanted)
        nodes = [node for node, _ in watched.values()]
        for path, found in find_holders(paths, nodes).items():
            for kind, key in watched[path][1]:
                if kind is _Watch.DEVICE and isinstance(key, PciAddress):
                    holders[key] = holders.get(key, ()) + found
                elif kind is _Watch.VENDOR and isinstance(key, PciAddress):
                    vendor_holders[key] = vendor_holders.get(key, ()) + found
                elif isinstance(key, int):
                    vfio_holders[key] = vfio_holders.get(key, ()) + found
    vfio_available = driver_loaded(paths, VFIO_DRIVER) or module_loadable(VFIO_MODULE)
    return HostSnapshot(
        devices=devices,
        iommu=iommu,
        vfio_available=vfio_available,
        fbcon_bound=framebuffer_console_bound(paths),
        holders=holders,
        vfio_holders=vfio_holders,
        vendor_holders=vendor_holders,
    )


class _Watch(enum.Enum):
    """Why a node is watched: a device's own node, a driver-wide one, /dev/vfio/N."""

    DEVICE = "device"
    VENDOR = "vendor"
    VFIO = "vfio"


_Keys = list[tuple[_Watch, PciAddress | int]]


def _watched_nodes(
    paths: HostPaths,
    devices: Mapping[PciAddress, PciDevice],
    groups: Mapping[int, Iterable[PciAddress]],
    wanted: Iterable[int],
) -> dict[str, tuple[WatchedNode, _Keys]]:
    """Every node to scan for, by path, with whom its holders are reported for.

    A driver-wide node (/dev/nvidiactl) is shared by every card of its
    driver, so one path can stand for several devices.
    """
    watched: dict[str, tuple[WatchedNode, _Keys]] = {}

    def watch(node: WatchedNode, kind: _Watch, key: PciAddress | int) -> None:
        known, keys = watched.setdefault(node.path, (node, []))
        if known.rdev is None and node.rdev is not None:
            watched[node.path] = (node, keys)
        keys.append((kind, key))

    for group in sorted(wanted):
        for address in groups.get(group, ()):
            device = devices.get(address)
            if device is None:
                continue
            for node in nodes_of(paths, device):
                watch(node, _Watch.DEVICE, address)
            for node in vendor_nodes_of(paths, device):
                watch(node, _Watch.VENDOR, address)
        vfio = vfio_group_node(paths, group)
        if vfio.exists():
            watch(WatchedNode(str(vfio), None), _Watch.VFIO, group)
    return watched
