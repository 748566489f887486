"""Live GPU hand-off cost: `handoff gpu NAME host` and back, against the bare QMP + sysfs.

Runs inside the testbed VM (a real kernel with an IOMMU), on the GPU
lookalike group (bochs-display 06.0 + ich9-intel-hda 06.1), with a nested
QEMU running firmware only and native PCIe hotplug (which answers a
device_del of a function it hot-plugged, and no OS acknowledged, at once):

    tests/testbed/testbed.sh -- .venv/bin/python bench/live_gpu.py [--rounds 5]

Arms, interleaved round after round in one nested QEMU so load hits them alike:

``handoff``
    :meth:`handoff.live.resource.LiveGpu.move` to the host then to the guest:
    the journal's write-ahead steps, qom-list for what QEMU has, device_del
    and the DEVICE_DELETED wait, the engine's return (journaled, read back,
    /dev/vfio/N users checked); back: preflight snapshot and plan, the
    engine's detach, device_add in order, query-pci confirmation.
``bare``
    the same QMP commands and sysfs writes from this process, nothing
    checked or journaled: device_del, DEVICE_DELETED for both ids, per
    function vfio-pci unbind / driver_override cleared / drivers_probe; back:
    driver_override vfio-pci / unbind / drivers_probe, device_add x2.

Printed per direction: guest release (the DEVICE_DELETED wait), host side
(vfio unbind + host driver probe; bare also split), and back (handoff's
preflight: snapshot, /proc scan for holders, plan; to vfio-pci; device_add),
medians, and the ratios handoff / bare (goal for the host side: <= 1.5x).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import socket
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import trio

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from handoff.base.host import HostPaths  # noqa: E402
from handoff.control.protocol import Side  # noqa: E402
from handoff.control.server import ControlCommands  # noqa: E402
from handoff.journal.store import volatile  # noqa: E402
from handoff.live.guest import EventHub, attach, guest_ids  # noqa: E402
from handoff.live.resource import LiveGpu  # noqa: E402
from handoff.live.sequence import add_arguments, live_slots  # noqa: E402
from handoff.pci.address import PciAddress  # noqa: E402
from handoff.pci.sysfs import read_device, read_iommu  # noqa: E402
from handoff.profile import (  # noqa: E402
    Accelerator,
    Profile,
    parse_profile,
)
from handoff.qemu.process import QemuProcess  # noqa: E402
from handoff.qemu.qmp import QmpConnection, open_qmp  # noqa: E402
from handoff.session.plan import HostFacts, plan_session  # noqa: E402

SYS = Path("/sys/bus/pci")
NATIVE = ["-global", "ICH9-LPC.acpi-pci-hotplug-with-bridge-support=off"]


class Vm:
    """pid, execute and QMP events by name: what the session gives resources."""

    def __init__(self, pid: int, qmp: QmpConnection) -> None:
        self._pid, self.qmp, self.hub = pid, qmp, EventHub()

    @property
    def pid(self) -> int:
        return self._pid

    async def execute(self, command: str, arguments: Mapping[str, object] | None = None) -> object:
        return await self.qmp.execute(command, arguments)

    def subscribe(self, names: Iterable[str]) -> contextlib.AbstractContextManager[
            trio.MemoryReceiveChannel[dict[str, Any]]]:
        return self.hub.subscribe(names)

    async def pump(self) -> None:
        async for event in self.qmp.events:
            self.hub.deliver(event)


def _write(path: Path, value: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, value.encode())
    finally:
        os.close(fd)


def find(vendor: int, device: int) -> PciAddress:
    for node in sorted((SYS / "devices").iterdir()):
        if (int((node / "vendor").read_text(), 16) == vendor
                and int((node / "device").read_text(), 16) == device):
            return PciAddress.parse(node.name)
    raise SystemExit(f"no {vendor:04x}:{device:04x} here: run this inside the testbed VM")


def profile_for(vga: PciAddress, audio: PciAddress, directory: Path) -> Profile:
    text = (
        '[vm]\nname = "livebench"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
        '[display]\nvga = "none"\nfrontend = "none"\n'
        f'[[passthrough]]\naddress = "{vga.short}"\nlive = true\n'
        f'[[passthrough]]\naddress = "{audio.short}"\nlive = true\n'
    )
    return parse_profile(text, directory / "livebench.toml")


def argv_for(profile: Profile, fd: int, run: Path) -> list[str]:
    """The plan's argv without the cold-plugged functions (hot-plugged once firmware ran)."""
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="bench", supervisor_uid=0)
    out: list[str] = []
    for value in plan_session(profile, facts, HostPaths(run=run)).argv_with_monitor_fd(fd):
        if value.startswith("vfio-pci,"):
            out.pop()
            continue
        out.append(value)
    return [a for a in out if a != "-S"] + NATIVE


