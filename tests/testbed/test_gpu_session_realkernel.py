"""`handoff run` with the GPU lookalike on a real kernel, for every way a session ends.

Inside the testbed VM, a profile passes bochs-display (06.0) and its
ich9-intel-hda function (06.1) to a nested QEMU that runs firmware only.
While QEMU runs both functions are on vfio-pci; afterwards they are back on
bochs-drm and snd_hda_intel, whether the session ended by `handoff stop`
(QMP quit), QEMU SIGKILLed, the supervisor interrupted (SIGINT) or
terminated (SIGTERM), or the supervisor SIGKILLed after any journal write
and `handoff recover` run afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.ops import CRASH_AFTER_SYSFS_ENV
from handoff.pci.sysfs import read_device
from tests.lines import wait_for_line as read_lines
from tests.testbed import devices, guest

pytestmark = [
    pytest.mark.realkernel,
    pytest.mark.usefixtures("testbed_gpu"),  # no IOMMU or lookalike: fail, never skip
]

CHECKOUT = Path(__file__).resolve().parents[2]
NAME = "gputb"
WAIT = 180.0  # seconds for a nested TCG QEMU to come up or a session to end
State = dict[str, tuple[str | None, str | None]]


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[Path]:
    run = tmp_path / "run"
    yield run
    # Whatever happened: no QEMU left, no device left on vfio-pci.
    guest.kill_recorded_qemus(run)
    handoff(run, "recover")


def lookalike() -> tuple[PciAddress, PciAddress]:
    return devices.find_one(devices.BOCHS_DISPLAY), devices.find_one(devices.ICH9_HDA)


def state() -> State:
    vga, audio = lookalike()
    result: State = {}
    for address in (vga, audio):
        device = read_device(HostPaths(), address)
        result[address.short] = (device.driver, device.driver_override)
    return result


def profile(tmp_path: Path, vm_extra: str = "", tables: str = "") -> Path:
    vga, audio = lookalike()
    path = tmp_path / f"{NAME}.toml"
    path.write_text(
        f"""
[vm]
name = "{NAME}"
memory = "64M"
cpus = 1
accel = "tcg"
shutdown_timeout = 2
{vm_extra}

[display]
vga = "none"
frontend = "none"

[input]
backend = "none"

[[passthrough]]
address = "{vga.short}"
multifunction = true

[[passthrough]]
address = "{audio.short}"
{tables}
"""
    )
    return path


def env(run: Path, crash_after: int | None = None) -> dict[str, str]:
    result = {**os.environ, "HANDOFF_RUN_DIR": str(run)}
    if crash_after is not None:
        result[jr.CRASH_AFTER_ENV] = str(crash_after)
    return result


def handoff(run: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env=env(run),
        cwd=CHECKOUT,
        capture_output=True,
        text=True,
        check=False,
        timeout=WAIT,
    )


def start(run: Path, profile_path: Path, crash_after: int | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(profile_path)],
        env=env(run, crash_after),
        cwd=CHECKOUT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def wait_for_line(session: subprocess.Popen[str], text: str) -> list[str]:
    return read_lines(session, text, wait=WAIT)


def finish(session: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = session.communicate(timeout=WAIT)
    return session.returncode, out


def qemu_pid(run: Path) -> int:
    pid = jr.Journal.load(jr.journal_path(HostPaths(run=run), NAME)).qemu_pid
    assert pid is not None
    return pid


def running(tmp_path: Path, run: Path) -> tuple[subprocess.Popen[str], State]:
    before = state()
    session = start(run, profile(tmp_path))
    wait_for_line(session, "QMP connected")
    vga, audio = lookalike()
    assert state() == {
        vga.short: ("vfio-pci", "vfio-pci"),
        audio.short: ("vfio-pci", "vfio-pci"),
    }
    assert_qemu_holds_the_group(run)
    return session, before


def assert_qemu_holds_the_group(run: Path) -> None:
    """QEMU's argv passes both functions to vfio-pci and it has /dev/vfio/<group> open."""
    vga, audio = lookalike()
    group = read_device(HostPaths(), vga).iommu_group
    assert group is not None
    pid = qemu_pid(run)
    argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    for function in (vga, audio):
        assert any(
            a.startswith(b"vfio-pci,") and f"host={function}".encode() in a.split(b",")
            for a in argv
        ), argv
    node = f"/dev/vfio/{group}"

    def holds() -> bool:
        fds = Path(f"/proc/{pid}/fd")
        return any(os.readlink(fd) == node for fd in fds.iterdir())

    guest.wait_for(holds, f"QEMU (pid {pid}) to hold {node}")


def test_stop_quits_qemu_and_the_devices_return(tmp_path: Path, run_dir: Path) -> None:
    session, before = running(tmp_path, run_dir)
    assert handoff(run_dir, "stop", NAME, "--force").returncode == 0
    code, out = finish(session)
    assert code == 0, out
    assert "released gpu" in out
    assert state() == before
    assert jr.list_journals(HostPaths(run=run_dir)) == []


