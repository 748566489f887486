"""Live GPU hand-off against the real QEMU (TCG, QMP on a real socket), no IOMMU on this host.

An emulated ``edu`` device stands in for each vfio-pci function, cold-plugged
where the session plan's argv puts the live group (its root port, ids,
functions), so every QMP step is QEMU's own: device_del, DEVICE_DELETED,
device_add, query-pci. No guest OS runs (firmware only), which is what
makes the two hotplug mechanisms differ: native PCIe hotplug answers
device_del in about 0.1 s, q35's ACPI hotplug never does (it asks the guest
OS, and there is none): the bounded wait and the refusal.

The host side (sysfs) is the fake tree of tests/unit (fake sysfs: this host
has no IOMMU and no vfio-pci; tests/testbed does it on a real kernel).
"""

from __future__ import annotations

import contextlib
import dataclasses
import socket
from collections.abc import AsyncIterator, Iterable, Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import QmpError
from handoff.base.host import HostPaths
from handoff.control.protocol import Side
from handoff.control.server import ControlCommands
from handoff.journal.recover import RecoveryReport
from handoff.journal.recover import recover as recover_journals
from handoff.live.guest import EventHub, GuestHeldError, PlugError, attach, guest_ids, unplug
from handoff.live.recovery import live_recoverer
from handoff.live.resource import LiveGpu, live_journal_name
from handoff.live.sequence import guest_slots, live_slots
from handoff.live.state import LiveState, LiveStep
from handoff.pci.engine import Engine
from handoff.pci.recovery import gpu_recoverer
from handoff.pci.sysfs import vfio_group_node
from handoff.profile import Accelerator, Profile, parse_profile
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import QmpConnection, open_qmp
from handoff.session.plan import HostFacts, plan_session
from tests.unit.fakesysfs import FakeHost, lookalike_host

pytestmark = pytest.mark.qemu

NATIVE = ("-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off")
PROFILE = (
    '[vm]\nname = "live"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
    '[[passthrough]]\naddress = "00:06.0"\nlive = true\n'
    '[[passthrough]]\naddress = "00:06.1"\nlive = true\n'
)
IDS = {"hostdev-0000-00-06-0", "hostdev-0000-00-06-1"}
LOOKALIKE = {"00:06.0": "bochs-drm", "00:06.1": "snd_hda_intel"}
BOUND = 60.0  # generous limit on any wait here (2 busy cores); none is a timing assertion


async def recover(engine: Engine) -> RecoveryReport:
    """`handoff recover`'s device part: the GPU's and the live groups' recoverers."""
    return await recover_journals(engine.paths, [gpu_recoverer(engine), live_recoverer(engine)])



class Vm:
    """What the session gives resources: pid, execute, and QMP events by name."""

    def __init__(self, pid: int, qmp: QmpConnection) -> None:
        self._pid, self.qmp, self.hub = pid, qmp, EventHub()
        # The fake host whose /proc shows this QEMU holding /dev/vfio/5 while a
        # function of the group is plugged, as vfio-pci's realize/finalize do.
        self.fake_host: FakeHost | None = None
        self._plugged: set[str] = set()

    def _holds(self) -> None:
        if self.fake_host is not None:
            qemu_holds(self.fake_host, self, bool(self._plugged))

    @property
    def pid(self) -> int:
        return self._pid

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        result = await self.qmp.execute(command, arguments)
        if command == "device_add" and arguments is not None:
            self._plugged.add(str(arguments["id"]))
            self._holds()
        return result

    def subscribe(
        self, names: Iterable[str]
    ) -> contextlib.AbstractContextManager[trio.MemoryReceiveChannel[dict[str, Any]]]:
        return self.hub.subscribe(names)

    async def pump(self) -> None:
        async for event in self.qmp.events:
            if event.get("event") == "DEVICE_DELETED":
                self._plugged.discard(str((event.get("data") or {}).get("device")))
                self._holds()
            self.hub.deliver(event)


def live_profile() -> Profile:
    return parse_profile(PROFILE, Path("/vms/live.toml"))


def edu_argv(profile: Profile, fd: int, tmp_path: Path) -> list[str]:
    """The plan's argv without its vfio-pci functions: :func:`running` hot-plugs an edu
    in each one's place (same bus, addr, id). Not cold-plugged: without a guest OS
    native hotplug answers device_del at once only for a device whose hot-add no OS
    has acknowledged; a cold-plugged one waits for the OS like ACPI."""
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0)
    argv = list(plan_session(profile, facts, HostPaths(run=tmp_path / "run"))
                .argv_with_monitor_fd(fd))
    out: list[str] = []
    for value in argv:
        if value.startswith("vfio-pci,"):
            out.pop()  # its -device: the group is hot-plugged once the firmware runs
            continue
        out.append(value)
    return [a for a in out if a != "-S"]


