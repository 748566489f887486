"""Fixtures for realkernel tests: they run inside the testbed VM only.

On the host, realkernel tests are stand-ins whose results come from the guest
(tests/testbed/plugin.py), so these fixtures never run there; each one also
refuses to run outside the testbed (see guest.require_guest), so a test that
forgot its ``realkernel`` mark fails with that advice instead of touching the
host's devices.

Device fixtures hand out the device on its host driver and put it back there
after the test, whatever the test left behind, so tests stay independent.

Capability fixtures (``testbed_gpu``, ``testbed_uinput``) are what a module
asks for instead of a ``skipif``: in the guest a missing IOMMU, GPU lookalike
or /dev/uinput is the testbed's breakage, so each test fails naming what is
missing and what to look at, whichever subset (``-k``, one file) is run.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import read_iommu
from tests.testbed import devices, guest
from tests.testbed.devices import GpuLookalike, Ich9Group


@contextmanager
def _on_host_drivers(*functions: PciAddress) -> Iterator[None]:
    """Check the functions start on their host drivers; put them back afterwards."""
    expected = {f: devices.HOST_DRIVERS[devices.ids_of(f)] for f in functions}
    for function, driver in expected.items():
        guest.restore_driver(function, driver)
    yield
    for function, driver in expected.items():
        guest.restore_driver(function, driver)


def gpu_gaps(paths: HostPaths) -> list[str]:
    """What the GPU tests need of the guest's kernel and do not find there."""
    gaps = []
    if not read_iommu(paths).enabled:
        gaps.append(
            f"an IOMMU ({paths.sys}/kernel/iommu_groups is empty: the runner boots with "
            "-device intel-iommu and intel_iommu=on; look for DMAR errors in console.log)"
        )
    if not devices.find(devices.BOCHS_DISPLAY, paths.sys):
        gaps.append(
            "the GPU lookalike (bochs-display 1234:1111 at 00:06.0 is not on the PCI bus: "
            "runner.qemu_command must add devices.qemu_args())"
        )
    return gaps


def uinput_gaps(paths: HostPaths) -> list[str]:
    """What the input tests need of the guest's kernel and do not find there."""
    if (paths.dev / "uinput").exists():
        return []
    return [
        f"{paths.dev}/uinput (stage2.sh loads the uinput module with modprobe: look for its "
        "error in console.log, and for uinput in the kernel package's modules)"
    ]


def fail_on_gaps(tests: str, gaps: list[str]) -> None:
    if gaps:
        pytest.fail(
            f"the testbed guest lacks what {tests} need: {'; '.join(gaps)}. Inside the "
            "testbed that is a failure of the testbed, never a skip (TESTBED_KEEP=1 keeps "
            "console.log)",
            pytrace=False,
        )


@pytest.fixture(scope="session")
def testbed_gpu() -> None:
    """The guest has an IOMMU and the GPU lookalike; the test fails saying which is missing."""
    guest.require_guest("the testbed_gpu fixture")
    fail_on_gaps("the GPU tests", gpu_gaps(HostPaths()))


@pytest.fixture(scope="session")
def testbed_uinput() -> None:
    """The guest has /dev/uinput; the test fails saying what to look at when it has not."""
    guest.require_guest("the testbed_uinput fixture")
    fail_on_gaps("the input tests", uinput_gaps(HostPaths()))


def systemd_gaps(comm: str) -> list[str]:
    """What the systemd-boot tests need of PID 1 (``comm``: /proc/1/comm) and do not find."""
    if comm == "systemd":
        return []
    return [
        f"systemd as PID 1 (PID 1 is {comm!r}: mark the test "
        '@pytest.mark.realkernel(init="systemd") so it runs in the systemd boot)'
    ]


@pytest.fixture(scope="session")
def systemd_boot() -> str:
    """systemd is PID 1 and its boot has finished; what ``is-system-running`` said then."""
    guest.require_guest("the systemd_boot fixture")
    fail_on_gaps("the systemd-boot tests", systemd_gaps(Path("/proc/1/comm").read_text().strip()))
    return subprocess.run(
        ["systemctl", "is-system-running", "--wait"],
        capture_output=True, text=True, check=False, timeout=600,
    ).stdout.strip()  # fmt: skip


@pytest.fixture(scope="session")
def udev() -> Any:
    """udev has coldplugged the guest (drivers loaded, links made); a pyudev Context.

    The guest's systemd-udevd keeps running for the whole session: tests see
    udev's own add/remove events and ID_INPUT_* properties.
    """
    guest.require_guest("the udev fixture")
    guest.wait_udev_settled()
    import pyudev

    return pyudev.Context()


@pytest.fixture
def gpu_lookalike(udev: Any) -> Iterator[GpuLookalike]:
    """The GPU lookalike on bochs-drm + snd_hda_intel; returned there after the test."""
    guest.require_guest("the gpu_lookalike fixture")
    vga, audio = devices.gpu_lookalike()
    with _on_host_drivers(vga, audio):
        yield GpuLookalike(vga, audio, guest.iommu_group_of(vga))


@pytest.fixture
def edu(udev: Any) -> Iterator[PciAddress]:
    """QEMU's edu device (no host driver); left without a driver after the test."""
    guest.require_guest("the edu fixture")
    address = devices.edu()
    with _on_host_drivers(address):
        yield address


@pytest.fixture
def e1000e(udev: Any) -> Iterator[PciAddress]:
    """The e1000e NIC on its host driver e1000e; returned there after the test."""
    guest.require_guest("the e1000e fixture")
    address = devices.e1000e()
    with _on_host_drivers(address):
        yield address


@pytest.fixture
def ich9_group(udev: Any) -> Iterator[Ich9Group]:
    """LPC, SATA and SMBus: one IOMMU group holding the chipset (lpc_ich, ahci, i801_smbus)."""
    guest.require_guest("the ich9_group fixture")
    lpc, sata, smbus = devices.ich9_group()
    with _on_host_drivers(lpc, sata, smbus):
        yield Ich9Group(lpc, sata, smbus, guest.iommu_group_of(lpc))


@pytest.fixture(scope="session")
def vfio_pci(udev: Any) -> None:
    """vfio-pci is loaded (it is a module in the Debian kernel, not loaded at boot)."""
    guest.require_guest("the vfio_pci fixture")
    guest.modprobe("vfio-pci")


@pytest.fixture
def handoff_run_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty 0700 HANDOFF_RUN_DIR for this test (sessions, sockets, journal)."""
    guest.require_guest("the handoff_run_dir fixture")
    run = tmp_path / "run"
    run.mkdir(mode=0o700)
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(run))
    return run


@pytest.fixture
def host_paths(handoff_run_dir: Path) -> HostPaths:
    """The guest kernel's real /sys, /proc and /dev, with this test's run directory."""
    return HostPaths.from_environment()
