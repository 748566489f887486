"""The GPU hand-off as a session resource: acquire, QEMU pid, release, recovery first."""

import errno
import functools
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.plan import plan_handoff
from handoff.pci.resource import GpuHandoff
from handoff.pci.snapshot import take_snapshot
from handoff.profile import Passthrough, Profile, Vm
from handoff.session.memlock import UNLIMITED, check_memlock
from tests.unit.fakesysfs import SEED_STATE, FakeHost, group_1, seed_machine

A = PciAddress.parse
ON_VFIO = {
    "01:00.0": ("vfio-pci", "vfio-pci"),
    "01:00.1": ("vfio-pci", "vfio-pci"),
    "00:01.0": ("pcieport", "(null)"),
}
PROFILE = Profile(
    vm=Vm(name="gaming", memory_mib=8192),
    source=Path("gaming.toml"),
    passthrough=(Passthrough(address=A("01:00.0"), x_vga=True), Passthrough(address=A("01:00.1"))),
)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


def gpu(host: FakeHost, lines: list[str], profile: Profile = PROFILE) -> GpuHandoff:
    return GpuHandoff(
        profile,
        host.paths,
        writer=host,
        report=lines.append,
        memlock_check=functools.partial(check_memlock, getrlimit=lambda _: (UNLIMITED, UNLIMITED)),
    )


async def test_a_session_moves_the_group_and_returns_it_after_qemu(host: FakeHost) -> None:
    lines: list[str] = []
    resource = gpu(host, lines)
    await resource.acquire()
    assert group_1(host) == ON_VFIO
    assert lines[0].startswith("GPU hand-off plan:\nIOMMU group 1:")
    assert resource.memlock_bytes == 9 << 30
    host.add_process(31337, "qemu-system-x86", [host.paths.dev / "vfio" / "1"])
    resource.note_qemu_pid(31337)
    on_disk = jr.Journal.load(jr.journal_path(host.paths, "gaming"))
    assert on_disk.qemu_pid == 31337
    assert on_disk.qemu_start_time == 4242
    status = resource.status()
    assert status["groups"] == [1]
    assert [d["driver"] for d in status["devices"]] == ["vfio-pci", "vfio-pci"]
    host.end_process(31337)
    await resource.release()
    assert group_1(host) == SEED_STATE
    assert jr.list_journals(host.paths) == []
    assert "01:00.0 is back on amdgpu" in lines
    await resource.release()  # idempotent
    assert group_1(host) == SEED_STATE


async def test_the_group_lock_is_held_for_the_whole_session(host: FakeHost) -> None:
    resource = gpu(host, [])
    await resource.acquire()
    with pytest.raises(Exception, match="holds IOMMU group 1"):
        jr.lock_groups(host.paths, [1], "intruder")
    await resource.release()
    jr.lock_groups(host.paths, [1], "after").release()


async def test_a_profile_without_passthrough_changes_nothing(host: FakeHost) -> None:
    before = host.snapshot()
    plain = Profile(vm=Vm(name="demo", memory_mib=64), source=Path("demo.toml"))
    resource = gpu(host, [], plain)
    await resource.acquire()
    await resource.release()
    assert resource.memlock_bytes is None
    assert host.snapshot() == before


async def test_the_next_run_recovers_what_a_killed_session_left(host: FakeHost) -> None:
    dead = jr.Journal(
        path=jr.journal_path(host.paths, "gaming"),
        kind=jr.Kind.SESSION,
        owner="gaming",
        boot_id=FakeHost.BOOT_ID,
        supervisor_pid=999_999,
    )
    await Engine(host.paths, host).detach(
        plan_handoff([A("01:00.0")], take_snapshot(host.paths, host.module_loadable)), dead
    )
    dead.note_qemu(999_998, None)  # that QEMU is gone too
    lines: list[str] = []
    resource = gpu(host, lines)
    await resource.acquire()
    assert any(line.startswith("recovered from an earlier session") for line in lines)
    assert group_1(host) == ON_VFIO
    await resource.release()
    assert group_1(host) == SEED_STATE


async def test_a_failed_detach_leaves_no_lock_and_no_journal(host: FakeHost) -> None:
    host.fail(host.paths.sys / "bus/pci/drivers/amdgpu/unbind", errno.EBUSY)
    resource = gpu(host, [])
    with pytest.raises(Exception, match="EBUSY"):
        await resource.acquire()
    assert group_1(host) == SEED_STATE
    assert jr.list_journals(host.paths) == []
    jr.lock_groups(host.paths, [1], "after").release()
