"""`handoff recover` on a real kernel: a supervisor killed between any two sysfs writes.

Runs inside the testbed VM with the GPU lookalike (bochs-display 06.0 +
ich9-intel-hda 06.1, one IOMMU group). The hand-off is driven by the real
`handoff detach` / `handoff attach` processes, each made to SIGKILL itself
right after its N-th sysfs write (bind.CRASH_AFTER_SYSFS_ENV, test-only), so
every half-done kernel state the engine can leave is a state the real driver
core reached. Also: a journal from another boot, and two `handoff detach` of
one group at the same time.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.pci.commands import run_detach
from handoff.pci.ops import CRASH_AFTER_SYSFS_ENV, PAUSE_AFTER_SYSFS_ENV, KernelWriter
from handoff.pci.sysfs import read_device
from handoff.session.recovery import run_recover
from tests.testbed import guest
from tests.testbed.devices import GpuLookalike

pytestmark = [pytest.mark.realkernel, pytest.mark.usefixtures("vfio_pci")]

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 180.0  # seconds a `handoff` process may take in the (slow, TCG) guest
# Sysfs writes of the lookalike's hand-off, per direction: per function
# driver_override, unbind, drivers_probe (detach); vfio-pci unbind,
# driver_override cleared, drivers_probe (return).
DETACH_WRITES = 6
ATTACH_WRITES = 6

State = dict[str, tuple[str | None, str | None]]


def state(gpu: GpuLookalike) -> State:
    paths = HostPaths()
    return {
        f.short: (read_device(paths, f).driver, read_device(paths, f).driver_override)
        for f in gpu.functions
    }


def on_host_drivers(gpu: GpuLookalike) -> State:
    return {gpu.vga.short: ("bochs-drm", None), gpu.audio.short: ("snd_hda_intel", None)}


def on_vfio(gpu: GpuLookalike) -> State:
    return {f.short: ("vfio-pci", "vfio-pci") for f in gpu.functions}


def raw_overrides(gpu: GpuLookalike) -> list[str]:
    """driver_override as the kernel prints it: ``(null)`` when empty."""
    return [(guest.device_dir(f) / "driver_override").read_text().strip() for f in gpu.functions]


def handoff(run: Path, *argv: str, **hooks: str) -> subprocess.CompletedProcess[str]:
    """The real `handoff` CLI in a process of its own, with test-only fault hooks."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOFF_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env={**env, "HANDOFF_RUN_DIR": str(run), **hooks},
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
    )


def vfio_node_exists(gpu: GpuLookalike) -> bool:
    return Path(f"/dev/vfio/{gpu.group}").exists()


async def recover_and_check(paths: HostPaths, gpu: GpuLookalike) -> list[str]:
    """`handoff recover` returns the lookalike home: host drivers, no override, no journal."""
    lines: list[str] = []
    assert await run_recover(paths, KernelWriter(), out=lines.append) == 0, lines
    assert state(gpu) == on_host_drivers(gpu), lines
    assert raw_overrides(gpu) == ["(null)", "(null)"]
    assert jr.list_journals(paths) == []
    assert not vfio_node_exists(gpu)
    return lines


async def quiet_detach(paths: HostPaths, gpu: GpuLookalike) -> None:
    await run_detach(paths, KernelWriter(), [gpu.vga], out=lambda _: None)
    assert state(gpu) == on_vfio(gpu)


