"""Profile → QEMU argv: pure, modern QEMU syntax only.

Nothing here touches the host: the same profile and :class:`LaunchSpec`
always give the same argv, so ``handoff argv`` prints exactly what ``handoff
run`` starts, and golden tests pin every feature. The host-facing choices
(KVM or TCG, which fd carries QMP, where the VNC socket, the input monitor and
the virtio input proxies' links live) arrive in the LaunchSpec, which
:mod:`handoff.session.plan` builds for every caller.

The seed guide's options are translated to their current forms:
``-enable-kvm`` → ``-machine q35,accel=kvm``; ``-drive if=virtio,cache=none``
→ ``-blockdev`` nodes + ``-device virtio-blk-pci``; ``-soundhw hda`` (removed in
QEMU 7.1) → ``-audiodev`` + ``-device intel-hda`` + ``-device hda-duplex``;
``-usbdevice tablet`` (a legacy shorthand that needs a default USB controller,
which -nodefaults removes) → ``-device qemu-xhci`` + ``-device usb-tablet``;
``-vga std`` → ``-vga none -device VGA``;
``-device virtio-net`` → ``-device virtio-net-pci``.

Option values are escaped the QEMU way (a literal comma is written ``,,``),
so a path with a comma cannot smuggle in an option.

Why it stays over 500 lines: it is the one place an option's spelling is
decided, one small function per option family (firmware, disks, NICs, sound,
input, passthrough, TPM, guest agent) over one escaping rule, pinned together
by the golden argv files; split, a family's syntax could drift from the rest.
"""

from __future__ import annotations

import itertools
import json
import shlex
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from handoff.base.errors import ProfileError
from handoff.pci.address import PciAddress
from handoff.profile import (
    Accelerator,
    AudioBackend,
    Disk,
    DiskAio,
    DiskCache,
    DiskInterface,
    DiskMedia,
    DisplayFrontend,
    Firmware,
    FirmwareType,
    NetworkType,
    NicModel,
    Passthrough,
    Profile,
    SoundModel,
    Vga,
)
from handoff.qemu.hyperv import NO_PLATFORM, Platform
from handoff.tune.model import HugepageSize

if TYPE_CHECKING:
    # Start-up: the desk's, the tuning's and the firmware descriptors' modules
    # load only for a profile that has the section (imported where used).
    from handoff.desk.looking_glass import Ivshmem
    from handoff.qemu.firmware_descriptors import FirmwareChoice
    from handoff.tune.plan import MemoryBackend

#: Under hide_hypervisor, the Hyper-V vendor id the guest sees instead of
#: "Microsoft Hv"/"KVMKVMKVM" (at most 12 characters). NVIDIA's pre-465
#: drivers refused to start (code 43) when they recognised a hypervisor.
HIDDEN_HV_VENDOR_ID = "handoffvm"

#: The QEMU trace events that record every input event QEMU's input layer
#: receives (key, button, motion): tests and bench/ observe forwarding there.
INPUT_TRACE_EVENTS = "input_event_*"

#: q35's built-in AHCI controller (ICH9, 00:1f.2) exposes these buses.
_AHCI_BUS = "ide.{port}"

NIC_DEVICE = {
    NicModel.VIRTIO: "virtio-net-pci",
    NicModel.E1000E: "e1000e",
    NicModel.RTL8139: "rtl8139",
}

VGA_DEVICE = {
    Vga.STD: "VGA",
    Vga.VIRTIO: "virtio-vga",
    Vga.QXL: "qxl-vga",
}


