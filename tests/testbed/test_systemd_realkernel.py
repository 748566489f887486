"""The testbed's systemd boot: the host's systemd is PID 1 of a real-kernel VM.

These run in the second boot of a pytest run (``realkernel(init="systemd")``,
runner.Init.SYSTEMD) and prove what the CPU-isolation and display-manager
work needs of it: a finished boot, the cgroup v2 unified hierarchy with the
cpuset controller, ``AllowedCPUs`` on a slice applied and reset, SMT siblings,
and contrib's ``handoff@.service`` started, stopped and recovered by systemd.
A missing capability fails (never skips).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.testbed import guest, runner

pytestmark = [pytest.mark.realkernel(init="systemd"), pytest.mark.usefixtures("systemd_boot")]

CGROUP = Path("/sys/fs/cgroup")
CHECKOUT = Path(__file__).resolve().parents[2]
SHIPPED_UNIT = CHECKOUT / "contrib" / "systemd" / "handoff@.service"
UNIT_DIR = Path("/etc/systemd/system")
PROFILE_DIR = Path("/etc/handoff/profiles")
#: A profile that needs nothing of the host (like profiles/demo.toml), TCG inside TCG.
TB_PROFILE = """\
[vm]
name = "tb"
memory = "64M"
cpus = 1
accel = "tcg"
shutdown_timeout = 5

[display]
vga = "none"
frontend = "none"

[input]
backend = "none"
"""
#: Generous bounds: a nested TCG QEMU under a loaded 2-core host is slow.
START_TIMEOUT = 600.0
#: The shipped unit's TimeoutStopSec is 520 s; systemctl stop waits for it at most.
STOP_TIMEOUT = 600.0


def run(*argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def systemctl(*args: str, timeout: float = 120.0) -> str:
    result = run("systemctl", "--no-pager", *args, timeout=timeout)
    assert result.returncode == 0, f"systemctl {' '.join(args)}: {result.stdout}{result.stderr}"
    return result.stdout


def cpu_list(text: str) -> list[int]:
    """The kernel's CPU list format: "0-1,4" -> [0, 1, 4]."""
    cpus: list[int] = []
    for part in text.strip().split(","):
        if part:
            first, _, last = part.partition("-")
            cpus += range(int(first), int(last or first) + 1)
    return cpus


# ---------------------------------------------------------------- the boot


def test_pid_1_is_the_hosts_systemd() -> None:
    assert Path("/proc/1/comm").read_text().strip() == "systemd"
    assert os.path.realpath("/proc/1/exe") == os.path.realpath("/lib/systemd/systemd")
    assert systemctl("get-default").strip() == runner.SYSTEMD_TARGET


def test_the_boot_finishes_running_with_no_failed_unit(systemd_boot: str) -> None:
    failed = run("systemctl", "--no-pager", "--failed", "--plain", "--no-legend").stdout
    details = run("systemctl", "--no-pager", "status", "--failed", "--lines=5").stdout
    assert (systemd_boot, failed.strip()) == ("running", ""), (
        f"is-system-running: {systemd_boot}; failed units:\n{failed}\n{details}"
    )


def test_the_boot_is_lean_no_login_network_clock_or_timers() -> None:
    for unit in ("serial-getty@.service", "systemd-networkd.service",
                 "systemd-timesyncd.service", "timers.target"):  # fmt: skip
        assert run("systemctl", "is-enabled", unit).stdout.strip() == "masked", unit
    active = systemctl("list-units", "--state=active", "--plain", "--no-legend", "--type=service")
    names = {line.split()[0] for line in active.splitlines() if line.strip()}
    assert not {n for n in names if "getty" in n or "networkd" in n or "timesyncd" in n}
    # journald keeps the journal in memory (/run), never on the overlay's /var.
    assert Path("/run/log/journal").is_dir()
    assert not any(Path("/var/log/journal").glob("*/system.journal"))


# ---------------------------------------------------------------- cgroups and CPUs


def test_cgroup_v2_is_the_unified_hierarchy_with_cpuset_for_slices() -> None:
    mounts = [line.split() for line in Path("/proc/self/mounts").read_text().splitlines()]
    cgroup_mounts = [(m[1], m[2]) for m in mounts if m[2] in ("cgroup", "cgroup2")]
    assert cgroup_mounts == [(str(CGROUP), "cgroup2")]
    assert "cpuset" in (CGROUP / "cgroup.controllers").read_text().split()
    assert (CGROUP / "system.slice").is_dir()


def slice_cpus(slice_dir: Path) -> list[int] | None:
    """The slice's cpuset.cpus; None when systemd disabled the cpuset controller there."""
    try:
        return cpu_list((slice_dir / "cpuset.cpus").read_text())
    except FileNotFoundError:
        return None


