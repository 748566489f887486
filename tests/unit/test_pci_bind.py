"""Detach and return through the emulated driver core: the sequence, faults and rollback."""

import errno
import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import BindError, SysfsTimeoutError, SysfsWriteError
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.ops import CRASH_AFTER_SYSFS_ENV, PAUSE_AFTER_SYSFS_ENV, WriteFaults
from handoff.pci.recovery import recover
from tests.unit.fakesysfs import (
    SEED_STATE,
    FakeEntry,
    FakeHost,
    gpu_plan,
    group_1,
    seed_machine,
    session_journal,
)

A = PciAddress.parse


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


def new_journal(host: FakeHost, name: str = "test") -> jr.Journal:
    return session_journal(host, name)


def device_tree(host: FakeHost) -> dict[str, FakeEntry]:
    """The tree minus what loading vfio-pci adds for good (modules are never unloaded)."""
    return {
        k: v
        for k, v in host.snapshot().items()
        if "vfio" not in k and not k.startswith("run")
    }


async def test_the_gpu_group_goes_to_vfio_pci_and_comes_back_byte_for_byte(
    host: FakeHost,
) -> None:
    before = device_tree(host)
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    assert group_1(host) == {
        "01:00.0": ("vfio-pci", "vfio-pci"),
        "01:00.1": ("vfio-pci", "vfio-pci"),
        "00:01.0": ("pcieport", "(null)"),
    }
    assert (host.paths.dev / "vfio" / "1").exists()
    assert not (host.paths.dev / "dri" / "card0").exists()
    assert host.modprobes == ["vfio_pci"]
    notes = await engine.give_back(journal)
    assert group_1(host) == SEED_STATE
    assert device_tree(host) == before
    assert not journal.path.exists()
    assert notes == ["01:00.0 is back on amdgpu", "01:00.1 is back on snd_hda_intel"]