@dataclass(frozen=True)
class LaunchSpec:
    """What the session decided about this launch, beyond the profile.

    ``monitor_fd`` (QMP over an inherited socketpair end, as QEMU's own
    python/qemu/machine does) leaves no socket path on disk; ``monitor_path``
    is for a person's own tools and lives in the 0700 run directory. VNC is
    only ever a unix socket: nothing listens on a network port.
    ``input_monitor``: a second QMP monitor QEMU listens on for the ``qmp``
    input backend; ``virtio_input``: the (keyboard, mouse) evdev paths of the
    ``virtio`` backend's proxies.
    """

    binary: str = "qemu-system-x86_64"
    accel: Accelerator = Accelerator.TCG
    monitor_fd: int | None = None
    monitor_path: Path | None = None
    vnc_socket: Path | None = None
    trace_file: Path | None = None
    input_monitor: Path | None = None
    virtio_input: tuple[Path, Path] | None = None
    extra_args: tuple[str, ...] = ()
    start_paused: bool = False
    memory_backend: MemoryBackend | None = None
    tpm_socket: Path | None = None  # swtpm's control socket ([tpm] type = "emulated")
    agent_socket: Path | None = None  # the guest agent's channel ([guest_agent])
    # The UEFI build chosen from QEMU's firmware descriptors (None: the profile's
    # own code/vars as written), and the guest OS's platform (hyperv, clock).
    firmware: FirmwareChoice | None = None
    platform: Platform = NO_PLATFORM
    ivshmem: Ivshmem | None = None  # [looking_glass]: the shm file or /dev/kvmfrN
    virtiofs: tuple[tuple[Path, str], ...] = ()  # [[share]]: (virtiofsd's socket, tag)
    sound_server: Path | None = None  # [sound] user's PulseAudio socket
    no_sound_server: bool = False  # that user runs none: the audiodev is "none"


def escape(value: str) -> str:
    """QEMU's option escaping: a comma inside a value is written as two."""
    return value.replace(",", ",,")


def _opts(head: str, **options: str | int | None) -> str:
    """``head,key=value,...`` with values escaped; None values are left out.

    Python names cannot hold ``-`` or ``.``: ``__`` becomes ``.`` and ``_``
    becomes ``-`` (``cache__direct`` → ``cache.direct``, ``read_only`` →
    ``read-only``)."""
    parts = [head]
    for key, value in options.items():
        if value is None:
            continue
        name = key.replace("__", ".").replace("_", "-")
        parts.append(f"{name}={escape(str(value))}")
    return ",".join(parts)


def process_name(profile: Profile) -> str:
    """The name QEMU gives its process (``-name ...,process=``).

    The kernel keeps 15 bytes of it (comm), so ``ps``/``top`` show
    ``handoff-<name>`` truncated; nothing in handoff identifies QEMU by this
    name (the journal records the pid), it is for people reading ``top``.
    """
    return f"handoff-{profile.vm.name}"


def cpu_model(profile: Profile, accel: Accelerator) -> str:
    """``host`` under KVM, ``max`` under TCG, unless the profile names one."""
    if profile.vm.cpu_model is not None:
        return profile.vm.cpu_model
    return "host" if accel is Accelerator.KVM else "max"


def build_argv(profile: Profile, launch: LaunchSpec) -> list[str]:
    """The complete QEMU command line for ``profile`` under ``launch``.

    Raises :class:`ProfileError` for a profile that cannot run under the
    chosen accelerator (``cpu_model = "host"`` without KVM), and ValueError
    for a LaunchSpec the session built wrongly (a bug, not a user error).
    """
    if launch.monitor_fd is not None and launch.monitor_path is not None:
        raise ValueError("LaunchSpec: give monitor_fd or monitor_path, not both")
    vm = profile.vm
    argv: list[str] = [launch.binary, "-nodefaults", "-no-user-config"]
    argv += [
        "-name",
        _opts(f"guest={escape(vm.name)}", process=process_name(profile), debug_threads="on"),
    ]
    argv += ["-msg", "timestamp=on"]
    backend = launch.memory_backend
    ram = RAM_BACKEND_ID if backend is not None else None
    smm = "on" if launch.firmware is not None and launch.firmware.smm else None
    machine = dict(launch.platform.machine_options)
    argv += [
        "-machine", _opts(vm.machine, accel=launch.accel, memory_backend=ram, smm=smm, **machine)
    ]
    argv += ["-cpu", _cpu(profile, launch.accel, launch.platform.cpu_flags)]
    argv += ["-smp", _smp(profile)]
    argv += ["-m", f"{vm.memory_mib}M"]
    if backend is not None:
        argv += ["-object", memory_backend_object(backend)]
    argv += list(launch.platform.args)
    argv += _firmware(profile, launch.firmware)
    argv += _monitor(launch)
    argv += _display(profile, launch)
    argv += _disks(profile.disks)
    argv += _networks(profile)
    argv += _sound(profile, launch)
    argv += tpm_args(launch)
    argv += agent_args(launch)
    argv += _usb(profile)
    argv += passthrough_args(profile.passthrough)
    if launch.ivshmem is not None:
        argv += ivshmem_args(launch.ivshmem)
    if launch.virtiofs:
        from handoff.desk.share import qemu_args as virtiofs_args

        argv += virtiofs_args(launch.virtiofs)
    argv += input_args(launch)
    if launch.trace_file is not None:
        argv += ["-trace", INPUT_TRACE_EVENTS, "-D", str(launch.trace_file)]
    if launch.start_paused:
        argv.append("-S")
    argv += launch.extra_args
    argv += vm.extra_args
    return argv


