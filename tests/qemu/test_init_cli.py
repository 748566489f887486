"""`handoff init` on this host, and `handoff run` of the profile it wrote (real QEMU, TCG).

This host has no IOMMU: init must say so with the fix and refuse, unless asked
for a profile without passthrough (``--gpu none``). That profile, with a qcow2
image qemu-img really creates, passes `handoff doctor` and `handoff run`
reaches "running" and ends on Ctrl-C.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from handoff.profile import DiskFormat, FirmwareType, load_profile
from tests.lines import wait_for_line as read_lines

REPO = Path(__file__).resolve().parents[2]
WAIT = 120.0


def handoff(tmp_path: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv], cwd=tmp_path, env=env(tmp_path),
        capture_output=True, text=True, check=False, timeout=WAIT,
    )


def env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "HANDOFF_RUN_DIR": str(tmp_path / "run"),
            "HANDOFF_PROFILE_DIR": str(tmp_path / "profiles")}


def iommu_on() -> bool:
    groups = Path("/sys/kernel/iommu_groups")
    return groups.is_dir() and any(groups.iterdir())


def test_without_an_iommu_init_explains_and_writes_nothing(tmp_path: Path) -> None:
    if iommu_on():
        pytest.skip("this host has an IOMMU; tests/testbed/test_init_realkernel.py covers it")
    done = handoff(tmp_path, "init", "vm")
    assert done.returncode == 2
    assert done.stderr.startswith("handoff: no GPU can be passed through: the IOMMU is off")
    assert "  fix: enable VT-d / AMD-Vi in the firmware setup" in done.stderr
    assert "--gpu none" in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "profiles").exists()


def test_a_gpu_less_profile_with_a_new_image_is_written_and_never_overwritten(
    tmp_path: Path,
) -> None:
    done = handoff(tmp_path, "init", "vm", "--gpu", "none", "--disk-size", "64M",
                   "--memory", "256M", "--input", "none")
    assert done.returncode == 0, done.stderr
    path = tmp_path / "profiles" / "vm.toml"
    assert done.stdout.splitlines()[0] == f"handoff init: wrote {path}"
    assert done.stdout.splitlines()[-2:] == ["next: handoff doctor vm", "then: handoff run vm"]
    profile = load_profile(path)
    (disk,) = profile.disks
    assert (disk.path, disk.format) == (tmp_path / "profiles" / "vm.qcow2", DiskFormat.QCOW2)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(disk.path)],
                                     capture_output=True, text=True, check=True).stdout)
    assert (info["format"], info["virtual-size"]) == ("qcow2", 64 << 20)

    again = handoff(tmp_path, "init", "vm", "--gpu", "none")
    assert again.returncode == 2
    assert "exists already; handoff init never overwrites a profile" in again.stderr
    assert load_profile(path) == profile
    image = handoff(tmp_path, "init", "vm", "--gpu", "none", "--disk-size", "8G", "--force")
    assert image.returncode == 2
    assert "vm.qcow2 exists already" in image.stderr
    assert load_profile(path) == profile


def test_the_profile_init_wrote_passes_doctor_and_runs_until_ctrl_c(tmp_path: Path) -> None:
    done = handoff(tmp_path, "init", "vm", "--gpu", "none", "--memory", "256M",
                   "--input", "none")
    assert done.returncode == 0, done.stderr
    profile = load_profile(tmp_path / "profiles" / "vm.toml")
    doctor = handoff(tmp_path, "doctor", "vm")
    print(doctor.stdout)
    assert doctor.returncode in (0, 1), doctor.stdout  # no check fails
    session = subprocess.Popen(
        [sys.executable, "-m", "handoff", "run", "vm"], cwd=tmp_path, env=env(tmp_path),
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        wait_for_line(session, "handoff: running")
        session.send_signal(signal.SIGINT)
        wait_for_line(session, "SIGINT: stopping")
        session.send_signal(signal.SIGINT)  # again: no OS in the guest to power off
        out, _ = session.communicate(timeout=WAIT)
    finally:
        if session.poll() is None:
            session.kill()
            session.wait()
    assert session.returncode == 130, out
    assert "handoff: ended: stopped on SIGINT" in out
    if profile.firmware.type is FirmwareType.OVMF:  # the VM's own vars copy, next to it
        assert profile.firmware.vars is not None
        assert profile.firmware.vars.is_file()


def wait_for_line(session: subprocess.Popen[str], text: str) -> list[str]:
    return read_lines(session, text, wait=WAIT)
