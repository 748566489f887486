"""GPU hand-off on a real kernel: vfio-pci, IOMMU groups, holders, SIGKILL recovery.

Runs inside the testbed VM (tests/testbed/testbed.sh), whose q35 machine has
an emulated Intel IOMMU and the standard device set of
:mod:`tests.testbed.devices`: the GPU lookalike (bochs-display 06.0 +
ich9-intel-hda 06.1, one group), edu, an e1000e and the ICH9 group. The
engine runs unchanged with the real :class:`KernelWriter`; only the run
directory (journal, locks) is a per-test temporary directory.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
import trio

from handoff import journal as jr
from handoff.base.errors import PreflightRefusedError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.commands import run_attach, run_detach
from handoff.pci.ops import KernelWriter
from handoff.pci.sysfs import read_device, read_iommu
from handoff.session.recovery import run_recover
from tests.testbed import devices

pytestmark = [
    pytest.mark.realkernel,
    pytest.mark.usefixtures("testbed_gpu"),  # no IOMMU or lookalike: fail, never skip
]

CHECKOUT = Path(__file__).resolve().parents[2]
State = dict[str, tuple[str | None, str | None]]


@pytest.fixture
def paths(tmp_path: Path) -> Iterator[HostPaths]:
    run = tmp_path / "run"
    host = HostPaths(run=run)
    yield host
    # Never leave a device on vfio-pci for the next test, whatever happened.
    if jr.list_journals(host):
        _handoff(host, "recover")


def state(paths: HostPaths, *addresses: PciAddress) -> State:
    result: State = {}
    for address in addresses:
        device = read_device(paths, address)
        result[address.short] = (device.driver, device.driver_override)
    return result


def lookalike() -> tuple[PciAddress, PciAddress]:
    return devices.find_one(devices.BOCHS_DISPLAY), devices.find_one(devices.ICH9_HDA)


def vfio_node_exists(group: int | None) -> bool:
    return os.path.exists(f"/dev/vfio/{group}")


def spawn(argv: list[str]) -> subprocess.Popen[bytes]:
    """A helper process whose stdout the test reads (to know it is ready)."""
    return subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE)


async def eventually(check: Callable[[], bool]) -> bool:
    """Poll ``check`` until it holds or 20 s pass (kernel work queues, udev)."""
    with trio.move_on_after(20):
        while not check():  # noqa: ASYNC110 - no event to wait for
            await trio.sleep(0.05)
        return True
    return check()


def stop(process: subprocess.Popen[bytes]) -> None:
    process.kill()
    process.wait()
    for stream in (process.stdin, process.stdout):
        if stream is not None:
            stream.close()


def qmp(qemu: subprocess.Popen[bytes], command: str) -> bytes:
    """Read QEMU's next line (skipping events) after sending ``command``."""
    assert qemu.stdin is not None
    assert qemu.stdout is not None
    qemu.stdin.write(command.encode() + b"\n")
    qemu.stdin.flush()
    while True:
        line = qemu.stdout.readline()
        if not line or b'"event"' not in line:
            return line


def dmesg() -> str:
    return subprocess.run(["dmesg"], capture_output=True, text=True, check=False).stdout[-3000:]


def quiet(_: str) -> None:
    return None


async def test_the_gpu_lookalike_goes_to_vfio_pci_and_back_to_bochs_and_hda(
    paths: HostPaths,
) -> None:
    vga, audio = lookalike()
    before = state(paths, vga, audio)
    assert before == {vga.short: ("bochs-drm", None), audio.short: ("snd_hda_intel", None)}
    card_before = read_device(paths, vga).drm_nodes
    sound_before = read_device(paths, audio).sound_cards
    assert card_before
    group = read_device(paths, vga).iommu_group
    assert group == read_device(paths, audio).iommu_group
    await run_detach(paths, KernelWriter(), [vga], out=quiet)
    assert state(paths, vga, audio) == {
        vga.short: ("vfio-pci", "vfio-pci"),
        audio.short: ("vfio-pci", "vfio-pci"),
    }
    assert vfio_node_exists(group)
    assert read_device(paths, vga).drm_nodes == ()
    await run_attach(paths, KernelWriter(), [vga], out=quiet)
    assert state(paths, vga, audio) == before
    assert read_device(paths, vga).drm_nodes == card_before
    # snd_hda_intel binds at once but registers its card (if it finds a codec)
    # from a work queue.
    assert await eventually(lambda: read_device(paths, audio).sound_cards == sound_before)
    assert not vfio_node_exists(group)
    assert jr.list_journals(paths) == []


async def test_the_e1000e_round_trip_brings_its_interface_back(paths: HostPaths) -> None:
    nic = devices.find_one(devices.E1000E)
    netdevs = read_device(paths, nic).netdevs
    assert netdevs
    await run_detach(paths, KernelWriter(), [nic], out=quiet)
    assert read_device(paths, nic).driver == "vfio-pci"
    assert read_device(paths, nic).netdevs == ()
    await run_attach(paths, KernelWriter(), [nic], out=quiet)
    assert read_device(paths, nic).driver == "e1000e"
    # The kernel names it eth0 again; udev renames it to its predictable name.
    assert await eventually(lambda: read_device(paths, nic).netdevs == netdevs)


