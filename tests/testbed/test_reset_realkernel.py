"""The reset ladder and a pinned reset on a real kernel (the testbed's 6.1).

The GPU lookalike (bochs-display 06.0 + ich9-intel-hda 06.1, one IOMMU
group) is handed off by the real `handoff detach` and returned by the real
`handoff attach`, which runs the same Engine.give_back (and so the same
ladder) as a session's release and `handoff recover`.

What is forced: QEMU's devices cannot be made to read 0xffff from inside
the guest, so the attach process is started with the test-only hook
reset_sysfs.DEAD_CONFIG_ENV, which makes a function's config space read as
dead while its sysfs directory is the one the test saw, i.e. until the
kernel re-creates the device. The lookalike has no reset method (no
``reset`` file), so the ladder's first rung is skipped as on a card without
one, and the remove + rescan that follows is the kernel's own. The SIGKILL
tests kill that process after each of the ladder's sysfs writes and journal
writes; `handoff recover` (in this process, without the hook) finishes.

A pinned ``reset`` uses the e1000e: its reset_method is ``pm`` on this
kernel (the lookalike's functions have none).
"""

from __future__ import annotations

import functools
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.errors import PreflightRefusedError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.ops import CRASH_AFTER_SYSFS_ENV, KernelWriter
from handoff.pci.reset_sysfs import DEAD_CONFIG_ENV
from handoff.pci.resource import GpuHandoff
from handoff.profile import parse_profile
from handoff.session.recovery import run_recover
from tests.testbed import guest
from tests.testbed.devices import GpuLookalike

pytestmark = [pytest.mark.realkernel, pytest.mark.usefixtures("vfio_pci")]

CHECKOUT = Path(__file__).resolve().parents[2]
WAIT = 180.0
PCI = Path("/sys/bus/pci")
# The ladder's sysfs writes for the dead lookalike: remove 06.1, remove 06.0, rescan.
LADDER_WRITES = 3
# Its journal writes: the card's step (rescanning), then each function dropped once back.
LADDER_JOURNAL_WRITES = 3


def on_bus(address: PciAddress) -> bool:
    return guest.device_dir(address).is_dir()


@contextmanager
def back_on_the_bus(gpu: GpuLookalike) -> Iterator[None]:
    """Whatever the test did, the lookalike is on the bus afterwards, in one IOMMU group."""
    try:
        yield
    finally:
        if not all(on_bus(f) for f in gpu.functions):
            (PCI / "rescan").write_text("1")
        for function in gpu.functions:
            guest.wait_for(functools.partial(on_bus, function), f"{function} back on the bus")
            override = guest.device_dir(function) / "driver_override"
            if override.read_text().strip() != "(null)":
                guest.release_override(function)
    assert guest.group_members(guest.iommu_group_of(gpu.vga)) == sorted(gpu.functions), (
        "the lookalike's functions are no longer in one IOMMU group after the rescan: every "
        "later test would see two groups (devices.qemu_args sets multifunction on 06.1 for this)"
    )


def handoff(run: Path, *argv: str, **hooks: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HANDOFF_TEST_")}
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env={**env, "HANDOFF_RUN_DIR": str(run), **hooks},
        cwd=CHECKOUT, capture_output=True, text=True, check=False, timeout=WAIT,
    )  # fmt: skip


def dead_hook(gpu: GpuLookalike) -> dict[str, str]:
    """Both functions read as dead until the kernel re-creates them."""
    items = [f"{f}@{guest.device_dir(f).stat().st_ino}" for f in gpu.functions]
    return {DEAD_CONFIG_ENV: ",".join(items)}


def state(gpu: GpuLookalike) -> dict[str, tuple[str | None, str]]:
    return {
        f.short: (guest.driver_of(f),
                  (guest.device_dir(f) / "driver_override").read_text().strip())
        for f in gpu.functions
    }  # fmt: skip


def detach(run: Path, gpu: GpuLookalike) -> None:
    done = handoff(run, "detach", gpu.vga.short)
    assert done.returncode == 0, done.stdout + done.stderr
    assert {d for d, _ in state(gpu).values()} == {"vfio-pci"}


def test_a_dead_lookalike_is_removed_rescanned_and_returned_with_its_overrides(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths
) -> None:
    gpu = gpu_lookalike
    group = gpu.group
    with back_on_the_bus(gpu):
        # The audio function starts with an override of the person's own: it must come
        # back although the rescan makes a new device without one.
        (guest.device_dir(gpu.audio) / "driver_override").write_text("snd_hda_intel")
        detach(host_paths.run, gpu)
        before = {f: guest.device_dir(f).stat().st_ino for f in gpu.functions}
        attach = handoff(host_paths.run, "attach", gpu.vga.short, **dead_hook(gpu))
        output = attach.stdout + attach.stderr
        assert attach.returncode == 0, output
        assert "reads ffff (dead)" in output
        assert "removing the card's functions and rescanning the PCI bus" in output
        assert "the card answers again" in output
        # Re-created by the kernel (new sysfs directories), on their host drivers.
        assert all(guest.device_dir(f).stat().st_ino != before[f] for f in gpu.functions)
        assert state(gpu) == {gpu.vga.short: ("bochs-drm", "(null)"),
                              gpu.audio.short: ("snd_hda_intel", "snd_hda_intel")}
        assert jr.list_journals(host_paths) == []
    assert guest.iommu_group_of(gpu.vga) == group


