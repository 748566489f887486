"""In and out: libvirt domain XML → profile, profile → libvirt XML and KubeVirt manifests.

The mapping is pure, so these tests pin it on domains written the way
virt-manager and VFIO guides write them. tests/qemu/test_libvirt_real.py runs
libvirt's own tools (virt-install, virt-xml-validate, virsh on a real
libvirtd) against the same code.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import pytest
import yaml

from handoff.base.errors import DomainImportError
from handoff.cli.main import main
from handoff.interop.domain_export import domain_xml
from handoff.interop.domain_import import parse_domain
from handoff.interop.kubevirt import PciIds, k8s_name, manifest, to_yaml
from handoff.interop.reasons import DEFAULT_REASON
from handoff.pci.address import PciAddress
from handoff.profile import (
    Accel,
    Accelerator,
    GuestOs,
    HyperV,
    Profile,
    TpmType,
    load_profile,
    parse_profile,
)
from handoff.qemu.cmdline import LaunchSpec, build_argv

REPO = Path(__file__).parent.parent.parent
SHIPPED = sorted((REPO / "profiles").glob("*.toml"))
SOURCE = Path("/vms/imported.toml")

#: A Windows gaming VM as virt-manager and a VFIO guide leave it (abridged from
#: `virsh dumpxml` of such a VM: hostdevs, pinning, hugepages, OVMF, evdev input).
VFIO_DOMAIN = """\
<domain type='kvm' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>win10</name>
  <uuid>1c8e3c9d-7a6f-4a0b-8a4e-2f1d9a0b3c11</uuid>
  <memory unit='KiB'>16777216</memory>
  <currentMemory unit='KiB'>16777216</currentMemory>
  <memoryBacking>
    <hugepages/>
  </memoryBacking>
  <vcpu placement='static'>4</vcpu>
  <cputune>
    <vcpupin vcpu='0' cpuset='2'/>
    <vcpupin vcpu='1' cpuset='8'/>
    <vcpupin vcpu='2' cpuset='3'/>
    <vcpupin vcpu='3' cpuset='9'/>
    <emulatorpin cpuset='0-1,6-7'/>
  </cputune>
  <os>
    <type arch='x86_64' machine='pc-q35-7.2'>hvm</type>
    <loader readonly='yes' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>
    <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'
      >/var/lib/libvirt/qemu/nvram/win10_VARS.fd</nvram>
    <boot dev='hd'/>
  </os>
  <features>
    <acpi/>
    <apic/>
    <hyperv mode='custom'>
      <relaxed state='on'/>
      <vendor_id state='on' value='whatever'/>
    </hyperv>
    <kvm>
      <hidden state='on'/>
    </kvm>
    <vmport state='off'/>
  </features>
  <cpu mode='host-passthrough' check='none' migratable='on'>
    <topology sockets='1' dies='1' cores='2' threads='2'/>
  </cpu>
  <clock offset='localtime'/>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
    <disk type='block' device='disk'>
      <driver name='qemu' type='raw' cache='none' io='native'/>
      <source dev='/dev/vg0/win10'/>
      <target dev='vda' bus='virtio'/>
      <address type='pci' domain='0x0000' bus='0x04' slot='0x00' function='0x0'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/>
      <source file='/srv/iso/virtio-win.iso'/>
      <target dev='sdb' bus='sata'/>
      <readonly/>
    </disk>
    <controller type='usb' index='0' model='qemu-xhci'/>
    <interface type='bridge'>
      <mac address='52:54:00:12:34:56'/>
      <source bridge='br0'/>
      <model type='virtio'/>
    </interface>
    <input type='evdev'>
      <source dev='/dev/input/by-id/usb-Logitech_USB_Receiver-event-kbd'
              grab='all' grabToggle='ctrl-ctrl' repeat='on'/>
    </input>
    <input type='evdev'>
      <source dev='/dev/input/by-id/usb-Logitech_USB_Receiver-event-mouse'/>
    </input>
    <input type='mouse' bus='ps2'/>
    <input type='keyboard' bus='ps2'/>
    <sound model='ich9'/>
    <audio id='1' type='pulseaudio' serverName='/run/user/1000/pulse/native'/>
    <video>
      <model type='none'/>
    </video>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x0a' slot='0x00' function='0x0'/>
      </source>
      <rom file='/var/lib/libvirt/vbios/gpu.rom'/>
    </hostdev>
    <hostdev mode='subsystem' type='pci' managed='yes'>
      <source>
        <address domain='0x0000' bus='0x0a' slot='0x00' function='0x1'/>
      </source>
    </hostdev>
    <hostdev mode='subsystem' type='usb' managed='yes'>
      <source>
        <vendor id='0x046d'/>
        <product id='0xc52b'/>
      </source>
    </hostdev>
    <tpm model='tpm-crb'>
      <backend type='emulator' version='2.0'/>
    </tpm>
    <channel type='unix'>
      <source mode='bind' path='/var/lib/libvirt/qemu/channel/target/win10.agent'/>
      <target type='virtio' name='org.qemu.guest_agent.0'/>
    </channel>
    <memballoon model='none'/>
    <rng model='virtio'>
      <backend model='random'>/dev/urandom</backend>
    </rng>
  </devices>
  <qemu:commandline>
    <qemu:arg value='-device'/>
    <qemu:arg value='ivshmem-plain,memdev=ivshmem'/>
  </qemu:commandline>
