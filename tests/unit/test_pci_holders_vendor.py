"""NVIDIA's and AMD's compute drivers: who holds the card outside DRM/fbdev/ALSA.

Fake sysfs/procfs only: the NVIDIA driver and ROCm cannot run in the testbed
(QEMU has no such card). The tree mirrors what they show: NVIDIA's
/proc/driver/nvidia/gpus/ADDR/information ("Device Minor: \\t N"), /dev/nvidiaN
on char 195:N, /dev/nvidiactl 195:255, /dev/nvidia-modeset 195:254,
/dev/nvidia-uvm and amdgpu's /dev/kfd on dynamic majors (/proc/devices, and
/sys/class/kfd/kfd/dev for kfd).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from handoff.base.errors import PreflightRefusedError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.holders import char_majors, nodes_of, nvidia_minor, vendor_nodes_of
from handoff.pci.plan import HostSnapshot, plan_handoff
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import read_device
from tests.host_requirements import is_root, requires
from tests.unit.fakesysfs import (
    KFD_MAJOR,
    NVIDIA_MAJOR,
    NVIDIA_UVM_MAJOR,
    FakeHost,
    nvidia_gpu,
    rocm_kfd_files,
    seed_machine,
    write_proc_devices,
)

A = PciAddress.parse
PERSISTENCED = "nvidia-persiste"  # /proc/PID/comm keeps 15 of "nvidia-persistenced"
needs_mknod = requires(is_root(), "mknod of a character device needs root")


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    """The seed machine plus two NVIDIA cards: 05:00.0 (minor 0) and the host's 06:00.0 (1)."""
    h = seed_machine(tmp_path)
    nvidia_gpu(h, "05:00.0", 0, group=20)
    nvidia_gpu(h, "06:00.0", 1, group=21)
    return h


def snap(host: FakeHost) -> HostSnapshot:
    return take_snapshot(host.paths, host.module_loadable)


def refusal(host: FakeHost, address: str) -> PreflightRefusedError:
    with pytest.raises(PreflightRefusedError) as caught:
        plan_handoff([A(address)], snap(host))
    return caught.value


# ---------------------------------------------------------------- reading the layout


def test_each_nvidia_card_is_watched_through_its_own_dev_nvidia_minor(host: FakeHost) -> None:
    for address, minor in (("05:00.0", 0), ("06:00.0", 1)):
        device = read_device(host.paths, A(address))
        assert nvidia_minor(host.paths, device) == minor
        watched = {n.path: n.rdev for n in nodes_of(host.paths, device)}
        assert watched == {str(host.paths.dev / f"nvidia{minor}"): os.makedev(NVIDIA_MAJOR, minor)}


def test_the_shared_nodes_carry_their_fixed_and_dynamic_device_numbers(host: FakeHost) -> None:
    nvidia = {n.path: n.rdev for n in vendor_nodes_of(host.paths, read_device(host.paths,
                                                                            A("05:00.0")))}
    dev = host.paths.dev
    assert nvidia == {
        str(dev / "nvidiactl"): os.makedev(NVIDIA_MAJOR, 255),
        str(dev / "nvidia-modeset"): os.makedev(NVIDIA_MAJOR, 254),
        str(dev / "nvidia-uvm"): os.makedev(NVIDIA_UVM_MAJOR, 0),
    }
    rocm_kfd_files(host.paths)
    amd = vendor_nodes_of(host.paths, read_device(host.paths, A("01:00.0")))
    assert [(n.path, n.rdev) for n in amd] == [(str(dev / "kfd"), os.makedev(KFD_MAJOR, 0))]


def test_other_drivers_have_no_nvidia_node_and_no_shared_node(host: FakeHost) -> None:
    for address in ("00:02.0", "01:00.1", "03:00.0"):  # i915, snd_hda_intel, r8169
        device = read_device(host.paths, A(address))
        assert nvidia_minor(host.paths, device) is None
        assert vendor_nodes_of(host.paths, device) == ()
        assert not any("nvidia" in n.path for n in nodes_of(host.paths, device))


def test_proc_devices_is_read_for_character_majors_only(tmp_path: Path) -> None:
    paths = HostPaths(sys=tmp_path / "sys", proc=tmp_path / "proc", dev=tmp_path / "dev")
    paths.proc.mkdir()
    write_proc_devices(paths, {"kfd": KFD_MAJOR, "nvidia-uvm": NVIDIA_UVM_MAJOR})
    majors = char_majors(paths)
    assert majors["kfd"] == KFD_MAJOR
    assert majors["nvidia-uvm"] == NVIDIA_UVM_MAJOR
    assert majors["drm"] == 226
    assert "loop" not in majors  # block devices
    assert "sd" not in majors


def test_this_hosts_real_proc_devices_parses() -> None:
    majors = char_majors(HostPaths())
    assert majors["mem"] == 1  # fixed by include/uapi/linux/major.h
    assert majors["misc"] == 10


# ---------------------------------------------------------------- refusals: the card's own node