@pytest.mark.parametrize("writes", range(1, LADDER_WRITES + 1))
async def test_recover_finishes_a_ladder_sigkilled_after_each_sysfs_write(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths, writes: int
) -> None:
    gpu = gpu_lookalike
    with back_on_the_bus(gpu):
        detach(host_paths.run, gpu)
        crashed = handoff(host_paths.run, "attach", gpu.vga.short, **dead_hook(gpu),
                          **{CRASH_AFTER_SYSFS_ENV: str(writes)})  # fmt: skip
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        (path,) = jr.list_journals(host_paths)
        steps = {d.step for d in jr.Journal.load(path).devices}
        assert steps == {jr.DeviceStep.RESCANNING}, steps
        lines: list[str] = []
        assert await run_recover(host_paths, KernelWriter(), out=lines.append) == 0, lines
        assert state(gpu) == {gpu.vga.short: ("bochs-drm", "(null)"),
                              gpu.audio.short: ("snd_hda_intel", "(null)")}, lines
        assert jr.list_journals(host_paths) == []


@pytest.mark.parametrize("writes", range(1, LADDER_JOURNAL_WRITES + 1))
async def test_recover_finishes_a_ladder_sigkilled_after_each_journal_write(
    gpu_lookalike: GpuLookalike, host_paths: HostPaths, writes: int
) -> None:
    gpu = gpu_lookalike
    with back_on_the_bus(gpu):
        detach(host_paths.run, gpu)
        crashed = handoff(host_paths.run, "attach", gpu.vga.short, **dead_hook(gpu),
                          **{jr.CRASH_AFTER_ENV: str(writes)})  # fmt: skip
        assert crashed.returncode == -signal.SIGKILL, crashed.stdout + crashed.stderr
        lines: list[str] = []
        assert await run_recover(host_paths, KernelWriter(), out=lines.append) == 0, lines
        assert state(gpu) == {gpu.vga.short: ("bochs-drm", "(null)"),
                              gpu.audio.short: ("snd_hda_intel", "(null)")}, lines
        assert jr.list_journals(host_paths) == []


def reset_method(address: PciAddress) -> str:
    return (guest.device_dir(address) / "reset_method").read_text().strip()


def e1000e_profile(tmp_path: Path, address: PciAddress, reset: str) -> GpuHandoff:
    profile = parse_profile(
        f'[vm]\nname = "tb-reset"\nmemory = "256M"\n[[passthrough]]\n'
        f'address = "{address.short}"\nreset = "{reset}"\n',
        tmp_path / "tb-reset.toml",
    )
    return GpuHandoff(profile, HostPaths.from_environment(), memlock_check=lambda *_: None)


async def test_a_pinned_reset_is_written_for_the_session_and_restored_after(
    e1000e: PciAddress, host_paths: HostPaths, tmp_path: Path
) -> None:
    assert reset_method(e1000e) == "pm"
    gpu = e1000e_profile(tmp_path, e1000e, "none")
    await gpu.acquire()
    try:
        assert guest.driver_of(e1000e) == "vfio-pci"
        assert reset_method(e1000e) == ""  # every reset disabled for the session
        (path,) = jr.list_journals(host_paths)
        (record,) = jr.Journal.load(path).devices
        assert record.reset_method == "pm"  # journaled before the write
    finally:
        await gpu.release()
    assert guest.driver_of(e1000e) == "e1000e"
    assert reset_method(e1000e) == "pm"
    assert jr.list_journals(host_paths) == []


async def test_a_reset_the_kernel_does_not_offer_is_refused_and_nothing_changes(
    e1000e: PciAddress, host_paths: HostPaths, tmp_path: Path
) -> None:
    gpu = e1000e_profile(tmp_path, e1000e, "flr")
    with pytest.raises(PreflightRefusedError) as refused:
        await gpu.acquire()
    assert "the kernel offers" in refused.value.message
    assert "only these reset methods: pm" in refused.value.message
    assert refused.value.fix == 'set reset to one of "auto", "none", "pm"'
    assert guest.driver_of(e1000e) == "e1000e"
    assert reset_method(e1000e) == "pm"
    assert jr.list_journals(host_paths) == []
