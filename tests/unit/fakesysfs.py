"""A fake host whose sysfs mirrors the kernel's, with an emulated PCI driver core.

The tree is a real directory tree laid out as the kernel lays out sysfs:
``sys/bus/pci/devices/X`` are symlinks into ``sys/devices/pci0000:00/...``
(devices behind a bridge nested under it), ``driver`` and ``iommu_group``
are symlinks, ``sys/kernel/iommu_groups/N/devices/X`` link back, drivers
live in ``sys/bus/pci/drivers/D`` with write-only ``bind``/``unbind``
(mode 0200) and a ``module`` link, and config space is a 256-byte file
whose byte 0x0e is the header type. Drivers create what real drivers
create when they bind (DRM card/render nodes and an fbdev, ALSA cards, a
netdev, /dev/vfio/N) and remove it when they unbind.

:class:`FakeHost` is also the :class:`handoff.pci.ops.SysfsWriter` the
tests install: a write is applied with the kernel's semantics
(drivers/base/bus.c, dd.c and pci-driver.c), honestly including its
refusals: unbinding a device from a driver it is not bound to is ENODEV,
binding an already bound device is EBUSY, binding a device the driver does
not match is ENODEV, a write to an attribute without a store method is
EACCES, ``driver_override`` short-circuits matching, vfio-pci refuses
non-endpoint headers. Faults can be injected per attribute: an errno, a
write that blocks until the test ends, a device that vanishes (hot
removal) when a given attribute is written.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from handoff import journal as jr
from handoff.base.errors import PciAddressError
from handoff.base.host import HostPaths
from handoff.pci.address import PciAddress
from handoff.pci.plan import HandoffPlan, plan_handoff
from handoff.pci.snapshot import take_snapshot

DRM_MAJOR, FB_MAJOR, SND_MAJOR = 226, 29, 116


@dataclass
class FakeDriver:
    name: str
    module: str
    ids: set[tuple[int, int]] = field(default_factory=set)
    classes: set[int] = field(default_factory=set)  # 24-bit class codes matched
    kind: str = "plain"  # plain | drm | sound | net | vfio


@dataclass
class FakeDevice:
    address: PciAddress
    vendor: int
    device: int
    class_code: int
    group: int | None
    parent: PciAddress | None
    header: int
    boot_vga: bool
    driver: str | None = None
    override: str | None = None
    made: list[Path] = field(default_factory=list)  # nodes the bound driver created
    # The reset methods the kernel found (None: a kernel before 5.15, no reset_method
    # file; () on 5.15+: no method, neither reset_method nor reset exist).
    reset_methods: tuple[str, ...] | None = None
    reset_file: bool = False
    dead: bool = False  # config space reads all ones
    reset_revives: bool = False  # its reset brings a dead config space back
    resets: int = 0


@dataclass
class _Fault:
    errno: int | None = None
    block: bool = False
    vanish: PciAddress | None = None
    ignore: bool = False
    apply_late: bool = False
    once: bool = True


FakeEntry = tuple[str, str | bytes, int]


class FakeHost:
    """A fake /sys, /proc, /dev and run root plus the driver core that acts on them."""

    BOOT_ID = "6c1f5a3e-0d3b-4c43-9a63-2b1c1e7f0a11"

    def __init__(self, root: Path) -> None:
        self.root = root
        self.paths = HostPaths(
            sys=root / "sys", proc=root / "proc", dev=root / "dev", run=root / "run"
        )
        self.drivers: dict[str, FakeDriver] = {}
        self.available: dict[str, list[FakeDriver]] = {}  # module → drivers it registers
        self.devices: dict[PciAddress, FakeDevice] = {}
        self.writes: list[tuple[str, str]] = []
        self.modprobes: list[str] = []
        self._faults: dict[Path, _Fault] = {}
        self._release = threading.Event()
        self._refused_probes: set[tuple[str, PciAddress]] = set()
        self._lock = threading.RLock()
        for sub in ("sys/bus/pci/devices", "sys/bus/pci/drivers", "sys/devices/pci0000:00",
                    "sys/kernel/iommu_groups", "sys/module", "sys/class/vtconsole",
                    "proc/sys/kernel/random", "dev", "run"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        self._attr(self.paths.sys / "bus/pci/drivers_probe")
        self._attr(self.paths.sys / "bus/pci/rescan")
        # Functions taken off the bus with `remove` (still in their slot): a rescan
        # finds them again. A surprise removal (vanish_on) is gone for good.
        self.removed: dict[PciAddress, FakeDevice] = {}
        self.stays_dead: set[PciAddress] = set()  # dead again after a rescan (a cold boot needed)
        (self.paths.sys / "bus/pci/drivers_autoprobe").write_text("1\n")
        (self.paths.proc / "sys/kernel/random/boot_id").write_text(self.BOOT_ID + "\n")
        (self.paths.proc / "self").mkdir()

    # ------------------------------------------------------------------ building

    @staticmethod
    def _attr(path: Path, mode: int = 0o200, content: str = "") -> None:
        path.write_text(content)
        path.chmod(mode)

    def add_driver(
        self,
        name: str,
        module: str | None = None,
        *,
        ids: Iterable[tuple[int, int]] = (),
        classes: Iterable[int] = (),
        kind: str = "plain",
        loaded: bool = True,
    ) -> FakeDriver:
        driver = FakeDriver(name, module or name.replace("-", "_"), set(ids), set(classes), kind)
        if loaded:
            self._register(driver)
        else:
            self.available.setdefault(driver.module, []).append(driver)
        return driver

    def _register(self, driver: FakeDriver) -> None:
        ddir = self.paths.sys / "bus/pci/drivers" / driver.name
        ddir.mkdir()
        for attr in ("bind", "unbind", "new_id", "remove_id"):
            self._attr(ddir / attr)
        mdir = self.paths.sys / "module" / driver.module
        mdir.mkdir(exist_ok=True)
        os.symlink(os.path.relpath(mdir, ddir), ddir / "module")
        self.drivers[driver.name] = driver
        if driver.kind == "vfio" and not (self.paths.dev / "vfio").exists():
            (self.paths.dev / "vfio").mkdir()
            (self.paths.dev / "vfio" / "vfio").write_text("")
        # driver_register → driver_attach: take every unbound device it matches.
        for dev in sorted(self.devices.values(), key=lambda d: d.address):
            if dev.driver is None and self._matches(driver, dev) and self._probe_ok(driver, dev):
                self._bind(dev, driver)

    def device_dir(self, address: PciAddress) -> Path:
        dev = self.devices[address]
        if dev.parent is None:
            # The root bus of the device's domain (pci0000:00; a VMD domain's pci10000:e0).
            root = f"pci{address.domain:04x}:{address.bus:02x}" if address.domain else "pci0000:00"
            return self.paths.sys / "devices" / root / str(address)
        return self.device_dir(dev.parent) / str(address)

    def add_device(
        self,
        address: str,
        vendor: int,
        device: int,
        class_code: int,
        *,
        group: int | None,
        parent: str | None = None,
        driver: str | None = None,
        header: int = 0x00,
        boot_vga: bool = False,
        override_supported: bool = True,
        reset_methods: tuple[str, ...] | None = None,
        reset_file: bool | None = None,
    ) -> FakeDevice:
        addr = PciAddress.parse(address)
        dev = FakeDevice(
            addr, vendor, device, class_code, group,
            PciAddress.parse(parent) if parent else None, header, boot_vga,
            reset_methods=reset_methods,
            reset_file=bool(reset_methods) if reset_file is None else reset_file,
        )
        self._create(dev, override_supported)
        if driver is not None:
            self._bind(dev, self.drivers[driver])
        return dev

    def _create(self, dev: FakeDevice, override_supported: bool = True) -> None:
        """The device's sysfs directory and links, as pci_device_add makes them."""
        addr, vendor, device, class_code = dev.address, dev.vendor, dev.device, dev.class_code
        group, header, boot_vga = dev.group, dev.header, dev.boot_vga
        self.devices[addr] = dev
        ddir = self.device_dir(addr)
        ddir.mkdir(parents=True)
        (ddir / "vendor").write_text(f"0x{vendor:04x}\n")
        (ddir / "device").write_text(f"0x{device:04x}\n")
        (ddir / "subsystem_vendor").write_text(f"0x{vendor:04x}\n")
        (ddir / "subsystem_device").write_text("0x0001\n")
        (ddir / "class").write_text(f"0x{class_code:06x}\n")
        config = bytearray(256)
        config[0:2] = vendor.to_bytes(2, "little")
        config[2:4] = device.to_bytes(2, "little")
        config[0x09:0x0C] = class_code.to_bytes(3, "little")
        config[0x0E] = header
        if header & 0x7F == 0x7F or dev.dead:
            config = bytearray(b"\xff" * 256)
        (ddir / "config").write_bytes(bytes(config))
        if dev.reset_methods:
            self._attr(ddir / "reset_method", 0o644, " ".join(dev.reset_methods) + "\n")
        if dev.reset_file:
            self._attr(ddir / "reset")
        if override_supported:
            self._attr(ddir / "driver_override", 0o644, "(null)\n")
        if (class_code >> 8) == 0x0300:
            (ddir / "boot_vga").write_text("1\n" if boot_vga else "0\n")
        self._attr(ddir / "remove")
        bus_link = self.paths.sys / "bus/pci/devices" / str(addr)
        os.symlink(os.path.relpath(ddir, bus_link.parent), bus_link)
        if group is not None:
            gdir = self.paths.sys / "kernel/iommu_groups" / str(group) / "devices"
            gdir.mkdir(parents=True, exist_ok=True)
            (gdir.parent / "type").write_text("DMA\n")
            os.symlink(os.path.relpath(ddir, gdir), gdir / str(addr))
            os.symlink(os.path.relpath(gdir.parent, ddir), ddir / "iommu_group")

    def kill(self, address: str) -> None:
        """The function's config space reads all ones (the card fell off the bus)."""
        dev = self.devices[PciAddress.parse(address)]
        dev.dead = True
        (self.device_dir(dev.address) / "config").write_bytes(b"\xff" * 256)

    def add_process(self, pid: int, comm: str, files: Iterable[Path]) -> None:
        pdir = self.paths.proc / str(pid)
        (pdir / "fd").mkdir(parents=True)
        (pdir / "comm").write_text(comm + "\n")
        (pdir / "stat").write_text(f"{pid} ({comm}) S 1 {pid} {pid} 0 -1 0 " + "0 " * 12 + "4242\n")
        for fd, path in enumerate([Path("/dev/null"), *files]):
            os.symlink(str(path), pdir / "fd" / str(fd))

    def end_process(self, pid: int) -> None:
        shutil.rmtree(self.paths.proc / str(pid))

    def add_vtconsole(self, bound: bool) -> None:
        vdir = self.paths.sys / "class/vtconsole/vtcon1"
        vdir.mkdir(parents=True)
        (vdir / "name").write_text("(M) frame buffer device\n")
        (vdir / "bind").write_text("1\n" if bound else "0\n")

    # ------------------------------------------------------------------ faults

    def fail(self, path: Path, code: int, *, once: bool = True) -> None:
        """The next write to ``path`` fails with ``code`` (every write unless once)."""
        self._faults[Path(os.path.realpath(path))] = _Fault(errno=code, once=once)

    def block(self, path: Path, *, then_apply: bool = False) -> None:
        """The next write to ``path`` blocks until :meth:`release_blocked`.

        Then it fails with EINTR, or with ``then_apply`` goes through late,
        as a kernel write stuck on a driver finally does.
        """
        self._faults[Path(os.path.realpath(path))] = _Fault(block=True, apply_late=then_apply)

    def vanish_on(self, path: Path, address: str) -> None:
        """Hot-remove ``address`` when ``path`` is written (the write then sees it gone)."""
        self._faults[Path(os.path.realpath(path))] = _Fault(vanish=PciAddress.parse(address))

    def ignore_next(self, path: Path) -> None:
        """The next write to ``path`` returns success and does nothing (a lost probe)."""
        self._faults[Path(os.path.realpath(path))] = _Fault(ignore=True)

    def refuse_probe(self, driver: str, address: str) -> None:
        """``driver``'s probe() fails for ``address`` (dmesg would say why)."""
        self._refused_probes.add((driver, PciAddress.parse(address)))

    def release_blocked(self) -> None:
        self._release.set()

    # ------------------------------------------------------------------ SysfsWriter

    def module_loadable(self, module: str) -> bool:
        return module in self.available or any(d.module == module for d in self.drivers.values())

    def load_module(self, module: str) -> None:
        self.modprobes.append(module)
        for driver in self.available.pop(module, []):
            self._register(driver)

    def write(self, path: Path, value: str) -> None:
        real = Path(os.path.realpath(path))
        fault = self._faults.get(real)
        if fault is not None and fault.once:
            del self._faults[real]
        if fault is not None and fault.block:
            self._release.wait()
            if not fault.apply_late:
                raise OSError(errno.EINTR, os.strerror(errno.EINTR), str(path))
            fault = None
        with self._lock:
            if fault is not None and fault.vanish is not None:
                self._remove_device(fault.vanish)
            if not real.exists():
                if real.parent.exists() or fault is not None:
                    code = errno.ENODEV if fault is not None else errno.ENOENT
                    raise OSError(code, os.strerror(code), str(path))
                raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            if fault is not None and fault.errno is not None:
                raise OSError(fault.errno, os.strerror(fault.errno), str(path))
            if fault is not None and fault.ignore:
                return
            self.writes.append((str(real.relative_to(self.root)), value))
            self._store(real, value, str(path))

    def _store(self, real: Path, value: str, shown: str) -> None:
        name = real.name
        sys = self.paths.sys
        if real == sys / "bus/pci/drivers_probe":
            self._drivers_probe(self._lookup(value, shown))
            return
        if real.parent.parent == sys / "bus/pci/drivers":
            driver = self.drivers[real.parent.name]
            if name in ("new_id", "remove_id"):
                raise AssertionError(f"handoff wrote {name} ({value!r}): it never may")
            dev = self._lookup(value, shown)
            if name == "unbind":
                if dev.driver != driver.name:
                    raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), shown)
                self._unbind(dev)
                return
            if name == "bind":
                if not self._matches(driver, dev):
                    raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), shown)
                if dev.driver is not None:
                    raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), shown)
                if not self._probe_ok(driver, dev):
                    raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), shown)
                self._bind(dev, driver)
                return
        if name == "driver_override":
            dev = self._owner(real)
            if len(value) >= 4095:
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), shown)
            text = value[:-1] if value.endswith("\n") else value
            dev.override = text or None
            real.write_text((dev.override or "(null)") + "\n")
            return
        if name == "remove":
            dev = self._owner(real)
            self._remove_device(dev.address)
            self.removed[dev.address] = dev
            return
        if real == sys / "bus/pci/rescan":
            self._rescan()
            return
        if name == "reset":
            self._reset(self._owner(real), shown)
            return
        if name == "reset_method":
            self._store_reset_method(self._owner(real), value, real, shown)
            return
        # An attribute without a store method: kernfs refuses the open.
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), shown)

    def _rescan(self) -> None:
        """pci_rescan_bus: every removed function is found again, fresh (no driver, no
        override, the kernel's default reset methods), and its driver probes it."""
        for address in sorted(self.removed):
            old = self.removed.pop(address)
            dev = FakeDevice(
                address, old.vendor, old.device, old.class_code, old.group, old.parent,
                old.header, old.boot_vga, reset_methods=old.reset_methods,
                reset_file=old.reset_file, dead=address in self.stays_dead,
                reset_revives=old.reset_revives,
            )
            self._create(dev)
            self._drivers_probe(dev)

    def _reset(self, dev: FakeDevice, shown: str) -> None:
        """pci_reset_function by the enabled methods: ENOTTY when none is left."""
        rm = self.device_dir(dev.address) / "reset_method"
        if rm.exists() and not rm.read_text().split():
            raise OSError(errno.ENOTTY, os.strerror(errno.ENOTTY), shown)
        dev.resets += 1
        if dev.dead and dev.reset_revives:
            dev.dead = False
            config = bytearray(256)
            config[0:2] = dev.vendor.to_bytes(2, "little")
            config[2:4] = dev.device.to_bytes(2, "little")
            config[0x0E] = dev.header
            (self.device_dir(dev.address) / "config").write_bytes(bytes(config))

    def _store_reset_method(self, dev: FakeDevice, value: str, real: Path, shown: str) -> None:
        """reset_method_store (drivers/pci/pci.c): "" disables every method, "default"
        restores the kernel's list, else a space-separated list of supported names."""
        text = value.strip()
        offered = dev.reset_methods or ()
        if text == "default":
            names: list[str] = list(offered)
        else:
            names = text.split()
            if any(name not in offered for name in names):
                raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), shown)
        real.write_text(" ".join(names) + "\n")

    # ------------------------------------------------------------------ driver core

    def _lookup(self, value: str, shown: str) -> FakeDevice:
        """bus_find_device_by_name: sysfs_streq ignores one trailing newline."""
        text = value[:-1] if value.endswith("\n") else value
        try:
            dev = self.devices.get(PciAddress.parse(text)) if len(text) >= 12 else None
        except PciAddressError:
            dev = None
        if dev is None:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), shown)
        return dev

    def _owner(self, attribute: Path) -> FakeDevice:
        return self.devices[PciAddress.parse(attribute.parent.name)]

    @staticmethod
    def _matches(driver: FakeDriver, dev: FakeDevice) -> bool:
        """pci_match_device: driver_override decides alone when set."""
        if dev.override is not None:
            return dev.override == driver.name
        return (dev.vendor, dev.device) in driver.ids or dev.class_code in driver.classes

    def _probe_ok(self, driver: FakeDriver, dev: FakeDevice) -> bool:
        if (driver.name, dev.address) in self._refused_probes:
            return False
        if dev.header & 0x7F == 0x7F:
            return False
        # vfio_pci_probe: "if (pdev->hdr_type != PCI_HEADER_TYPE_NORMAL) return -EINVAL"
        return not (driver.kind == "vfio" and dev.header & 0x7F != 0)

    def _drivers_probe(self, dev: FakeDevice) -> None:
        """bus_rescan_devices_helper: attach an unbound device; a failed probe is no error."""
        if dev.driver is not None:
            return
        for driver in self.drivers.values():
            if self._matches(driver, dev) and self._probe_ok(driver, dev):
                self._bind(dev, driver)
                return

    def _free_index(self, directory: Path, prefix: str, start: int = 0) -> int:
        index = start
        while (directory / f"{prefix}{index}").exists():
            index += 1
        return index

    def _node(self, dev: FakeDevice, sysdir: Path, node: Path, major: int, minor: int) -> None:
        sysdir.mkdir(parents=True)
        (sysdir / "dev").write_text(f"{major}:{minor}\n")
        node.parent.mkdir(parents=True, exist_ok=True)
        node.write_text("")
        dev.made += [node, sysdir]

    def _bind(self, dev: FakeDevice, driver: FakeDriver) -> None:
        ddir = self.device_dir(dev.address)
        drvdir = self.paths.sys / "bus/pci/drivers" / driver.name
        os.symlink(os.path.relpath(drvdir, ddir), ddir / "driver")
        os.symlink(os.path.relpath(ddir, drvdir), drvdir / str(dev.address))
        dev.driver = driver.name
        devroot = self.paths.dev
        if driver.kind == "drm":
            card = self._free_index(devroot / "dri", "card")
            self._node(dev, ddir / "drm" / f"card{card}", devroot / "dri" / f"card{card}",
                       DRM_MAJOR, card)
            self._node(dev, ddir / "drm" / f"renderD{128 + card}",
                       devroot / "dri" / f"renderD{128 + card}", DRM_MAJOR, 128 + card)
            fb = self._free_index(devroot, "fb")
            self._node(dev, ddir / "graphics" / f"fb{fb}", devroot / f"fb{fb}", FB_MAJOR, fb)
        elif driver.kind == "sound":
            card = self._free_index(devroot / "snd", "controlC")
            cdir = ddir / "sound" / f"card{card}"
            self._node(dev, cdir / f"controlC{card}", devroot / "snd" / f"controlC{card}",
                       SND_MAJOR, card * 32)
            self._node(dev, cdir / f"pcmC{card}D0p", devroot / "snd" / f"pcmC{card}D0p",
                       SND_MAJOR, card * 32 + 16)
            dev.made.append(cdir)
        elif driver.kind == "net":
            used = {p.name for d in self.devices.values() for p in d.made if p.parent.name == "net"}
            index = next(i for i in range(64) if f"eth{i}" not in used)
            net = ddir / "net" / f"eth{index}"
            net.mkdir(parents=True)
            dev.made.append(net)
        elif driver.kind == "vfio" and dev.group is not None:
            node = devroot / "vfio" / str(dev.group)
            if not node.exists():
                node.write_text("")
                node.chmod(0o600)

    def _unbind(self, dev: FakeDevice) -> None:
        assert dev.driver is not None
        driver = self.drivers[dev.driver]
        ddir = self.device_dir(dev.address)
        (ddir / "driver").unlink()
        (self.paths.sys / "bus/pci/drivers" / driver.name / str(dev.address)).unlink()
        for made in reversed(dev.made):
            if made.is_dir():
                shutil.rmtree(made)
            else:
                made.unlink(missing_ok=True)
        for sub in ("drm", "graphics", "sound", "net"):
            if (ddir / sub).is_dir() and not any((ddir / sub).iterdir()):
                (ddir / sub).rmdir()
        dev.made = []
        dev.driver = None
        if driver.kind == "vfio" and dev.group is not None and not any(
            d.group == dev.group and d.driver == "vfio-pci" for d in self.devices.values()
        ):
            (self.paths.dev / "vfio" / str(dev.group)).unlink(missing_ok=True)

    def _remove_device(self, address: PciAddress) -> None:
        """Surprise removal: the driver lets go, the sysfs directory disappears."""
        dev = self.devices.get(address)
        if dev is None:
            return
        if dev.driver is not None:
            self._unbind(dev)
        ddir = self.device_dir(address)
        (self.paths.sys / "bus/pci/devices" / str(address)).unlink()
        if dev.group is not None:
            (self.paths.sys / "kernel/iommu_groups" / str(dev.group) / "devices"
             / str(address)).unlink()
        shutil.rmtree(ddir)
        del self.devices[address]

    # ------------------------------------------------------------------ inspection

    def state(self) -> dict[str, tuple[str | None, str | None]]:
        """address → (driver link name, driver_override as read back)."""
        result: dict[str, tuple[str | None, str | None]] = {}
        for address in sorted(self.devices):
            ddir = self.paths.sys / "bus/pci/devices" / str(address)
            link = ddir / "driver"
            driver = os.path.basename(os.readlink(link)) if link.is_symlink() else None
            override_file = ddir / "driver_override"
            override = override_file.read_text().strip() if override_file.exists() else None
            result[address.short] = (driver, override)
        return result

    def snapshot(self) -> dict[str, FakeEntry]:
        """Every entry of the tree: links with targets, files with bytes and mode."""
        entries: dict[str, FakeEntry] = {}
        for dirpath, dirnames, filenames in os.walk(self.root):
            base = Path(dirpath)
            for name in dirnames + filenames:
                path = base / name
                rel = str(path.relative_to(self.root))
                st = path.lstat()
                if path.is_symlink():
                    entries[rel] = ("link", os.readlink(path), 0)
                elif path.is_dir():
                    entries[rel] = ("dir", "", st.st_mode)
                else:
                    entries[rel] = ("file", path.read_bytes(), st.st_mode)
        return entries


