"""Single-GPU hosts on a real kernel: the boot GPU handed over with the host's display.

The systemd boot (``realkernel(init="systemd")``) has a std VGA at 05.0 as
its boot GPU (bochs-drm, fbcon's vtconsole on it) and a stand-in
display-manager.service (runner.systemd_overlay) holding its DRM card node
open. A profile passes that VGA to a nested QEMU (firmware and a boot
sector only). Proven here: without ``[host_display] handover`` the boot GPU
is refused and nothing changes; run from inside the unit's cgroup it is
refused and nothing changes; with it, the unit stops, fbcon's vtconsole is
unbound, the card is on vfio-pci and QEMU holds its group; after a guest
poweroff, or a SIGKILLed supervisor and `handoff recover`, bochs-drm has the
card again with its fb and DRM nodes, fbcon's vtconsole is bound and the
unit runs; a host driver that cannot take the card back (driver_override
left to a driver that does not exist) keeps the unit stopped and reports the
device and the fix in the system journal, `handoff status` and `recover`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.sysfs import read_device
from tests.lines import wait_for_line as read_lines
from tests.testbed import devices, guest

pytestmark = [pytest.mark.realkernel(init="systemd"), pytest.mark.usefixtures("systemd_boot")]

CHECKOUT = Path(__file__).resolve().parents[2]
NAME = "single"
ESCAPE_KBD = "testbed escape keyboard"
DM = "display-manager.service"
DM_CGROUP = Path("/sys/fs/cgroup/system.slice") / DM
WAIT = 300.0  # a nested TCG QEMU under a loaded 2-core host is slow
FBCON = "frame buffer device"
# A boot sector for SeaBIOS: count POWEROFF_TICKS changes of the BIOS tick counter
# (18.2 Hz, BDA 0x46c; counting changes, not values, so no wrap-around), then write
# SLP_EN with SLP_TYP 0 to q35's PM1a_CNT (0x604): a poweroff from inside the guest.
POWEROFF_TICKS = 60 * 18
POWEROFF_BOOT_SECTOR = bytes(
    [
        0x31, 0xC0,                                    # xor ax, ax
        0x8E, 0xD8,                                    # mov ds, ax
        0xB9, *POWEROFF_TICKS.to_bytes(2, "little"),   # mov cx, ticks
        0xFB,                                          # sti
        0xA1, 0x6C, 0x04,                              # mov ax, [0x46c]
        0xF4,                                          # next: hlt
        0x3B, 0x06, 0x6C, 0x04,                        # cmp ax, [0x46c]
        0x74, 0xF9,                                    # je next
        0xA1, 0x6C, 0x04,                              # mov ax, [0x46c]
        0xE2, 0xF4,                                    # loop next
        0xBA, 0x04, 0x06,                              # mov dx, 0x604
        0xB8, 0x00, 0x20,                              # mov ax, 0x2000
        0xEF,                                          # out dx, ax -> guest-shutdown
        0xF4,                                          # hlt
        0xEB, 0xFD,                                    # jmp hlt
    ]
)  # fmt: skip


@dataclass(frozen=True)
class Screen:
    """What the host's display looks like: who has the card, fbcon, the unit."""

    driver: str | None
    fb: bool  # the card's fbdev node is there (sysfs graphics/fbN and /dev/fbN)
    drm: bool  # its DRM card node (drm/cardN and /dev/dri/cardN)
    fbcon_bound: bool
    unit: str


def vga() -> PciAddress:
    return devices.std_vga()


def fbcon_bound() -> bool:
    root = Path("/sys/class/vtconsole")
    return any(
        FBCON in (c / "name").read_text() and (c / "bind").read_text().strip() == "1"
        for c in root.iterdir()
    )


def unit_state() -> str:
    return run("systemctl", "is-active", DM).stdout.strip()


def screen() -> Screen:
    device = read_device(HostPaths(), vga())
    fbs = [n for n in device.fb_nodes if Path("/dev", n).exists()]
    cards = [n for n in device.drm_nodes if n.startswith("card") and Path("/dev/dri", n).exists()]
    return Screen(device.driver, bool(fbs), bool(cards), fbcon_bound(), unit_state())


AS_BEFORE = Screen("bochs-drm", True, True, True, "active")


def run(*argv: str, timeout: float = 120.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, check=False, timeout=timeout)