#: The id of the hugetlb RAM backend ``-machine memory-backend=`` names.
RAM_BACKEND_ID = "ram"


def memory_backend_object(backend: MemoryBackend) -> str:
    """``-object memory-backend-memfd,...,hugetlb=on,hugetlbsize=...,prealloc=on``.

    QEMU 7.2 takes guest RAM from the backend ``-machine memory-backend=``
    names (``-m`` must give the same size). Preallocation faults every page
    in before the guest runs, so a pool that cannot hold the RAM fails QEMU's
    start, not the guest later (SIGBUS). Host nodes that are not one range
    (0,2) need the JSON form: the key=value form has no list syntax.
    """
    size = f"{backend.size_mib}M"
    nodes = backend.host_nodes
    policy = backend.policy.value if backend.policy is not None else None
    share = "on" if backend.shared else None
    if backend.page is HugepageSize.NONE:  # [[share]] alone: shared, not hugetlb
        return _opts("memory-backend-memfd", id=RAM_BACKEND_ID, size=size, share=share)
    page = backend.page.label
    if nodes and list(nodes) != list(range(nodes[0], nodes[-1] + 1)):
        return json.dumps({
            "qom-type": "memory-backend-memfd", "id": RAM_BACKEND_ID,
            "size": backend.size_mib << 20,
            "hugetlb": True, "hugetlbsize": backend.page.kib << 10, "prealloc": True,
            "policy": policy, "host-nodes": list(nodes),
            **({"share": True} if backend.shared else {}),
        }, separators=(",", ":"))  # fmt: skip
    return _opts(
        "memory-backend-memfd", id=RAM_BACKEND_ID, size=size, hugetlb="on", hugetlbsize=page,
        prealloc="on", policy=policy,
        host_nodes=f"{nodes[0]}-{nodes[-1]}" if nodes else None, share=share,
    )


def _usb(profile: Profile) -> list[str]:
    """The xHCI controller, display.tablet's usb-tablet and one usb-host per [[usb]]."""
    if not (profile.display.tablet or profile.usb):
        return []
    from handoff.desk.usb import XHCI_ID
    from handoff.desk.usb import host_args as usb_host_args

    args = ["-device", f"qemu-xhci,id={XHCI_ID}"]
    if profile.display.tablet:
        args += ["-device", f"usb-tablet,bus={XHCI_ID}.0"]
    for index, usb in enumerate(profile.usb):
        args += ["-device", usb_host_args(index, usb)]  # [[usb]]: one usb-host each
    return args


def ivshmem_args(ivshmem: Ivshmem) -> list[str]:
    """Looking Glass's memory: a shared file backend and the ``ivshmem-plain`` device on it
    (BAR 2 is the memory; no balloon exists beside it: -nodefaults adds none)."""
    from handoff.desk.looking_glass import BACKEND_ID as LG_BACKEND_ID
    from handoff.desk.looking_glass import DEVICE_ID as LG_DEVICE_ID

    backend = _opts(
        "memory-backend-file", id=LG_BACKEND_ID, mem_path=str(ivshmem.path),
        size=f"{ivshmem.size_mib}M", share="on",
    )
    return ["-object", backend, "-device", _opts("ivshmem-plain", id=LG_DEVICE_ID,
                                                 memdev=LG_BACKEND_ID)]