# --------------------------------------------------------------------------- layouts


def standard_drivers(host: FakeHost, *, vfio_loaded: bool = False) -> None:
    """The drivers of the seed's machine and of the testbed's lookalikes."""
    host.add_driver("pcieport", "pcieportdrv", classes={0x060400})
    host.add_driver("amdgpu", ids={(0x1002, 0x67B0)}, kind="drm")
    host.add_driver("i915", ids={(0x8086, 0x0412)}, kind="drm")
    host.add_driver("bochs-drm", "bochs", ids={(0x1234, 0x1111)}, kind="drm")
    host.add_driver(
        "snd_hda_intel",
        ids={(0x1002, 0xAAC8), (0x8086, 0x8C20), (0x8086, 0x293E)},
        kind="sound",
    )
    host.add_driver("lpc_ich", ids={(0x8086, 0x8C44)})
    host.add_driver("ahci", ids={(0x8086, 0x8C02)})
    host.add_driver("i801_smbus", ids={(0x8086, 0x8C22)})
    host.add_driver("r8169", ids={(0x10EC, 0x8168)}, kind="net")
    host.add_driver("e1000e", ids={(0x8086, 0x10D3)}, kind="net")
    host.add_driver("vfio-pci", "vfio_pci", kind="vfio", loaded=vfio_loaded)


