"""The checked sysfs operations: every write is read back, and the engine composes them."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import BindError, JournalError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.snapshot import take_snapshot
from handoff.session.memlock import can_raise_hard, cap_effective
from handoff.session.rundir import LockHolder, read_holder
from tests.unit.fakesysfs import (
    SEED_STATE,
    FakeHost,
    gpu_plan,
    group_1,
    seed_machine,
    session_journal,
)

A = PciAddress.parse
CHECKOUT = Path(__file__).resolve().parents[2]


@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


def audio_dir(host: FakeHost) -> Path:
    return host.paths.sys / "bus/pci/devices/0000:01:00.1"


# --------------------------------------------------------------------------- read-backs


async def test_a_driver_override_write_the_kernel_ignored_is_caught_and_rolled_back(
    host: FakeHost,
) -> None:
    host.ignore_next(audio_dir(host) / "driver_override")
    journal = session_journal(host, "ops")
    with pytest.raises(BindError) as caught:
        await Engine(host.paths, host).detach(gpu_plan(host), journal)
    assert "01:00.1's driver_override reads (null) after writing vfio-pci" in caught.value.message
    # Caught before the unbind: the audio function never left its driver.
    assert ("sys/bus/pci/drivers/snd_hda_intel/unbind", "0000:01:00.1") not in host.writes
    assert group_1(host) == SEED_STATE
    assert not journal.path.exists()


async def test_an_unbind_that_left_the_device_on_its_driver_is_caught_and_rolled_back(
    host: FakeHost,
) -> None:
    host.ignore_next(host.paths.sys / "bus/pci/drivers/snd_hda_intel/unbind")
    with pytest.raises(BindError) as caught:
        await Engine(host.paths, host).detach(gpu_plan(host), session_journal(host, "ops"))
    assert "01:00.1 is still on snd_hda_intel after unbinding it" in caught.value.message
    assert not any(path == "sys/bus/pci/drivers_probe" for path, _ in host.writes)
    assert group_1(host) == SEED_STATE


async def test_a_lost_probe_on_return_falls_back_to_binding_the_original_driver(
    host: FakeHost,
) -> None:
    engine = Engine(host.paths, host)
    journal = session_journal(host, "ops")
    await engine.detach(gpu_plan(host), journal)
    host.ignore_next(host.paths.sys / "bus/pci/drivers_probe")
    notes = await engine.give_back(journal)
    assert notes == ["01:00.0 is back on amdgpu", "01:00.1 is back on snd_hda_intel"]
    assert ("sys/bus/pci/drivers/amdgpu/bind", "0000:01:00.0") in host.writes
    assert group_1(host) == SEED_STATE


async def test_an_original_driver_refusing_the_device_keeps_it_in_the_journal(
    host: FakeHost,
) -> None:
    engine = Engine(host.paths, host)
    journal = session_journal(host, "ops")
    await engine.detach(gpu_plan(host), journal)
    host.refuse_probe("amdgpu", "01:00.0")
    with pytest.raises(BindError) as caught:
        await engine.give_back(journal)
    assert "01:00.0 did not bind to amdgpu (it is on no driver)" in caught.value.message
    assert "EINVAL" in caught.value.message
    assert [d.address for d in jr.Journal.load(journal.path).devices] == ["0000:01:00.0"]
    assert host.state()["01:00.1"] == ("snd_hda_intel", "(null)")


# --------------------------------------------------------------------------- the snapshot


def test_the_snapshot_asks_only_whether_vfio_pci_could_load_and_changes_nothing(
    host: FakeHost,
) -> None:
    asked: list[str] = []

    def loadable(module: str) -> bool:
        asked.append(module)
        return False

    before = host.snapshot()
    snapshot = take_snapshot(host.paths, loadable)
    assert asked == ["vfio_pci"]
    assert not snapshot.vfio_available
    assert take_snapshot(host.paths, lambda _module: True).vfio_available
    assert host.writes == []
    assert host.modprobes == []
    assert host.snapshot() == before


# --------------------------------------------------------------------------- purity


def test_the_planner_and_the_model_import_no_edge_module() -> None:
    code = (
        "import sys, json, handoff.pci.plan, handoff.pci.model\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.startswith('handoff'))))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=CHECKOUT, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out) == [
        "handoff", "handoff.base", "handoff.base.errors", "handoff.pci", "handoff.pci.address",
        "handoff.pci.model", "handoff.pci.plan", "handoff.pci.rules",
    ]  # fmt: skip


# --------------------------------------------------------------------------- journal types


def test_journal_kinds_and_steps_round_trip_as_enums(host: FakeHost) -> None:
    journal = jr.Journal.begin(host.paths, "typed", jr.Kind.MANUAL, "handoff detach")
    journal.devices.append(
        jr.DeviceRecord("0000:01:00.0", "1002:67b0", 1, "amdgpu", "amdgpu", None)
    )
    journal.set_step("0000:01:00.0", jr.DeviceStep.ON_VFIO)
    on_disk = json.loads(journal.path.read_text())
    assert (on_disk["kind"], on_disk["devices"][0]["step"]) == ("manual", "on-vfio")
    assert journal.boot_id == FakeHost.BOOT_ID
    assert journal.supervisor_pid == os.getpid()
    loaded = jr.Journal.load(journal.path)
    assert loaded.kind is jr.Kind.MANUAL
    assert loaded.devices[0].step is jr.DeviceStep.ON_VFIO


def test_a_journal_with_an_unknown_step_is_refused_with_the_way_out(host: FakeHost) -> None:
    journal = jr.Journal.begin(host.paths, "odd", jr.Kind.SESSION, "odd")
    journal.devices.append(
        jr.DeviceRecord("0000:01:00.0", "1002:67b0", 1, "amdgpu", "amdgpu", None)
    )
    journal.save()
    data = json.loads(journal.path.read_text())
    data["devices"][0]["step"] = "half-way"
    journal.path.write_text(json.dumps(data))
    with pytest.raises(JournalError) as caught:
        jr.Journal.load(journal.path)
    assert "half-way" in caught.value.message
    assert "handoff attach" in (caught.value.fix or "")


# --------------------------------------------------------------------------- one lock format


def test_a_group_lock_records_its_holder_as_the_run_directory_lock_does(host: FakeHost) -> None:
    with jr.held_groups(host.paths, [1], "handoff detach"):
        lock = jr.locks_dir(host.paths) / "iommu-group-1.lock"
        assert lock.read_text() == f"{os.getpid()} handoff detach\n"
        assert read_holder(lock) == LockHolder(os.getpid(), "handoff detach")
        assert LockHolder(os.getpid(), "handoff detach").describe() == (
            f"pid {os.getpid()} (handoff detach)"
        )


# --------------------------------------------------------------------------- CapEff


@pytest.mark.parametrize(
    ("status", "euid", "expected"),
    [
        ("Name:\tx\nCapEff:\t000001ffffffffff\n", 1000, True),  # root's full set
        ("CapEff:\t0000000001000000\n", 1000, True),  # CAP_SYS_RESOURCE alone
        ("CapEff:\t0000000000000000\n", 0, False),  # root without the capability
        ("Name:\tx\n", 0, True),  # no CapEff line: euid decides
        ("Name:\tx\n", 1000, False),
        (None, 1000, False),  # unreadable
        ("CapEff:\tzz\n", 0, True),  # garbled: euid decides
    ],
)
def test_capeff_decides_whether_the_hard_memlock_limit_can_be_raised(
    status: str | None, euid: int, expected: bool
) -> None:
    assert can_raise_hard(status, euid) is expected


def test_capeff_is_parsed_as_a_hex_mask_of_capability_bits() -> None:
    assert cap_effective("CapEff:\t0000000000000001\n", 0) is True
    assert cap_effective("CapEff:\t0000000000000001\n", 24) is False
    assert cap_effective("CapPrm:\t0000000001000000\n", 24) is None



def test_the_display_s_writes_are_checked_ops_that_name_the_errno(tmp_path: Path) -> None:
    """reset, a platform driver's bind/unbind and a vtconsole's bind go through one
    checked write: an OSError becomes a SysfsWriteError with the errno and a fix."""
    from handoff.base.errors import SysfsWriteError
    from handoff.pci.ops import platform_bind, reset_function, vtconsole_bind

    class Refusing:
        def __init__(self) -> None:
            self.writes: list[tuple[Path, str]] = []

        def write(self, path: Path, value: str) -> None:
            self.writes.append((path, value))
            raise OSError(errno.EBUSY, "busy")

        def module_loadable(self, module: str) -> bool:
            return False

        def load_module(self, module: str) -> None:
            return None

    paths = HostPaths(sys=tmp_path)
    writer = Refusing()
    with pytest.raises(SysfsWriteError, match="EBUSY"):
        reset_function(paths, writer, PciAddress.parse("01:00.0"))
    with pytest.raises(SysfsWriteError, match="EBUSY"):
        platform_bind(paths, writer, "efi-framebuffer", "efi-framebuffer.0", bind=False)
    with pytest.raises(SysfsWriteError, match="EBUSY"):
        vtconsole_bind(paths, writer, "vtcon1", bind=True)
    assert [(str(p.relative_to(tmp_path)), v) for p, v in writer.writes] == [
        ("bus/pci/devices/0000:01:00.0/reset", "1"),
        ("bus/platform/drivers/efi-framebuffer/unbind", "efi-framebuffer.0"),
        ("class/vtconsole/vtcon1/bind", "1"),
    ]