</domain>
"""


def imported(text: str = VFIO_DOMAIN) -> tuple[Profile, list[str]]:
    result = parse_domain(text, "win10.xml")
    return parse_profile(result.text(), SOURCE), [u.line() for u in result.unmapped]


def argv(profile: Profile, accel: Accelerator = Accelerator.KVM) -> list[str]:
    return build_argv(profile, LaunchSpec(accel=accel))


# --------------------------------------------------------------------------- import


def test_a_vfio_guides_domain_becomes_a_profile_that_loads() -> None:
    profile, _ = imported()
    vm = profile.vm
    assert (vm.name, vm.memory_mib, vm.cpus) == ("win10", 16384, 4)
    assert (vm.sockets, vm.cores, vm.threads) == (1, 2, 2)
    assert vm.accel is Accel.KVM
    assert vm.cpu_model == "host"
    assert vm.hide_hypervisor
    assert vm.machine == "pc-q35-7.2"
    assert [sorted(cpus) for cpus in profile.cpu.pin.lists] == [[2], [8], [3], [9]]
    assert profile.cpu.emulator.cpus == frozenset({0, 1, 6, 7})
    assert profile.memory.hugepages.label == "2M"
    assert profile.firmware.code == Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    assert profile.firmware.vars == Path("/var/lib/libvirt/qemu/nvram/win10_VARS.fd")
    assert [str(d.path) for d in profile.disks] == ["/dev/vg0/win10", "/srv/iso/virtio-win.iso"]
    assert profile.disks[0].cache.value == "none"
    assert profile.disks[0].aio.value == "native"
    assert profile.disks[1].media.value == "cdrom"
    assert profile.disks[1].interface.value == "sata"
    assert profile.networks[0].bridge == "br0"
    assert profile.networks[0].mac == "52:54:00:12:34:56"
    assert (profile.sound.model.value, profile.sound.backend.value) == ("hda", "pa")
    assert [str(p.address) for p in profile.passthrough] == ["0000:0a:00.0", "0000:0a:00.1"]
    assert profile.passthrough[0].romfile == Path("/var/lib/libvirt/vbios/gpu.rom")
    assert profile.input.backend.value == "qmp"
    assert profile.input.hotkey == ("KEY_LEFTCTRL", "KEY_RIGHTCTRL")
    assert profile.input.devices == (
        "by-id:usb-Logitech_USB_Receiver-event-kbd",
        "by-id:usb-Logitech_USB_Receiver-event-mouse",
    )
    assert vm.extra_args == ("-device", "ivshmem-plain,memdev=ivshmem")
    assert profile.vm.hyperv is HyperV.ON  # <hyperv> with an enlightenment on
    assert profile.vm.os is GuestOs.WINDOWS  # Hyper-V and a local-time clock
    assert profile.tpm.type is TpmType.EMULATED
    assert profile.guest_agent.enabled
    assert [u.device for u in profile.usb] == ["046d:c52b"]  # <hostdev type='usb'>


def test_nothing_is_dropped_silently_each_left_out_element_is_listed_with_its_reason() -> None:
    _, unmapped = imported()
    for expected in (
        "uuid: handoff names a VM by vm.name",
        "currentMemory: memory ballooning",
        "os/boot: boot order",
        "features/vmport: ",
        "on_poweroff: ",
        "devices/emulator: ",
        "devices/disk[1]/address: handoff places devices",
        "devices/controller: ",
        "devices/memballoon: ",
        "devices/rng: ",
        "devices/audio/@serverName='/run/user/1000/pulse/native': audio server settings",
    ):
        assert any(line.startswith(expected) for line in unmapped), (expected, unmapped)
    # the listed lines are also the profile's own header
    result = parse_domain(VFIO_DOMAIN, "win10.xml")
    assert "#   devices/rng: a virtio RNG" in result.text()


def test_an_element_handoff_has_never_heard_of_is_listed_not_dropped() -> None:
    text = VFIO_DOMAIN.replace("<devices>", "<devices>\n    <frobnicator speed='9'/>")
    _, unmapped = imported(text)
    assert f"devices/frobnicator: {DEFAULT_REASON}" in unmapped


def test_an_attribute_that_does_not_map_is_listed_with_its_value() -> None:
    text = VFIO_DOMAIN.replace("io='native'/>", "io='native' discard='unmap'/>")
    _, unmapped = imported(text)
    assert any(line.startswith("devices/disk[1]/driver/@discard='unmap': ") for line in unmapped)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda t: t.replace("</domain>", ""), "not well-formed XML"),
        (lambda t: t.replace("type='kvm'", "type='xen'", 1), "<domain type='xen'> is not a QEMU"),
        (lambda t: t.replace("arch='x86_64'", "arch='aarch64'"), "handoff runs x86_64 guests"),
        (lambda t: re.sub(r"<source>\s*<address domain='0x0000' bus='0x0a' slot='0x00' "
                          r"function='0x1'/>\s*</source>", "", t), "has no <source><address>"),
        (lambda t: t.replace("bus='0x0a' slot='0x00' function='0x0'",
                             "bus='0x0a' slot='0x40' function='0x0'"), "is not a PCI address"),
        (lambda t: "<!DOCTYPE d [<!ENTITY x 'y'>]>\n" + t, "<!DOCTYPE> or <!ENTITY>"),
        (lambda t: t.replace("<domain ", "<network ", 1).replace("</domain>", "</network>"),
         "the root element is <network>"),
    ],
)
def test_bad_domains_are_refused_in_one_line_with_a_fix(change: Any, message: str) -> None:
    with pytest.raises(DomainImportError) as refused:
        parse_domain(change(VFIO_DOMAIN), "win10.xml")
    assert message in refused.value.message
    assert refused.value.message.startswith("win10.xml: ")
    assert refused.value.fix


def test_import_writes_nothing_for_a_bad_domain(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.xml"
    bad.write_text(VFIO_DOMAIN.replace("type='kvm'", "type='lxc'", 1))
    out = tmp_path / "win10.toml"
    assert main(["import", str(bad), "--output", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert "is not a QEMU domain" in err
    assert "fix:" in err
    assert "Traceback" not in err


def test_import_lists_what_did_not_map_on_stderr_and_never_overwrites(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    xml = tmp_path / "win10.xml"
    xml.write_text(VFIO_DOMAIN)
    out = tmp_path / "win10.toml"
    assert main(["import", str(xml), "--output", str(out), "--name", "gaming"]) == 0
    assert load_profile(out).name == "gaming"
    err = capsys.readouterr().err
    assert "handoff: not imported: devices/rng: " in err
    assert main(["import", str(xml), "--output", str(out)]) == 2
    assert "never overwrites" in capsys.readouterr().err
    assert main(["import", str(xml), "--output", str(out), "--force"]) == 0


# --------------------------------------------------------------------------- export


def test_export_writes_libvirts_elements_for_what_libvirt_can_do() -> None:
    profile, _ = imported()
    root = ET.fromstring(domain_xml(profile, Accelerator.KVM))
    assert root.get("type") == "kvm"
    hostdevs = root.findall("devices/hostdev[@type='pci']")
    assert [h.get("managed") for h in hostdevs] == ["yes", "yes"]
    assert hostdevs[0].find("source/address").attrib == {  # type: ignore[union-attr]
        "domain": "0x0000", "bus": "0x0a", "slot": "0x00", "function": "0x0"}
    assert hostdevs[0].find("rom").get("file") == "/var/lib/libvirt/vbios/gpu.rom"  # type: ignore[union-attr]
    assert [(p.get("vcpu"), p.get("cpuset")) for p in root.findall("cputune/vcpupin")] == [
        ("0", "2"), ("1", "8"), ("2", "3"), ("3", "9")]
    assert root.find("cputune/emulatorpin").get("cpuset") == "0-1,6-7"  # type: ignore[union-attr]
    assert root.find("memoryBacking/hugepages/page").attrib == {"size": "2048", "unit": "KiB"}  # type: ignore[union-attr]
    evdev = [i.find("source").attrib for i in root.findall("devices/input[@type='evdev']")]  # type: ignore[union-attr]
    assert evdev[0]["grabToggle"] == "ctrl-ctrl"
    assert evdev[0]["grab"] == "all"
    assert evdev[1]["dev"] == "/dev/input/by-id/usb-Logitech_USB_Receiver-event-mouse"
    assert "journaled" in domain_xml(profile, Accelerator.KVM)  # what libvirt will not do, said
    assert root.find("devices/tpm/backend").attrib == {"type": "emulator", "version": "2.0"}  # type: ignore[union-attr]
    assert root.find("devices/channel/target").get("name") == "org.qemu.guest_agent.0"  # type: ignore[union-attr]


def test_x_vga_travels_as_a_qemu_override_of_the_hostdev() -> None:
    profile = load_profile(REPO / "profiles" / "seed-two-gpu.toml")
    text = domain_xml(profile, Accelerator.KVM)
    assert "<alias name=\"ua-hostdev0\" />" in text
    assert '<qemu:property name="x-vga" type="bool" value="true" />' in text


def test_xml_comments_never_hold_a_double_hyphen() -> None:
    for path in SHIPPED:
        text = domain_xml(load_profile(path), Accelerator.TCG)
        for comment in re.findall(r"<!--(.*?)-->", text, flags=re.S):
            assert "--" not in comment


def smp_normalized(arguments: list[str]) -> list[str]:
    """``-smp N`` and ``-smp N,sockets=1,cores=N,threads=1`` are the same guest."""
    return [re.sub(r"^(\d+),sockets=1,cores=\1,threads=1$", r"\1", a) for a in arguments]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.stem for p in SHIPPED])
@pytest.mark.parametrize("accel", list(Accelerator))
def test_round_trip_through_libvirt_keeps_every_shipped_profiles_argv(
    path: Path, accel: Accelerator
) -> None:
    original = load_profile(path)
    result = parse_domain(domain_xml(original, accel), "exported.xml")
    assert result.unmapped == ()  # handoff's own export maps back completely
    back = parse_profile(result.text(), original.source)
    if original.vm.cpu_model == "host" and accel is Accelerator.TCG:
        return  # "host" needs KVM: such a profile has no TCG argv to compare
    assert smp_normalized(argv(back, accel)) == smp_normalized(argv(original, accel))
    assert back.vm.accel is original.vm.accel  # "auto" rides in handoff's metadata
    assert (back.tpm, back.guest_agent) == (original.tpm, original.guest_agent)


# --------------------------------------------------------------------------- KubeVirt

GPU = PciIds(0x10DE, 0x2206, 0x030000)
AUDIO = PciIds(0x10DE, 0x1AEF, 0x040300)


def test_a_pinned_gpu_vm_becomes_a_virtual_machine_with_dedicated_cpus_and_the_gpu() -> None:
    profile, _ = imported()
    ids = {PciAddress.parse("0a:00.0"): GPU, PciAddress.parse("0a:00.1"): AUDIO}
    vm = manifest(profile, ids, {0: "win10-root"})
    assert (vm["apiVersion"], vm["kind"]) == ("kubevirt.io/v1", "VirtualMachine")
    domain = vm["spec"]["template"]["spec"]["domain"]
    assert domain["cpu"] == {"sockets": 1, "cores": 2, "threads": 2, "model": "host-passthrough",
                             "dedicatedCpuPlacement": True, "isolateEmulatorThread": True}
    assert domain["memory"] == {"guest": "16384Mi", "hugepages": {"pageSize": "2Mi"}}
    assert domain["devices"]["gpus"] == [{"name": "gpu0", "deviceName": "nvidia.com/10DE_2206"}]
    assert domain["devices"]["hostDevices"] == [
        {"name": "hostdev0", "deviceName": "nvidia.com/10DE_1AEF"}]
    assert domain["firmware"] == {"bootloader": {"efi": {"secureBoot": False,
                                                          "persistent": True}}}
    assert domain["devices"]["tpm"] == {"persistent": True}
    volumes = vm["spec"]["template"]["spec"]["volumes"]
    assert volumes[0] == {"name": "disk0", "persistentVolumeClaim": {"claimName": "win10-root"}}
    assert volumes[1]["persistentVolumeClaim"]["claimName"] == "win10-disk1"


def test_kubernetes_names_are_rfc_1123() -> None:
    assert k8s_name("Win10_Gaming.vm") == "win10-gaming-vm"
    assert k8s_name("---") == "vm"


def test_the_yaml_reads_back_as_the_manifest() -> None:
    profile, _ = imported()
    ids = {PciAddress.parse("0a:00.0"): GPU, PciAddress.parse("0a:00.1"): AUDIO}
    document = manifest(profile, ids)
    assert yaml.safe_load(to_yaml(document, ["a comment"])) == document


def test_a_windows_11_profile_travels_with_secure_boot_hyperv_clock_and_tpm() -> None:
    profile = load_profile(REPO / "profiles" / "windows11.toml")
    root = ET.fromstring(domain_xml(profile, Accelerator.KVM))
    assert root.find("os").get("firmware") == "efi"  # type: ignore[union-attr]
    features = {f.get("name") for f in root.findall("os/firmware/feature")}
    assert features == {"secure-boot", "enrolled-keys"}
    assert root.find("os/loader").get("secure") == "yes"  # type: ignore[union-attr]
    assert root.find("features/smm").get("state") == "on"  # type: ignore[union-attr]
    assert root.find("features/hyperv/stimer/direct") is not None
    assert root.find("clock").get("offset") == "localtime"  # type: ignore[union-attr]
    back = parse_profile(parse_domain(ET.tostring(root, encoding="unicode"), "w").text(),
                         profile.source)
    assert back.firmware.secure_boot
    assert (back.vm.os, back.vm.hyperv) == (profile.vm.os, profile.vm.hyperv)
    document = manifest(profile, {})
    domain = document["spec"]["template"]["spec"]["domain"]
    assert domain["firmware"]["bootloader"]["efi"]["secureBoot"] is True
    assert domain["features"]["smm"] == {"enabled": True}
    assert domain["features"]["hyperv"]["synictimer"] == {"direct": {}}
    assert domain["devices"]["tpm"] == {"persistent": True}


def test_looking_glass_usb_and_virtiofs_shares_travel_through_libvirt(tmp_path: Path) -> None:
    folder = tmp_path / "games"
    folder.mkdir()
    text = (
        '[vm]\nname = "desk"\nmemory = "1G"\n'
        '[looking_glass]\nenabled = true\nwidth = 2560\nheight = 1440\nowner = "root"\n'
        '[[usb]]\ndevice = "046d:c52b"\n'
        f'[[share]]\npath = "{folder}"\ntag = "games"\nreadonly = true\n'
    )
    profile = parse_profile(text, tmp_path / "desk.toml")
    root = ET.fromstring(domain_xml(profile, Accelerator.TCG))
    assert root.find("devices/shmem/size").text == "64"  # type: ignore[union-attr]
    assert root.find("devices/hostdev[@type='usb']/source/vendor").get("id") == "0x046d"  # type: ignore[union-attr]
    fs = root.find("devices/filesystem")
    assert fs is not None
    assert fs.find("driver").get("type") == "virtiofs"  # type: ignore[union-attr]
    assert fs.find("readonly") is not None
    assert root.find("memoryBacking/access").get("mode") == "shared"  # type: ignore[union-attr]
    result = parse_domain(ET.tostring(root, encoding="unicode"), "desk.xml")
    assert result.unmapped == ()
    back = parse_profile(result.text(), profile.source)
    assert back.looking_glass.enabled
    assert (back.looking_glass.width, back.looking_glass.owner) == (2560, "root")
    assert back.usb == profile.usb
    assert back.shares == profile.shares
    assert argv(back, Accelerator.TCG) == argv(profile, Accelerator.TCG)
