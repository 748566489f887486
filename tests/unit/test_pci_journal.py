"""The journal: atomic, write-ahead, and enough to finish any interrupted hand-off."""

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import JournalError, PreflightRefusedError
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.recovery import recover
from tests.crash import SimulatedCrash, crash_after
from tests.unit.fakesysfs import (
    SEED_STATE,
    FakeHost,
    gpu_plan,
    group_1,
    seed_machine,
    session_journal,
)

A = PciAddress.parse


GPU_RECORD = jr.DeviceRecord("0000:01:00.0", "1002:67b0", 1, "amdgpu", "amdgpu", None)


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


def new_journal(host: FakeHost, name: str = "gaming") -> jr.Journal:
    return session_journal(host, name)


async def full_cycle(host: FakeHost) -> int:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    journal.note_qemu(999_999, None)
    await engine.give_back(journal)
    return journal.writes


def test_a_saved_journal_reads_back_equal(host: FakeHost) -> None:
    journal = new_journal(host)
    journal.devices.append(GPU_RECORD)
    journal.save()
    loaded = jr.Journal.load(journal.path)
    assert loaded.devices == journal.devices
    assert loaded.boot_id == FakeHost.BOOT_ID
    assert oct(journal.path.stat().st_mode & 0o777) == "0o600"
    assert [p.name for p in journal.path.parent.iterdir()] == ["gaming.json"]  # no temp left


def test_a_corrupt_journal_is_an_error_that_says_what_to_do(host: FakeHost) -> None:
    path = jr.journal_path(host.paths, "broken")
    path.parent.mkdir(parents=True)
    path.write_text("{not json")
    with pytest.raises(JournalError) as caught:
        jr.Journal.load(path)
    assert str(path) in caught.value.message
    assert caught.value.fix is not None
    assert "handoff attach" in caught.value.fix


async def test_every_write_of_a_full_cycle_is_counted(host: FakeHost) -> None:
    # 1 (records) + 2 per device detaching + 1 (QEMU pid) + 1 per device returned.
    assert await full_cycle(host) == 1 + 2 * 2 + 1 + 2


@pytest.mark.parametrize("writes", range(1, 9))
async def test_recover_finishes_a_hand_off_killed_after_any_journal_write(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    crash_after(monkeypatch, jr.Journal, "save", writes)
    with pytest.raises(SimulatedCrash):
        await full_cycle(host)
    monkeypatch.undo()
    report = await recover(Engine(host.paths, host))
    assert report.ok, report.lines()
    assert group_1(host) == SEED_STATE
    assert jr.list_journals(host.paths) == []
    assert not (host.paths.dev / "vfio" / "1").exists()


@pytest.mark.parametrize("writes", range(1, 13))
async def test_recover_finishes_a_hand_off_killed_between_any_two_sysfs_writes(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch, writes: int
) -> None:
    crash_after(monkeypatch, FakeHost, "write", writes)
    with pytest.raises(SimulatedCrash):
        await full_cycle(host)
    monkeypatch.undo()
    report = await recover(Engine(host.paths, host))
    assert report.ok, report.lines()
    assert group_1(host) == SEED_STATE
    assert jr.list_journals(host.paths) == []


async def test_recover_leaves_devices_alone_while_the_recorded_qemu_runs(
    host: FakeHost, monkeypatch: pytest.MonkeyPatch
) -> None:
    host.add_process(4321, "qemu-system-x86", [])
    crash_after(monkeypatch, jr.Journal, "save", 6)  # right after the QEMU pid is journaled
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    with pytest.raises(SimulatedCrash):
        journal.note_qemu(4321, jr.process_start_time(host.paths, 4321))
    monkeypatch.undo()
    report = await recover(engine)
    assert not report.ok
    assert "pid 4321" in report.lines()[0]
    assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")
    host.end_process(4321)
    assert (await recover(engine)).ok
    assert group_1(host) == SEED_STATE


async def test_a_recycled_pid_is_not_mistaken_for_the_recorded_qemu(host: FakeHost) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    await engine.detach(gpu_plan(host), journal)
    host.add_process(4321, "bash", [])  # same pid, other start time than recorded
    journal.note_qemu(4321, 1)
    assert (await recover(engine)).ok
    assert group_1(host) == SEED_STATE


async def test_a_journal_from_an_earlier_boot_is_discarded_with_a_message(
    host: FakeHost,
) -> None:
    journal = new_journal(host)
    journal.boot_id = "00000000-0000-0000-0000-000000000000"
    journal.devices.append(GPU_RECORD)
    journal.save()
    report = await recover(Engine(host.paths, host))
    assert report.ok
    assert "earlier boot" in report.lines()[0]
    assert jr.list_journals(host.paths) == []
    assert host.writes == []


async def test_recover_leaves_a_journal_whose_groups_a_live_handoff_holds(
    host: FakeHost,
) -> None:
    journal = new_journal(host)
    engine = Engine(host.paths, host)
    with jr.held_groups(host.paths, [1], "handoff run gaming"):
        await engine.detach(gpu_plan(host), journal)
        report = await recover(engine)
        assert not report.ok
        assert "handoff run gaming" in report.lines()[0]
        assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")
    assert (await recover(engine)).ok


def test_a_held_group_lock_refuses_naming_the_holder(host: FakeHost) -> None:
    with jr.held_groups(host.paths, [1], "handoff run gaming"):
        with pytest.raises(PreflightRefusedError) as caught:
            jr.lock_groups(host.paths, [1, 13], "handoff detach")
        assert f"pid {os.getpid()} (handoff run gaming)" in caught.value.message
        assert "IOMMU group 1" in caught.value.message
    jr.lock_groups(host.paths, [1, 13], "handoff detach").release()


def test_the_on_disk_format_is_plain_json_a_person_can_read(host: FakeHost) -> None:
    journal = new_journal(host)
    journal.devices.append(GPU_RECORD)
    journal.note_qemu(1234, 99)
    data = json.loads(journal.path.read_text())
    assert data["version"] == 1
    assert data["qemu_pid"] == 1234
    assert data["devices"][0]["original_driver"] == "amdgpu"
