"""Secure Boot enforced end to end, under the real `handoff run` (TCG, this host's QEMU).

The disks (tests/qemu/secureboot_image.py) carry Debian's signed chain: shim
signed by Microsoft's UEFI CA → GRUB signed by Debian → the signed Debian
kernel, and a busybox init that prints the SecureBoot EFI variable (efivarfs)
and the kernel's "secureboot:" line on the serial console, then powers off.

* With ``secure_boot = true`` handoff picks the firmware from QEMU's
  descriptors (Debian: OVMF_CODE_4M.ms.fd + OVMF_VARS_4M.ms.fd, Microsoft's
  keys enrolled), adds smm=on and secure pflash; the chain boots and the guest
  reports Secure Boot on.
* The same partition with the unsigned GRUB (the very image Debian signs,
  without its signature) as the boot loader is refused by the firmware
  ("Access Denied") and never reaches GRUB.
* The control: that unsigned disk boots with ``secure_boot = false`` (plain
  OVMF from the descriptors), so the refusal above is the enforcement, not a
  broken disk. Its vars copy records its template, and turning Secure Boot on
  for that VM afterwards is refused, the vars file untouched.

One boot per case (about 15-20 s each under TCG here).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.qemu.secureboot_image import (
    DONE_MARKER,
    SB_MARKER,
    BootDisks,
    ensure_boot_disks,
    missing_packages,
)

pytestmark = pytest.mark.qemu

#: Generous bounds for a TCG boot on a busy 2-core machine (measured: ~17 s idle).
BOOT_LIMIT = 600.0
MS_CODE = "/usr/share/OVMF/OVMF_CODE_4M.ms.fd"
MS_VARS = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd"
PLAIN_VARS = "/usr/share/OVMF/OVMF_VARS_4M.fd"


@pytest.fixture(scope="module")
def disks() -> BootDisks:
    missing = missing_packages()
    if missing:
        pytest.fail(f"missing Debian packages {missing}: run contrib/install.sh --dev")
    return ensure_boot_disks()


def write_profile(directory: Path, name: str, disk: Path, *, secure_boot: bool) -> Path:
    console = directory / f"{name}.console"
    text = f"""
[vm]
name = "{name}"
memory = "384M"
cpus = 1
accel = "tcg"
shutdown_timeout = 2
extra_args = ["-serial", "file:{console}"]

[firmware]
type = "ovmf"
secure_boot = {"true" if secure_boot else "false"}

[[disk]]
path = "{disk}"
readonly = true
"""
    path = directory / f"{name}.toml"
    path.write_text(text)
    return path


def handoff(directory: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HANDOFF_RUN_DIR": str(directory / "run")}
    return subprocess.run(
        [sys.executable, "-m", "handoff", *args], env=env, capture_output=True, text=True,
        timeout=timeout, check=False,
    )


def console(profile: Path) -> str:
    path = profile.with_suffix(".console")
    return path.read_text(errors="replace").replace("\r", "") if path.exists() else ""


def boot_to_poweroff(directory: Path, profile: Path) -> str:
    """`handoff run` until the guest powers off; its console."""
    done = handoff(directory, "run", str(profile), timeout=BOOT_LIMIT)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "the guest powered off" in done.stdout
    return console(profile)


def secure_boot_value(text: str) -> int | None:
    """The SecureBoot variable's value as the guest printed it (None: no variable)."""
    match = re.search(re.escape(SB_MARKER) + r"([0-9 ]*)", text)
    assert match is not None, text[-2000:]
    values = match[1].split()
    return int(values[4]) if len(values) == 5 else None


def test_the_signed_chain_boots_with_secure_boot_enforced(tmp_path: Path, disks: BootDisks) -> None:
    profile = write_profile(tmp_path, "sb-signed", disks.signed, secure_boot=True)
    shown = handoff(tmp_path, "argv", str(profile))
    assert shown.returncode == 0, shown.stderr
    argv = shown.stdout.split()
    assert "q35,accel=tcg,smm=on" in argv
    assert "driver=cfi.pflash01,property=secure,value=on" in argv
    assert f"if=pflash,format=raw,unit=0,readonly=on,file={MS_CODE}" in argv

    text = boot_to_poweroff(tmp_path, profile)
    assert "Welcome to GRUB!" in text
    assert DONE_MARKER in text
    assert secure_boot_value(text) == 1  # efivarfs: SecureBoot-8be4df61-... = 1
    assert "secureboot: Secure boot enabled" in text
    assert "Kernel is locked down from EFI Secure Boot" in text
    # The vars copy came from the template with Microsoft's keys, and says so.
    vars_file = tmp_path / "sb-signed.OVMF_VARS.fd"
    assert vars_file.exists()
    assert (tmp_path / "sb-signed.OVMF_VARS.fd.template").read_text().strip() == MS_VARS


def test_an_unsigned_boot_loader_is_refused_by_the_firmware(
    tmp_path: Path, disks: BootDisks
) -> None:
    profile = write_profile(tmp_path, "sb-unsigned", disks.unsigned, secure_boot=True)
    env = {**os.environ, "HANDOFF_RUN_DIR": str(tmp_path / "run")}
    output = tmp_path / "run.out"
    with output.open("w") as out:
        run = subprocess.Popen(
            [sys.executable, "-m", "handoff", "run", str(profile)], env=env,
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + BOOT_LIMIT
        while "No bootable option or device was found" not in console(profile):
            assert run.poll() is None, output.read_text()
            assert time.monotonic() < deadline, console(profile)[-2000:]
            time.sleep(0.5)
        stopped = handoff(tmp_path, "stop", "sb-unsigned")
        assert stopped.returncode == 0, stopped.stderr
        assert run.wait(timeout=120) == 0
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()
    text = console(profile)
    assert re.search(r'failed to load Boot0001 "UEFI Misc Device" .*: Access Denied', text)
    assert "Welcome to GRUB!" not in text
    assert SB_MARKER not in text


def test_without_secure_boot_the_unsigned_disk_boots_and_the_vars_are_kept_from_a_switch(
    tmp_path: Path, disks: BootDisks
) -> None:
    profile = write_profile(tmp_path, "sb-off", disks.unsigned, secure_boot=False)
    text = boot_to_poweroff(tmp_path, profile)
    assert "Welcome to GRUB!" in text
    assert secure_boot_value(text) in (None, 0)
    assert "secureboot: Secure boot disabled" in text
    vars_file = tmp_path / "sb-off.OVMF_VARS.fd"
    assert (tmp_path / "sb-off.OVMF_VARS.fd.template").read_text().strip() == PLAIN_VARS
    before = vars_file.read_bytes()

    # The same VM with Secure Boot turned on: its vars came from the keyless
    # template, so handoff refuses rather than boot them (or replace them) silently.
    write_profile(tmp_path, "sb-off", disks.unsigned, secure_boot=True)
    refused = handoff(tmp_path, "run", str(profile))
    assert refused.returncode == 2
    lines = refused.stderr.strip().splitlines()
    assert len(lines) == 2, refused.stderr  # the message and its fix, no traceback
    assert f"was copied from {PLAIN_VARS}" in lines[0]
    assert f"now asks for {MS_VARS} (with Secure Boot)" in lines[0]
    assert f"mv {vars_file} {vars_file}.old" in lines[1]
    assert vars_file.read_bytes() == before
    assert not (tmp_path / "run" / "sb-off").exists()