def seed_machine(root: Path, *, vfio_loaded: bool = False) -> FakeHost:
    """The seed guide's Z87 machine (its `lspci` groups 0, 1, 2, 7, 9, 13, 14)."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=vfio_loaded)
    host.add_device("00:00.0", 0x8086, 0x0C00, 0x060000, group=0)
    host.add_device("00:01.0", 0x8086, 0x0C01, 0x060400, group=1, header=0x01,
                    driver="pcieport")
    host.add_device("01:00.0", 0x1002, 0x67B0, 0x030000, group=1, parent="00:01.0",
                    driver="amdgpu", header=0x80)
    host.add_device("01:00.1", 0x1002, 0xAAC8, 0x040300, group=1, parent="00:01.0",
                    driver="snd_hda_intel")
    host.add_device("00:02.0", 0x8086, 0x0412, 0x030000, group=2, driver="i915", boot_vga=True)
    host.add_device("00:1b.0", 0x8086, 0x8C20, 0x040300, group=7, driver="snd_hda_intel")
    host.add_device("00:1c.2", 0x8086, 0x8C14, 0x060400, group=9, header=0x01,
                    driver="pcieport")
    host.add_device("00:1f.0", 0x8086, 0x8C44, 0x060100, group=13, driver="lpc_ich",
                    header=0x80)
    host.add_device("00:1f.2", 0x8086, 0x8C02, 0x010601, group=13, driver="ahci")
    host.add_device("00:1f.3", 0x8086, 0x8C22, 0x0C0500, group=13, driver="i801_smbus")
    host.add_device("03:00.0", 0x10EC, 0x8168, 0x020000, group=14, parent="00:1c.2",
                    driver="r8169")
    return host


#: The seed machine's group 1 as it boots: address -> (driver, driver_override).
SEED_STATE = {
    "01:00.0": ("amdgpu", "(null)"),
    "01:00.1": ("snd_hda_intel", "(null)"),
    "00:01.0": ("pcieport", "(null)"),
}


def group_1(host: FakeHost) -> dict[str, tuple[str | None, str | None]]:
    """The seed machine's group 1 now (compare with :data:`SEED_STATE`)."""
    state = host.state()
    return {a: state[a] for a in SEED_STATE}