def test_allowed_cpus_on_system_slice_is_applied_and_reset() -> None:
    """This very test runs in system.slice (testbed.service): its own affinity follows."""
    online = cpu_list(Path("/sys/devices/system/cpu/online").read_text())
    assert len(online) >= 2, f"the systemd boot has {online}: runner.SYSTEMD_SMP is 4"
    assert "system.slice/" in Path("/proc/self/cgroup").read_text()
    slice_dir = CGROUP / "system.slice"
    try:
        systemctl("set-property", "--runtime", "system.slice", "AllowedCPUs=0")
        assert "cpuset" in (CGROUP / "cgroup.subtree_control").read_text().split()
        guest.wait_for(lambda: slice_cpus(slice_dir) == [0], "system.slice/cpuset.cpus = 0")
        assert cpu_list((slice_dir / "cpuset.cpus.effective").read_text()) == [0]
        guest.wait_for(lambda: os.sched_getaffinity(0) == {0}, "this process confined to CPU 0")
        shown = systemctl("show", "system.slice", "-p", "AllowedCPUs").strip()
        assert shown == "AllowedCPUs=0"
    finally:
        systemctl("set-property", "--runtime", "system.slice", "AllowedCPUs=")
    # Reset: no CPU list on the slice (systemd drops its cpuset), every CPU allowed again.
    assert systemctl("show", "system.slice", "-p", "AllowedCPUs").strip() == "AllowedCPUs="
    guest.wait_for(lambda: slice_cpus(slice_dir) in (None, [], online), "cpuset.cpus reset")
    guest.wait_for(
        lambda: sorted(os.sched_getaffinity(0)) == online, f"this process back on CPUs {online}"
    )


def test_smt_siblings_are_visible_two_threads_per_core() -> None:
    topology = Path("/sys/devices/system/cpu")
    siblings = {
        cpu: cpu_list((topology / f"cpu{cpu}" / "topology" / "thread_siblings_list").read_text())
        for cpu in cpu_list((topology / "online").read_text())
    }
    assert siblings[0] == [0, 1], f"thread siblings: {siblings} (-cpu max,vendor=GenuineIntel)"
    assert all(len(threads) == 2 for threads in siblings.values()), siblings
    core_ids = [(topology / f"cpu{c}/topology/core_id").read_text().strip() for c in siblings]
    assert len(set(core_ids)) == len(siblings) // 2


# ---------------------------------------------------------------- contrib's handoff@.service


def venv_dropin(handoff: Path) -> str:
    """The testbed's drop-in: the shipped unit's commands, run from this checkout's venv."""
    profile = PROFILE_DIR / "%i.toml"
    return (
        "[Service]\n"
        "ExecStartPre=\n"
        f"ExecStartPre=-{handoff} doctor {profile}\n"
        "ExecStart=\n"
        f"ExecStart={handoff} run {profile}\n"
        "ExecStopPost=\n"
        f"ExecStopPost={handoff} recover\n"
    )


def session_phase(handoff: Path) -> str | None:
    result = run(str(handoff), "status", "tb", "--json")
    if result.returncode != 0:
        return None
    return str(json.loads(result.stdout).get("phase"))


def unit_journal(unit: str) -> str:
    return run("journalctl", "--no-pager", "-o", "cat", "-u", unit).stdout


@pytest.fixture
def handoff_unit() -> Iterator[Path]:
    """contrib's handoff@.service in /etc/systemd/system (the overlay), a venv drop-in,
    and /etc/handoff/profiles/tb.toml; all removed afterwards. Yields the venv's handoff."""
    handoff = Path(sys.prefix) / "bin" / "handoff"
    assert handoff.is_file(), f"{handoff}: run `bash contrib/install.sh --dev` on the host"
    dropin_dir = UNIT_DIR / "handoff@tb.service.d"
    shutil.copy(SHIPPED_UNIT, UNIT_DIR / "handoff@.service")
    dropin_dir.mkdir(exist_ok=True)
    (dropin_dir / "testbed-venv.conf").write_text(venv_dropin(handoff))
    PROFILE_DIR.mkdir(parents=True, exist_ok=True)
    (PROFILE_DIR / "tb.toml").write_text(TB_PROFILE)
    systemctl("daemon-reload")
    try:
        yield handoff
    finally:
        run("systemctl", "stop", "handoff@tb.service", timeout=STOP_TIMEOUT)
        shutil.rmtree(dropin_dir, ignore_errors=True)
        (UNIT_DIR / "handoff@.service").unlink(missing_ok=True)
        (PROFILE_DIR / "tb.toml").unlink(missing_ok=True)
        run("systemctl", "daemon-reload")


def test_handoff_unit_starts_runs_stops_within_its_timeout_and_recovers(
    handoff_unit: Path,
) -> None:
    unit = "handoff@tb.service"
    shown = systemctl("show", unit, "-p", "ExecStart", "-p", "ExecStopPost", "-p", "DropInPaths")
    assert f"path={handoff_unit} ;" in shown, shown
    assert "testbed-venv.conf" in shown

    systemctl("start", unit, timeout=START_TIMEOUT)
    phase = guest.wait_for(
        lambda: session_phase(handoff_unit) == "running" or None,
        "`handoff status tb` to say running",
        timeout=START_TIMEOUT,
    )
    assert phase is True
    assert run("systemctl", "is-active", unit).stdout.strip() == "active"

    # Blocks until the unit has stopped: the supervisor's shutdown ladder, then ExecStopPost.
    systemctl("stop", unit, timeout=STOP_TIMEOUT)
    state = systemctl("show", unit, "-p", "ActiveState", "-p", "Result").split()
    journal = unit_journal(unit)
    assert "ActiveState=inactive" in state, f"{state}\n{journal}"
    assert "Result=timeout" not in state, f"systemd killed it at TimeoutStopSec:\n{journal}"
    assert "Result=exit-code" not in state, journal
    assert "timed out" not in journal, journal
    # ExecStopPost ran `handoff recover`: a session with no devices left nothing behind.
    assert "nothing to recover" in journal, journal
    assert session_phase(handoff_unit) is None
