"""Every shipped profile's KubeVirt manifest against the VirtualMachine API (kubevirt.io/v1).

The schema below is handoff's own statement of the part of KubeVirt's
``v1.VirtualMachine`` it writes: field names, types and enums as KubeVirt's
published OpenAPI document (api/openapi-spec/swagger.json, release v1.9.0)
declares them, with unknown fields refused at every level (what `kubectl
apply --validate=strict` does). It is not a copy of that document; the
manifests of every shipped profile were also validated against the published
document itself when this schema was written (tests/README.md says how to
repeat that).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

from handoff.interop.kubevirt import PciIds, header, manifest, to_yaml
from handoff.profile import load_profile

REPO = Path(__file__).parent.parent.parent
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))


def obj(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "properties": properties, "required": list(required),
            "additionalProperties": False}


def array(items: dict[str, Any]) -> dict[str, Any]:
    return {"type": "array", "items": items}


STRING = {"type": "string"}
INTEGER = {"type": "integer", "minimum": 0}
BOOLEAN = {"type": "boolean"}
QUANTITY = {"type": "string", "pattern": r"^[0-9]+(Mi|Gi|Ki)?$"}
EMPTY = obj({})
LABELS = {"type": "object", "additionalProperties": STRING}
DISK_TARGET = obj({"bus": {"enum": ["virtio", "sata", "scsi", "usb"]}, "readonly": BOOLEAN,
                   "pciAddress": STRING})
DEVICE = obj({"name": STRING, "deviceName": STRING}, ("name", "deviceName"))

DOMAIN = obj({
    "cpu": obj({"sockets": INTEGER, "cores": INTEGER, "threads": INTEGER, "model": STRING,
                "dedicatedCpuPlacement": BOOLEAN, "isolateEmulatorThread": BOOLEAN}),
    "memory": obj({"guest": QUANTITY,
                   "hugepages": obj({"pageSize": {"enum": ["2Mi", "1Gi"]}})}),
    "resources": obj({"requests": {"type": "object", "additionalProperties": QUANTITY}}),
    "firmware": obj({"bootloader": obj({
        "bios": obj({"useSerial": BOOLEAN}),
        "efi": obj({"secureBoot": BOOLEAN, "persistent": BOOLEAN}),
    })}),
    "features": obj({"acpi": obj({"enabled": BOOLEAN}), "apic": obj({"enabled": BOOLEAN}),
                     "kvm": obj({"hidden": BOOLEAN}), "smm": obj({"enabled": BOOLEAN}),
                     "hyperv": obj({
                         **{name: obj({"enabled": BOOLEAN}) for name in (
                             "relaxed", "vapic", "vpindex", "runtime", "synic", "reset",
                             "frequencies", "tlbflush", "ipi")},
                         "spinlocks": obj({"enabled": BOOLEAN, "spinlocks": INTEGER}),
                         "synictimer": obj({"enabled": BOOLEAN,
                                            "direct": obj({"enabled": BOOLEAN})}),
                         "vendorid": obj({"enabled": BOOLEAN, "vendorid": STRING})})}),
    "clock": obj({"utc": obj({"offsetSeconds": INTEGER}), "timezone": STRING,
                  "timer": obj({
                      "rtc": obj({"tickPolicy": {"enum": ["delay", "catchup"]},
                                  "present": BOOLEAN}),
                      "pit": obj({"tickPolicy": {"enum": ["delay", "catchup", "discard"]},
                                  "present": BOOLEAN}),
                      "hpet": obj({"present": BOOLEAN}),
                      "hyperv": obj({"present": BOOLEAN})})}),
    "machine": obj({"type": STRING}),
    "devices": obj({
        "disks": array(obj({"name": STRING, "disk": DISK_TARGET, "cdrom": DISK_TARGET,
                            "bootOrder": {"type": "integer", "minimum": 1}}, ("name",))),
        "interfaces": array(obj({"name": STRING, "masquerade": EMPTY, "bridge": EMPTY,
                                 "model": {"enum": ["virtio", "e1000", "e1000e", "rtl8139",
                                                    "ne2k_pci", "pcnet"]},
                                 "macAddress": STRING}, ("name",))),
        "autoattachGraphicsDevice": BOOLEAN,
        "inputs": array(obj({"name": STRING, "type": {"enum": ["tablet"]},
                             "bus": {"enum": ["usb", "virtio"]}}, ("name", "type"))),
        "sound": obj({"name": STRING, "model": {"enum": ["ich9", "ac97"]}}, ("name",)),
        "tpm": obj({"enabled": BOOLEAN, "persistent": BOOLEAN}),
        "gpus": array(DEVICE),
        "hostDevices": array(DEVICE),
    }),
}, ("devices",))

VIRTUAL_MACHINE = obj({
    "apiVersion": {"const": "kubevirt.io/v1"},
    "kind": {"const": "VirtualMachine"},
    "metadata": obj({"name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$",
                              "maxLength": 63},
                     "labels": LABELS}, ("name",)),
    "spec": obj({
        "runStrategy": {"enum": ["Always", "Halted", "Manual", "RerunOnFailure", "Once"]},
        "template": obj({
            "metadata": obj({"labels": LABELS}),
            "spec": obj({
                "domain": DOMAIN,
                "networks": array(obj({"name": STRING, "pod": EMPTY,
                                       "multus": obj({"networkName": STRING},
                                                     ("networkName",))}, ("name",))),
                "volumes": array(obj({"name": STRING, "persistentVolumeClaim": obj(
                    {"claimName": STRING, "readOnly": BOOLEAN}, ("claimName",))},
                    ("name",))),
            }, ("domain",)),
        }),
    }, ("template",)),
}, ("apiVersion", "kind", "metadata", "spec"))

#: Invented ids for the shipped profiles' cards (a GPU and its HDMI audio).
IDS = {"0": PciIds(0x1002, 0x67B0, 0x030000), "1": PciIds(0x1002, 0xAAC8, 0x040300)}


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
def test_every_shipped_profiles_manifest_is_a_valid_virtual_machine(path: Path) -> None:
    profile = load_profile(path)
    ids = {dev.address: IDS[str(dev.address.function)] for dev in profile.passthrough}
    document = manifest(profile, ids)
    text = to_yaml(document, header(profile, ids))
    loaded = yaml.safe_load(text)
    assert loaded == document
    jsonschema.validate(loaded, VIRTUAL_MACHINE)
    devices = loaded["spec"]["template"]["spec"]["domain"]["devices"]
    assert len(devices.get("gpus", [])) == sum(
        1 for dev in profile.passthrough if dev.address.function == 0)


def test_the_schema_refuses_a_field_kubevirt_does_not_have() -> None:
    profile = load_profile(REPO / "profiles" / "demo.toml")
    document = manifest(profile, {})
    document["spec"]["template"]["spec"]["domain"]["cpu"]["pinning"] = True
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(document, VIRTUAL_MACHINE)


def test_the_header_names_what_the_cluster_must_permit() -> None:
    profile = load_profile(REPO / "profiles" / "seed-two-gpu.toml")
    ids = {dev.address: IDS[str(dev.address.function)] for dev in profile.passthrough}
    text = "\n".join(header(profile, ids))
    assert 'pciVendorSelector: "1002:67B0"' in text
    assert 'resourceName: "amd.com/1002_67B0"' in text
    assert "bound to vfio-pci on the node" in text
