"""A group holding the boot GPU and another device, on a real kernel: refused, console or not.

The testbed's boot GPU (cirrus-vga at 0b.0, boot_vga=1) shares its slot, and
so its IOMMU group, with pci-testdev at 0b.1 (devices.py): a group holding
the boot GPU and another device. (Two cards in one group, the boot GPU's and
the wanted one, is tests/unit/test_pci_rules.py's fake tree: on the testbed's
root bus only functions of one slot share a group.) Unbinding the framebuffer
console (what ``video=efifb:off`` does at boot) does not make the boot GPU
the guest's: `handoff groups` and `handoff detach --dry-run` refuse the group
with the console bound and with it unbound, and nothing changes.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff.base.host import HostPaths
from handoff.pci.sysfs import read_binding, read_device
from tests.testbed import devices

pytestmark = [pytest.mark.realkernel, pytest.mark.usefixtures("testbed_gpu", "udev")]

CHECKOUT = Path(__file__).resolve().parents[2]
VTCONSOLES = Path("/sys/class/vtconsole")


def handoff(run: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv],
        env={**os.environ, "HANDOFF_RUN_DIR": str(run)}, cwd=CHECKOUT,
        capture_output=True, text=True, check=False, timeout=600,
    )


def framebuffer_console() -> Path:
    """The vtconsole fbcon registered (the one a framebuffer on the boot GPU carries)."""
    found = [v for v in sorted(VTCONSOLES.glob("vtcon*"))
             if "frame buffer" in (v / "name").read_text()]
    assert found, f"no framebuffer vtconsole in {VTCONSOLES}: fbcon did not take the boot GPU"
    return found[0]


@contextlib.contextmanager
def console_bound(bound: bool) -> Iterator[None]:
    """fbcon's vtconsole bound or unbound for the test, as it was afterwards."""
    vtcon = framebuffer_console()
    before = (vtcon / "bind").read_text().strip()
    (vtcon / "bind").write_text("1" if bound else "0")
    try:
        assert (vtcon / "bind").read_text().strip() == ("1" if bound else "0")
        yield
    finally:
        (vtcon / "bind").write_text(before)


@pytest.mark.parametrize("bound", [True, False], ids=["console-bound", "console-unbound"])
def test_the_boot_gpus_group_is_refused_with_the_console_bound_or_not(
    tmp_path: Path, bound: bool
) -> None:
    boot, companion = devices.boot_gpu(), devices.boot_gpu_companion()
    paths = HostPaths()
    group = read_device(paths, boot).iommu_group
    assert read_device(paths, boot).boot_vga
    assert group is not None
    assert read_device(paths, companion).iommu_group == group, "one slot, one IOMMU group"
    before = {a: read_binding(paths, a) for a in (boot, companion)}
    with console_bound(bound):
        listed = handoff(tmp_path / "run", "groups", "--json")
        assert listed.returncode == 0, listed.stderr
        verdict = next(g for g in json.loads(listed.stdout)["groups"] if g["group"] == group)
        assert verdict["verdict"] == "refused"
        assert f"{boot.short} is the boot GPU (boot_vga=1)" in verdict["reason"]
        assert "[host_display] handover = true" in verdict["fix"]
        # Asking for the other function by address takes the boot GPU with it: refused.
        for asked in ([companion.short], [boot.short, companion.short]):
            detach = handoff(tmp_path / "run", "detach", "--dry-run", *asked)
            assert detach.returncode == 2, detach.stdout + detach.stderr
            assert f"{boot.short} is the boot GPU (boot_vga=1)" in detach.stderr
            assert "on vfio-pci" not in detach.stdout
    assert {a: read_binding(paths, a) for a in (boot, companion)} == before