def format_argv(argv: Sequence[str]) -> str:
    """The argv as one shell-pasteable line (virtme-ng's --show-command)."""
    return shlex.join(argv)


def _cpu(profile: Profile, accel: Accelerator, hyperv: Sequence[str] = ()) -> str:
    model = cpu_model(profile, accel)
    if model == "host" and accel is not Accelerator.KVM:
        raise ProfileError(
            'found the string "host"; expected a CPU model QEMU can emulate without KVM '
            '("host" passes the real CPU through and needs KVM)',
            path=str(profile.source),
            key="vm.cpu_model",
            fix="remove cpu_model (handoff picks host under KVM, max under TCG), or run on a "
            "host where /dev/kvm works (`handoff doctor`)",
        )
    parts = [model]
    if profile.vm.hide_hypervisor:
        parts += ["kvm=off", f"hv-vendor-id={HIDDEN_HV_VENDOR_ID}"]
    parts += hyperv  # handoff.qemu.hyperv: the enlightenments the QEMU has
    parts += [flag for flag in profile.vm.cpu_flags if flag not in parts]
    return ",".join(parts)


def _smp(profile: Profile) -> str:
    vm = profile.vm
    if vm.sockets is None and vm.cores is None and vm.threads is None:
        return str(vm.cpus)
    return (
        f"{vm.cpus},sockets={vm.sockets or 1},cores={vm.cores or 1},threads={vm.threads or 1}"
    )


#: Secure Boot: the vars flash is writable only from SMM, so the guest OS cannot
#: rewrite the key databases behind the firmware's back (libvirt's secure='yes').
SECURE_PFLASH = "driver=cfi.pflash01,property=secure,value=on"


def _firmware(profile: Profile, choice: FirmwareChoice | None) -> list[str]:
    fw: Firmware = choice.firmware if choice is not None else profile.firmware
    if fw.type is FirmwareType.SEABIOS:
        return []  # SeaBIOS is q35's built-in default
    if fw.code is None or fw.vars is None:
        # Chosen from QEMU's descriptors by the session plan; an argv built without
        # them (a device check) has no firmware drives.
        return []
    args = ["-global", SECURE_PFLASH] if choice is not None and choice.secure_boot else []
    return [
        *args,
        "-drive",
        _opts("if=pflash", format="raw", unit=0, readonly="on", file=str(fw.code)),
        "-drive",
        _opts("if=pflash", format="raw", unit=1, file=str(fw.vars)),
    ]


def monitor_chardev(fd: int) -> str:
    """The ``-chardev`` value of QMP on the inherited socket ``fd``."""
    return _opts("socket", id="qmp", fd=fd)


def _monitor(launch: LaunchSpec) -> list[str]:
    if launch.monitor_fd is not None:
        chardev = monitor_chardev(launch.monitor_fd)
    elif launch.monitor_path is not None:
        chardev = _opts("socket", id="qmp", path=str(launch.monitor_path), server="on", wait="off")
    else:
        return []
    return ["-chardev", chardev, "-mon", "chardev=qmp,mode=control"]


#: The virtio-serial port name qemu-ga and the virtio-win agent look for.
GUEST_AGENT_PORT = "org.qemu.guest_agent.0"


def tpm_args(launch: LaunchSpec) -> list[str]:
    """A TPM 2.0 on swtpm's control socket, as a CRB interface (libvirt's choice for
    TPM 2.0 on q35; Windows 11 accepts it). QEMU connects to the socket swtpm made."""
    if launch.tpm_socket is None:
        return []
    return [
        "-chardev", _opts("socket", id="chrtpm", path=str(launch.tpm_socket)),
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", "tpm-crb,tpmdev=tpm0",
    ]


def agent_args(launch: LaunchSpec) -> list[str]:
    """The guest agent's virtio-serial port on a socket QEMU listens on (never waits)."""
    if launch.agent_socket is None:
        return []
    return [
        "-chardev",
        _opts("socket", id="qga0", path=str(launch.agent_socket), server="on", wait="off"),
        "-device", "virtio-serial-pci,id=vser0",
        "-device", f"virtserialport,bus=vser0.0,chardev=qga0,name={GUEST_AGENT_PORT}",
    ]