def env(run_dir: Path, crash_after: int | None = None) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    crash = {} if crash_after is None else {jr.CRASH_AFTER_ENV: str(crash_after)}
    return {**clean, "HANDOFF_RUN_DIR": str(run_dir), **crash}


def handoff(run_dir: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "handoff", *argv], env=env(run_dir), cwd=CHECKOUT,
        capture_output=True, text=True, check=False, timeout=WAIT,
    )  # fmt: skip


def start(
    run_dir: Path, profile: Path, *, cgroup: Path | None = None, crash_after: int | None = None
) -> subprocess.Popen[str]:
    """`handoff run PROFILE`, optionally moved into ``cgroup`` before it starts, optionally
    SIGKILLing itself right after its ``crash_after``-th journal write (any capability's)."""
    argv = [sys.executable, "-m", "handoff", "run", str(profile)]
    if cgroup is not None:
        argv = ["/bin/sh", "-c", f'echo $$ > {cgroup}/cgroup.procs && exec "$@"', "sh", *argv]
    return subprocess.Popen(
        argv, env=env(run_dir, crash_after), cwd=CHECKOUT, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True,
    )  # fmt: skip


def wait_for_line(session: subprocess.Popen[str], text: str) -> list[str]:
    return read_lines(session, text, wait=WAIT)


def finish(session: subprocess.Popen[str]) -> tuple[int, str]:
    out, _ = session.communicate(timeout=WAIT)
    return session.returncode, out


def profile(
    tmp_path: Path, *, handover: bool = True, disk: Path | None = None, escape: bool = False
) -> Path:
    path = tmp_path / f"{NAME}.toml"
    tables = f'[[disk]]\npath = "{disk}"\nformat = "raw"\ninterface = "virtio"\n' if disk else ""
    backend = '"none"'
    if escape:
        backend = (
            f'"qmp"\ndevices = ["name:{ESCAPE_KBD}"]\n'
            'escape_hotkey = ["KEY_LEFTCTRL", "KEY_RIGHTCTRL", "KEY_END"]'
        )
    display = f'[host_display]\nhandover = true\nstop_units = ["{DM}"]\n' if handover else ""
    path.write_text(
        f'[vm]\nname = "{NAME}"\nmemory = "64M"\ncpus = 1\naccel = "tcg"\n'
        'shutdown_timeout = 2\n\n[display]\nvga = "none"\nfrontend = "none"\n\n'
        f"[input]\nbackend = {backend}\n\n"
        f'[[passthrough]]\naddress = "{vga().short}"\n\n'
        f"{display}{tables}"
    )
    return path


def qemu_pid(run_dir: Path) -> int:
    pid = jr.Journal.load(jr.journal_path(HostPaths(run=run_dir), NAME)).qemu_pid
    assert pid is not None
    return pid


def assert_handed_over(run_dir: Path) -> None:
    """The unit stopped, fbcon unbound, the card on vfio-pci, QEMU holding its group."""
    now = screen()
    assert now.unit in ("inactive", "failed"), now
    assert not now.fbcon_bound, now
    assert now.driver == "vfio-pci", now
    group = read_device(HostPaths(), vga()).iommu_group
    pid = qemu_pid(run_dir)
    node = f"/dev/vfio/{group}"

    def holds() -> bool:
        return any(os.readlink(fd) == node for fd in Path(f"/proc/{pid}/fd").iterdir())

    guest.wait_for(holds, f"QEMU (pid {pid}) to hold {node}")


def wait_display_back() -> Screen:
    """The unit starts last, once the card is back: wait for it (bounded), then read all."""
    guest.wait_for(lambda: unit_state() == "active" or None, f"{DM} to run again", timeout=WAIT)
    return screen()


def dm_holds_the_card() -> bool:
    main = run("systemctl", "show", DM, "-p", "MainPID", "--value").stdout.strip()
    if not main.isdigit() or main == "0":
        return False
    targets = set()
    with contextlib.suppress(FileNotFoundError):  # the unit still starting: fds come and go
        for fd in Path(f"/proc/{main}/fd").iterdir():
            with contextlib.suppress(FileNotFoundError):
                targets.add(os.readlink(fd))
    return any(t.startswith("/dev/dri/card") for t in targets)


