"""Fixtures for the tests that start the real qemu-system-x86_64.

Every QEMU here is tiny (TCG, 32 MiB, no devices) and short-lived: the host
has two cores shared with other work. Nothing here mocks QEMU or QMP.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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
        pytest.skip(f"{QEMU} is not installed (contrib/install.sh --dev installs it)")


@pytest.fixture
def log_path(tmp_path: Path) -> Path:
    return tmp_path / "qemu.log"