async def port_numbered(vm: Vm) -> bool:
    """Whether the firmware has given rp0 its secondary bus number (before that,
    query-pci lists nothing behind it)."""
    buses = await vm.execute("query-pci")
    assert isinstance(buses, list)
    for device in buses[0]["devices"]:
        if device.get("qdev_id") == "rp0":
            return bool(device["pci_bridge"]["bus"]["secondary"])
    return False


@contextlib.asynccontextmanager
async def running(tmp_path: Path, *extra: str, profile: Profile | None = None
                  ) -> AsyncIterator[Vm]:
    ours, theirs = socket.socketpair()
    argv = edu_argv(profile or live_profile(), theirs.fileno(), tmp_path) + list(extra)
    process = await QemuProcess.start(argv, log_path=tmp_path / "qemu.log",
                                      pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        async with open_qmp(ours) as qmp, trio.open_nursery() as nursery:
            vm = Vm(process.pid, qmp)
            nursery.start_soon(vm.pump)
            with trio.fail_after(BOUND):  # the firmware numbers the root port's bus
                while not await port_numbered(vm):  # noqa: ASYNC110 (no event for it)
                    await trio.sleep(0.1)
                await attach(vm, vm, live_slots((profile or live_profile()).passthrough),
                             driver="edu")
            yield vm
            nursery.cancel_scope.cancel()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
        ours.close()


async def test_native_hotplug_releases_and_takes_the_group_back_in_order(tmp_path: Path) -> None:
    slots = live_slots(live_profile().passthrough)
    async with running(tmp_path, *NATIVE) as vm:
        assert await guest_ids(vm) >= IDS  # where the plan's argv put them
        with trio.fail_after(BOUND):
            await unplug(vm, vm, slots)
        assert not await guest_ids(vm) & IDS
        for _ in range(2):
            with trio.fail_after(BOUND):
                await attach(vm, vm, slots, driver="edu")
            assert await guest_ids(vm) >= IDS
            with trio.fail_after(BOUND):
                await unplug(vm, vm, slots)
            assert not await guest_ids(vm) & IDS


async def test_acpi_hotplug_without_an_os_is_refused_after_the_bound(tmp_path: Path) -> None:
    slots = live_slots(live_profile().passthrough)
    async with running(tmp_path) as vm:
        with trio.fail_after(BOUND), pytest.raises(GuestHeldError, match="within 2 s"):
            await unplug(vm, vm, slots, release_within=2)
        assert await guest_ids(vm) >= IDS  # the guest still has it


async def test_a_failing_device_add_deletes_what_was_added(tmp_path: Path) -> None:
    profile = live_profile()
    gpu, audio = profile.passthrough
    broken = guest_slots([dataclasses.replace(gpu, romfile=tmp_path / "no-such.rom"), audio])
    async with running(tmp_path, *NATIVE) as vm:
        with trio.fail_after(BOUND):
            await unplug(vm, vm, broken)
        with trio.fail_after(BOUND), pytest.raises(PlugError) as caught:
            await attach(vm, vm, broken, driver="edu")
        assert caught.value.added == ("hostdev-0000-00-06-1",)  # function 1 went first
        assert not await guest_ids(vm) & IDS  # ... and was deleted again


# --------------------------------------------------------------------------- the resource


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    return lookalike_host(tmp_path / "host")


def drivers(host: FakeHost) -> dict[str, str | None]:
    state = host.state()
    return {a: state[a][0] for a in LOOKALIKE}


def journal_path(host: FakeHost) -> Path:
    return jr.journal_path(host.paths, live_journal_name("live"))


def qemu_holds(host: FakeHost, vm: Vm, holds: bool) -> None:
    """The fake /proc entry of the real QEMU, holding /dev/vfio/5 while it has the group."""
    with contextlib.suppress(FileNotFoundError):
        host.end_process(vm.pid)
    host.add_process(vm.pid, "qemu-system-x86", [vfio_group_node(host.paths, 5)] if holds else [])


async def qemu_quits(host: FakeHost, vm: Vm) -> None:
    """QEMU ends (as before the session releases its resources): its /proc entry goes."""
    with contextlib.suppress(QmpError):
        await vm.execute("quit")
    host.end_process(vm.pid)


async def started(host: FakeHost, vm: Vm, nursery: trio.Nursery, **options: Any) -> LiveGpu:
    live = LiveGpu(live_profile(), host.paths, writer=host, driver="edu",
                   memlock_check=lambda *_: None, **options)
    await live.acquire()
    vm.fake_host = host
    vm._holds()
    live.note_qemu_pid(vm.pid)
    await live.vm_started(vm, nursery, ControlCommands())
    return live


async def test_the_resource_moves_the_group_both_ways_and_journals_it(
    tmp_path: Path, host: FakeHost
) -> None:
    async with running(tmp_path, *NATIVE) as vm, trio.open_nursery() as nursery:
        live = await started(host, vm, nursery)
        assert drivers(host) == dict.fromkeys(LOOKALIKE, "vfio-pci")
        assert jr.Journal.load(journal_path(host)).live == LiveStep.IN_GUEST
        with trio.fail_after(BOUND):
            result = await live.move(Side.HOST)
        assert result["state"] == "host"
        assert live.state is LiveState.ON_HOST
        assert drivers(host) == LOOKALIKE
        assert not journal_path(host).exists()
        assert not await guest_ids(vm) & IDS
        commands = ControlCommands()
        commands.register("gpu", live._control)
        with trio.fail_after(BOUND):
            answer = await commands.dispatch({"command": "gpu", "to": "toggle"})
        assert answer["ok"], answer
        assert answer["result"]["state"] == "guest"
        assert drivers(host) == dict.fromkeys(LOOKALIKE, "vfio-pci")
        assert await guest_ids(vm) >= IDS
        saved = jr.Journal.load(journal_path(host))
        assert (saved.live, saved.qemu_pid) == (LiveStep.IN_GUEST, vm.pid)
        again = await commands.dispatch({"command": "gpu", "to": "guest"})
        assert again["result"]["changed"] is False
        await qemu_quits(host, vm)
        await live.release()  # at shutdown a group in the guest returns as today
        assert drivers(host) == LOOKALIKE
        nursery.cancel_scope.cancel()


async def test_a_guest_that_does_not_let_go_changes_nothing_on_the_host(
    tmp_path: Path, host: FakeHost
) -> None:
    async with running(tmp_path) as vm, trio.open_nursery() as nursery:  # ACPI, no OS
        live = await started(host, vm, nursery, release_within=2)
        commands = ControlCommands()
        commands.register("gpu", live._control)
        with trio.fail_after(BOUND):
            answer = await commands.dispatch({"command": "gpu", "to": "host"})
        assert not answer["ok"]
        assert "did not release" in answer["error"]
        assert "GPU stays in the guest" in answer["error"]
        assert live.state is LiveState.IN_GUEST
        assert drivers(host) == dict.fromkeys(LOOKALIKE, "vfio-pci")
        assert jr.Journal.load(journal_path(host)).live == LiveStep.IN_GUEST
        assert await guest_ids(vm) >= IDS
        await qemu_quits(host, vm)
        await live.release()
        assert drivers(host) == LOOKALIKE
        nursery.cancel_scope.cancel()


class Killed(BaseException):
    """Stands for SIGKILL at a journal write: nothing after it runs, no cleanup."""


def killing_save(real_save: Any, writes: int) -> Any:
    count = 0

    def save(self: jr.Journal) -> None:
        nonlocal count
        real_save(self)
        count += 1
        if count == writes:
            raise Killed

    return save


@pytest.mark.parametrize("direction", ["host", "guest"])
async def test_a_kill_at_any_journal_write_is_finished_by_recover(
    tmp_path: Path, host: FakeHost, monkeypatch: pytest.MonkeyPatch, direction: str
) -> None:
    """Killed after the N-th journal write of a move, `handoff recover` leaves the group
    in the guest when QEMU (alive) still has it, and returns it to the host otherwise."""
    writes = 1
    while True:
        sub = tmp_path / f"{direction}-{writes}"
        fake = lookalike_host(sub / "host")
        async with running(sub, *NATIVE) as vm, trio.open_nursery() as nursery:
            live = await started(fake, vm, nursery)
            if direction == "guest":
                await live.move(Side.HOST)
            monkeypatch.setattr(jr.Journal, "save", killing_save(jr.Journal.save, writes))
            finished = False
            try:
                with trio.fail_after(BOUND):
                    await live.move(Side(direction))
                finished = True
            except Killed:
                pass
            monkeypatch.undo()
            in_guest = await guest_ids(vm) >= IDS
            if writes == 1:  # write-ahead: the first record says which way it was going
                first = LiveStep.RELEASING if direction == "host" else LiveStep.ATTACHING
                assert jr.Journal.load(journal_path(fake)).live == first
            live._drop_locks()  # the kernel drops a killed process's flocks
            report = await recover(live.engine)
            if in_guest:
                assert drivers(fake) == dict.fromkeys(LOOKALIKE, "vfio-pci")
                assert journal_path(fake).exists()  # kept for the QEMU's end
                assert f"pid {vm.pid}" in report.lines()[0]
            else:
                assert report.ok, report.lines()
                assert drivers(fake) == LOOKALIKE
                assert not journal_path(fake).exists()
            nursery.cancel_scope.cancel()
        if finished:
            break
        writes += 1
    assert writes > 2  # every write of the move was a kill point