@pytest.fixture
def host_display(tmp_path: Path) -> Iterator[Path]:
    """The stand-in display manager running on the boot GPU; afterwards everything back
    (recover, override cleared, fbcon bound) and the unit stopped again. Yields a run dir."""
    run_dir = tmp_path / "run"
    assert run("systemctl", "start", DM).returncode == 0
    guest.wait_for(lambda: dm_holds_the_card() or None, f"{DM} to hold the card's node")
    assert screen() == AS_BEFORE
    try:
        yield run_dir
    finally:
        for path in jr.list_journals(HostPaths(run=run_dir)):
            pid = jr.Journal.load(path).qemu_pid
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        override = guest.device_dir(vga()) / "driver_override"
        override.write_text("\n")
        handoff(run_dir, "recover")
        override.write_text("\n")
        if read_device(HostPaths(), vga()).driver is None:
            Path("/sys/bus/pci/drivers_probe").write_text(str(vga()))
        run("systemctl", "stop", DM)


def test_without_handover_the_boot_gpu_is_refused_and_nothing_changes(
    tmp_path: Path, host_display: Path
) -> None:
    code, out = finish(start(host_display, profile(tmp_path, handover=False)))
    assert code == 2, out
    assert "is the boot GPU (boot_vga=1)" in out
    assert "[host_display] handover = true" in out
    assert screen() == AS_BEFORE
    assert dm_holds_the_card()


def test_from_inside_the_units_cgroup_it_is_refused_and_nothing_changes(
    tmp_path: Path, host_display: Path
) -> None:
    code, out = finish(start(host_display, profile(tmp_path), cgroup=DM_CGROUP))
    assert code == 2, out
    assert f"inside {DM}'s cgroup" in out
    assert f"systemctl start handoff@{NAME}" in out
    assert screen() == AS_BEFORE
    assert dm_holds_the_card()


def test_handed_over_then_a_guest_poweroff_brings_the_display_back(
    tmp_path: Path, host_display: Path
) -> None:
    disk = tmp_path / "poweroff.img"
    disk.write_bytes((POWEROFF_BOOT_SECTOR.ljust(510, b"\0") + b"\x55\xaa").ljust(1 << 20, b"\0"))
    session = start(host_display, profile(tmp_path, disk=disk))
    wait_for_line(session, "QMP connected")
    assert_handed_over(host_display)
    code, out = finish(session)
    assert code == 0, out
    assert "released display" in out
    assert wait_display_back() == AS_BEFORE, out
    assert dm_holds_the_card()
    assert not list(HostPaths(run=host_display).run.glob("journal/**/*.json"))


