"""Reading what :mod:`handoff.pci.reset` decides from: reset methods, config space, vendor-reset.

Read-only, like :mod:`handoff.pci.sysfs`: ``reset_method`` and ``reset``
(Documentation/ABI/testing/sysfs-bus-pci), the function's ``config`` file
(read afresh: the kernel's ``vendor`` attribute is cached at enumeration
and keeps saying 0x1002 for a card that fell off the bus), the running
kernel's release and whether vendor-reset is loaded or installed.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Callable, Mapping
from pathlib import Path

from handoff.base.host import HostPaths
from handoff.pci import vendor_reset
from handoff.pci.address import PciAddress
from handoff.pci.reset import (
    Health,
    ModuleState,
    ResetFacts,
    ResetWarning,
    health,
    pcie_flr,
    pin_value,
    warnings,
)
from handoff.pci.sysfs import device_dir
from handoff.profile import Profile

_CONFIG_HEADER = 256  # the standard header and capability list


def reset_method_file(paths: HostPaths, address: PciAddress) -> Path:
    return device_dir(paths, address) / "reset_method"


def read_reset_method(paths: HostPaths, address: PciAddress) -> str | None:
    """``reset_method`` as the kernel prints it (stripped), None when the file is absent."""
    try:
        return reset_method_file(paths, address).read_text(encoding="ascii",
                                                           errors="replace").strip()
    except OSError:
        return None


def read_config(paths: HostPaths, address: PciAddress, size: int = _CONFIG_HEADER) -> bytes | None:
    """The first ``size`` bytes of config space, read from the device now; None if unreadable."""
    try:
        with open(device_dir(paths, address) / "config", "rb", buffering=0) as config:
            return config.read(size)
    except OSError:
        return None


# Fault injection for the realkernel ladder tests, test-only: never set it outside
# tests. "ADDR@INODE,...": the function ADDR reads as dead (0xffff) while its sysfs
# directory is the one with that inode, i.e. until the kernel re-creates the device
# (remove + rescan), as a card whose config space died stays dead until re-enumerated.
# QEMU's devices cannot be made to read 0xffff from inside the guest.
DEAD_CONFIG_ENV = "HANDOFF_TEST_DEAD_CONFIG"


def _forced_dead(environ: Mapping[str, str]) -> frozenset[tuple[str, int]]:
    found = set()
    for item in environ.get(DEAD_CONFIG_ENV, "").split(","):
        address, _, inode = item.strip().partition("@")
        if address and inode.isdigit():
            found.add((address, int(inode)))
    return frozenset(found)


_FORCED_DEAD = _forced_dead(os.environ)


def function_health(paths: HostPaths, address: PciAddress) -> Health:
    """Alive, dead (config space reads 0xffff) or gone from the bus."""
    config = read_config(paths, address, 2)
    vendor = int.from_bytes(config, "little") if config is not None and len(config) == 2 else None
    if _FORCED_DEAD and vendor is not None:
        with contextlib.suppress(OSError):
            if (str(address), device_dir(paths, address).stat().st_ino) in _FORCED_DEAD:
                vendor = 0xFFFF
    # An unreadable config of a function still on the bus is dead, not gone.
    return health(device_dir(paths, address).is_dir(), vendor)


def kernel_version(paths: HostPaths) -> tuple[int, int] | None:
    try:
        text = (paths.proc / "sys" / "kernel" / "osrelease").read_text(encoding="ascii")
    except OSError:
        return None
    match = re.match(r"(\d+)\.(\d+)", text.strip())
    return (int(match[1]), int(match[2])) if match else None


def vendor_reset_state(paths: HostPaths, loadable: Callable[[str], bool]) -> ModuleState:
    """Loaded (/sys/module/vendor_reset), installed (modprobe finds it), or missing."""
    if (paths.sys / "module" / vendor_reset.SYSFS_MODULE).is_dir():
        return ModuleState.LOADED
    return ModuleState.INSTALLED if loadable(vendor_reset.MODULE) else ModuleState.MISSING


def _hex(path: Path) -> int:
    try:
        return int(path.read_text(encoding="ascii").strip(), 16)
    except (OSError, ValueError):
        return 0


def read_reset_facts(
    paths: HostPaths, address: PciAddress, loadable: Callable[[str], bool]
) -> ResetFacts:
    """Everything :func:`handoff.pci.reset.warnings` and :func:`pin_value` decide from.

    vendor-reset's state is asked (``loadable``, a modprobe dry run) only for
    a card of its list.
    """
    dev = device_dir(paths, address)
    text = read_reset_method(paths, address)
    vendor, device = _hex(dev / "vendor"), _hex(dev / "device")
    module = ModuleState.MISSING
    if vendor_reset.family_of(vendor, device) is not None:
        module = vendor_reset_state(paths, loadable)
    return ResetFacts(
        address=address,
        vendor=vendor,
        device=device,
        kernel=kernel_version(paths),
        methods=None if text is None else tuple(text.split()),
        reset_file=(dev / "reset").exists(),
        flr=pcie_flr(read_config(paths, address) or b""),
        vendor_reset=module,
    )


def preflight_resets(
    paths: HostPaths, loadable: Callable[[str], bool], profile: Profile
) -> tuple[dict[PciAddress, str], list[ResetWarning]]:
    """The pinned ``reset_method`` values of a profile's [[passthrough]] (refused
    before anything changes when the kernel cannot take one), and the reset
    warnings to say before the first start. Reads only."""
    pins: dict[PciAddress, str] = {}
    found: list[ResetWarning] = []
    for index, entry in enumerate(profile.passthrough):
        if entry.live:
            continue
        facts = read_reset_facts(paths, entry.address, loadable)
        where = f"{profile.source}: passthrough[{index}].reset"
        value = pin_value(entry.reset, facts, where)
        if value is not None:
            pins[entry.address] = value
        found += warnings(facts)
    return pins, found
