"""A Profile → libvirt domain XML that libvirt accepts for the same VM. Pure.

What libvirt has an element for is written as that element (hostdev
``managed='yes'``, ``<cputune>``, ``<memoryBacking>``, evdev input with
``grabToggle``, ``<qemu:override>`` for x-vga, ``<qemu:commandline>`` for
extra_args); what it has not travels in handoff's ``<metadata>``
(:mod:`handoff.interop.settings`), so importing the domain again gives the
same profile. A comment at the top says what handoff does that libvirt will
not do for this domain.

Never: read the host (the accelerator comes in resolved), or write files.
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from typing import Any

from handoff.desk.looking_glass import size_mib
from handoff.interop import settings
from handoff.interop.domain_import import GRAB_TOGGLE_CHORDS, QEMU_NS
from handoff.profile.model import (
    Accelerator,
    AudioBackend,
    DiskInterface,
    DiskMedia,
    DisplayFrontend,
    FirmwareType,
    GuestOs,
    HyperV,
    InputBackend,
    LookingGlassDevice,
    NetworkType,
    Profile,
    SoundModel,
    TpmType,
    Vga,
)
from handoff.qemu.cmdline import HIDDEN_HV_VENDOR_ID
from handoff.tune.cpulist import format_cpulist
from handoff.tune.model import HugepageSize, PinMode

ET.register_namespace("qemu", QEMU_NS)
ET.register_namespace("handoff", settings.NAMESPACE)

_VIDEO = {Vga.STD: "vga", Vga.VIRTIO: "virtio", Vga.QXL: "qxl", Vga.NONE: "none"}
_AUDIO = {
    AudioBackend.NONE: "none",
    AudioBackend.PULSEAUDIO: "pulseaudio",
    AudioBackend.PIPEWIRE: "pipewire",
    AudioBackend.ALSA: "alsa",
    AudioBackend.SDL: "sdl",
}
_TOGGLE = {chord: name for name, chord in GRAB_TOGGLE_CHORDS.items()}
#: libvirt's <hyperv> elements for the enlightenments libvirt and virt-manager give Windows.
HYPERV_ELEMENTS = ("relaxed", "vapic", "spinlocks", "vpindex", "runtime", "synic", "stimer",
                   "reset", "frequencies", "tlbflush", "ipi")

#: What handoff does around a VM that libvirt does not, said at the top of every export.
NOT_IN_LIBVIRT = (
    "Exported by `handoff export` for libvirt. libvirt runs this VM, but does not do what",
    "handoff did around it:",
    "- the passthrough devices' whole IOMMU groups moved to vfio-pci and back, journaled on",
    "  disk first, so `handoff recover` finishes the return after a crash; a device in use",
    "  by the host (a display, a holder of /dev/dri) refused before anything changes;",
    "- keyboard and mouse switched with a chord and no stuck keys, hot-plugged devices",
    "  followed (libvirt's evdev input grabs the devices named below, no hot-plug);",
    "- pinning planned from the host's topology, hugepages reserved and given back,",
    "  cpufreq governors and isolation restored after the VM;",
    "- single-GPU hand-over of the host's display, live GPU moves (`handoff gpu`).",
    "handoff's own settings ride in <metadata> so `handoff import` gets them back.",
)


def domain_xml(profile: Profile, accel: Accelerator) -> str:
    """The domain XML for ``profile`` under ``accel`` (``vm.accel`` resolved on a host)."""
    vm = profile.vm
    domain = ET.Element("domain", {"type": "kvm" if accel is Accelerator.KVM else "qemu"})
    domain.append(_comment("\n     ".join(NOT_IN_LIBVIRT)))
    ET.SubElement(domain, "name").text = vm.name
    extra = settings.settings_toml(profile)
    if extra:
        metadata = ET.SubElement(domain, "metadata")
        ET.SubElement(metadata, f"{{{settings.NAMESPACE}}}{settings.ELEMENT}").text = (
            "\n" + extra
        )
    ET.SubElement(domain, "memory", {"unit": "MiB"}).text = str(vm.memory_mib)
    ET.SubElement(domain, "vcpu", {"placement": "static"}).text = str(vm.cpus)
    _cputune(domain, profile)
    if profile.memory.hugepages is not HugepageSize.NONE or profile.shares:
        backing = ET.SubElement(domain, "memoryBacking")
        if profile.memory.hugepages is not HugepageSize.NONE:
            pages = ET.SubElement(backing, "hugepages")
            ET.SubElement(pages, "page", {"size": str(profile.memory.hugepages.kib),
                                          "unit": "KiB"})
        if profile.shares:  # virtiofsd maps guest RAM: libvirt wants it shared
            ET.SubElement(backing, "source", {"type": "memfd"})
            ET.SubElement(backing, "access", {"mode": "shared"})
    _os(domain, profile)
    _features(domain, profile)
    _cpu(domain, profile, accel)
    if profile.vm.os is GuestOs.WINDOWS:  # the clock libvirt gives Windows, as handoff does
        clock = ET.SubElement(domain, "clock", {"offset": "localtime"})
        for timer in ({"name": "rtc", "tickpolicy": "catchup"},
                      {"name": "pit", "tickpolicy": "delay"},
                      {"name": "hpet", "present": "no"},
                      {"name": "hypervclock", "present": "yes"}):
            ET.SubElement(clock, "timer", timer)
    devices = ET.SubElement(domain, "devices")
    _disks(devices, profile)
    _networks(devices, profile)
    _display(devices, profile)
    _sound(devices, profile)
    _hostdevs(devices, profile)
    _input(devices, profile)
    _tpm_and_agent(devices, profile)
    _desk(devices, profile)
    _qemu(domain, profile)
    ET.indent(domain, space="  ")
    return ET.tostring(domain, encoding="unicode") + "\n"


def _comment(text: str) -> ET.Element[Any]:
    """An XML comment; "--" may not appear in one (the XML spec), so it never does here."""
    return ET.Comment(" " + text.strip().replace("--", "- -") + " ")


def _cputune(domain: ET.Element, profile: Profile) -> None:
    cpu = profile.cpu
    explicit = cpu.pin.mode is PinMode.EXPLICIT
    if not explicit and cpu.emulator.cpus is None:
        return
    tune = ET.SubElement(domain, "cputune")
    if explicit:
        for vcpu, cpus in enumerate(cpu.pin.lists):
            ET.SubElement(tune, "vcpupin", {"vcpu": str(vcpu), "cpuset": format_cpulist(cpus)})
    if cpu.emulator.cpus is not None:
        ET.SubElement(tune, "emulatorpin", {"cpuset": format_cpulist(cpu.emulator.cpus)})


def _os(domain: ET.Element, profile: Profile) -> None:
    os_element = ET.SubElement(domain, "os")
    os_type = ET.SubElement(os_element, "type", {"arch": "x86_64", "machine": profile.vm.machine})
    os_type.text = "hvm"
    fw = profile.firmware
    if fw.type is not FirmwareType.OVMF:
        return
    secure = {"secure": "yes"} if fw.secure_boot else {}
    if fw.code is not None:
        loader = ET.SubElement(os_element, "loader", {"readonly": "yes", **secure,
                                                      "type": "pflash"})
        loader.text = str(fw.code)
    else:  # chosen from QEMU's firmware descriptors: libvirt does the same
        os_element.set("firmware", "efi")
        if fw.secure_boot:
            wanted = ET.SubElement(os_element, "firmware")
            for name in ("enrolled-keys", "secure-boot"):
                ET.SubElement(wanted, "feature", {"enabled": "yes", "name": name})
            ET.SubElement(os_element, "loader", secure)
    if fw.vars is not None or fw.vars_template is not None:
        nvram = ET.SubElement(os_element, "nvram")
        if fw.vars_template is not None:
            nvram.set("template", str(fw.vars_template))
        if fw.vars is not None:
            nvram.text = str(fw.vars)


def _features(domain: ET.Element, profile: Profile) -> None:
    features = ET.SubElement(domain, "features")
    ET.SubElement(features, "acpi")
    ET.SubElement(features, "apic")
    vm = profile.vm
    hide = vm.hide_hypervisor or "kvm=off" in vm.cpu_flags
    enlightened = vm.hyperv is HyperV.ON or (
        vm.hyperv is HyperV.AUTO and vm.os is GuestOs.WINDOWS
    )
    if hide or enlightened:
        hyperv = ET.SubElement(features, "hyperv", {"mode": "custom"})
        if enlightened:  # libvirt's names for what handoff.qemu.hyperv gives a Windows guest
            for name in HYPERV_ELEMENTS:
                element = ET.SubElement(hyperv, name, {"state": "on"})
                if name == "spinlocks":
                    element.set("retries", "8191")
                elif name == "stimer":
                    ET.SubElement(element, "direct", {"state": "on"})
        if hide:
            ET.SubElement(hyperv, "vendor_id", {"state": "on", "value": HIDDEN_HV_VENDOR_ID})
    if hide:
        kvm = ET.SubElement(features, "kvm")
        ET.SubElement(kvm, "hidden", {"state": "on"})
    if profile.firmware.secure_boot:
        ET.SubElement(features, "smm", {"state": "on"})


def _cpu(domain: ET.Element, profile: Profile, accel: Accelerator) -> None:
    vm = profile.vm
    model = vm.cpu_model or ("host" if accel is Accelerator.KVM else "max")
    if model == "host":
        cpu = ET.SubElement(domain, "cpu", {"mode": "host-passthrough", "check": "none"})
    elif model == "max":
        cpu = ET.SubElement(domain, "cpu", {"mode": "maximum", "check": "none"})
    else:
        cpu = ET.SubElement(domain, "cpu", {"mode": "custom", "match": "exact", "check": "none"})
        ET.SubElement(cpu, "model", {"fallback": "forbid"}).text = model
    if vm.sockets is None and vm.cores is None and vm.threads is None:
        sockets, cores, threads = 1, vm.cpus, 1  # what handoff's bare -smp N gives on q35
    else:
        sockets, cores, threads = vm.sockets or 1, vm.cores or 1, vm.threads or 1
    ET.SubElement(cpu, "topology", {"sockets": str(sockets), "dies": "1", "cores": str(cores),
                                    "threads": str(threads)})
    for flag in vm.cpu_flags:
        if flag.startswith(("+", "-")):
            policy = "require" if flag[0] == "+" else "disable"
            ET.SubElement(cpu, "feature", {"policy": policy, "name": flag[1:]})
        elif flag != "kvm=off":
            cpu.append(_comment(f" cpu flag {flag!r}: libvirt has no element for it "))


def _disk_targets(interfaces: Sequence[DiskInterface]) -> list[str]:
    """vda, vdb … for virtio; sda, sdb … shared by SATA and SCSI (libvirt's names)."""
    counters = {"vd": 0, "sd": 0}
    names = []
    for interface in interfaces:
        prefix = "vd" if interface is DiskInterface.VIRTIO else "sd"
        names.append(prefix + "abcdefghijklmnopqrstuvwxyz"[counters[prefix]])
        counters[prefix] += 1
    return names


def _disks(devices: ET.Element, profile: Profile) -> None:
    targets = _disk_targets([disk.interface for disk in profile.disks])
    for index, (disk, target) in enumerate(zip(profile.disks, targets, strict=True)):
        block = disk.path.parts[:2] == ("/", "dev")
        device = "cdrom" if disk.media is DiskMedia.CDROM else "disk"
        element = ET.SubElement(devices, "disk", {"type": "block" if block else "file",
                                                  "device": device})
        ET.SubElement(element, "driver", {"name": "qemu", "type": disk.format.value,
                                          "cache": disk.cache.value, "io": disk.aio.value})
        ET.SubElement(element, "source", {"dev" if block else "file": str(disk.path)})
        ET.SubElement(element, "target", {"dev": target, "bus": disk.interface.value})
        if disk.readonly or device == "cdrom":
            ET.SubElement(element, "readonly")
        ET.SubElement(element, "boot", {"order": str(index + 1)})


def _networks(devices: ET.Element, profile: Profile) -> None:
    for net in profile.networks:
        if net.type is NetworkType.USER:
            element = ET.SubElement(devices, "interface", {"type": "user"})
        elif net.type is NetworkType.BRIDGE:
            element = ET.SubElement(devices, "interface", {"type": "bridge"})
            ET.SubElement(element, "source", {"bridge": net.bridge or ""})
        else:
            element = ET.SubElement(devices, "interface", {"type": "ethernet"})
            ET.SubElement(element, "target", {"dev": net.ifname or "", "managed": "no"})
        if net.mac is not None:
            ET.SubElement(element, "mac", {"address": net.mac})
        ET.SubElement(element, "model", {"type": net.model.value})


def _display(devices: ET.Element, profile: Profile) -> None:
    display = profile.display
    frontend = display.frontend
    if frontend is DisplayFrontend.VNC:
        graphics = ET.SubElement(devices, "graphics", {"type": "vnc"})
        ET.SubElement(graphics, "listen", {"type": "socket"})  # libvirt's own socket, no port
    elif frontend in (DisplayFrontend.SDL, DisplayFrontend.GTK):
        if frontend is DisplayFrontend.GTK:
            devices.append(_comment(" handoff's GTK window: libvirt has SDL (or use "
                                      "virt-viewer) "))
        ET.SubElement(devices, "graphics", {"type": "sdl"})
    video = ET.SubElement(devices, "video")
    ET.SubElement(video, "model", {"type": _VIDEO[display.vga]})
    if display.tablet:
        ET.SubElement(devices, "input", {"type": "tablet", "bus": "usb"})


def _sound(devices: ET.Element, profile: Profile) -> None:
    if profile.sound.model is SoundModel.NONE:
        return
    sound = ET.SubElement(devices, "sound", {"model": "ich9"})
    ET.SubElement(sound, "codec", {"type": "duplex"})
    ET.SubElement(sound, "audio", {"id": "1"})
    ET.SubElement(devices, "audio", {"id": "1", "type": _AUDIO[profile.sound.backend]})


def _hostdevs(devices: ET.Element, profile: Profile) -> None:
    for index, dev in enumerate(profile.passthrough):
        hostdev = ET.SubElement(devices, "hostdev", {"mode": "subsystem", "type": "pci",
                                                     "managed": "yes"})
        source = ET.SubElement(hostdev, "source")
        address = dev.address
        ET.SubElement(source, "address", {
            "domain": f"0x{address.domain:04x}", "bus": f"0x{address.bus:02x}",
            "slot": f"0x{address.slot:02x}", "function": f"0x{address.function:x}",
        })
        if dev.x_vga:
            ET.SubElement(hostdev, "alias", {"name": f"ua-hostdev{index}"})
        if dev.romfile is not None:
            ET.SubElement(hostdev, "rom", {"file": str(dev.romfile)})


def _input(devices: ET.Element, profile: Profile) -> None:
    inp = profile.input
    if inp.backend is InputBackend.NONE:
        return
    toggle = _TOGGLE.get(inp.hotkey)
    by_id = [s.removeprefix("by-id:") for s in inp.devices if s.startswith("by-id:")]
    if not by_id:
        devices.append(_comment(
            " handoff forwards every keyboard and mouse it finds (or those its selectors "
            "name); libvirt's evdev input needs each device's /dev/input/by-id path "))
        return
    if toggle is None:
        devices.append(_comment(f" hotkey {'+'.join(inp.hotkey)}: libvirt's grabToggle has "
                                  "no such chord; it uses ctrl-ctrl "))
    for name in by_id:
        element = ET.SubElement(devices, "input", {"type": "evdev"})
        attributes = {"dev": f"/dev/input/by-id/{name}"}
        if name.endswith("-kbd"):
            attributes |= {"grab": "all", "repeat": "on"}
        attributes["grabToggle"] = toggle or "ctrl-ctrl"
        ET.SubElement(element, "source", attributes)


def _desk(devices: ET.Element, profile: Profile) -> None:
    """USB devices, Looking Glass's shared memory, virtiofs shares."""
    for usb in profile.usb:
        if usb.device is None:
            devices.append(_comment(f" USB port {usb.port}: libvirt selects USB devices by "
                                    "vendor:product or bus/device, not by port "))
            continue
        vendor, product = usb.device.split(":")
        hostdev = ET.SubElement(devices, "hostdev", {"mode": "subsystem", "type": "usb",
                                                     "managed": "yes"})
        source = ET.SubElement(hostdev, "source")
        ET.SubElement(source, "vendor", {"id": f"0x{vendor}"})
        ET.SubElement(source, "product", {"id": f"0x{product}"})
    lg = profile.looking_glass
    if lg.enabled:
        if lg.device is LookingGlassDevice.KVMFR:
            devices.append(_comment(" Looking Glass on /dev/kvmfrN: libvirt passes it with "
                                    "<qemu:commandline> (see the Looking Glass docs) "))
        else:
            shmem = ET.SubElement(devices, "shmem", {"name": "looking-glass"})
            ET.SubElement(shmem, "model", {"type": "ivshmem-plain"})
            ET.SubElement(shmem, "size", {"unit": "M"}).text = str(size_mib(lg))
    for share in profile.shares:
        fs = ET.SubElement(devices, "filesystem", {"type": "mount", "accessmode": "passthrough"})
        ET.SubElement(fs, "driver", {"type": "virtiofs"})
        ET.SubElement(fs, "source", {"dir": str(share.path)})
        ET.SubElement(fs, "target", {"dir": share.tag})
        if share.readonly:
            ET.SubElement(fs, "readonly")


def _tpm_and_agent(devices: ET.Element, profile: Profile) -> None:
    if profile.tpm.type is TpmType.EMULATED:
        tpm = ET.SubElement(devices, "tpm", {"model": "tpm-crb"})
        ET.SubElement(tpm, "backend", {"type": "emulator", "version": "2.0"})
    if profile.guest_agent.enabled:
        channel = ET.SubElement(devices, "channel", {"type": "unix"})
        ET.SubElement(channel, "source", {"mode": "bind"})
        ET.SubElement(channel, "target", {"type": "virtio", "name": "org.qemu.guest_agent.0"})


def _qemu(domain: ET.Element, profile: Profile) -> None:
    if profile.vm.extra_args:
        commandline = ET.SubElement(domain, f"{{{QEMU_NS}}}commandline")
        for arg in profile.vm.extra_args:
            ET.SubElement(commandline, f"{{{QEMU_NS}}}arg", {"value": arg})
    x_vga = [index for index, dev in enumerate(profile.passthrough) if dev.x_vga]
    if x_vga:
        override = ET.SubElement(domain, f"{{{QEMU_NS}}}override")
        for index in x_vga:
            device = ET.SubElement(override, f"{{{QEMU_NS}}}device",
                                   {"alias": f"ua-hostdev{index}"})
            frontend = ET.SubElement(device, f"{{{QEMU_NS}}}frontend")
            ET.SubElement(frontend, f"{{{QEMU_NS}}}property",
                          {"name": "x-vga", "type": "bool", "value": "true"})
