"""`handoff init` on a real kernel: the testbed's GPUs, groups, boot GPU and a mounted disk.

The testbed has the GPU lookalike (bochs-display 06.0 + its HDA 06.1), a
second lookalike (virtio-gpu-pci), the boot GPU (cirrus-vga, boot_vga=1),
the ICH9 group, an e1000e and a virtio disk (devices.py). The one-GPU
scenario takes the second lookalike off the bus the kernel's way (``remove``)
and puts it back with a bus ``rescan`` afterwards, whatever happened.

Only that single-function device is removed here: removing the lookalike's
two functions and rescanning put 06.0 and 06.1 in two different IOMMU
groups on this kernel until 06.1 set its own multifunction bit
(devices.qemu_args; the reset ladder's tests now remove and rescan them).
So "only the boot GPU" is shown on the real boot GPU by naming it with
``--gpu``; the automatic choice on a host whose only GPU is the boot GPU is
tests/unit/test_init_choose.py's (a fake tree of such a host).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import read_device
from handoff.profile import load_profile
from tests.lines import wait_for_line
from tests.testbed import devices, guest
from tests.testbed.devices import GpuLookalike

pytestmark = [pytest.mark.realkernel, pytest.mark.usefixtures("testbed_gpu", "udev")]

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 600.0  # seconds: a nested TCG QEMU under a loaded TCG guest
PCI = Path("/sys/bus/pci")


def handoff(run: Path, *argv: str, timeout: float = WAIT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run)}, cwd=CHECKOUT,
        capture_output=True, text=True, check=False, timeout=timeout,
    )


@contextlib.contextmanager
def off_the_bus(*addresses: PciAddress) -> Iterator[None]:
    """The functions removed from the kernel (sysfs ``remove``); a bus rescan brings them back."""
    def on_bus(address: PciAddress) -> bool:
        return (PCI / "devices" / str(address)).exists()

    def off_bus(address: PciAddress) -> bool:
        return not on_bus(address)

    try:
        for address in addresses:
            (PCI / "devices" / str(address) / "remove").write_text("1")
            guest.wait_for(functools.partial(off_bus, address), f"{address} to leave the bus")
        yield
    finally:
        (PCI / "rescan").write_text("1")
        for address in addresses:
            guest.wait_for(functools.partial(on_bus, address), f"{address} back after the rescan")
        guest.udev_settle()


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    yield run
    guest.kill_recorded_qemus(run)
    handoff(run, "recover")


def test_two_passable_gpus_are_refused_and_both_listed(tmp_path: Path, run_dir: Path) -> None:
    vga, _ = devices.gpu_lookalike()
    second = devices.second_gpu_lookalike()
    done = handoff(run_dir, "init", "two", "--output", str(tmp_path / "two.toml"))
    print(done.stderr)
    assert done.returncode == 2
    assert "2 GPUs can be passed through; handoff init will not guess" in done.stderr
    assert f"--gpu {vga.short}" in done.stderr
    assert f"--gpu {second.short}" in done.stderr
    assert f"--gpu {devices.boot_gpu().short}" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "two.toml").exists()


def test_the_boot_gpu_is_never_taken_and_init_points_to_single_gpu_mode(
    tmp_path: Path, run_dir: Path
) -> None:
    boot = devices.boot_gpu()
    assert read_device(HostPaths(), boot).boot_vga, "cirrus-vga is the testbed's boot GPU"
    done = handoff(run_dir, "init", "one", "--gpu", boot.short,
                   "--output", str(tmp_path / "one.toml"))
    print(done.stderr)
    assert done.returncode == 2
    assert f"{boot.short} VGA compatible controller [1013:00b8]" in done.stderr
    assert "it is the boot GPU (boot_vga=1)" in done.stderr
    assert "fix: single-GPU hosts: see profiles/single-gpu.md" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "one.toml").exists()


def _mounted_disk() -> Path:
    """/dev/vdX of the testbed disk, found by its serial."""
    def find() -> Path | None:
        for block in Path("/sys/block").glob("vd*"):
            serial = block / "serial"
            if serial.exists() and serial.read_text().strip() == devices.DISK_SERIAL:
                return Path("/dev") / block.name
        return None

    return guest.wait_for(find, f"the virtio disk with serial {devices.DISK_SERIAL}")


def test_a_mounted_block_device_is_refused_and_taken_once_unmounted(
    tmp_path: Path, run_dir: Path
) -> None:
    disk = _mounted_disk()
    vga, _ = devices.gpu_lookalike()
    guest.modprobe("ext4")  # a module in Debian's kernel, not loaded by mount(8)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(disk)], check=True)
    mount = Path(tempfile.mkdtemp(dir=tmp_path))
    subprocess.run(["mount", str(disk), str(mount)], check=True)
    try:
        done = handoff(run_dir, "init", "d", "--gpu", vga.short, "--disk", str(disk),
                       "--output", str(tmp_path / "d.toml"))
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    print(done.stderr)
    assert done.returncode == 2
    assert f"--disk {disk}: it is in use on the host (mounted at {mount})" in done.stderr
    assert f"fix: unmount it first (umount {mount})" in done.stderr
    assert not (tmp_path / "d.toml").exists()
    done = handoff(run_dir, "init", "d", "--gpu", vga.short, "--disk", str(disk),
                   "--output", str(tmp_path / "d.toml"))
    assert done.returncode == 0, done.stderr
    (written,) = load_profile(tmp_path / "d.toml").disks
    assert (written.path, written.cache.value) == (disk, "none")


def _drivers(gpu: GpuLookalike) -> list[str | None]:
    return [guest.driver_of(a) for a in gpu.functions]


def test_init_picks_the_lookalike_and_its_audio_and_the_profile_runs(
    tmp_path: Path, run_dir: Path, gpu_lookalike: GpuLookalike
) -> None:
    path = tmp_path / "tbinit.toml"
    with off_the_bus(devices.second_gpu_lookalike()):
        done = handoff(run_dir, "init", "tbinit", "--memory", "256M", "--output", str(path))
    print(done.stdout, done.stderr)
    assert done.returncode == 0, done.stderr
    profile = load_profile(path)
    assert [p.address for p in profile.passthrough] == list(gpu_lookalike.functions)
    assert all(p.allow_in_group == () for p in profile.passthrough)
    assert f"GPU: {gpu_lookalike.vga.short} Display controller [1234:1111]" in done.stdout
    assert f"with {gpu_lookalike.audio.short} (IOMMU group {gpu_lookalike.group})" in done.stdout
    assert f"next: handoff doctor {path}" in done.stdout

    doctor = handoff(run_dir, "doctor", str(path), "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    print(doctor.stdout)
    for name in ("profile", "profile-files", f"device:{gpu_lookalike.vga}",
                 f"device:{gpu_lookalike.audio}", "passthrough-plan", "memlock", "ovmf",
                 "qemu"):
        assert checks[name]["verdict"] == "ok", checks[name]

    argv = handoff(run_dir, "argv", str(path))
    assert argv.returncode == 0, argv.stderr
    for function in gpu_lookalike.functions:
        assert f"host={function}" in argv.stdout
    for other in (devices.e1000e(), devices.virtio_disk(), *devices.ich9_group()):
        assert f"host={other}" not in argv.stdout  # never the NIC, disk or chipset groups

    before = _drivers(gpu_lookalike)
    session = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(path)],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run_dir)}, cwd=CHECKOUT,
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    seen = _wait_for_line(session, "handoff: running")
    assert _drivers(gpu_lookalike) == ["vfio-pci", "vfio-pci"], seen
    session.send_signal(signal.SIGINT)
    _wait_for_line(session, "SIGINT: stopping")
    session.send_signal(signal.SIGINT)  # again: skip the guest's power-off grace
    out, _ = session.communicate(timeout=WAIT)
    assert session.returncode == 130, out
    assert _drivers(gpu_lookalike) == before == ["bochs-drm", "snd_hda_intel"]


def _wait_for_line(session: subprocess.Popen[str], text: str) -> list[str]:
    return wait_for_line(session, text, wait=WAIT)
