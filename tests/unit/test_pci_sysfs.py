"""Reading the host: devices, drivers, groups and nodes, as sysfs lays them out."""

from pathlib import Path

import pytest

from handoff.base.errors import PciError
from handoff.journal import read_boot_id
from handoff.pci.address import PciAddress
from handoff.pci.holders import find_holders, nodes_of
from handoff.pci.model import Holder
from handoff.pci.sysfs import (
    framebuffer_console_bound,
    read_device,
    read_devices,
    read_iommu,
)
from tests.unit.fakesysfs import FakeHost, seed_machine

A = PciAddress.parse


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return seed_machine(tmp_path)


def test_a_gpu_reads_back_its_class_ids_driver_group_and_nodes(host: FakeHost) -> None:
    gpu = read_device(host.paths, A("01:00.0"))
    assert gpu.class_name == "VGA compatible controller"
    assert gpu.ids == "1002:67b0"
    assert gpu.driver == "amdgpu"
    assert gpu.driver_module == "amdgpu"
    assert gpu.driver_override is None  # the kernel prints "(null)"
    assert gpu.driver_override_supported
    assert gpu.iommu_group == 1
    assert gpu.header_kind == 0
    assert not gpu.is_bridge
    assert not gpu.is_dead
    assert gpu.drm_nodes == ("card0", "renderD128")
    assert gpu.fb_nodes == ("fb0",)
    assert gpu.is_vga
    assert not gpu.boot_vga


def test_the_boot_gpu_and_the_audio_function_and_the_nic_show_their_own_traits(
    host: FakeHost,
) -> None:
    assert read_device(host.paths, A("00:02.0")).boot_vga
    assert read_device(host.paths, A("01:00.1")).sound_cards == (0,)
    assert read_device(host.paths, A("03:00.0")).netdevs == ("eth0",)


def test_a_bridge_is_recognised_by_its_header_type(host: FakeHost) -> None:
    bridge = read_device(host.paths, A("00:01.0"))
    assert bridge.is_bridge
    assert bridge.class_name == "PCI bridge"


def test_the_iommu_groups_are_those_of_the_seed_guide(host: FakeHost) -> None:
    iommu = read_iommu(host.paths)
    assert iommu.enabled
    assert iommu.groups[1] == (A("00:01.0"), A("01:00.0"), A("01:00.1"))
    assert iommu.groups[13] == (A("00:1f.0"), A("00:1f.2"), A("00:1f.3"))
    assert len(read_devices(host.paths)) == 11


def test_without_iommu_groups_the_iommu_is_off(tmp_path: Path) -> None:
    bare = FakeHost(tmp_path)
    bare.add_driver("e1000e", ids={(0x8086, 0x10D3)}, kind="net")
    bare.add_device("00:02.0", 0x8086, 0x10D3, 0x020000, group=None, driver="e1000e")
    assert not read_iommu(bare.paths).enabled
    assert read_device(bare.paths, A("00:02.0")).iommu_group is None


def test_a_dead_device_reads_all_ones_in_config_space(tmp_path: Path) -> None:
    bare = FakeHost(tmp_path)
    bare.add_device("00:05.0", 0x1002, 0x67B0, 0x030000, group=3, header=0x7F)
    dead = read_device(bare.paths, A("00:05.0"))
    assert dead.header_type == 0xFF
    assert dead.is_dead


def test_a_missing_device_is_an_error_with_a_fix(host: FakeHost) -> None:
    with pytest.raises(PciError) as caught:
        read_device(host.paths, A("09:00.0"))
    assert "09:00.0" in caught.value.message
    assert caught.value.fix


def test_holders_are_found_by_scanning_proc_fds(host: FakeHost) -> None:
    host.add_process(4242, "Xorg", [host.paths.dev / "dri" / "card0"])
    host.add_process(4343, "pipewire", [host.paths.dev / "snd" / "pcmC0D0p"])
    host.add_process(4444, "bash", [host.paths.dev / "dri" / "card1"])  # the other GPU
    gpu = holders_of(host, A("01:00.0"))
    audio = holders_of(host, A("01:00.1"))
    assert [(h.pid, h.command) for h in gpu] == [(4242, "Xorg")]
    assert [(h.pid, h.command) for h in audio] == [(4343, "pipewire")]


def holders_of(host: FakeHost, address: PciAddress) -> list[Holder]:
    nodes = nodes_of(host.paths, read_device(host.paths, address))
    return [h for found in find_holders(host.paths, nodes).values() for h in found]


def test_the_framebuffer_console_and_boot_id_are_read(host: FakeHost) -> None:
    assert not framebuffer_console_bound(host.paths)
    host.add_vtconsole(bound=True)
    assert framebuffer_console_bound(host.paths)
    assert read_boot_id(host.paths) == FakeHost.BOOT_ID