#: QEMU ids of the input monitor's chardev and of the virtio input proxies.
INPUT_MONITOR_ID = "handoff-input"
VIRTIO_INPUT_IDS = ("handoff-keyboard", "handoff-mouse")


def input_args(launch: LaunchSpec) -> list[str]:
    """The input backend's monitor (``qmp``) or its two proxies (``virtio``)."""
    args: list[str] = []
    if launch.input_monitor is not None:
        chardev = _opts(
            "socket", id=INPUT_MONITOR_ID, path=str(launch.input_monitor), server="on",
            wait="off",
        )
        args += ["-chardev", chardev, "-mon", f"chardev={INPUT_MONITOR_ID},mode=control"]
    if launch.virtio_input is not None:
        for device_id, evdev in zip(VIRTIO_INPUT_IDS, launch.virtio_input, strict=True):
            args += ["-device", _opts("virtio-input-host-pci", id=device_id, evdev=str(evdev))]
    return args


def _display(profile: Profile, launch: LaunchSpec) -> list[str]:
    display = profile.display
    frontend = display.frontend
    if frontend is DisplayFrontend.VNC:
        if launch.vnc_socket is None:
            raise ValueError("LaunchSpec: display.frontend = vnc needs vnc_socket")
        shown = f"vnc=unix:{escape(str(launch.vnc_socket))}"
    else:
        shown = frontend.value
    args = ["-display", shown, "-vga", "none"]
    if display.vga is not Vga.NONE:
        args += ["-device", _opts(VGA_DEVICE[display.vga], id="video0")]
    return args


def _cache_options(disk: Disk) -> dict[str, str | None]:
    """QEMU's cache modes as the two -blockdev flags they stand for.

    none: O_DIRECT; writethrough/directsync: the guest sees no volatile write
    cache (write-cache=off on the device); unsafe: flushes are ignored.
    """
    direct = disk.cache in (DiskCache.NONE, DiskCache.DIRECTSYNC)
    no_flush = disk.cache is DiskCache.UNSAFE
    return {
        "cache__direct": "on" if direct else None,
        "cache__no_flush": "on" if no_flush else None,
    }


def _protocol_driver(disk: Disk) -> str:
    """file for images; host_device/host_cdrom for block devices under /dev.

    Decided from the path alone so the function stays pure; block devices
    live under /dev (the seed's LVM volume /dev/vg-win7/win7-root)."""
    if disk.path.parts[:2] == ("/", "dev"):
        return "host_cdrom" if disk.media is DiskMedia.CDROM else "host_device"
    return "file"


def _disks(disks: Sequence[Disk]) -> list[str]:
    args: list[str] = []
    sata_port = 0
    scsi_added = False
    for index, disk in enumerate(disks):
        node = f"disk{index}"
        cache = _cache_options(disk)
        read_only = "on" if disk.readonly else None
        aio = disk.aio.value if disk.aio is not DiskAio.THREADS else None
        args += [
            "-blockdev",
            _opts(
                f"driver={_protocol_driver(disk)}",
                node_name=f"{node}-file",
                filename=str(disk.path),
                aio=aio,
                read_only=read_only,
                **cache,
            ),
            "-blockdev",
            _opts(
                f"driver={disk.format.value}",
                node_name=node,
                file=f"{node}-file",
                read_only=read_only,
                **cache,
            ),
        ]
        write_cache = (
            "off" if disk.cache in (DiskCache.WRITETHROUGH, DiskCache.DIRECTSYNC) else None
        )
        cdrom = disk.media is DiskMedia.CDROM
        bootindex = index + 1  # boot in the order the profile lists the disks
        if disk.interface is DiskInterface.VIRTIO:
            device = _opts(
                "virtio-blk-pci", drive=node, id=f"{node}-dev", bootindex=bootindex,
                write_cache=write_cache,
            )
        elif disk.interface is DiskInterface.SATA:
            device = _opts(
                "ide-cd" if cdrom else "ide-hd",
                drive=node,
                id=f"{node}-dev",
                bus=_AHCI_BUS.format(port=sata_port),
                bootindex=bootindex,
                write_cache=None if cdrom else write_cache,
            )
            sata_port += 1
        else:
            if not scsi_added:
                args += ["-device", "virtio-scsi-pci,id=scsi0"]
                scsi_added = True
            device = _opts(
                "scsi-cd" if cdrom else "scsi-hd",
                drive=node,
                id=f"{node}-dev",
                bus="scsi0.0",
                bootindex=bootindex,
                write_cache=None if cdrom else write_cache,
            )
        args += ["-device", device]
    return args


