"""`handoff recover` with a live group's journal left by a SIGKILLed supervisor (fake sysfs:
the group open/closed by a QEMU is a /proc fd the fake host fakes; the real kernel's
version is in tests/qemu/test_live_qmp.py's SIGKILL test)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.journal.recover import RecoveryReport
from handoff.journal.recover import recover as recover_journals
from handoff.live.recovery import live_recoverer
from handoff.live.state import LiveStep
from handoff.pci.address import PciAddress
from handoff.pci.engine import Engine
from handoff.pci.plan import plan_handoff
from handoff.pci.recovery import gpu_recoverer
from handoff.pci.snapshot import take_snapshot
from handoff.pci.sysfs import vfio_group_node
from tests.unit.fakesysfs import FakeHost, seed_machine, session_journal

QEMU = 4321

async def recover(engine: Engine) -> RecoveryReport:
    """`handoff recover`'s device part: the GPU's and the live groups' recoverers."""
    return await recover_journals(engine.paths, [gpu_recoverer(engine), live_recoverer(engine)])



@pytest.fixture
def host(tmp_path: Path) -> Iterator[FakeHost]:
    fake = seed_machine(tmp_path)
    yield fake
    fake.release_blocked()


async def on_vfio(host: FakeHost, step: LiveStep | None, *, qemu_holds: bool) -> Engine:
    """The group on vfio-pci with a journal that names a running QEMU, as a kill leaves it."""
    engine = Engine(host.paths, host)
    journal = session_journal(host, "gaming-live")
    journal.live = step.value if step is not None else None
    plan = plan_handoff([PciAddress.parse("01:00.0")],
                        take_snapshot(host.paths, host.module_loadable))
    await engine.detach(plan, journal)
    files = [vfio_group_node(host.paths, 1)] if qemu_holds else []
    host.add_process(QEMU, "qemu-system-x86", files)
    journal.note_qemu(QEMU, jr.process_start_time(host.paths, QEMU))
    return engine


@pytest.mark.parametrize("step", [LiveStep.RELEASING, LiveStep.ATTACHING, LiveStep.IN_GUEST])
async def test_a_live_group_qemu_still_holds_stays_in_the_guest(
    host: FakeHost, step: LiveStep
) -> None:
    engine = await on_vfio(host, step, qemu_holds=True)
    report = await recover(engine)
    assert not report.ok
    assert f"pid {QEMU}" in report.lines()[0]
    assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")


@pytest.mark.parametrize("step", [LiveStep.RELEASING, LiveStep.ATTACHING])
async def test_a_live_group_qemu_let_go_of_goes_to_the_host(
    host: FakeHost, step: LiveStep
) -> None:
    engine = await on_vfio(host, step, qemu_holds=False)
    report = await recover(engine)
    assert report.ok, report.lines()
    assert host.state()["01:00.0"][0] == "amdgpu"
    assert not jr.list_journals(host.paths)


async def test_a_live_group_goes_to_the_host_once_qemu_is_gone(host: FakeHost) -> None:
    engine = await on_vfio(host, LiveStep.RELEASING, qemu_holds=True)
    host.end_process(QEMU)
    assert (await recover(engine)).ok
    assert host.state()["01:00.0"][0] == "amdgpu"


async def test_a_boot_time_group_stays_on_vfio_while_its_qemu_runs(host: FakeHost) -> None:
    engine = await on_vfio(host, None, qemu_holds=False)
    assert not (await recover(engine)).ok
    assert host.state()["01:00.0"] == ("vfio-pci", "vfio-pci")