async def test_the_writes_follow_the_driver_override_sequence(host: FakeHost) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    await engine.give_back(journal)
    dev0 = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.0"
    dev1 = "sys/devices/pci0000:00/0000:00:01.0/0000:01:00.1"
    assert host.writes == [
        (f"{dev1}/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/snd_hda_intel/unbind", "0000:01:00.1"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.1"),
        (f"{dev0}/driver_override", "vfio-pci"),
        ("sys/bus/pci/drivers/amdgpu/unbind", "0000:01:00.0"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.0"),
        (f"{dev0}/driver_override", "\n"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.0"),
        ("sys/bus/pci/drivers/vfio-pci/unbind", "0000:01:00.1"),
        (f"{dev1}/driver_override", "\n"),
        ("sys/bus/pci/drivers_probe", "0000:01:00.1"),
    ]
    assert not any("new_id" in path or "remove_id" in path for path, _ in host.writes)


async def test_the_journal_records_original_drivers_before_anything_changes(
    host: FakeHost,
) -> None:
    journal = new_journal(host)
    await Engine(host.paths, host).detach(gpu_plan(host), journal)
    on_disk = jr.Journal.load(journal.path)
    records = [(d.address, d.original_driver, d.original_override, d.step) for d in on_disk.devices]
    assert records == [
        ("0000:01:00.1", "snd_hda_intel", None, jr.DeviceStep.ON_VFIO),
        ("0000:01:00.0", "amdgpu", None, jr.DeviceStep.ON_VFIO),
    ]
    assert on_disk.boot_id == FakeHost.BOOT_ID
    assert on_disk.devices[1].ids == "1002:67b0"
    assert on_disk.devices[1].group == 1


async def test_a_write_that_blocks_is_reported_and_the_rest_rolls_back(
    host: FakeHost,
) -> None:
    host.block(host.paths.sys / "bus/pci/drivers/amdgpu/unbind")
    journal = new_journal(host)
    engine = Engine(host.paths, host, write_timeout=2)
    with trio.fail_after(20), pytest.raises(SysfsTimeoutError) as caught:
        await engine.detach(gpu_plan(host), journal)
    assert "drivers/amdgpu/unbind" in caught.value.message
    assert "within 4 s" in caught.value.message  # 2 s for each of the 2 devices
    assert caught.value.fix is not None
    assert "handoff recover" in caught.value.fix
    assert host.state()["01:00.1"] == ("snd_hda_intel", "(null)")
    # The stuck device stays journaled: its write may still land.
    assert [d.address for d in jr.Journal.load(journal.path).devices] == ["0000:01:00.0"]


async def test_a_stuck_write_that_lands_late_is_finished_by_recover(host: FakeHost) -> None:
    host.block(host.paths.sys / "bus/pci/drivers/amdgpu/unbind", then_apply=True)
    journal = new_journal(host)
    with pytest.raises(SysfsTimeoutError):
        await Engine(host.paths, host, write_timeout=1).detach(gpu_plan(host), journal)
    writes = len(host.writes)
    host.release_blocked()
    await wait_for(lambda: host.state()["01:00.0"][0] is None)  # the unbind landed
    # ... and the abandoned thread made no further change (no drivers_probe).
    assert host.writes[writes:] == [("sys/bus/pci/drivers/amdgpu/unbind", "0000:01:00.0")]
    assert (await recover(Engine(host.paths, host))).ok
    assert group_1(host) == SEED_STATE


async def wait_for(check: Callable[[], bool]) -> None:
    with trio.fail_after(5):
        while not check():  # noqa: ASYNC110 - the fake's late write runs in a thread
            await trio.sleep(0.01)


async def test_ebusy_from_the_kernel_names_the_file_and_errno_and_rolls_back(
    host: FakeHost,
) -> None:
    host.fail(host.paths.sys / "bus/pci/drivers/amdgpu/unbind", errno.EBUSY)
    engine = Engine(host.paths, host)
    with pytest.raises(SysfsWriteError) as caught:
        await engine.detach(gpu_plan(host), new_journal(host))
    assert "drivers/amdgpu/unbind" in caught.value.message
    assert "EBUSY" in caught.value.message
    assert caught.value.fix is not None
    assert "close the programs" in caught.value.fix
    assert group_1(host) == SEED_STATE


async def test_eacces_says_to_run_as_root(host: FakeHost) -> None:
    override = host.paths.sys / "bus/pci/devices/0000:01:00.1/driver_override"
    host.fail(override, errno.EACCES)
    with pytest.raises(SysfsWriteError) as caught:
        await Engine(host.paths, host).detach(gpu_plan(host), new_journal(host))
    assert "EACCES" in caught.value.message
    assert caught.value.fix is not None
    assert "root" in caught.value.fix
    assert group_1(host) == SEED_STATE


async def test_a_device_that_vanishes_mid_detach_fails_and_the_rest_returns(
    host: FakeHost,
) -> None:
    host.vanish_on(host.paths.sys / "bus/pci/drivers/amdgpu/unbind", "01:00.0")
    journal = new_journal(host)
    with pytest.raises(SysfsWriteError) as caught:
        await Engine(host.paths, host).detach(gpu_plan(host), journal)
    assert "ENODEV" in caught.value.message
    state = host.state()
    assert "01:00.0" not in state
    assert state["01:00.1"] == ("snd_hda_intel", "(null)")
    assert not journal.path.exists()


async def test_a_lost_probe_falls_back_to_binding_vfio_pci_directly(host: FakeHost) -> None:
    host.ignore_next(host.paths.sys / "bus/pci/drivers_probe")
    journal = new_journal(host)
    await Engine(host.paths, host).detach(gpu_plan(host), journal)
    assert group_1(host)["01:00.1"] == ("vfio-pci", "vfio-pci")
    assert ("sys/bus/pci/drivers/vfio-pci/bind", "0000:01:00.1") in host.writes


async def test_vfio_pci_refusing_the_device_rolls_back_and_says_so(host: FakeHost) -> None:
    host.refuse_probe("vfio-pci", "01:00.0")
    with pytest.raises(BindError) as caught:
        await Engine(host.paths, host).detach(gpu_plan(host), new_journal(host))
    assert "01:00.0 did not bind to vfio-pci" in caught.value.message
    assert "EINVAL" in caught.value.message
    assert group_1(host) == SEED_STATE


async def test_cancellation_mid_detach_still_rolls_back(host: FakeHost) -> None:
    host.block(host.paths.sys / "bus/pci/drivers/amdgpu/unbind")
    journal = new_journal(host)
    engine = Engine(host.paths, host, write_timeout=30)
    with trio.move_on_after(1) as scope:
        await engine.detach(gpu_plan(host), journal)
    assert scope.cancelled_caught
    assert host.state()["01:00.1"] == ("snd_hda_intel", "(null)")
    # 01:00.0 was cancelled inside its unbind: journaled for `handoff recover`.
    assert [d.address for d in jr.Journal.load(journal.path).devices] == ["0000:01:00.0"]
    host.release_blocked()
    assert (await recover(Engine(host.paths, host))).ok
    assert group_1(host) == SEED_STATE


async def test_a_failed_return_keeps_the_device_in_the_journal_for_recover(
    host: FakeHost,
) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    host.fail(host.paths.sys / "bus/pci/drivers/vfio-pci/unbind", errno.EBUSY)
    with pytest.raises(BindError) as caught:
        await engine.give_back(journal)
    assert "0000:01:00.0" in caught.value.message
    assert "EBUSY" in caught.value.message
    assert caught.value.fix is not None
    assert "handoff recover" in caught.value.fix
    assert [d.address for d in jr.Journal.load(journal.path).devices] == ["0000:01:00.0"]
    assert host.state()["01:00.1"] == ("snd_hda_intel", "(null)")
    await engine.give_back(jr.Journal.load(journal.path))
    assert group_1(host) == SEED_STATE


async def test_a_process_holding_dev_vfio_blocks_the_return_and_is_named(
    host: FakeHost,
) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    host.add_process(5150, "qemu-system-x86", [host.paths.dev / "vfio" / "1"])
    with pytest.raises(BindError) as caught:
        await engine.give_back(journal)
    assert "pid 5150 (qemu-system-x86)" in caught.value.message
    assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")
    host.end_process(5150)
    await engine.give_back(jr.Journal.load(journal.path))
    assert group_1(host) == SEED_STATE


async def test_dev_vfio_is_chowned_for_the_qemu_user_and_restored(host: FakeHost) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal, vfio_owner=(65534, 65534))
    node = host.paths.dev / "vfio" / "1"
    assert (node.stat().st_uid, node.stat().st_gid) == (65534, 65534)
    assert [(n.uid, n.mode) for n in jr.Journal.load(journal.path).nodes] == [(0, 0o600)]
    host.writes.clear()
    host.fail(host.paths.sys / "bus/pci/drivers/vfio-pci/unbind", errno.EBUSY)
    with pytest.raises(BindError):
        await engine.give_back(journal)
    assert node.stat().st_uid == 0  # ownership restored before the devices leave vfio-pci


async def test_a_device_already_on_vfio_pci_stays_there_on_return(host: FakeHost) -> None:
    dev1 = host.paths.sys / "bus/pci/devices/0000:01:00.1"
    host.write(dev1 / "driver_override", "vfio-pci")
    host.load_module("vfio_pci")
    host.write(host.paths.sys / "bus/pci/drivers/snd_hda_intel/unbind", "0000:01:00.1")
    host.write(host.paths.sys / "bus/pci/drivers_probe", "0000:01:00.1")
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    await engine.give_back(journal)
    assert group_1(host)["01:00.1"] == ("vfio-pci", "vfio-pci")
    assert group_1(host)["01:00.0"] == ("amdgpu", "(null)")


async def test_a_device_rebound_elsewhere_meanwhile_is_left_alone(host: FakeHost) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    # Someone moves 01:00.1 to another driver behind handoff's back.
    host.add_driver("snd_other", ids=set(), kind="plain")
    dev1 = host.paths.sys / "bus/pci/devices/0000:01:00.1"
    host.write(host.paths.sys / "bus/pci/drivers/vfio-pci/unbind", "0000:01:00.1")
    host.write(dev1 / "driver_override", "snd_other")
    host.write(host.paths.sys / "bus/pci/drivers_probe", "0000:01:00.1")
    with pytest.raises(BindError) as caught:
        await engine.give_back(journal)
    assert "01:00.1 is on snd_other" in caught.value.message
    assert host.state()["01:00.0"] == ("amdgpu", "(null)")


# --------------------------------------------------------------------------- test-only fault hook

# Four writes by the real KernelWriter to plain files, in a process of its own.
FOUR_WRITES = (
    "import sys; from pathlib import Path; from handoff.pci.ops import KernelWriter\n"
    "for n in range(1, 5): KernelWriter().write(Path(sys.argv[1]) / str(n), str(n))\n"
)
CHECKOUT = Path(__file__).resolve().parents[2]


def four_writes(tmp_path: Path, **hooks: str) -> subprocess.Popen[bytes]:
    for n in range(1, 5):
        (tmp_path / str(n)).write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOFF_TEST_")}
    return subprocess.Popen(
        [sys.executable, "-c", FOUR_WRITES, str(tmp_path)], env={**env, **hooks}, cwd=CHECKOUT
    )


def written(tmp_path: Path) -> list[str]:
    return [(tmp_path / str(n)).read_text() for n in range(1, 5)]


@pytest.mark.parametrize("writes", [1, 3])
def test_the_crash_hook_sigkills_right_after_the_nth_kernel_write(
    tmp_path: Path, writes: int
) -> None:
    process = four_writes(tmp_path, **{CRASH_AFTER_SYSFS_ENV: str(writes)})
    assert process.wait(timeout=60) == -signal.SIGKILL
    assert written(tmp_path) == [str(n) if n <= writes else "" for n in range(1, 5)]


def test_the_pause_hook_sigstops_after_the_nth_write_and_sigcont_resumes(
    tmp_path: Path,
) -> None:
    process = four_writes(tmp_path, **{PAUSE_AFTER_SYSFS_ENV: "2"})
    try:
        _, status = os.waitpid(process.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status)
        assert os.WSTOPSIG(status) == signal.SIGSTOP
        assert written(tmp_path) == ["1", "2", "", ""]
        os.kill(process.pid, signal.SIGCONT)
        assert process.wait(timeout=60) == 0
        assert written(tmp_path) == ["1", "2", "3", "4"]
    finally:
        process.kill()
        process.wait()


def test_without_the_hooks_every_write_happens(tmp_path: Path) -> None:
    process = four_writes(tmp_path)
    assert process.wait(timeout=60) == 0
    assert written(tmp_path) == ["1", "2", "3", "4"]


def test_the_fault_hooks_are_read_from_the_environment_and_decide_purely() -> None:
    assert WriteFaults.from_environment({}) == WriteFaults(None, None)
    faults = WriteFaults.from_environment({CRASH_AFTER_SYSFS_ENV: "3", PAUSE_AFTER_SYSFS_ENV: "1"})
    assert [faults.signal_after(n) for n in range(1, 5)] == [
        signal.SIGSTOP, None, signal.SIGKILL, signal.SIGKILL,
    ]  # fmt: skip