async def test_edu_without_a_driver_returns_to_no_driver(paths: HostPaths) -> None:
    edu = devices.find_one(devices.EDU)
    await run_detach(paths, KernelWriter(), [edu], out=quiet)
    assert read_device(paths, edu).driver == "vfio-pci"
    await run_attach(paths, KernelWriter(), [edu], out=quiet)
    assert state(paths, edu) == {edu.short: (None, None)}


async def test_the_ich9_group_is_refused_and_nothing_changes(paths: HostPaths) -> None:
    smbus = devices.find_one(devices.ICH9_SMBUS)
    members = read_iommu(paths).groups[read_device(paths, smbus).iommu_group or -1]
    before = state(paths, *members)
    with pytest.raises(PreflightRefusedError) as caught:
        await run_detach(paths, KernelWriter(), [smbus], out=quiet)
    assert "ISA/LPC bridge" in caught.value.message
    assert "storage controller" in caught.value.message
    assert state(paths, *members) == before


async def test_a_process_holding_card0_is_named_and_nothing_changes(paths: HostPaths) -> None:
    vga, audio = lookalike()
    (card,) = [n for n in read_device(paths, vga).drm_nodes if n.startswith("card")]
    before = state(paths, vga, audio)
    holder = spawn(["sh", "-c", f"exec 3</dev/dri/{card}; echo ready; exec sleep 600"])
    try:
        assert holder.stdout is not None
        assert holder.stdout.readline() == b"ready\n"
        # "ready" comes before sh execs sleep: wait for the exec, or the scan may see "sh".
        assert await eventually(lambda: Path(f"/proc/{holder.pid}/comm").read_text() == "sleep\n")
        with pytest.raises(PreflightRefusedError) as caught:
            await run_detach(paths, KernelWriter(), [vga], out=quiet)
        assert f"pid {holder.pid} (sleep)" in caught.value.message
        assert f"/dev/dri/{card}" in caught.value.message
        assert state(paths, vga, audio) == before
    finally:
        stop(holder)


def _handoff(paths: HostPaths, *argv: str, crash_after: int | None = None) -> int:
    env = {**os.environ, "HANDOFF_RUN_DIR": str(paths.run)}
    if crash_after is not None:
        env[jr.CRASH_AFTER_ENV] = str(crash_after)
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv], env=env, cwd=CHECKOUT, check=False
    ).returncode


# A detach of the two-function group writes the journal 1 + 2 x 2 times.
DETACH_WRITES = 5
# An attach of it writes twice (each device dropped once it is back).
ATTACH_WRITES = 2


@pytest.mark.parametrize("writes", range(1, DETACH_WRITES + 1))
async def test_recover_after_a_detach_sigkilled_after_each_journal_write(
    paths: HostPaths, writes: int
) -> None:
    vga, audio = lookalike()
    before = state(paths, vga, audio)
    assert _handoff(paths, "detach", vga.short, crash_after=writes) == -signal.SIGKILL
    assert len(jr.list_journals(paths)) == 1
    lines: list[str] = []
    assert await run_recover(paths, KernelWriter(), out=lines.append) == 0, lines
    assert state(paths, vga, audio) == before
    assert jr.list_journals(paths) == []


@pytest.mark.parametrize("writes", range(1, ATTACH_WRITES + 1))
async def test_recover_after_an_attach_sigkilled_after_each_journal_write(
    paths: HostPaths, writes: int
) -> None:
    vga, audio = lookalike()
    before = state(paths, vga, audio)
    assert _handoff(paths, "detach", vga.short) == 0
    assert _handoff(paths, "attach", vga.short, crash_after=writes) == -signal.SIGKILL
    lines: list[str] = []
    assert await run_recover(paths, KernelWriter(), out=lines.append) == 0, lines
    assert state(paths, vga, audio) == before
    assert jr.list_journals(paths) == []


async def test_a_qemu_holding_the_group_blocks_the_return_until_it_exits(
    paths: HostPaths,
) -> None:
    vga, audio = lookalike()
    before = state(paths, vga, audio)
    await run_detach(paths, KernelWriter(), [vga], out=quiet)
    qemu = spawn(
        [
            "qemu-system-x86_64", "-accel", "tcg", "-M", "q35", "-m", "64M", "-nodefaults",
            "-display", "none", "-S", "-qmp", "stdio",
            "-device", f"vfio-pci,host={vga},multifunction=on,addr=05.0",
            "-device", f"vfio-pci,host={audio},addr=05.1",
        ]
    )  # fmt: skip
    try:
        # The greeting comes before -device is processed; a command's answer after.
        assert qemu.stdout is not None
        assert b"QMP" in qemu.stdout.readline()
        answer = qmp(qemu, '{"execute": "qmp_capabilities"}')
        assert b'"return"' in answer, (state(paths, vga, audio), dmesg())
        lines: list[str] = []
        assert await run_recover(paths, KernelWriter(), out=lines.append) == 1
        assert any(f"pid {qemu.pid}" in line for line in lines), lines
        assert state(paths, vga, audio)[vga.short] == ("vfio-pci", "vfio-pci")
    finally:
        stop(qemu)
    await run_attach(paths, KernelWriter(), [vga], out=quiet)
    assert state(paths, vga, audio) == before
