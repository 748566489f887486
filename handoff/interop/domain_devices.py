"""libvirt ``<devices>`` → the profile's disks, NICs, sound, display, passthrough, input. Pure.

The device half of the importer (:mod:`handoff.interop.domain_import`):
each method maps one kind of device element, recording what it used.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping

from handoff.interop.domain_reader import QEMU_NS, DomainReader
from handoff.interop.draft import Entry

#: grabToggle values of libvirt's evdev input → handoff's hotkey chord.
GRAB_TOGGLE_CHORDS: Mapping[str, tuple[str, ...]] = {
    "ctrl-ctrl": ("KEY_LEFTCTRL", "KEY_RIGHTCTRL"),
    "alt-alt": ("KEY_LEFTALT", "KEY_RIGHTALT"),
    "shift-shift": ("KEY_LEFTSHIFT", "KEY_RIGHTSHIFT"),
    "meta-meta": ("KEY_LEFTMETA", "KEY_RIGHTMETA"),
    "scrolllock": ("KEY_SCROLLLOCK",),
    "ctrl-scrolllock": ("KEY_LEFTCTRL", "KEY_SCROLLLOCK"),
}


class DeviceMapping(DomainReader):
    """The device elements' mapping, shared by the importer."""

    def _tpm(self, devices: ET.Element) -> None:
        for tpm in devices.findall("tpm"):
            backend = tpm.find("backend")
            kind = backend.attrib.get("type") if backend is not None else None
            version = backend.attrib.get("version", "2.0") if backend is not None else None
            if kind != "emulator" or version != "2.0":
                self.seen.note(self.where(tpm), f"a {kind} TPM {version or ''}: handoff emulates "
                               "a TPM 2.0 with swtpm ([tpm] type = \"emulated\")")
                self.seen.use_tree(tpm)
                continue
            self.seen.use(tpm)
            assert backend is not None
            self.seen.use(backend, "type", "version")
            model = tpm.attrib.get("model", "tpm-crb")
            self.seen.use(tpm, "model") if "model" in tpm.attrib else None
            comment = "<tpm><backend type='emulator' version='2.0'>: swtpm, started by handoff"
            if model != "tpm-crb":
                comment += f" (model {model}: handoff gives the guest a tpm-crb)"
            self.draft.table("tpm").set("type", "emulated", comment)

    def _usb_hostdev(self, hostdev: ET.Element) -> bool:
        """``<hostdev type='usb'>`` by vendor and product → ``[[usb]] device``."""
        vendor = hostdev.find("source/vendor")
        product = hostdev.find("source/product")
        if vendor is None or product is None:
            return False
        try:
            ids = int(vendor.attrib.get("id", ""), 0), int(product.attrib.get("id", ""), 0)
        except ValueError:
            return False
        self.seen.use_tree(hostdev)
        self.draft.append("usb").set("device", f"{ids[0]:04x}:{ids[1]:04x}",
                                     "<hostdev type='usb'>: attached whenever it is plugged in")
        return True

    def _shmem(self, devices: ET.Element) -> None:
        """Looking Glass's ``<shmem>`` (ivshmem-plain) → ``[looking_glass]``."""
        for shmem in devices.findall("shmem"):
            model = shmem.find("model")
            size = shmem.find("size")
            if model is None or model.attrib.get("type") != "ivshmem-plain" or size is None:
                continue
            unit = size.attrib.get("unit", "M").upper().rstrip("IB") or "M"
            scale = {"K": 1 / 1024, "M": 1, "G": 1024}.get(unit)
            if scale is None or not self.text(size).isdigit():
                continue
            self.seen.use_tree(shmem)
            table = self.draft.table("looking_glass")
            table.set("enabled", True, f"<shmem name='{shmem.attrib.get('name')}'>: the IVSHMEM "
                      "device of Looking Glass, its file made by handoff for owner")
            table.set("size", f"{int(int(self.text(size)) * scale)}M")

    def _filesystems(self, devices: ET.Element) -> None:
        """virtiofs ``<filesystem>`` → ``[[share]]`` (virtiofsd run by handoff)."""
        for fs in devices.findall("filesystem"):
            driver = fs.find("driver")
            source = fs.find("source")
            target = fs.find("target")
            if (driver is None or driver.attrib.get("type") != "virtiofs" or source is None
                    or "dir" not in source.attrib or target is None or "dir" not in target.attrib):
                continue
            self.seen.use_tree(fs)
            entry = self.draft.append("share")
            entry.set("path", source.attrib["dir"], "<filesystem><driver type='virtiofs'>")
            entry.set("tag", target.attrib["dir"])
            if fs.find("readonly") is not None:
                entry.set("readonly", True)
            for binary in fs.findall("binary"):
                self.seen.note(self.where(binary), "virtiofsd's options: handoff runs QEMU's "
                               "own virtiofsd (its vhost-user descriptor) as vm.user")

    def _guest_agent(self, devices: ET.Element) -> None:
        for channel in devices.findall("channel"):
            target = channel.find("target")
            if (
                channel.attrib.get("type") == "unix" and target is not None
                and target.attrib.get("name") == "org.qemu.guest_agent.0"
            ):
                self.seen.use_tree(channel)  # its socket path is libvirt's; handoff places its own
                self.draft.table("guest_agent").set(
                    "enabled", True, "<channel> org.qemu.guest_agent.0: qemu-ga's port")

    def _disks(self, devices: ET.Element) -> None:
        for disk in devices.findall("disk"):
            kind = disk.attrib.get("type", "file")
            device = disk.attrib.get("device", "disk")
            source = disk.find("source")
            path_attr = {"file": "file", "block": "dev"}.get(kind)
            if path_attr is None or device not in ("disk", "cdrom") or (
                source is None and device == "disk"
            ):
                self.seen.note(self.where(disk), f"a {kind} {device}: handoff opens files and "
                               "block devices only")
                self.seen.use_tree(disk)
                continue
            self.seen.use(disk, "type", "device")
            if source is None or path_attr not in source.attrib:
                self.seen.note(self.where(disk), "an empty CD-ROM drive: give the profile an ISO "
                               "path to insert")
                self.seen.use_tree(disk)
                continue
            entry = self.draft.append("disk")
            self.seen.use(source, path_attr)
            self.default_attr(source, "index", *[str(i) for i in range(64)])
            entry.set("path", source.attrib[path_attr], f"<disk type='{kind}' device='{device}'>")
            driver = disk.find("driver")
            if driver is not None:
                self.seen.use(driver)
                self.default_attr(driver, "name", "qemu")
                fmt = self.attr(driver, "type")
                if fmt in ("raw", "qcow2"):
                    entry.set("format", fmt)
                elif fmt is not None:
                    self.seen.note(self.where(driver, "type"), "handoff opens raw and qcow2 "
                                   "images; convert with qemu-img convert -O qcow2")
                cache = self.attr(driver, "cache")
                if cache in ("none", "writeback", "writethrough", "directsync", "unsafe"):
                    entry.set("cache", cache)
                elif cache == "default":
                    pass
                io = self.attr(driver, "io")
                if io in ("threads", "native", "io_uring"):
                    entry.set("aio", io)
            target = disk.find("target")
            if target is not None:
                self.seen.use(target, "dev")
                bus = self.attr(target, "bus", "virtio")
                interface = {"virtio": "virtio", "sata": "sata", "scsi": "scsi", "ide": "sata"}
                if bus in interface:
                    entry.set("interface", interface[bus],
                              "<target bus='ide'>: q35 has no IDE bus; its AHCI (SATA) port "
                              "instead" if bus == "ide" else None)
                else:
                    self.seen.note(self.where(target, "bus"), f"a {bus} disk: handoff attaches "
                                   "disks over virtio, SATA or SCSI")
            if device == "cdrom":
                entry.set("media", "cdrom")
                if disk.find("readonly") is not None:
                    self.seen.use(disk.find("readonly"))  # type: ignore[arg-type]
            elif disk.find("readonly") is not None:
                self.seen.use(disk.find("readonly"))  # type: ignore[arg-type]
                entry.set("readonly", True)
            boot = disk.find("boot")
            if boot is not None and boot.attrib.get("order") == str(len(self.draft.arrays["disk"])):
                self.seen.use(boot, "order")  # handoff's own order: the disks as listed

    def _interfaces(self, devices: ET.Element) -> None:
        models = {"virtio": "virtio", "e1000e": "e1000e", "rtl8139": "rtl8139", "e1000": "e1000e"}
        for nic in devices.findall("interface"):
            kind = nic.attrib.get("type")
            source = nic.find("source")
            entry: Entry | None = None
            if kind == "user":
                entry = self.draft.append("network")
                entry.set("type", "user", "<interface type='user'>: QEMU's built-in NAT")
            elif kind == "network":
                entry = self.draft.append("network")
                network = source.attrib.get("network") if source is not None else None
                if source is not None:
                    self.seen.use(source, "network")
                entry.set("type", "user", f"<interface type='network'> ({network}): libvirt's "
                          "NAT network exists only while libvirtd runs; QEMU's own NAT instead "
                          '(or type = "bridge" with bridge = "virbr0")')
            elif kind == "bridge" and source is not None and "bridge" in source.attrib:
                entry = self.draft.append("network")
                self.seen.use(source, "bridge")
                entry.set("type", "bridge", "<interface type='bridge'>")
                entry.set("bridge", source.attrib["bridge"])
            elif kind == "ethernet":
                target = nic.find("target")
                if target is not None and "dev" in target.attrib:
                    entry = self.draft.append("network")
                    self.seen.use(target, "dev")
                    self.default_attr(target, "managed", "no")
                    entry.set("type", "tap", "<interface type='ethernet'>: an existing tap")
                    entry.set("ifname", target.attrib["dev"])
            if entry is None:
                self.seen.note(self.where(nic), f"a {kind} interface: handoff connects user "
                               "(NAT), tap and bridge networks")
                self.seen.use_tree(nic)
                continue
            self.seen.use(nic, "type")
            model = nic.find("model")
            if model is not None:
                name = self.attr(model, "type") or "virtio"
                if name in models:
                    self.seen.use(model)
                    entry.set("model", models[name], "<model type='e1000'>: q35's PCIe e1000e "
                              "instead" if name == "e1000" else None)
                else:
                    self.seen.note(self.where(model, "type"), "handoff emulates virtio, e1000e "
                                   "and rtl8139 NICs")
            mac = nic.find("mac")
            if mac is not None and "address" in mac.attrib:
                self.seen.use(mac, "address")
                entry.set("mac", mac.attrib["address"])

    def _sound(self, devices: ET.Element) -> None:
        sound = devices.find("sound")
        if sound is None:
            return
        model = sound.attrib.get("model")
        if model not in ("ich6", "ich9", "ich7"):
            self.seen.note(self.where(sound), f"a {model} sound card: handoff emulates Intel HDA")
            self.seen.use_tree(sound)
            return
        self.seen.use(sound, "model")
        link = sound.find("audio")  # <sound><audio id='N'/>: the backend below
        if link is not None:
            self.seen.use(link, "id")
        for codec in sound.findall("codec"):
            self.seen.use(codec)
            self.default_attr(codec, "type", "duplex", "micro", "output")
        table = self.draft.table("sound")
        table.set("model", "hda", f"<sound model='{model}'>: Intel HDA")
        audio = devices.find("audio")
        backends = {"pulseaudio": "pa", "alsa": "alsa", "sdl": "sdl", "none": "none",
                    "pipewire": "pipewire"}
        if audio is not None:
            kind = audio.attrib.get("type", "none")
            if kind in backends:
                self.seen.use(audio, "type")
                self.default_attr(audio, "id", *[str(i) for i in range(1, 9)])
                table.set("backend", backends[kind], f"<audio type='{kind}'>")
                for child in list(audio):
                    self.seen.note(self.where(child),
                                   "audio stream settings: handoff keeps QEMU's defaults")
                    self.seen.use_tree(child)
                for name in ("serverName", "timerPeriod"):
                    if name in audio.attrib:
                        self.seen.note(self.where(audio, name),
                                       "audio server settings: handoff keeps QEMU's defaults")
                        self.seen.use(audio, name)

    def _display(self, devices: ET.Element) -> None:
        table = self.draft.table("display")
        video = devices.find("video")
        if video is not None:
            self.seen.use(video)
            model = video.find("model")
            if model is not None:
                self.seen.use(model)
                kind = model.attrib.get("type") or "vga"
                self.seen.use(model, "type")
                vgas = {"vga": "std", "bochs": "std", "cirrus": "std", "virtio": "virtio",
                        "qxl": "qxl", "none": "none", "ramfb": "std"}
                table.set("vga", vgas.get(kind, "std"), f"<video><model type='{kind}'>")
                for name in ("vram", "ram", "vgamem", "vram64", "heads", "primary"):
                    if name in model.attrib:
                        self.seen.use(model, name)
                for child in list(model):
                    self.seen.note(self.where(child), "video acceleration: handoff keeps "
                                   "QEMU's default")
                    self.seen.use_tree(child)
        frontend: str | None = None
        for graphics in devices.findall("graphics"):
            shown = graphics.attrib.get("type")
            if shown == "vnc" and frontend is None:
                frontend = "vnc"
                self.seen.use_tree(graphics)
                if graphics.attrib.get("port") not in (None, "-1") or graphics.find(
                    "listen[@type='address']"
                ) is not None:
                    self.seen.note(self.where(graphics),
                                   "a VNC port on the network: handoff's VNC listens on a unix "
                                   "socket only (/run/handoff/qemu/NAME/vnc.sock)")
            elif shown == "sdl" and frontend is None:
                frontend = "sdl"
                self.seen.use_tree(graphics)
            else:
                self.seen.note(self.where(graphics), f"{shown} graphics: handoff shows the "
                               "guest in "
                               "a GTK or SDL window or on a VNC socket")
                self.seen.use_tree(graphics)
        if frontend is not None:
            table.set("frontend", frontend, "<graphics>")
        elif video is not None:
            table.set("frontend", "none")
        if not table.values:
            del self.draft.tables["display"]

    def _hostdevs(self, devices: ET.Element) -> None:
        for hostdev in devices.findall("hostdev"):
            if hostdev.attrib.get("type") == "usb" and self._usb_hostdev(hostdev):
                continue
            if hostdev.attrib.get("type") != "pci" or hostdev.attrib.get("mode", "subsystem") != (
                "subsystem"
            ):
                self.seen.note(self.where(hostdev), f"a {hostdev.attrib.get('type')} host device:"
                               " handoff passes PCI devices, and USB devices by vendor:product "
                               "([[usb]] device) or port")
                self.seen.use_tree(hostdev)
                continue
            address = hostdev.find("source/address")
            if address is None:
                raise self.error(
                    f"{self.where(hostdev)} has no <source><address>: handoff cannot tell which "
                    "PCI device it is",
                    "give it <source><address domain='0x0000' bus='0x01' slot='0x00' "
                    "function='0x0'/></source>",
                )
            try:
                parts = [int(address.attrib.get(k, "0"), 0)
                         for k in ("domain", "bus", "slot", "function")]
            except ValueError:
                raise self.error(
                    f"{self.where(address)}: {dict(address.attrib)} is not a PCI address",
                    "write domain, bus, slot and function as numbers, e.g. bus='0x01'",
                ) from None
            domain, bus, slot, function = parts
            if not (0 <= bus <= 0xFF and 0 <= slot <= 0x1F and 0 <= function <= 7 and domain >= 0):
                raise self.error(
                    f"{self.where(address)}: {dict(address.attrib)} is not a PCI address "
                    "(bus 0-0xff, slot 0-0x1f, function 0-7)",
                    "copy the address from `lspci -D` of the host",
                )
            self.seen.use(hostdev, "mode", "type")
            self.seen.use(hostdev.find("source"))  # type: ignore[arg-type]
            self.seen.use(address, "domain", "bus", "slot", "function")
            managed = hostdev.attrib.get("managed", "no")
            self.seen.use(hostdev, "managed") if "managed" in hostdev.attrib else None
            entry = self.draft.append("passthrough")
            width = 4 if domain <= 0xFFFF else len(f"{domain:x}")
            text = f"{domain:0{width}x}:{bus:02x}:{slot:02x}.{function:x}"
            comment = "<hostdev type='pci'>"
            if managed != "yes":
                comment += (" (managed='no'): handoff moves it to vfio-pci and back itself, "
                            "journaled")
            entry.set("address", text, comment)
            alias = hostdev.find("alias")
            if alias is not None and alias.attrib.get("name", "").startswith("ua-hostdev"):
                self.seen.use(alias, "name")  # the handle of a <qemu:override> below
            driver = hostdev.find("driver")
            if driver is not None:
                self.seen.use(driver)
                self.default_attr(driver, "name", "vfio")
            rom = hostdev.find("rom")
            if rom is not None:
                self.seen.use(rom)
                if "file" in rom.attrib:
                    self.seen.use(rom, "file")
                    entry.set("romfile", rom.attrib["file"], "<rom file=…>")
                self.default_attr(rom, "bar", "on")
        for override in self.root.findall("qemu:override/qemu:device", {"qemu": QEMU_NS}):
            self._x_vga_override(override)

    def _x_vga_override(self, device: ET.Element) -> None:
        """``<qemu:override><qemu:device alias='hostdevN'>`` with x-vga=true (libvirt ≥ 8.2)."""
        alias = device.attrib.get("alias", "")
        match = re.fullmatch(r"(?:ua-)?hostdev(\d+)", alias)
        props = device.findall("qemu:frontend/qemu:property", {"qemu": QEMU_NS})
        entries = self.draft.arrays.get("passthrough", [])
        if match is None or int(match[1]) >= len(entries):
            return
        for prop in props:
            if prop.attrib.get("name") == "x-vga" and prop.attrib.get("value") in ("true", "on"):
                entries[int(match[1])].set("x_vga", True, "<qemu:override> x-vga: the card's "
                                           "legacy VGA ranges")
                self.seen.use_tree(device)
                parent = self.root.find("qemu:override", {"qemu": QEMU_NS})
                if parent is not None:
                    self.seen.use(parent)
                    if all(id(d) in self.seen.elements for d in list(parent)):
                        pass

    def _inputs(self, devices: ET.Element) -> None:
        selectors: list[str] = []
        chord: tuple[str, ...] | None = None
        for element in devices.findall("input"):
            kind = element.attrib.get("type")
            bus = element.attrib.get("bus")
            if kind in ("mouse", "keyboard") and bus in ("ps2", None):
                self.seen.use_tree(element)  # q35 always has PS/2
            elif kind == "tablet" and bus in ("usb", None):
                self.seen.use_tree(element)
                self.draft.table("display").set("tablet", True, "<input type='tablet' bus='usb'>")
            elif kind == "evdev":
                source = element.find("source")
                dev = source.attrib.get("dev", "") if source is not None else ""
                self.seen.use(element, "type")
                if source is not None:
                    self.seen.use(source, "dev")
                    self.default_attr(source, "grab", "all")
                    self.default_attr(source, "repeat", "on", "off")
                by_id = "/dev/input/by-id/"
                if dev.startswith(by_id):
                    selectors.append(f"by-id:{dev[len(by_id):]}")
                else:
                    self.seen.note(self.where(element),
                                   f"{dev}: handoff selects devices by /dev/input/by-id name, "
                                   "udev path, usb:VID:PID or name; add it to input.devices")
                toggle = source.attrib.get("grabToggle") if source is not None else None
                if toggle is not None and source is not None:
                    self.seen.use(source, "grabToggle")
                    if toggle in GRAB_TOGGLE_CHORDS:
                        chord = GRAB_TOGGLE_CHORDS[toggle]
                    else:
                        self.seen.note(self.where(source, "grabToggle"),
                                       "no handoff chord for it: set input.hotkey")
            else:
                self.seen.note(self.where(element), f"a {bus} {kind}: handoff forwards the host's "
                               "keyboards and mice ([input])")
                self.seen.use_tree(element)
        if not selectors:
            return
        table = self.draft.table("input")
        table.set("backend", "qmp", "<input type='evdev'>: handoff grabs these devices and "
                  'forwards them (qmp: any guest; "virtio" needs the guest\'s virtio-input '
                  "driver)")
        if chord is not None:
            table.set("hotkey", list(chord), "grabToggle: the chord that switches host/guest")
        table.set("devices", selectors)
