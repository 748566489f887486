"""Fixtures for the tests that start the real qemu-system-x86_64.

Every QEMU here is tiny (TCG, 32 MiB, no devices) and short-lived: the host
has two cores shared with other work. Nothing here mocks QEMU or QMP.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.host_requirements import missing

QEMU = "qemu-system-x86_64"


def bare_argv(monitor_fd: int, *extra: str) -> list[str]:
    """The smallest QEMU that speaks QMP on an inherited socket (paused: no guest runs)."""
    return [
        QEMU,
        "-nodefaults",
        "-machine",
        "q35",
        "-accel",
        "tcg",
        "-m",
        "32",
        "-display",
        "none",
        "-chardev",
        f"socket,id=qmp,fd={monitor_fd}",
        "-mon",
        "chardev=qmp,mode=control",
        *extra,
    ]


@pytest.fixture(autouse=True)
def _needs_qemu() -> None:
    if shutil.which(QEMU) is None:
        missing(f"{QEMU} is not installed (contrib/install.sh --dev installs it)")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "qemu.log"


# --------------------------------------------------------------------------- sessions

POWER_OFF_BOOT_SECTOR = bytes(
    [
        0xBA, 0x04, 0x06,  # mov dx, 0x604   (q35 ACPI PM1a control, PMBASE 0x600 + 4)
        0xB8, 0x00, 0x20,  # mov ax, 0x2000  (SLP_EN, sleep type S5)
        0xEF,              # out dx, ax      -> QEMU: SHUTDOWN guest-shutdown
        0xF4,              # hlt
        0xEB, 0xFD,        # jmp back to hlt
    ]
)  # fmt: skip


PANIC_BOOT_SECTOR = bytes(
    [
        0xBA, 0x05, 0x05,  # mov dx, 0x505   (the pvpanic ISA device's port)
        0xB0, 0x01,        # mov al, 1       (PVPANIC_PANICKED)
        0xEE,              # out dx, al      -> QEMU: GUEST_PANICKED, SHUTDOWN guest-panic
        0xF4,              # hlt
        0xEB, 0xFD,        # jmp back to hlt
    ]
)  # fmt: skip


def write_boot_disk(path: Path, code: bytes) -> Path:
    """A raw disk whose boot sector (SeaBIOS runs it at 0x7c00) is ``code``."""
    sector = code.ljust(510, b"\0") + b"\x55\xaa"
    path.write_bytes(sector.ljust(1024 * 1024, b"\0"))  # SeaBIOS skips tiny disks
    return path


def write_power_off_disk(path: Path) -> Path:
    """A guest that powers the q35 machine off as soon as it boots."""
    return write_boot_disk(path, POWER_OFF_BOOT_SECTOR)


def write_profile(
    directory: Path,
    name: str = "t",
    *,
    shutdown_timeout: float = 1,
    extra_args: tuple[str, ...] = (),
    disk: Path | None = None,
    user: str | None = None,
) -> Path:
    """A demo-like profile: TCG, 32 MiB, no devices, short shutdown timeout."""
    lines = [
        "[vm]",
        f'name = "{name}"',
        'memory = "32M"',
        "cpus = 1",
        'accel = "tcg"',
        f"shutdown_timeout = {shutdown_timeout}",
    ]
    if user is not None:
        lines.append(f'user = "{user}"')
    if extra_args:
        lines.append("extra_args = [" + ", ".join(f'"{a}"' for a in extra_args) + "]")
    if disk is not None:
        lines += ["[[disk]]", f'path = "{disk}"', 'format = "raw"', 'interface = "virtio"']
    lines += ["[display]", 'vga = "none"', 'frontend = "none"']
    path = directory / f"{name}.toml"
    path.write_text("\n".join(lines) + "\n")
    return path


def pid_gone(pid: int) -> bool:
    """True when no process ``pid`` exists (reaped, not a zombie)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False
