"""Helpers for tests that run inside the testbed VM (real sysfs, real udev).

These are deliberately plain sysfs reads and writes, the kernel's own
interface, so tests can set up and check states independently of handoff's
engine (which is what they test). Waits poll with a deadline: the kernel and
udev finish asynchronously, and TCG makes "soon" unpredictable.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import pytest

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress

SYS = Path("/sys")
#: Written by the guest's stage2.sh when udev's coldplug has settled (content: exit code).
UDEV_SETTLED = Path("/run/testbed/udev-settled")
#: Generous: under TCG on a loaded 2-core machine the guest can be very slow.
DEFAULT_TIMEOUT = 60.0

T = TypeVar("T")


def in_guest() -> bool:
    return os.environ.get("TESTBED") == "1"


def require_guest(what: str) -> None:
    """Refuse to touch the running machine's devices anywhere but in the testbed."""
    if not in_guest():
        pytest.fail(
            f"{what} runs only inside the testbed VM: mark the test "
            "@pytest.mark.realkernel so it runs there (see tests/README.md)",
            pytrace=False,
        )


def wait_for(probe: Callable[[], T | None], what: str, timeout: float = DEFAULT_TIMEOUT) -> T:
    """Poll ``probe`` until it returns something other than None/False; fail at the deadline."""
    deadline = time.monotonic() + timeout
    delay = 0.01
    while True:
        value = probe()
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(delay)
        delay = min(delay * 2, 0.2)


def device_dir(address: PciAddress, sys_root: Path = SYS) -> Path:
    return sys_root / "bus" / "pci" / "devices" / str(address)


def driver_of(address: PciAddress, sys_root: Path = SYS) -> str | None:
    """The bound driver's name, None when the function has no driver."""
    link = device_dir(address, sys_root) / "driver"
    return os.path.basename(os.readlink(link)) if link.is_symlink() else None


def iommu_group_of(address: PciAddress, sys_root: Path = SYS) -> int:
    return int(os.path.basename(os.readlink(device_dir(address, sys_root) / "iommu_group")))


def group_members(group: int, sys_root: Path = SYS) -> list[PciAddress]:
    devices = sys_root / "kernel" / "iommu_groups" / str(group) / "devices"
    return sorted(PciAddress.parse(entry.name) for entry in devices.iterdir())


def modprobe(*modules: str) -> None:
    subprocess.run(["modprobe", "-a", *modules], check=True)


def bind_to(address: PciAddress, driver: str, sys_root: Path = SYS) -> None:
    """driver_override + unbind + drivers_probe: the kernel's documented way to rebind."""
    node = device_dir(address, sys_root)
    (node / "driver_override").write_text(driver)
    if (node / "driver").is_symlink():
        (node / "driver" / "unbind").write_text(str(address))
    (sys_root / "bus" / "pci" / "drivers_probe").write_text(str(address))


def release_override(address: PciAddress, sys_root: Path = SYS) -> None:
    """Unbind, clear driver_override ("\\n" clears it), let the kernel pick the host driver."""
    node = device_dir(address, sys_root)
    if (node / "driver").is_symlink():
        (node / "driver" / "unbind").write_text(str(address))
    (node / "driver_override").write_text("\n")
    (sys_root / "bus" / "pci" / "drivers_probe").write_text(str(address))


def wait_for_driver(
    address: PciAddress, driver: str | None, timeout: float = DEFAULT_TIMEOUT
) -> None:
    wait_for(
        lambda: driver_of(address) == driver,
        f"{address} to be bound to {driver or 'no driver'} (now {driver_of(address)})",
        timeout,
    )


def restore_driver(address: PciAddress, driver: str | None) -> None:
    """Put a function back on its host driver whatever state a test left it in."""
    override = (device_dir(address) / "driver_override").read_text().strip()
    if driver_of(address) == driver and override == "(null)":
        return
    release_override(address)
    wait_for_driver(address, driver)


def wait_udev_settled(timeout: float = 300.0) -> None:
    """Wait for the guest's udev coldplug (started by stage2.sh); udevd must answer."""
    code = wait_for(
        lambda: UDEV_SETTLED.read_text().strip() if UDEV_SETTLED.exists() else None,
        "the testbed's udev coldplug to settle",
        timeout,
    )
    assert code == "0", f"udevadm settle failed in the testbed (exit code {code})"
    env = {**os.environ, "SYSTEMD_IGNORE_CHROOT": "1"}
    ping = subprocess.run(
        ["udevadm", "control", "--ping"], env=env, capture_output=True, text=True, check=False
    )
    assert ping.returncode == 0, f"systemd-udevd does not answer in the testbed: {ping.stderr}"


def udev_settle(timeout: float = DEFAULT_TIMEOUT) -> None:
    """`udevadm settle`: wait until udev has processed every queued event."""
    env = {**os.environ, "SYSTEMD_IGNORE_CHROOT": "1"}
    subprocess.run(["udevadm", "settle", f"--timeout={int(timeout)}"], check=True, env=env)


def kill_recorded_qemus(run: Path) -> None:
    """SIGKILL every QEMU the device journals under ``run`` record (a test's leftovers),
    so that `handoff recover` can give their devices back."""
    for path in jr.list_journals(HostPaths(run=run)):
        pid = jr.Journal.load(path).qemu_pid
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
