"""A single-GPU fake host: FakeHost plus the kernel's display side and a recorded systemd.

Mirrors the kernel's layout: ``/sys/class/vtconsole/vtconN/{name,bind}``
(bind is read/write: "1" binds the console driver, "0" unbinds it),
``/sys/bus/platform/devices/efi-framebuffer.0`` linking into
``/sys/devices/platform/...`` with a ``driver`` link, and
``/sys/bus/platform/drivers/<driver>/{bind,unbind}`` (write-only, the
kernel's semantics: unbinding a device not bound is ENODEV); the card's
``resource`` BAR lines and ``reset``/``reset_method``; /proc/iomem with the
firmware framebuffer's memory; /proc/self/cgroup.

:class:`RecordedSystemd` answers systemctl/logger command lines
(recorded in order) as a host with a stand-in display manager: a unit
whose main process holds the card's /dev/dri/card0 open until it stops.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from handoff.base.systemctl import Ran
from tests.unit.fakesysfs import FakeHost, boot_gpu_only_host

CARD = "0000:0a:00.0"
CARD_DRIVER = "amdgpu-polaris"
VRAM = (0xE0000000, 0xEFFFFFFF)
DM = "display-manager.service"
DM_CGROUP = "/system.slice/display-manager.service"
DM_PID = 900


class DisplayHost:
    """The :class:`handoff.pci.ops.SysfsWriter` of a single-GPU host (PCI writes go to FakeHost)."""

    def __init__(self, host: FakeHost) -> None:
        self.host = host
        self.paths = host.paths
        self.writes: list[tuple[str, str]] = []
        self.on_write: list[object] = []  # hooks: called with (path, value) before a write
        # fbcon's rules as the testbed's kernel shows them (off: a bind write always lands).
        # Unbinding fbcon's consoles lets go of the framebuffer it drew on; a later
        # "1" to ``bind`` is then ignored until a driver registers a framebuffer again
        # (the card probed onto its DRM driver), on which fbcon takes the consoles over.
        self.fbcon_rules = False
        self.fbcon_released = False

    # building
    def add_vtconsole(self, node: str, name: str, bound: bool) -> None:
        vdir = self.paths.sys / "class/vtconsole" / node
        vdir.mkdir(parents=True)
        (vdir / "name").write_text(name + "\n")
        (vdir / "bind").write_text("1\n" if bound else "0\n")

    def add_firmware_fb(self, device: str, driver: str, memory: tuple[int, int]) -> None:
        real = self.paths.sys / "devices/platform" / device
        real.mkdir(parents=True)
        bus = self.paths.sys / "bus/platform/devices"
        bus.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(real, bus), bus / device)
        ddir = self.paths.sys / "bus/platform/drivers" / driver
        ddir.mkdir(parents=True, exist_ok=True)
        for attr in ("bind", "unbind"):
            (ddir / attr).write_text("")
            (ddir / attr).chmod(0o200)
        self._link(device, driver)
        iomem = self.paths.proc / "iomem"
        iomem.write_text(
            f"{VRAM[0]:08x}-{VRAM[1]:08x} : PCI Bus 0000:0a\n"
            f"  {VRAM[0]:08x}-{VRAM[1]:08x} : {CARD}\n"
            f"    {memory[0]:08x}-{memory[1]:08x} : BOOTFB\n"
        )

    def _link(self, device: str, driver: str) -> None:
        real = self.paths.sys / "devices/platform" / device
        ddir = self.paths.sys / "bus/platform/drivers" / driver
        os.symlink(os.path.relpath(ddir, real), real / "driver")
        os.symlink(os.path.relpath(real, ddir), ddir / device)

    def fb_driver(self, device: str) -> str | None:
        link = self.paths.sys / "devices/platform" / device / "driver"
        return os.path.basename(os.readlink(link)) if link.is_symlink() else None

    def vtconsole_bound(self, node: str) -> bool:
        return (self.paths.sys / "class/vtconsole" / node / "bind").read_text().strip() == "1"

    # SysfsWriter
    def module_loadable(self, module: str) -> bool:
        return self.host.module_loadable(module)

    def load_module(self, module: str) -> None:
        self.host.load_module(module)

    def write(self, path: Path, value: str) -> None:
        for hook in self.on_write:
            hook(path, value)  # type: ignore[operator]
        sys = self.paths.sys
        if path.parent.parent == sys / "class/vtconsole" and path.name == "bind":
            self.writes.append((f"{path.parent.name}/bind", value))
            bind = value.strip() == "1"
            framebuffer = "frame buffer" in (path.parent / "name").read_text()
            if self.fbcon_rules and framebuffer:
                if bind and self.fbcon_released:
                    return  # ignored: no framebuffer registered since the unbind
                self.fbcon_released = not bind
            path.write_text(("1" if bind else "0") + "\n")
            return
        if path.parent.parent == sys / "bus/platform/drivers":
            driver, device = path.parent.name, value.strip()
            self.writes.append((f"{driver}/{path.name}", device))
            bound = self.fb_driver(device)
            if path.name == "unbind":
                if bound != driver:
                    raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), str(path))
                (sys / "devices/platform" / device / "driver").unlink()
                (path.parent / device).unlink()
            else:
                if bound is not None:
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), str(path))
                self._link(device, driver)
            return
        if path.name == "reset":
            self.writes.append((f"{path.parent.name}/reset", value))
            return
        self.writes.append((str(path.relative_to(self.host.root)), value))
        before = self.card_driver() if self.fbcon_rules else None
        self.host.write(path, value)
        if self.fbcon_rules and before != CARD_DRIVER and self.card_driver() == CARD_DRIVER:
            self._fbcon_takes_over()

    def card_driver(self) -> str | None:
        return self.host.state().get(CARD[5:], (None, None))[0]

    def _fbcon_takes_over(self) -> None:
        """A framebuffer registered: fbcon binds every framebuffer console (do_fbcon_takeover)."""
        for console in (self.paths.sys / "class/vtconsole").iterdir():
            if "frame buffer" in (console / "name").read_text():
                (console / "bind").write_text("1\n")
        self.fbcon_released = False


def single_gpu_host(root: Path) -> DisplayHost:
    """A Ryzen with one RX 580 (boot GPU) showing fbcon on vtcon1 and sysfb's simple-framebuffer.

    The dummy console is vtcon0: framebuffer consoles must be found by name.
    """
    host = boot_gpu_only_host(root)
    card = host.device_dir(next(a for a in host.devices if str(a) == CARD))
    (card / "resource").write_text(
        f"0x{VRAM[0]:016x} 0x{VRAM[1]:016x} 0x000000000014220c\n"
        "0x00000000f0000000 0x00000000f01fffff 0x000000000014220c\n"
        "0x000000000000e000 0x000000000000e0ff 0x0000000000040101\n"
        "0x00000000fcd00000 0x00000000fcd3ffff 0x0000000000040200\n"
        + "0x0000000000000000 0x0000000000000000 0x0000000000000000\n" * 3
    )
    (card / "reset").write_text("")
    (card / "reset").chmod(0o200)
    (card / "reset_method").write_text("bus\n")
    display = DisplayHost(host)
    display.add_vtconsole("vtcon0", "(S) dummy device", False)
    display.add_vtconsole("vtcon1", "(M) frame buffer device", True)
    display.add_firmware_fb("simple-framebuffer.0", "simple-framebuffer",
                            (VRAM[0], VRAM[0] + 0x7FFFFF))
    set_own_cgroup(display, "/system.slice/handoff@single.service")
    return display


def set_own_cgroup(display: DisplayHost, cgroup: str) -> None:
    (display.paths.proc / "self" / "cgroup").write_text(f"0::{cgroup}\n")


@dataclass
class FakeUnit:
    active: bool
    cgroup: str
    pid: int | None = None  # a main process holding files while active
    files: tuple[Path, ...] = ()
    start_fails: bool = False


@dataclass
class RecordedSystemd:
    """systemctl and logger as a host answers them; every argv recorded."""

    display: DisplayHost
    units: dict[str, FakeUnit] = field(default_factory=dict)
    calls: list[list[str]] = field(default_factory=list)
    logged: list[str] = field(default_factory=list)
    holder_outlives_stop: bool = False

    def add_display_manager(self) -> None:
        card = next(
            p for p in (self.display.paths.dev / "dri").iterdir() if p.name.startswith("card")
        )
        unit = FakeUnit(True, DM_CGROUP, DM_PID, (card,))
        self.units[DM] = unit
        self.display.host.add_process(DM_PID, "gdm", unit.files)

    def __call__(self, argv: Sequence[str]) -> Ran:
        argv = list(argv)
        self.calls.append(argv)
        tool = argv[0]
        if tool == "logger":
            self.logged.append(argv[-1])
            return Ran(0, "")
        verb = argv[1]
        if verb == "show":
            return self._show(argv[2], argv[4::2])
        if verb == "is-active":
            unit = self.units.get(argv[-1])
            return Ran(0 if unit is not None and unit.active else 3, "")
        if verb == "stop":
            for name in argv[2:]:
                unit = self.units.get(name)
                if unit is not None and unit.active:
                    unit.active = False
                    if unit.pid is not None and not self.holder_outlives_stop:
                        self.display.host.end_process(unit.pid)
            return Ran(0, "")
        if verb == "start":
            status = 0
            for name in argv[2:]:
                unit = self.units.get(name)
                if unit is None or unit.start_fails:
                    status = 5
                    continue
                unit.active = True
                if unit.pid is not None and not (self.display.paths.proc / str(unit.pid)).exists():
                    self.display.host.add_process(unit.pid, "gdm", unit.files)
            return Ran(status, "")
        raise AssertionError(f"unexpected command {argv}")

    def _show(self, name: str, props: Sequence[str]) -> Ran:
        unit = self.units.get(name)
        values = {
            "LoadState": "loaded" if unit else "not-found",
            "ControlGroup": unit.cgroup if unit and unit.active else "",
            "ActiveState": "active" if unit and unit.active else "inactive",
        }
        return Ran(0, "".join(f"{p}={values.get(p, '')}\n" for p in props))
