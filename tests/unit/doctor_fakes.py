"""A fake host for the doctor tests: /sys, /proc, /dev and /lib/modules in tmp_path.

The layout mirrors the kernel's where doctor (and the PCI engine it calls)
follows links: /sys/bus/pci/devices/ADDR is a symlink into /sys/devices,
``iommu_group`` and ``driver`` are relative symlinks as the kernel makes
them, /sys/kernel/iommu_groups/N/devices/ADDR links back, ``config`` holds
the header-type byte at 0x0e. Device nodes are plain files with the mode,
owner and group under test (creating real character devices needs
CAP_MKNOD; doctor only reads their permissions).
"""

from __future__ import annotations

import os
from pathlib import Path

from handoff.base.host import HostPaths
from handoff.checks import DoctorEnv

INTEL_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr vmx ept vpid"
AMD_FLAGS = "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr svm npt"
RELEASE = "6.1.0-56-amd64"


class FakeHost:
    """Builds a host tree; every method writes what the real kernel would show."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.sys = root / "sys"
        self.proc = root / "proc"
        self.dev = root / "dev"
        self.modules = root / "lib" / "modules"
        self.etc_rules = root / "etc" / "udev" / "rules.d"
        self.lib_rules = root / "usr" / "lib" / "udev" / "rules.d"
        for d in (self.sys, self.proc, self.dev, self.modules, self.etc_rules, self.lib_rules):
            d.mkdir(parents=True, exist_ok=True)
        self.write(self.proc / "sys" / "kernel" / "osrelease", RELEASE + "\n")
        self.write(self.proc / "cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro quiet\n")
        self.write(
            self.proc / "interrupts", "           CPU0\n  0:   10   IO-APIC   2-edge  timer\n"
        )

    def env(self, euid: int = 0) -> DoctorEnv:
        return DoctorEnv(
            host=HostPaths(sys=self.sys, proc=self.proc, dev=self.dev, run=self.root / "run"),
            modules=self.modules,
            udev_rule_dirs=(self.etc_rules, self.lib_rules),
            euid=euid,
            modprobe_dirs=(self.root / "etc" / "modprobe.d", self.root / "usr/lib/modprobe.d"),
        )

    @staticmethod
    def write(path: Path, text: str) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return path

    # ------------------------------------------------------------------ /proc

    def cpu(self, vendor: str = "GenuineIntel", flags: str = INTEL_FLAGS, cores: int = 2) -> None:
        blocks = [
            f"processor\t: {n}\nvendor_id\t: {vendor}\nmodel name\t: Test CPU\nflags\t\t: {flags}\n"
            for n in range(cores)
        ]
        self.write(self.proc / "cpuinfo", "\n".join(blocks))

    def cmdline(self, text: str) -> None:
        self.write(self.proc / "cmdline", text + "\n")

    def interrupts(self, text: str) -> None:
        self.write(self.proc / "interrupts", text)

    def memlock(self, soft: int | str, hard: int | str) -> None:
        self.write(
            self.proc / "self" / "limits",
            "Limit                     Soft Limit           Hard Limit           Units     \n"
            "Max open files            1024                 524288               files     \n"
            f"Max locked memory         {soft:<20} {hard:<20} bytes     \n",
        )

    def process(self, pid: int, comm: str, opened: list[Path]) -> None:
        """A process with fds open on ``opened`` (symlinks, as /proc/PID/fd shows them)."""
        self.write(self.proc / str(pid) / "comm", comm + "\n")
        fd_dir = self.proc / str(pid) / "fd"
        fd_dir.mkdir(parents=True, exist_ok=True)
        for n, target in enumerate(opened, start=3):
            (fd_dir / str(n)).symlink_to(target)

    # ------------------------------------------------------------------ /sys

    def iommu(self, units: tuple[str, ...] = ("dmar0",), ecap: str | None = None) -> None:
        for unit in units:
            d = self.sys / "class" / "iommu" / unit
            d.mkdir(parents=True, exist_ok=True)
            if ecap is not None:
                self.write(d / "intel-iommu" / "ecap", ecap + "\n")
        (self.sys / "kernel" / "iommu_groups").mkdir(parents=True, exist_ok=True)

    def module(
        self, name: str, *, builtin: bool = False, params: dict[str, str] | None = None
    ) -> None:
        d = self.sys / "module" / name
        d.mkdir(parents=True, exist_ok=True)
        if not builtin:
            self.write(d / "initstate", "live\n")
        for key, value in (params or {}).items():
            self.write(d / "parameters" / key, value + "\n")

    def modules_dep(self, *modules: str) -> None:
        """modules.dep lines for loadable modules (kernel/drivers/vfio/pci/vfio-pci.ko.xz: ...)."""
        lines = [f"kernel/drivers/vfio/{m.replace('_', '-')}.ko.xz:" for m in modules]
        self.write(self.modules / RELEASE / "modules.dep", "\n".join(lines) + "\n")

    def modules_builtin(self, *modules: str) -> None:
        lines = [f"kernel/drivers/vfio/{m.replace('_', '-')}.ko" for m in modules]
        self.write(self.modules / RELEASE / "modules.builtin", "\n".join(lines) + "\n")

    def pci(
        self,
        address: str,
        *,
        group: int | None,
        class_code: int = 0x030000,
        ids: tuple[int, int] = (0x1002, 0x67B0),
        driver: str | None = None,
        boot_vga: bool | None = None,
        header_type: int = 0,
        drm: tuple[str, ...] = (),
        reset_method: str | None = None,
    ) -> Path:
        """One PCI function at /sys/devices/pci0000:00/ADDRESS, linked like the kernel links it."""
        real = self.sys / "devices" / "pci0000:00" / address
        real.mkdir(parents=True, exist_ok=True)
        self.write(real / "vendor", f"0x{ids[0]:04x}\n")
        self.write(real / "device", f"0x{ids[1]:04x}\n")
        self.write(real / "class", f"0x{class_code:06x}\n")
        self.write(real / "subsystem_vendor", f"0x{ids[0]:04x}\n")
        self.write(real / "subsystem_device", "0x0b00\n")
        self.write(real / "driver_override", "(null)\n")
        config = bytearray(64)
        config[0x0E] = header_type
        (real / "config").write_bytes(bytes(config))
        if boot_vga is not None:
            self.write(real / "boot_vga", "1\n" if boot_vga else "0\n")
        if reset_method is not None:  # the kernel (5.15+) lists its reset methods
            self.write(real / "reset_method", reset_method + "\n")
            self.write(real / "reset", "")
        bus = self.sys / "bus" / "pci" / "devices"
        bus.mkdir(parents=True, exist_ok=True)
        (bus / address).symlink_to(Path("../../../devices/pci0000:00") / address)
        if group is not None:
            gdir = self.sys / "kernel" / "iommu_groups" / str(group) / "devices"
            gdir.mkdir(parents=True, exist_ok=True)
            (gdir / address).symlink_to(Path("../../../../devices/pci0000:00") / address)
            (real / "iommu_group").symlink_to(Path("../../../kernel/iommu_groups") / str(group))
        if driver is not None:
            drv = self.sys / "bus" / "pci" / "drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            (real / "driver").symlink_to(Path("../../../bus/pci/drivers") / driver)
        for n, name in enumerate(drm):
            self.write(real / "drm" / name / "dev", f"226:{n}\n")
            self.node(Path("dri") / name, 0o660)
        return real

    def vtconsole(self, n: int, name: str, bound: bool) -> None:
        d = self.sys / "class" / "vtconsole" / f"vtcon{n}"
        self.write(d / "name", name + "\n")
        self.write(d / "bind", "1\n" if bound else "0\n")

    # ------------------------------------------------------------------ /dev

    def node(self, rel: Path | str, mode: int, gid: int | None = None) -> Path:
        """A device node stand-in with ``mode``, owned by this test's user (and ``gid``)."""
        path = self.dev / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch()
        path.chmod(mode)
        if gid is not None and gid != os.getgid():
            os.chown(path, os.getuid(), gid)
        return path
