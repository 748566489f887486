"""Every preflight refusal changes nothing: the whole fake host is byte-for-byte the same.

These go through the session resource (`GpuHandoff.acquire`), the very
entry point `handoff run` uses, so nothing between the refusal and the
first write can slip a change in.
"""

import functools
from collections.abc import Callable
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.resource import GpuHandoff
from handoff.profile import Passthrough, Profile, Vm
from handoff.session.memlock import UNLIMITED, check_memlock
from tests.unit.fakesysfs import FakeHost, nvidia_gpu, seed_machine

A = PciAddress.parse


def profile(*addresses: str, allow: tuple[str, ...] = ()) -> Profile:
    return Profile(
        vm=Vm(name="gaming", memory_mib=64),
        source=Path("gaming.toml"),
        passthrough=tuple(
            Passthrough(address=A(a), allow_in_group=tuple(A(x) for x in allow))
            for a in addresses
        ),
    )


def unlimited(_: int) -> tuple[int, int]:
    return (UNLIMITED, UNLIMITED)


def gpu(prof: Profile, host: FakeHost) -> GpuHandoff:
    """The session resource against the fake host (memlock limits unlimited here)."""
    return GpuHandoff(
        prof, host.paths, writer=host,
        memlock_check=functools.partial(check_memlock, getrlimit=unlimited),
    )


def no_iommu(root: Path) -> tuple[FakeHost, Profile]:
    host = FakeHost(root)
    host.add_driver("amdgpu", ids={(0x1002, 0x67B0)}, kind="drm")
    host.add_driver("vfio-pci", "vfio_pci", kind="vfio", loaded=False)
    host.add_device("01:00.0", 0x1002, 0x67B0, 0x030000, group=None, driver="amdgpu")
    return host, profile("01:00.0")


def seed_group_13(root: Path) -> tuple[FakeHost, Profile]:
    return seed_machine(root), profile("00:1f.3")