def test_qemu_sigkilled_the_devices_return(tmp_path: Path, run_dir: Path) -> None:
    session, before = running(tmp_path, run_dir)
    os.kill(qemu_pid(run_dir), signal.SIGKILL)
    code, out = finish(session)
    assert code == 1, out
    assert "released gpu" in out
    assert state() == before


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_the_supervisor_signalled_returns_the_devices(
    tmp_path: Path, run_dir: Path, sig: signal.Signals
) -> None:
    session, before = running(tmp_path, run_dir)
    session.send_signal(sig)
    code, out = finish(session)
    assert "released gpu" in out
    assert state() == before
    assert code == {signal.SIGINT: 130, signal.SIGTERM: 143}[sig], out


# Journal writes of a session with the two-function group: 1 (records) +
# 2 per device detaching + 1 (QEMU's pid), then 1 per device returned.
QEMU_NOTED = 6
SESSION_WRITES = 8


@pytest.mark.parametrize("writes", range(1, SESSION_WRITES + 1))
def test_the_supervisor_sigkilled_after_any_journal_write_is_finished_by_recover(
    tmp_path: Path, run_dir: Path, writes: int
) -> None:
    before = state()
    session = start(run_dir, profile(tmp_path), crash_after=writes)
    if writes > QEMU_NOTED:
        wait_for_line(session, "QMP connected")
        assert handoff(run_dir, "stop", NAME, "--force").returncode == 0
    code, out = finish(session)
    assert code == -signal.SIGKILL, out
    if writes == QEMU_NOTED:
        # QEMU outlived its supervisor and still holds the group: recover refuses.
        pid = qemu_pid(run_dir)
        refused = handoff(run_dir, "recover")
        assert refused.returncode == 1
        assert f"pid {pid}" in refused.stdout
        os.kill(pid, signal.SIGKILL)
        _wait_gone(pid)
    recovered = handoff(run_dir, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert state() == before
    assert jr.list_journals(HostPaths(run=run_dir)) == []


def _wait_gone(pid: int) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except FileNotFoundError:
            return
        if "\nState:\tZ" in status:  # a zombie holds no fd any more
            return
        time.sleep(0.05)  # polling a pid: there is no event for another process's exit
    raise AssertionError(f"QEMU pid {pid} did not exit after SIGKILL")


# A boot sector for SeaBIOS: write PVPANIC_PANICKED to the pvpanic ISA device's port.
PANIC_BOOT_SECTOR = bytes(
    [
        0xBA, 0x05, 0x05,  # mov dx, 0x505
        0xB0, 0x01,        # mov al, 1
        0xEE,              # out dx, al   -> GUEST_PANICKED, SHUTDOWN guest-panic
        0xF4,              # hlt
        0xEB, 0xFD,        # jmp back to hlt
    ]
)  # fmt: skip


def test_a_guest_panic_ends_the_session_with_1_and_the_devices_return(
    tmp_path: Path, run_dir: Path
) -> None:
    disk = tmp_path / "panic.img"
    disk.write_bytes((PANIC_BOOT_SECTOR.ljust(510, b"\0") + b"\x55\xaa").ljust(1 << 20, b"\0"))
    before = state()
    panicking = profile(
        tmp_path,
        vm_extra='extra_args = ["-device", "pvpanic"]',
        tables=f'[[disk]]\npath = "{disk}"\nformat = "raw"\ninterface = "virtio"',
    )
    session = start(run_dir, panicking)
    code, out = finish(session)
    assert code == 1, out
    assert "GUEST_PANICKED" in out
    assert "the guest panicked" in out
    assert "released gpu" in out
    assert state() == before
    assert jr.list_journals(HostPaths(run=run_dir)) == []


# Sysfs writes of the session: 3 per function to detach, then 3 per function to
# return; the 8th leaves the first returned function on no driver, the other on
# vfio-pci, QEMU already gone.
RETURN_HALFWAY = 8


def test_the_supervisor_sigkilled_between_two_sysfs_writes_of_the_return(
    tmp_path: Path, run_dir: Path
) -> None:
    before = state()
    session = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", str(profile(tmp_path))],
        env={**env(run_dir), CRASH_AFTER_SYSFS_ENV: str(RETURN_HALFWAY)},
        cwd=CHECKOUT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip
    wait_for_line(session, "QMP connected")
    assert_qemu_holds_the_group(run_dir)
    assert handoff(run_dir, "stop", NAME, "--force").returncode == 0
    code, out = finish(session)
    assert code == -signal.SIGKILL, out
    halfway = state()
    assert sorted(halfway.values(), key=str) == sorted(
        [(None, None), ("vfio-pci", "vfio-pci")], key=str
    ), halfway
    recovered = handoff(run_dir, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert "returned: " in recovered.stdout
    assert state() == before
    assert jr.list_journals(HostPaths(run=run_dir)) == []