def _networks(profile: Profile) -> list[str]:
    args: list[str] = []
    for index, net in enumerate(profile.networks):
        netdev = f"net{index}"
        if net.type is NetworkType.USER:
            backend = _opts("user", id=netdev)
        elif net.type is NetworkType.TAP:
            backend = _opts("tap", id=netdev, ifname=net.ifname, script="no", downscript="no")
        else:
            backend = _opts("bridge", id=netdev, br=net.bridge)
        args += ["-netdev", backend]
        args += ["-device", _opts(NIC_DEVICE[net.model], netdev=netdev, mac=net.mac)]
    return args


def _sound(profile: Profile, launch: LaunchSpec) -> list[str]:
    if profile.sound.model is SoundModel.NONE:
        return []
    backend = profile.sound.backend
    if backend is AudioBackend.NONE or launch.no_sound_server:
        audiodev = _opts("none", id="snd0")
    elif backend is AudioBackend.PULSEAUDIO:
        from handoff.desk.sound import pa_options

        audiodev = ",".join([_opts("pa", id="snd0"), *(
            f"{key}={escape(value)}"
            for key, value in pa_options(launch.sound_server, profile.sound.latency_ms).items()
        )])
    else:
        audiodev = _opts(backend.value, id="snd0")
    return [
        "-audiodev",
        audiodev,
        "-device",
        "intel-hda,id=sound0",
        "-device",
        "hda-duplex,bus=sound0.0,audiodev=snd0",
    ]


def passthrough_args(devices: Sequence[Passthrough]) -> list[str]:
    """vfio-pci devices, each physical card behind its own PCIe root port.

    Functions of one host slot (a GPU at 01:00.0 and its HDMI audio at
    01:00.1) stay together in one guest slot with their function numbers,
    so the guest driver sees the same multifunction card; function 0 gets
    multifunction=on when it has siblings. A root port per card is what
    Windows' AMD/NVIDIA drivers expect on q35 (a PCIe link to negotiate)
    and what a later live hand-off hot-plugs into.
    """
    slots: dict[str, list[Passthrough]] = {}
    for dev in devices:
        slots.setdefault(dev.address.slot_address, []).append(dev)
    args: list[str] = []
    for port, members in enumerate(slots.values()):
        bus = f"rp{port}"
        args += ["-device", _opts("pcie-root-port", id=bus, chassis=port + 1, slot=port + 1)]
        members = sorted(members, key=lambda d: d.address.function)
        keep_functions = members[0].address.function == 0
        for position, dev in enumerate(members):
            function = dev.address.function if keep_functions else position
            multifunction = function == 0 and (len(members) > 1 or dev.multifunction)
            args += [
                "-device",
                _opts(
                    "vfio-pci",
                    host=str(dev.address),
                    id=vfio_device_id(dev.address),
                    bus=bus,
                    addr=f"00.{function}",
                    multifunction="on" if multifunction else None,
                    x_vga="on" if dev.x_vga else None,
                    romfile=str(dev.romfile) if dev.romfile is not None else None,
                ),
            ]
    return args


def vfio_device_id(address: PciAddress) -> str:
    """The QEMU device id of a passed-through function (``hostdev-0000-01-00-0``):
    what QMP device_del and query-pci name it by."""
    return "hostdev-" + str(address).replace(":", "-").replace(".", "-")


def argv_devices(argv: Sequence[str]) -> tuple[str, ...]:
    """The device driver names an argv instantiates (each ``-device NAME,...``)."""
    names: list[str] = []
    for flag, value in itertools.pairwise(argv):
        if flag == "-device":
            names.append(value.split(",", 1)[0])
    return tuple(names)