def gpu_with_nic(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_device("05:00.0", 0x10DE, 0x1B80, 0x030000, group=20)
    host.add_device("05:00.1", 0x8086, 0x10D3, 0x020000, group=20, driver="e1000e")
    return host, profile("05:00.0")


def dead_gpu(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_device("06:00.0", 0x10DE, 0x1B80, 0x030000, group=21, header=0x7F)
    return host, profile("06:00.0")


def desktop_on_the_gpu(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_process(4242, "Xorg", [host.paths.dev / "dri" / "card0"])
    return host, profile("01:00.0", "01:00.1")


def audio_in_use(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_process(4343, "pipewire", [host.paths.dev / "snd" / "pcmC0D0p"])
    return host, profile("01:00.0")


def cuda_on_the_nvidia_card(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    nvidia_gpu(host, "05:00.0", 0, group=20)
    host.add_process(4444, "python3", [host.paths.dev / "nvidiactl", host.paths.dev / "nvidia0"])
    return host, profile("05:00.0")


def persistenced_on_the_nvidia_card(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    nvidia_gpu(host, "05:00.0", 0, group=20)
    host.add_process(811, "nvidia-persiste", [host.paths.dev / "nvidia0"])
    return host, profile("05:00.0")


def boot_gpu_with_console(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_vtconsole(bound=True)
    return host, profile("00:02.0")


def no_vfio_pci(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.available.clear()
    return host, profile("01:00.0")


def no_driver_override(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root)
    host.add_device("07:00.0", 0x1002, 0x67B0, 0x030000, group=22, driver="amdgpu",
                    override_supported=False)
    return host, profile("07:00.0")


def vfio_group_held(root: Path) -> tuple[FakeHost, Profile]:
    host = seed_machine(root, vfio_loaded=True)
    for address in ("0000:01:00.0", "0000:01:00.1"):
        dev = host.paths.sys / "bus/pci/devices" / address
        host.write(dev / "driver_override", "vfio-pci")
        driver = (dev / "driver").readlink().name
        host.write(host.paths.sys / "bus/pci/drivers" / driver / "unbind", address)
        host.write(host.paths.sys / "bus/pci/drivers_probe", address)
    host.add_process(5150, "qemu-system-x86", [host.paths.dev / "vfio" / "1"])
    return host, profile("01:00.0")


def a_bridge(root: Path) -> tuple[FakeHost, Profile]:
    return seed_machine(root), profile("00:01.0")


def a_missing_device(root: Path) -> tuple[FakeHost, Profile]:
    return seed_machine(root), profile("0a:00.0")


CASES: dict[str, tuple[Callable[[Path], tuple[FakeHost, Profile]], list[str]]] = {
    "iommu off": (no_iommu, ["IOMMU is off", "intel_iommu=on"]),
    "seed group 13": (seed_group_13, ["IOMMU group 13", "00:1f.2 SATA controller",
                                      "allow_in_group"]),
    "nic co-member": (gpu_with_nic, ["IOMMU group 20", "network controller"]),
    "dead header": (dead_gpu, ["header type 0xff", "D3cold", "power/control"]),
    "desktop holds card0": (desktop_on_the_gpu, ["pid 4242 (Xorg)", "/dri/card0", "kill 4242"]),
    "audio held": (audio_in_use, ["pid 4343 (pipewire)", "01:00.1 Audio device"]),
    "cuda holds nvidia0": (cuda_on_the_nvidia_card, ["pid 4444 (python3)", "/dev/nvidia0",
                                                     "kill 4444"]),
    "persistenced holds nvidia0": (persistenced_on_the_nvidia_card, [
        "pid 811 (nvidia-persiste)", "/dev/nvidia0", "systemctl stop nvidia-persistenced"]),
    "boot gpu + fbcon": (boot_gpu_with_console, ["boot_vga=1", "vtconsole"]),
    "no vfio-pci": (no_vfio_pci, ["vfio-pci driver is neither loaded nor loadable",
                                  "modprobe vfio-pci"]),
    "no driver_override": (no_driver_override, ["no driver_override", "new_id", "3.16"]),
    "vfio group held": (vfio_group_held, ["/dev/vfio/1", "pid 5150 (qemu-system-x86)"]),
    "bridge requested": (a_bridge, ["is a PCI bridge", "device behind the bridge"]),
    "missing device": (a_missing_device, ["0000:0a:00.0 does not exist", "handoff groups"]),
}


@pytest.mark.parametrize("case", list(CASES))
async def test_a_refusal_names_the_reason_and_the_fix_and_changes_nothing(
    tmp_path: Path, case: str
) -> None:
    build, expected = CASES[case]
    host, prof = build(tmp_path)
    before = host.snapshot()
    writes_before = list(host.writes)
    with pytest.raises(PreflightRefusedError) as caught:
        await gpu(prof, host).acquire()
    text = str(caught.value)
    for fragment in expected:
        assert fragment in text
    assert caught.value.fix
    assert host.snapshot() == before
    assert host.writes == writes_before
    assert host.modprobes == []


async def test_another_session_holding_the_group_refuses_and_changes_nothing(
    tmp_path: Path,
) -> None:
    host = seed_machine(tmp_path)
    with jr.held_groups(host.paths, [1], "handoff run other"):
        before = host.snapshot()
        with pytest.raises(PreflightRefusedError) as caught:
            await gpu(profile("01:00.0"), host).acquire()
        assert "handoff run other" in caught.value.message
        assert host.snapshot() == before


async def test_a_group_left_detached_by_hand_refuses_until_attached(tmp_path: Path) -> None:
    host = seed_machine(tmp_path)
    manual = jr.Journal(
        path=jr.journal_path(host.paths, "manual-1"),
        kind=jr.Kind.MANUAL,
        owner="handoff detach",
        boot_id=FakeHost.BOOT_ID,
        supervisor_pid=1,
    )
    manual.devices.append(
        jr.DeviceRecord("0000:01:00.0", "1002:67b0", 1, "amdgpu", "amdgpu", None)
    )
    manual.save()
    state = host.state()
    with pytest.raises(PreflightRefusedError) as caught:
        await gpu(profile("01:00.0"), host).acquire()
    assert "manual-1.json" in caught.value.message
    assert caught.value.fix is not None
    assert "handoff attach 01:00.0" in caught.value.fix
    assert host.state() == state


async def test_a_udev_worker_holding_card0_for_a_moment_is_waited_out(tmp_path: Path) -> None:
    host = seed_machine(tmp_path)
    host.add_process(272, "(udev-worker)", [host.paths.dev / "dri" / "card0"])

    async def udev_lets_go() -> None:
        await trio.sleep(0.3)
        host.end_process(272)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(udev_lets_go)
        resource = gpu(profile("01:00.0"), host)
        await resource.acquire()
    assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")
    await resource.release()
    assert host.state()["01:00.0"] == ("amdgpu", "(null)")


async def test_a_holder_of_nvidiactl_is_reported_as_a_warning_and_the_card_moves(
    tmp_path: Path,
) -> None:
    host = seed_machine(tmp_path)
    nvidia_gpu(host, "05:00.0", 0, group=20)
    host.add_process(811, "nvidia-persiste", [host.paths.dev / "nvidiactl"])
    lines: list[str] = []
    resource = GpuHandoff(
        profile("05:00.0"), host.paths, writer=host, report=lines.append,
        memlock_check=functools.partial(check_memlock, getrlimit=unlimited),
    )
    await resource.acquire()
    (plan,) = [line for line in lines if line.startswith("GPU hand-off plan:")]
    assert "warning: 05:00.0 VGA compatible controller runs on NVIDIA's driver" in plan
    assert "fix: stop nvidia-persistenced (`systemctl stop nvidia-persistenced`)" in plan
    assert host.state()["05:00.0"] == ("vfio-pci", "vfio-pci")
    await resource.release()
    assert host.state()["05:00.0"] == ("nvidia", "(null)")