def gpu_plan(host: FakeHost) -> HandoffPlan:
    """The hand-off plan of the seed machine's GPU (01:00.0, group 1)."""
    return plan_handoff([PciAddress.parse("01:00.0")],
                        take_snapshot(host.paths, host.module_loadable))


def lookalike_host(root: Path, *, vfio_loaded: bool = True) -> FakeHost:
    """The testbed's q35 guest: the GPU lookalike pair, an e1000e, the ICH9 group."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=vfio_loaded)
    host.add_device("00:00.0", 0x8086, 0x29C0, 0x060000, group=0)
    host.add_device("00:02.0", 0x8086, 0x10D3, 0x020000, group=1, driver="e1000e")
    host.add_device("00:06.0", 0x1234, 0x1111, 0x038000, group=5, driver="bochs-drm",
                    header=0x80)
    host.add_device("00:06.1", 0x8086, 0x293E, 0x040300, group=5, driver="snd_hda_intel")
    host.add_device("00:1f.0", 0x8086, 0x8C44, 0x060100, group=6, driver="lpc_ich",
                    header=0x80)
    host.add_device("00:1f.2", 0x8086, 0x8C02, 0x010601, group=6, driver="ahci")
    host.add_device("00:1f.3", 0x8086, 0x8C22, 0x0C0500, group=6, driver="i801_smbus")
    return host


def session_journal(host: FakeHost, name: str) -> jr.Journal:
    """A fresh session journal for ``name`` on the fake host (its boot id, this pid)."""
    return jr.Journal.begin(host.paths, name, jr.Kind.SESSION, name)


# --------------------------------------------------------------------------- compute drivers
#
# NVIDIA's driver and ROCm cannot run in the testbed (no such card in QEMU),
# so their traces are built here as the kernel and the driver lay them out.

NVIDIA_MAJOR = 195  # fixed: the driver registers it (cards 0.., 254 modeset, 255 ctl)
NVIDIA_UVM_MAJOR = 510  # dynamic (alloc_chrdev_region): what /proc/devices says
KFD_MAJOR = 234  # dynamic (register_chrdev(0, "kfd")): /proc/devices and sysfs say

_PROC_DEVICES_HEAD = (
    "Character devices:\n  1 mem\n  4 /dev/vc/0\n  4 tty\n  5 /dev/tty\n 10 misc\n"
    " 13 input\n 29 fb\n116 alsa\n128 ptm\n136 pts\n226 drm\n"
)
_PROC_DEVICES_TAIL = "\nBlock devices:\n  7 loop\n  8 sd\n259 blkext\n"


def write_proc_devices(paths: HostPaths, dynamic: dict[str, int]) -> None:
    """/proc/devices with the usual majors plus ``dynamic`` (name → major), and those
    an earlier call added (a host with both NVIDIA's driver and amdgpu)."""
    target = paths.proc / "devices"
    if target.exists():
        text = target.read_text()
        earlier = text[len(_PROC_DEVICES_HEAD):text.index(_PROC_DEVICES_TAIL)]
        for line in earlier.splitlines():
            number, name = line.split(None, 1)
            dynamic = {name: int(number), **dynamic}
    extra = "".join(f"{major:3d} {name}\n" for name, major in sorted(dynamic.items(),
                                                                     key=lambda i: i[1]))
    (paths.proc / "devices").write_text(_PROC_DEVICES_HEAD + extra + _PROC_DEVICES_TAIL)


def nvidia_driver_files(paths: HostPaths, address: str, minor: int) -> Path:
    """What the NVIDIA driver (and nvidia-modprobe) show for a bound card; the procfs dir.

    /proc/driver/nvidia/gpus/ADDR/information with its ``Key: \\t value``
    lines, /dev/nvidiaN, /dev/nvidiactl, /dev/nvidia-modeset,
    /dev/nvidia-uvm(-tools) (plain files: mknod needs CAP_MKNOD) and
    /proc/devices naming nvidia (195) and nvidia-uvm (dynamic).
    """
    full = str(PciAddress.parse(address))
    info = paths.proc / "driver" / "nvidia" / "gpus" / full
    info.mkdir(parents=True)
    (info / "information").write_text(
        "Model: \t\t NVIDIA GeForce GTX 1080\nIRQ:   \t\t 130\n"
        "GPU UUID: \t GPU-2f2a5c7e-4b1d-6c3e-8f90-1a2b3c4d5e6f\nVideo BIOS: \t 86.04.17.00.01\n"
        "Bus Type: \t PCIe\nDMA Size: \t 47 bits\nDMA Mask: \t 0x7fffffffffff\n"
        f"Bus Location: \t {full}\nDevice Minor: \t {minor}\nGPU Excluded:\t No\n"
    )
    paths.dev.mkdir(parents=True, exist_ok=True)
    for name in (f"nvidia{minor}", "nvidiactl", "nvidia-modeset", "nvidia-uvm",
                 "nvidia-uvm-tools"):
        (paths.dev / name).touch()
    write_proc_devices(paths, {"nvidia": NVIDIA_MAJOR, "nvidia-uvm": NVIDIA_UVM_MAJOR})
    return info


def rocm_kfd_files(paths: HostPaths) -> None:
    """amdgpu's /dev/kfd: class device /sys/class/kfd/kfd (dev = KFD_MAJOR:0) and the node."""
    real = paths.sys / "devices" / "virtual" / "kfd" / "kfd"
    real.mkdir(parents=True)
    (real / "dev").write_text(f"{KFD_MAJOR}:0\n")
    cls = paths.sys / "class" / "kfd"
    cls.mkdir(parents=True)
    os.symlink("../../devices/virtual/kfd/kfd", cls / "kfd")
    paths.dev.mkdir(parents=True, exist_ok=True)
    (paths.dev / "kfd").touch()
    write_proc_devices(paths, {"kfd": KFD_MAJOR})


def nvidia_gpu(host: FakeHost, address: str, minor: int, *, group: int) -> FakeDevice:
    """A GTX 1080 (10de:1b80) bound to NVIDIA's driver, whose remove drops its procfs dir."""
    if "nvidia" not in host.drivers:
        host.add_driver("nvidia", ids={(0x10DE, 0x1B80)})
    dev = host.add_device(address, 0x10DE, 0x1B80, 0x030000, group=group, driver="nvidia")
    dev.made.append(nvidia_driver_files(host.paths, address, minor))
    return dev


# ------------------------------------------------------------- whole hosts for `handoff init`
# Real machines' layouts (from their `lspci -nnk` and IOMMU groups), each with
# its CPU topology and RAM, as `handoff init` reads them.


def add_cpus(host: FakeHost, *, cores: int, threads: int = 1, sockets: int = 1) -> None:
    """/sys/devices/system/cpu as the kernel numbers it: cpu N and N + cores are SMT siblings."""
    base = host.paths.sys / "devices/system/cpu"
    base.mkdir(parents=True, exist_ok=True)
    total = cores * threads * sockets
    (base / "online").write_text(f"0-{total - 1}\n" if total > 1 else "0\n")
    per_thread = cores * sockets
    for cpu in range(total):
        core = cpu % per_thread
        siblings = ",".join(str(core + t * per_thread) for t in range(threads))
        topology = base / f"cpu{cpu}" / "topology"
        topology.mkdir(parents=True)
        (topology / "thread_siblings_list").write_text(siblings + "\n")
        (topology / "physical_package_id").write_text(f"{core // cores}\n")
        (topology / "core_id").write_text(f"{core % cores}\n")


def add_meminfo(host: FakeHost, total_mib: int) -> None:
    """/proc/meminfo's first lines, MemTotal in kB as the kernel writes it."""
    (host.paths.proc / "meminfo").write_text(
        f"MemTotal:       {total_mib * 1024} kB\nMemFree:        {total_mib * 512} kB\n"
    )


def igpu_dgpu_host(root: Path) -> FakeHost:
    """The seed's Z87 machine (HD 4600 boot GPU + R9 290X): a Core i7-4770, 16 GiB."""
    host = seed_machine(root, vfio_loaded=True)
    add_cpus(host, cores=4, threads=2)
    add_meminfo(host, 16 * 1024 - 230)
    return host


def two_dgpu_host(root: Path) -> FakeHost:
    """A Ryzen 9 5900X on X570: an RX 580 for the host (boot GPU), an RTX 3080 for the guest."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=True)
    host.add_driver("amdgpu-polaris", "amdgpu_polaris", ids={(0x1002, 0x67DF)}, kind="drm")
    host.add_driver("nouveau", ids={(0x10DE, 0x2206)}, kind="drm")
    host.add_driver("snd_hda_intel_x", "snd_hda_intel_x",
                    ids={(0x1002, 0xAAF0), (0x10DE, 0x1AEF)}, kind="sound")
    host.add_device("00:00.0", 0x1022, 0x1480, 0x060000, group=0)
    host.add_device("00:01.1", 0x1022, 0x1483, 0x060400, group=2, header=0x01,
                    driver="pcieport")
    host.add_device("0a:00.0", 0x1002, 0x67DF, 0x030000, group=2, parent="00:01.1",
                    driver="amdgpu-polaris", header=0x80, boot_vga=True)
    host.add_device("0a:00.1", 0x1002, 0xAAF0, 0x040300, group=2, parent="00:01.1",
                    driver="snd_hda_intel_x")
    host.add_device("00:03.1", 0x1022, 0x1483, 0x060400, group=7, header=0x01,
                    driver="pcieport")
    host.add_device("0b:00.0", 0x10DE, 0x2206, 0x030000, group=7, parent="00:03.1",
                    driver="nouveau", header=0x80)
    host.add_device("0b:00.1", 0x10DE, 0x1AEF, 0x040300, group=7, parent="00:03.1",
                    driver="snd_hda_intel_x")
    host.add_device("05:00.0", 0x10EC, 0x8168, 0x020000, group=12, driver="r8169")
    add_cpus(host, cores=12, threads=2)
    add_meminfo(host, 64 * 1024 - 500)
    return host


def bmc_two_dgpu_host(root: Path) -> FakeHost:
    """A server board: the BMC's ASPEED VGA is the boot GPU; two equal GPUs both passable."""
    host = two_dgpu_host(root)
    host.add_driver("ast", ids={(0x1A03, 0x2000)}, kind="drm")
    host.add_device("01:00.0", 0x1A03, 0x2000, 0x030000, group=20, driver="ast", boot_vga=True)
    # The RX 580 is no longer the boot GPU: the ASPEED is (boot_vga lives on one device).
    (host.device_dir(PciAddress.parse("0a:00.0")) / "boot_vga").write_text("0\n")
    return host


def dgpu_with_nic_host(root: Path) -> FakeHost:
    """A Ryzen 5 4650G on B450: the APU's Renoir graphics boots; a GTX 1060 in the chipset
    slot shares the chipset's IOMMU group with the onboard NIC (no ACS below the chipset)."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=True)
    host.add_driver("amdgpu-renoir", "amdgpu_renoir", ids={(0x1002, 0x1636)}, kind="drm")
    host.add_driver("nouveau", ids={(0x10DE, 0x1C03)}, kind="drm")
    host.add_driver("snd_hda_intel_x", "snd_hda_intel_x", ids={(0x10DE, 0x10F1)}, kind="sound")
    host.add_device("00:00.0", 0x1022, 0x1630, 0x060000, group=0)
    host.add_device("30:00.0", 0x1002, 0x1636, 0x030000, group=9, driver="amdgpu-renoir",
                    boot_vga=True)
    host.add_device("00:01.2", 0x1022, 0x1634, 0x060400, group=5, header=0x01,
                    driver="pcieport")
    host.add_device("26:00.0", 0x10DE, 0x1C03, 0x030000, group=5, parent="00:01.2",
                    driver="nouveau", header=0x80)
    host.add_device("26:00.1", 0x10DE, 0x10F1, 0x040300, group=5, parent="00:01.2",
                    driver="snd_hda_intel_x")
    host.add_device("25:00.0", 0x10EC, 0x8168, 0x020000, group=5, parent="00:01.2",
                    driver="r8169")
    add_cpus(host, cores=6, threads=2)
    add_meminfo(host, 32 * 1024 - 700)
    return host


def iommu_off_host(root: Path) -> FakeHost:
    """The seed's machine before step 1 of the guide: no IOMMU groups at all."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=False)
    host.add_device("00:00.0", 0x8086, 0x0C00, 0x060000, group=None)
    host.add_device("00:02.0", 0x8086, 0x0412, 0x030000, group=None, driver="i915",
                    boot_vga=True)
    host.add_device("01:00.0", 0x1002, 0x67B0, 0x030000, group=None, driver="amdgpu",
                    header=0x80)
    host.add_device("01:00.1", 0x1002, 0xAAC8, 0x040300, group=None, driver="snd_hda_intel")
    add_cpus(host, cores=4, threads=2)
    add_meminfo(host, 16 * 1024)
    return host


def boot_gpu_only_host(root: Path) -> FakeHost:
    """A Ryzen 7 5800X (no iGPU) with one RX 580: the only GPU is the boot GPU."""
    host = FakeHost(root)
    standard_drivers(host, vfio_loaded=True)
    host.add_driver("amdgpu-polaris", "amdgpu_polaris", ids={(0x1002, 0x67DF)}, kind="drm")
    host.add_device("00:00.0", 0x1022, 0x1480, 0x060000, group=0)
    host.add_device("00:01.1", 0x1022, 0x1483, 0x060400, group=2, header=0x01,
                    driver="pcieport")
    host.add_device("0a:00.0", 0x1002, 0x67DF, 0x030000, group=2, parent="00:01.1",
                    driver="amdgpu-polaris", header=0x80, boot_vga=True)
    host.add_device("0a:00.1", 0x1002, 0xAAF0, 0x040300, group=2, parent="00:01.1")
    host.add_device("05:00.0", 0x10EC, 0x8168, 0x020000, group=12, driver="r8169")
    add_cpus(host, cores=8, threads=2)
    add_meminfo(host, 32 * 1024)
    return host


def add_block_device(
    host: FakeHost, name: str, devnum: str, *, parent: str | None = None,
    slaves: tuple[str, ...] = (),
) -> Path:
    """/sys/class/block/NAME and /sys/dev/block/M:m as the kernel lays them out.

    A partition (``parent`` = its disk) sits inside its disk's directory and has a
    ``partition`` file; a device-mapper volume lists what it is built on in ``slaves``.
    """
    sys = host.paths.sys
    if parent is not None:
        real = (sys / "class/block" / parent).resolve() / name
    elif name.startswith("dm-"):
        real = sys / "devices/virtual/block" / name
    else:
        real = sys / "devices/pci0000:00/0000:00:1f.2/ata1/host0/block" / name
    real.mkdir(parents=True)
    (real / "dev").write_text(devnum + "\n")
    if parent is not None:
        (real / "partition").write_text("1\n")
    if slaves:
        (real / "slaves").mkdir()
        for slave in slaves:
            target = (sys / "class/block" / slave).resolve()
            os.symlink(os.path.relpath(target, real / "slaves"), real / "slaves" / slave)
    for link_dir, link_name in ((sys / "class/block", name), (sys / "dev/block", devnum)):
        link_dir.mkdir(parents=True, exist_ok=True)
        os.symlink(os.path.relpath(real, link_dir), link_dir / link_name)
    return real


def write_mountinfo(host: FakeHost, mounts: Iterable[tuple[str, str, str]]) -> None:
    """/proc/self/mountinfo lines for (major:minor, mount point, source)."""
    lines = [
        f"{20 + i} 1 {devnum} / {point} rw,relatime shared:1 - ext4 {source} rw"
        for i, (devnum, point, source) in enumerate(mounts)
    ]
    (host.paths.proc / "self" / "mountinfo").write_text("\n".join(lines) + "\n")