@pytest.mark.parametrize("writes", range(1, DETACH_WRITES + 1))
async def test_recover_after_a_detach_sigkilled_after_each_sysfs_write(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths, writes: int
) -> None:
    gpu = gpu_lookalike
    assert state(gpu) == on_host_drivers(gpu)
    crashed = handoff(
        host_paths.run, "detach", gpu.vga.short, **{CRASH_AFTER_SYSFS_ENV: str(writes)}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    # Killed halfway: the kernel is in neither end state, the journal says what to undo.
    if writes < DETACH_WRITES:
        assert state(gpu) not in (on_host_drivers(gpu), on_vfio(gpu))
    assert len(jr.list_journals(host_paths)) == 1
    lines = await recover_and_check(host_paths, gpu)
    assert any(line.startswith("returned: ") for line in lines), lines


@pytest.mark.parametrize("writes", range(1, ATTACH_WRITES + 1))
async def test_recover_after_an_attach_sigkilled_after_each_sysfs_write(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths, writes: int
) -> None:
    gpu = gpu_lookalike
    await quiet_detach(host_paths, gpu)
    crashed = handoff(
        host_paths.run, "attach", gpu.vga.short, **{CRASH_AFTER_SYSFS_ENV: str(writes)}
    )
    assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
    if writes < ATTACH_WRITES:
        assert state(gpu) not in (on_host_drivers(gpu), on_vfio(gpu))
    assert len(jr.list_journals(host_paths)) == 1
    await recover_and_check(host_paths, gpu)


async def test_the_lookalike_hand_off_is_exactly_that_many_sysfs_writes_each_way(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths
) -> None:
    # One write more than counted: the hook never fires, so the crash tests above
    # cover every write of a detach and of a return.
    gpu = gpu_lookalike
    detach = handoff(host_paths.run, "detach", gpu.vga.short,
                     **{CRASH_AFTER_SYSFS_ENV: str(DETACH_WRITES + 1)})  # fmt: skip
    assert detach.returncode == 0, detach.stdout + detach.stderr
    assert state(gpu) == on_vfio(gpu)
    attach = handoff(host_paths.run, "attach", gpu.vga.short,
                     **{CRASH_AFTER_SYSFS_ENV: str(ATTACH_WRITES + 1)})  # fmt: skip
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert state(gpu) == on_host_drivers(gpu)
    assert raw_overrides(gpu) == ["(null)", "(null)"]
    assert jr.list_journals(host_paths) == []


async def test_a_journal_from_another_boot_is_discarded_and_nothing_changes(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths
) -> None:
    gpu = gpu_lookalike
    await quiet_detach(host_paths, gpu)
    (path,) = jr.list_journals(host_paths)
    data = json.loads(path.read_text())
    data["boot_id"] = "00000000-0000-4000-8000-000000000000"
    path.write_text(json.dumps(data))
    lines: list[str] = []
    assert await run_recover(host_paths, KernelWriter(), out=lines.append) == 0, lines
    assert lines == [
        f"discarded: {path} is from an earlier boot (00000000-0000-4000-8000-000000000000): "
        "the reboot already returned every device to the kernel's default driver (and every "
        "setting to its boot value)"
    ]
    # Not this boot's journal: the devices stay where they are (the fixture returns them).
    assert state(gpu) == on_vfio(gpu)
    assert vfio_node_exists(gpu)
    assert jr.list_journals(host_paths) == []


def wait_stopped(process: subprocess.Popen[str]) -> None:
    """Block until ``process`` is stopped (SIGSTOP); fail if it exits instead."""
    _, status = os.waitpid(process.pid, os.WUNTRACED)
    assert os.WIFSTOPPED(status), f"the first detach ended (status {status}) instead of pausing"


def test_two_detaches_of_one_group_at_once_one_wins_the_other_is_refused(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths
) -> None:
    gpu = gpu_lookalike
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOFF_TEST_")}
    # The first detach pauses (SIGSTOP) right after its first sysfs write: mid-hand-off,
    # holding the group's lock. The second asks for the group's other function.
    first = subprocess.Popen(
        [sys.executable, "-m", "handoff", "detach", gpu.vga.short],
        env={**env, "HANDOFF_RUN_DIR": str(host_paths.run), PAUSE_AFTER_SYSFS_ENV: "1"},
        cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    try:
        wait_stopped(first)
        halfway = state(gpu)
        second = handoff(host_paths.run, "detach", gpu.audio.short)
        assert second.returncode == 2, second.stdout + second.stderr
        assert (
            f"handoff: refusing the hand-off: another handoff (pid {first.pid} (handoff detach)) "
            f"holds IOMMU group {gpu.group}" in second.stderr
        ), second.stderr
        assert "fix:" in second.stderr
        assert "Traceback" not in second.stderr
        assert state(gpu) == halfway  # the loser changed nothing
        os.kill(first.pid, signal.SIGCONT)
        out, _ = first.communicate(timeout=WAIT)
        assert first.returncode == 0, out
    finally:
        if first.returncode is None:
            first.kill()
            first.communicate()
    assert state(gpu) == on_vfio(gpu)
    assert len(jr.list_journals(host_paths)) == 1
    attach = handoff(host_paths.run, "attach", gpu.audio.short)
    assert attach.returncode == 0, attach.stdout + attach.stderr
    assert state(gpu) == on_host_drivers(gpu)
    assert raw_overrides(gpu) == ["(null)", "(null)"]
    assert jr.list_journals(host_paths) == []