def test_supervisor_sigkilled_then_recover_brings_the_display_back(
    tmp_path: Path, host_display: Path
) -> None:
    session = start(host_display, profile(tmp_path))
    wait_for_line(session, "QMP connected")
    assert_handed_over(host_display)
    pid = qemu_pid(host_display)
    session.kill()
    finish(session)
    os.kill(pid, signal.SIGKILL)
    guest.wait_for(lambda: not Path(f"/proc/{pid}/fd").exists() or None, "QEMU to exit")
    assert screen().unit == "inactive"  # nothing came back by itself
    recovered = handoff(host_display, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert f"returned: the host display of {NAME} ({vga()})" in recovered.stdout
    assert wait_display_back() == AS_BEFORE, recovered.stdout


# The display journal's writes come first (the display is taken before the GPU):
# begun, stop-units, unbind-consoles (this VGA has no firmware framebuffer); then the
# GPU journal's records and the card's detaching step, both before the card leaves
# bochs-drm. Each, SIGKILLed right after. The last two are the window where fbcon's
# consoles are unbound but the card never left its driver: the kernel does not bind
# fbcon again on request there, and `recover` re-probes the card so that bochs-drm
# registers its framebuffer afresh and fbcon takes the consoles over.
DISPLAY_WRITES = 3
WINDOW_WRITES = 2


@pytest.mark.parametrize("writes", range(1, DISPLAY_WRITES + WINDOW_WRITES + 1))
def test_a_supervisor_sigkilled_after_any_journal_write_is_finished_by_recover(
    tmp_path: Path, host_display: Path, writes: int
) -> None:
    code, out = finish(start(host_display, profile(tmp_path), crash_after=writes))
    assert code == -signal.SIGKILL, out
    paths = HostPaths(run=host_display)
    display_journal = paths.run / "journal" / "display" / f"{NAME}.json"
    assert display_journal.exists(), out  # killed right after a display journal write:
    gpu_journal = jr.journal_path(paths, NAME)
    assert gpu_journal.exists() == (writes > DISPLAY_WRITES), out  # the GPU's after them
    assert screen().driver == "bochs-drm"  # the card never left
    recovered = handoff(host_display, "recover")
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr
    assert f"returned: the host display of {NAME} ({vga()})" in recovered.stdout
    assert wait_display_back() == AS_BEFORE, recovered.stdout
    assert not list(paths.run.glob("journal/**/*.json"))


def input_grabbed(run_dir: Path) -> bool:
    status = handoff(run_dir, "status", NAME, "--json")
    if status.returncode != 0:
        return False
    devices = json.loads(status.stdout).get("resources", {}).get("input", {}).get("devices", [])
    return bool(devices) and all(d.get("grabbed") for d in devices)


@pytest.mark.parametrize("repeats", [True, False], ids=["autorepeat", "no-autorepeat"])
def test_the_escape_hotkey_held_stops_the_vm_and_brings_the_display_back(
    tmp_path: Path, host_display: Path, repeats: bool
) -> None:
    """With autorepeat (the chord's last key repeating, as a held key does) or without
    (a uinput keyboard without EV_REP, like a KVM box or some gaming keyboards: no
    event at all after the chord until it is released): the VM stops as on Ctrl-C."""
    from evdev import InputDevice, UInput, ecodes

    keyboard = UInput({ecodes.EV_KEY: list(range(1, 128))}, name=ESCAPE_KBD)
    try:
        assert keyboard.device is not None
        assert ecodes.EV_REP not in InputDevice(keyboard.device.path).capabilities()
        session = start(host_display, profile(tmp_path, escape=True))
        wait_for_line(session, "QMP connected")
        assert_handed_over(host_display)
        # Input starts in the guest with handover: the keyboard is grabbed.
        guest.wait_for(lambda: input_grabbed(host_display) or None, "the keyboard grabbed")
        chord = (ecodes.KEY_LEFTCTRL, ecodes.KEY_RIGHTCTRL, ecodes.KEY_END)
        for code in chord:
            keyboard.write(ecodes.EV_KEY, code, 1)
            keyboard.syn()
        seen: list[str] = []
        if repeats:
            # Autorepeat, as a held key sends it, until the session reacts (bounded).
            deadline = time.monotonic() + WAIT
            while session.poll() is None and time.monotonic() < deadline:
                keyboard.write(ecodes.EV_KEY, ecodes.KEY_END, 2)
                keyboard.syn()
                time.sleep(0.1)
        else:
            # Held and silent: the deadline fires while no event comes (bounded).
            seen = wait_for_line(session, "escape hotkey held")
        for code in reversed(chord):
            keyboard.write(ecodes.EV_KEY, code, 0)
            keyboard.syn()
        code, rest = finish(session)
        out = "".join(seen) + rest
    finally:
        keyboard.close()
    assert "escape hotkey held" in out, out
    assert code == 130, out
    assert "released display" in out
    assert wait_display_back() == AS_BEFORE, out


def test_a_driver_that_cannot_take_the_card_back_keeps_the_unit_stopped_and_reports(
    tmp_path: Path, host_display: Path
) -> None:
    # A driver_override naming a driver that does not exist: bochs-drm stays bound now,
    # but after the VM the card can bind to nothing (as a card stuck by the reset bug).
    (guest.device_dir(vga()) / "driver_override").write_text("no-such-driver")
    session = start(host_display, profile(tmp_path))
    wait_for_line(session, "QMP connected")
    assert_handed_over(host_display)
    assert handoff(host_display, "stop", NAME, "--force").returncode == 0
    code, out = finish(session)
    assert code != 0, out
    device = str(vga())
    assert f"{device} did not come back on bochs-drm" in out
    assert "vendor-reset" in out
    now = screen()
    assert now.driver is None
    assert now.unit == "inactive"
    assert not now.fbcon_bound
    journal = run("journalctl", "--no-pager", "-t", "handoff", "-o", "cat").stdout
    assert f"{device} did not come back on bochs-drm" in journal
    assert "vendor-reset" in journal
    status = handoff(host_display, "status")
    assert f"host display: {NAME}: the host display was NOT restored: {device}" in status.stdout
    refused = handoff(host_display, "recover")
    assert refused.returncode == 1
    assert f"{device} did not come back on bochs-drm" in refused.stdout
    assert unit_state() == "inactive"
