"""A Profile → a KubeVirt ``VirtualMachine`` manifest (kubevirt.io/v1). Pure.

For a fleet of GPU hosts: the same guest (CPU topology, dedicated CPUs when
the profile pins, hugepages, memory, EFI + Secure Boot, disks, NICs, the GPU)
as KubeVirt runs it on a node. The GPU is requested by the resource name the
cluster's ``permittedHostDevices`` gives the card's vendor:device; the
manifest's header says which entry the cluster must have.

Never: read the host (the cards' vendor:device ids come in), or write files.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from handoff.pci.address import PciAddress
from handoff.profile.model import (
    DiskInterface,
    DiskMedia,
    FirmwareType,
    GuestOs,
    HyperV,
    NetworkType,
    Profile,
    SoundModel,
    TpmType,
    Vga,
    guest_topology,
)
from handoff.qemu.cmdline import HIDDEN_HV_VENDOR_ID
from handoff.tune.model import HugepageSize, PinMode

API_VERSION = "kubevirt.io/v1"

#: PCI vendor id → the domain cluster admins name its resources under
#: (KubeVirt's own examples: nvidia.com/…); others get devices.kubevirt.io/.
_VENDOR_DOMAINS = {0x10DE: "nvidia.com", 0x1002: "amd.com", 0x8086: "intel.com"}
#: PCI base classes of display controllers: requested as ``gpus``, the rest as ``hostDevices``.
_DISPLAY_CLASS = 0x03


@dataclass(frozen=True)
class PciIds:
    """What the cluster knows a passthrough function by: vendor, device, class."""

    vendor: int
    device: int
    pci_class: int  # the 24-bit class code (0x030000 for a VGA controller)

    @property
    def selector(self) -> str:
        """``pciVendorSelector`` as KubeVirt writes it: ``10DE:2206``."""
        return f"{self.vendor:04X}:{self.device:04X}"

    @property
    def resource_name(self) -> str:
        domain = _VENDOR_DOMAINS.get(self.vendor, "devices.kubevirt.io")
        return f"{domain}/{self.vendor:04X}_{self.device:04X}"

    @property
    def display(self) -> bool:
        return self.pci_class >> 16 == _DISPLAY_CLASS


def k8s_name(name: str) -> str:
    """vm.name as a Kubernetes object name (RFC 1123: lower case, digits, '-')."""
    cleaned = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")
    return cleaned[:63].rstrip("-") or "vm"


def manifest(
    profile: Profile,
    ids: Mapping[PciAddress, PciIds],
    claims: Mapping[int, str] | None = None,
) -> dict[str, Any]:
    """The VirtualMachine object. ``ids``: each passthrough function's ids;
    ``claims``: disk index → PersistentVolumeClaim name (default NAME-diskN)."""
    name = k8s_name(profile.name)
    claims = claims or {}
    domain: dict[str, Any] = {
        "cpu": _cpu(profile),
        "memory": _memory(profile),
        "resources": {"requests": {"memory": f"{profile.vm.memory_mib}Mi"}},
        "firmware": _firmware(profile),
        "features": _features(profile),
        "devices": _devices(profile, ids),
    }
    clock = _clock(profile)
    if clock is not None:
        domain["clock"] = clock
    if profile.vm.machine != "q35":
        domain["machine"] = {"type": profile.vm.machine}
    else:
        domain["machine"] = {"type": "q35"}
    return {
        "apiVersion": API_VERSION,
        "kind": "VirtualMachine",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/managed-by": "handoff"}},
        "spec": {
            "runStrategy": "Halted",
            "template": {
                "metadata": {"labels": {"kubevirt.io/vm": name}},
                "spec": {
                    "domain": domain,
                    "networks": _networks(profile),
                    "volumes": _volumes(profile, name, claims),
                },
            },
        },
    }


def _cpu(profile: Profile) -> dict[str, Any]:
    topology = guest_topology(profile.vm)
    cpu: dict[str, Any] = {
        "sockets": topology.sockets,
        "cores": topology.cores,
        "threads": topology.threads,
    }
    model = profile.vm.cpu_model
    cpu["model"] = "host-passthrough" if model in (None, "host") else model
    if profile.cpu.pin.mode is not PinMode.NONE:
        cpu["dedicatedCpuPlacement"] = True
        cpu["isolateEmulatorThread"] = True
    return cpu


def _memory(profile: Profile) -> dict[str, Any]:
    memory: dict[str, Any] = {"guest": f"{profile.vm.memory_mib}Mi"}
    size = profile.memory.hugepages
    if size is not HugepageSize.NONE:
        memory["hugepages"] = {"pageSize": "1Gi" if size is HugepageSize.SIZE_1G else "2Mi"}
    return memory


def _firmware(profile: Profile) -> dict[str, Any]:
    if profile.firmware.type is FirmwareType.OVMF:
        efi: dict[str, Any] = {"secureBoot": profile.firmware.secure_boot, "persistent": True}
        return {"bootloader": {"efi": efi}}
    return {"bootloader": {"bios": {}}}


def _features(profile: Profile) -> dict[str, Any]:
    vm = profile.vm
    features: dict[str, Any] = {"acpi": {}, "apic": {}}
    hyperv: dict[str, Any] = {}
    if vm.hyperv is HyperV.ON or (vm.hyperv is HyperV.AUTO and vm.os is GuestOs.WINDOWS):
        hyperv = {name: {} for name in ("relaxed", "vapic", "vpindex", "runtime", "synic",
                                        "reset", "frequencies", "tlbflush", "ipi")}
        hyperv["spinlocks"] = {"spinlocks": 8191}
        hyperv["synictimer"] = {"direct": {}}
    if vm.hide_hypervisor:
        features["kvm"] = {"hidden": True}
        hyperv["vendorid"] = {"vendorid": HIDDEN_HV_VENDOR_ID}
    if hyperv:
        features["hyperv"] = hyperv
    if profile.firmware.secure_boot:
        features["smm"] = {"enabled": True}  # Secure Boot's firmware needs SMM
    return features


def _clock(profile: Profile) -> dict[str, Any] | None:
    """The timers libvirt (and handoff) give a Windows guest; the time zone is the
    header's note (a cluster node's local time means nothing to the guest)."""
    if profile.vm.os is not GuestOs.WINDOWS:
        return None
    return {"utc": {}, "timer": {
        "rtc": {"tickPolicy": "catchup"}, "pit": {"tickPolicy": "delay"},
        "hpet": {"present": False}, "hyperv": {}}}


def _devices(profile: Profile, ids: Mapping[PciAddress, PciIds]) -> dict[str, Any]:
    devices: dict[str, Any] = {"disks": _disks(profile), "interfaces": _interfaces(profile)}
    display = profile.display
    devices["autoattachGraphicsDevice"] = display.vga is not Vga.NONE
    if display.tablet:
        devices["inputs"] = [{"name": "tablet", "type": "tablet", "bus": "usb"}]
    if profile.sound.model is SoundModel.HDA:
        devices["sound"] = {"name": "sound", "model": "ich9"}
    if profile.tpm.type is TpmType.EMULATED:
        devices["tpm"] = {"persistent": True}  # KubeVirt keeps its state in a PVC
    gpus, host_devices = _passthrough(profile, ids)
    if gpus:
        devices["gpus"] = gpus
    if host_devices:
        devices["hostDevices"] = host_devices
    return devices


def _passthrough(
    profile: Profile, ids: Mapping[PciAddress, PciIds]
) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    gpus: list[dict[str, str]] = []
    others: list[dict[str, str]] = []
    for dev in profile.passthrough:
        pci = ids[dev.address]
        target = gpus if pci.display else others
        prefix = "gpu" if pci.display else "hostdev"
        target.append({"name": f"{prefix}{len(target)}", "deviceName": pci.resource_name})
    return gpus, others


def _disk_bus(interface: DiskInterface) -> str:
    return {"virtio": "virtio", "sata": "sata", "scsi": "scsi"}[interface.value]


def _disks(profile: Profile) -> list[dict[str, Any]]:
    disks: list[dict[str, Any]] = []
    for index, disk in enumerate(profile.disks):
        kind = "cdrom" if disk.media is DiskMedia.CDROM else "disk"
        spec: dict[str, Any] = {"bus": _disk_bus(disk.interface)}
        if disk.readonly and kind == "disk":
            spec["readonly"] = True
        disks.append({"name": f"disk{index}", kind: spec, "bootOrder": index + 1})
    return disks


def _interfaces(profile: Profile) -> list[dict[str, Any]]:
    interfaces: list[dict[str, Any]] = []
    for index, net in enumerate(profile.networks):
        binding = "masquerade" if net.type is NetworkType.USER else "bridge"
        interface: dict[str, Any] = {"name": f"net{index}", binding: {}, "model": net.model.value}
        if net.mac is not None:
            interface["macAddress"] = net.mac
        interfaces.append(interface)
    return interfaces


def _networks(profile: Profile) -> list[dict[str, Any]]:
    networks: list[dict[str, Any]] = []
    for index, net in enumerate(profile.networks):
        if net.type is NetworkType.USER:
            networks.append({"name": f"net{index}", "pod": {}})
        else:
            host = net.bridge if net.type is NetworkType.BRIDGE else net.ifname
            networks.append({"name": f"net{index}", "multus": {"networkName": host or "bridge"}})
    return networks


def _volumes(profile: Profile, name: str, claims: Mapping[int, str]) -> list[dict[str, Any]]:
    return [
        {
            "name": f"disk{index}",
            "persistentVolumeClaim": {"claimName": claims.get(index, f"{name}-disk{index}")},
        }
        for index, _disk in enumerate(profile.disks)
    ]


def header(profile: Profile, ids: Mapping[PciAddress, PciIds]) -> list[str]:
    """Comment lines: what the cluster must have for this manifest."""
    lines = [
        f"KubeVirt VirtualMachine for handoff profile {profile.name!r}, written by",
        "`handoff export --kubevirt`. `kubectl apply -f` it, then `virtctl start NAME`.",
        "The cluster must have:",
    ]
    for index, disk in enumerate(profile.disks):
        lines.append(f"- a PersistentVolumeClaim for disk{index} holding {disk.path}")
    for net in profile.networks:
        if net.type is not NetworkType.USER:
            lines.append("- a Multus NetworkAttachmentDefinition for the bridge network")
            break
    if profile.passthrough:
        lines += [
            "- each passthrough device bound to vfio-pci on the node, and permitted in the",
            "  KubeVirt CR (spec.configuration.permittedHostDevices.pciHostDevices):",
        ]
        for dev in profile.passthrough:
            pci = ids[dev.address]
            lines.append(
                f"    - pciVendorSelector: \"{pci.selector}\"   # {dev.address}"
            )
            lines.append(f"      resourceName: \"{pci.resource_name}\"")
    if profile.cpu.pin.mode is not PinMode.NONE:
        lines.append("- nodes with the CPU manager static policy (dedicatedCpuPlacement)")
    if profile.vm.os is GuestOs.WINDOWS:
        lines.append("Windows keeps local time: set domain.clock.timezone to your zone (the "
                     "clock is UTC here)")
    if profile.memory.hugepages is not HugepageSize.NONE:
        lines.append(f"- {profile.memory.hugepages.label} hugepages reserved on the nodes")
    return lines


def to_yaml(document: Mapping[str, Any], comments: Sequence[str] = ()) -> str:
    """Block-style YAML for a manifest of mappings, lists, strings, numbers and bools.

    Strings are written as JSON strings (valid YAML double-quoted scalars), so
    no value can be mistaken for another type ("on", "0x10", "1e3")."""
    out = [f"# {line}".rstrip() for line in comments]
    out += _yaml_lines(document, 0)
    return "\n".join(out) + "\n"


def _scalar(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    raise TypeError(f"cannot write {value!r} as YAML")


def _yaml_lines(value: object, indent: int) -> list[str]:
    pad = "  " * indent
    lines: list[str] = []
    if isinstance(value, Mapping):
        for key, item in value.items():
            if (isinstance(item, Mapping) and item) or (isinstance(item, list) and item):
                lines.append(f"{pad}{key}:")
                lines += _yaml_lines(item, indent + 1)
            else:
                lines.append(f"{pad}{key}: {_empty(item)}")
        return lines
    if isinstance(value, list):
        for item in value:
            if isinstance(item, Mapping) and item:
                nested = _yaml_lines(item, indent + 1)
                lines.append(f"{pad}- {nested[0].lstrip()}")
                lines += nested[1:]
            else:
                lines.append(f"{pad}- {_empty(item)}")
        return lines
    return [f"{pad}{_scalar(value)}"]


def _empty(item: object) -> str:
    if isinstance(item, Mapping):
        return "{}"
    if isinstance(item, list):
        return "[]"
    return _scalar(item)