@contextlib.asynccontextmanager
async def nested(profile: Profile, run: Path) -> AsyncIterator[Vm]:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(argv_for(profile, theirs.fileno(), run),
                                      log_path=run / "qemu.log", pass_fds=[theirs.fileno()])
    theirs.close()
    try:
        async with open_qmp(ours) as qmp, trio.open_nursery() as nursery:
            vm = Vm(process.pid, qmp)
            nursery.start_soon(vm.pump)
            yield vm
            nursery.cancel_scope.cancel()
    finally:
        process.kill()
        await process.wait()
        ours.close()


@contextlib.contextmanager
def clock(into: dict[str, list[float]], name: str) -> Iterator[None]:
    start = time.perf_counter()
    yield
    into.setdefault(name, []).append(time.perf_counter() - start)


async def bare_round(vm: Vm, profile: Profile, functions: list[PciAddress],
                     drivers: dict[str, str], times: dict[str, list[float]]) -> None:
    slots = live_slots(profile.passthrough)
    ids = {i for s in slots for i in s.ids}
    with clock(times, "bare: guest release"), vm.subscribe({"DEVICE_DELETED"}) as deleted:
        await vm.execute("device_del", {"id": slots[0].functions[0].device_id})
        async for event in deleted:
            ids.discard(event["data"].get("device"))
            if not ids:
                break
    with clock(times, "bare: host side"):
        with clock(times, "bare:   vfio unbind"):
            for address in functions:
                _write(SYS / "drivers/vfio-pci/unbind", str(address))
                _write(SYS / "devices" / str(address) / "driver_override", "\n")
        with clock(times, "bare:   host probe"):
            for address in functions:
                _write(SYS / "drivers_probe", str(address))
    with clock(times, "bare: to vfio-pci"):
        for address in reversed(functions):
            name = str(address)
            _write(SYS / "devices" / name / "driver_override", "vfio-pci")
            _write(SYS / "drivers" / drivers[name] / "unbind", name)
            _write(SYS / "drivers_probe", name)
    with clock(times, "bare: device_add"):
        for args in add_arguments(slots[0]):
            await vm.execute("device_add", args)


async def bench(rounds: int) -> None:
    vga, audio = find(0x1234, 0x1111), find(0x8086, 0x293E)
    tmpfs = next((d for d in ("/run", "/dev/shm") if volatile(d, "/proc/self/mountinfo")), None)
    run = Path(tempfile.mkdtemp(prefix="handoff-livebench-", dir=tmpfs))
    paths = dataclasses.replace(HostPaths.from_environment(), run=run)
    profile = profile_for(vga, audio, run)
    drivers = {str(a): read_device(paths, a).driver or "" for a in (vga, audio)}
    live = LiveGpu(profile, paths, release_within=math.inf, report=lambda _: None)
    await live.acquire()
    times: dict[str, list[float]] = {}
    try:
        async with nested(profile, run) as vm:
            while "rp0" not in await guest_ids(vm):  # noqa: ASYNC110 (firmware numbering)
                await trio.sleep(0.5)
            await trio.sleep(2)
            await attach(vm, vm, live_slots(profile.passthrough))
            live.note_qemu_pid(vm.pid)
            async with trio.open_nursery() as nursery:
                await live.vm_started(vm, nursery, ControlCommands())
                for _ in range(rounds):
                    with clock(times, "handoff: to host"):
                        await live.move(Side.HOST)
                    times.setdefault("handoff: guest release", []).append(
                        live.timings["guest_release"])
                    times.setdefault("handoff: host side", []).append(live.timings["host_return"])
                    with clock(times, "handoff: to guest"):
                        await live.move(Side.GUEST)
                    times.setdefault("handoff: preflight", []).append(live.timings["preflight"])
                    times.setdefault("handoff: to vfio-pci", []).append(live.timings["to_vfio"])
                    times.setdefault("handoff: device_add", []).append(
                        live.timings["guest_attach"])
                    await bare_round(vm, profile, [vga, audio], drivers, times)
                nursery.cancel_scope.cancel()
    finally:
        await live.release()
    print(f"live GPU hand-off, lookalike group ({vga.short} + {audio.short}), {rounds} rounds, "
          "medians:")
    for name, samples in times.items():
        print(f"  {name:<26} {statistics.median(samples) * 1000:>9.1f} ms")
    for what in ("host side", "to vfio-pci", "device_add", "guest release"):
        ratio = (statistics.median(times[f"handoff: {what}"])
                 / statistics.median(times[f"bare: {what}"]))
        print(f"  ratio handoff/bare, {what}: {ratio:.2f}x")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if not read_iommu(HostPaths()).enabled:
        print("no IOMMU groups here: run this inside the testbed VM", file=sys.stderr)
        return 2
    trio.run(bench, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