def test_a_cuda_program_holding_dev_nvidia0_refuses_naming_it(host: FakeHost) -> None:
    host.add_process(4444, "python3", [host.paths.dev / "nvidia0"])
    error = refusal(host, "05:00.0")
    assert "05:00.0 VGA compatible controller is in use on the host" in error.message
    assert "pid 4444 (python3) has " + str(host.paths.dev / "nvidia0") in error.message
    assert error.fix is not None
    assert "`kill 4444`" in error.fix


def test_a_program_on_the_hosts_other_nvidia_card_does_not_refuse(host: FakeHost) -> None:
    host.add_process(4444, "python3", [host.paths.dev / "nvidia1"])
    plan = plan_handoff([A("05:00.0")], snap(host))
    assert [d.address.short for d in plan.detach_order] == ["05:00.0"]
    assert plan.warnings == ()


def test_nvidia_persistenced_holding_the_card_refuses_with_its_systemctl_stop(
    host: FakeHost,
) -> None:
    host.add_process(811, PERSISTENCED, [host.paths.dev / "nvidiactl",
                                         host.paths.dev / "nvidia0"])
    error = refusal(host, "05:00.0")
    assert f"pid 811 ({PERSISTENCED})" in error.message
    assert error.fix is not None
    assert error.fix.startswith("stop nvidia-persistenced (`systemctl stop nvidia-persistenced`)")


# ---------------------------------------------------------------- warnings: driver-wide nodes


def test_holders_of_the_shared_nvidia_nodes_warn_with_the_fix_and_the_plan_stands(
    host: FakeHost,
) -> None:
    dev = host.paths.dev
    host.add_process(811, PERSISTENCED, [dev / "nvidiactl"])
    host.add_process(4444, "python3", [dev / "nvidiactl", dev / "nvidia-uvm"])
    host.add_process(4445, "kwin_wayland", [dev / "nvidia-modeset"])
    plan = plan_handoff([A("05:00.0")], snap(host))
    (warning,) = plan.warnings
    assert "05:00.0 VGA compatible controller runs on NVIDIA's driver" in warning.reason
    for who in (f"pid 811 ({PERSISTENCED}) has {dev}/nvidiactl",
                f"pid 4444 (python3) has {dev}/nvidiactl",
                f"pid 4444 (python3) has {dev}/nvidia-uvm",
                f"pid 4445 (kwin_wayland) has {dev}/nvidia-modeset"):
        assert who in warning.reason
    assert "non-zero usage count" in warning.reason
    assert warning.fix == (
        "stop nvidia-persistenced (`systemctl stop nvidia-persistenced`) and close the other "
        "programs, CUDA jobs first (or stop them: `kill 4444 4445`), before the hand-off"
    )
    text = plan.render()
    assert f"warning: {warning.reason}" in text
    assert f"  fix: {warning.fix}" in text


def test_a_rocm_program_holding_dev_kfd_warns_for_an_amdgpu_card_only(host: FakeHost) -> None:
    rocm_kfd_files(host.paths)
    host.add_process(5555, "rocminfo", [host.paths.dev / "kfd"])
    (warning,) = plan_handoff([A("01:00.0")], snap(host)).warnings
    assert "01:00.0 VGA compatible controller runs on amdgpu (ROCm)" in warning.reason
    assert f"pid 5555 (rocminfo) has {host.paths.dev}/kfd" in warning.reason
    assert warning.fix == (
        "close the programs, ROCm jobs first (or stop them: `kill 5555`), before the hand-off"
    )
    assert plan_handoff([A("05:00.0")], snap(host)).warnings == ()  # an NVIDIA card: not kfd


def test_nobody_on_the_shared_nodes_means_no_warning(host: FakeHost) -> None:
    rocm_kfd_files(host.paths)
    assert plan_handoff([A("05:00.0")], snap(host)).warnings == ()
    assert plan_handoff([A("01:00.0")], snap(host)).warnings == ()
    assert "warning:" not in plan_handoff([A("05:00.0")], snap(host)).render()


# ---------------------------------------------------------------- matched by device number


def _char_device(path: Path, major: int, minor: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
    return path


@needs_mknod
def test_a_holder_in_a_container_is_found_by_device_number(host: FakeHost) -> None:
    """A containerised CUDA job's fds name its own /dev: only st_rdev matches them."""
    rocm_kfd_files(host.paths)
    jail = host.root / "container" / "dev"
    card = _char_device(jail / "nvidia0", NVIDIA_MAJOR, 0)
    uvm = _char_device(jail / "nvidia-uvm", NVIDIA_UVM_MAJOR, 0)
    kfd = _char_device(jail / "kfd", KFD_MAJOR, 0)
    host.add_process(6001, "python3", [uvm])
    host.add_process(6002, "rocminfo", [kfd])
    (nvidia_warning,) = plan_handoff([A("05:00.0")], snap(host)).warnings
    assert f"pid 6001 (python3) has {host.paths.dev}/nvidia-uvm" in nvidia_warning.reason
    (amd_warning,) = plan_handoff([A("01:00.0")], snap(host)).warnings
    assert f"pid 6002 (rocminfo) has {host.paths.dev}/kfd" in amd_warning.reason
    host.add_process(6003, "python3", [card])
    assert "pid 6003 (python3)" in refusal(host, "05:00.0").message
    plan_handoff([A("06:00.0")], snap(host))  # 195:0 is not the host card's 195:1
