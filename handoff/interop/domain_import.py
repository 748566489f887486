"""libvirt domain XML → a commented profile draft, and what did not map. Pure.

Every element and attribute of the domain is either mapped to a profile key
or listed in :attr:`ImportResult.unmapped` with a one-line reason: nothing is
dropped silently. Values that carry no information (libvirt's defaults, such
as ``<driver name='qemu'>`` or ``<acpi/>`` on q35) count as mapped. An
element that does not map is listed once, with its subtree.

The XML is parsed with the standard library's parser (expat refuses entity
expansion bombs since 2.4.1, which Python 3.11 ships with; no external
entities are ever fetched).

Never: read files or run virsh (handoff.cli.interop does); never validate a
value beyond what mapping needs (the rendered profile goes through
parse_profile).
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass

from handoff.base.errors import DomainImportError
from handoff.interop import settings
from handoff.interop.domain_devices import GRAB_TOGGLE_CHORDS, DeviceMapping
from handoff.interop.domain_reader import QEMU_NS, Unmapped, local
from handoff.interop.draft import Draft, Entry
from handoff.interop.reasons import DEFAULT_REASON, REASONS

__all__ = ["GRAB_TOGGLE_CHORDS", "QEMU_NS", "ImportResult", "Unmapped", "parse_domain"]

#: libosinfo's namespace (virt-install and virt-manager name the guest OS there).
LIBOSINFO_NS = "http://libosinfo.org/xmlns/libvirt/domain/1.0"
#: libosinfo ids of Linux distributions (their vendors' domains).
LINUX_OSINFO = ("debian.org", "ubuntu.com", "fedoraproject.org", "redhat.com", "centos.org",
                "opensuse.org", "suse.com", "archlinux.org", "gentoo.org", "linuxmint.com",
                "alpinelinux.org", "nixos.org", "almalinux.org", "rockylinux.org", "/linux/")

#: libvirt's memory units → bytes (its default is KiB).
_UNITS = {
    "b": 1, "bytes": 1,
    "kb": 1000, "k": 1024, "kib": 1024,
    "mb": 1000**2, "m": 1024**2, "mib": 1024**2,
    "gb": 1000**3, "g": 1024**3, "gib": 1024**3,
    "tb": 1000**4, "t": 1024**4, "tib": 1024**4,
}


@dataclass(frozen=True)
class ImportResult:
    draft: Draft
    unmapped: tuple[Unmapped, ...]
    name: str

    def text(self) -> str:
        return self.draft.render()


class _Mapper(DeviceMapping):
    """One import: the domain's VM-wide sections, then its devices."""

    # ------------------------------------------------------------------ sections

    def run(self, name_override: str | None) -> ImportResult:
        root = self.root
        self.seen.use(root)
        domain_type = self.attr(root, "type")
        vm = self.draft.table("vm")
        name_element = self.find(root, "name")
        name = name_override or (self.text(name_element) if name_element is not None else "")
        if not name:
            raise self.error("the domain has no <name>", "give the profile a name with --name NAME")
        vm.set("name", name)
        self._memory(vm)
        self._vcpus(vm)
        self._domain_type(domain_type, vm)
        self._cpu(vm)
        self._os(vm)
        self._features(vm)
        self._guest_os(vm)
        self._cputune()
        self._memory_backing()
        devices = self.find(root, "devices")
        if devices is not None:
            self._disks(devices)
            self._interfaces(devices)
            self._sound(devices)
            self._display(devices)
            self._hostdevs(devices)
            self._inputs(devices)
            self._tpm(devices)
            self._shmem(devices)
            self._filesystems(devices)
            self._guest_agent(devices)
        self._qemu_commandline(vm)
        self._metadata_settings()
        unmapped = tuple(self.seen.notes) + tuple(self._leftovers())
        self.draft.preamble = _preamble(self.source, name, unmapped)
        return ImportResult(self.draft, unmapped, name)

    def _memory(self, vm: Entry) -> None:
        memory = self.find(self.root, "memory")
        if memory is None:
            raise self.error("the domain has no <memory>", "add <memory unit='MiB'>8192</memory>")
        unit = (self.attr(memory, "unit") or "KiB").lower()
        if unit not in _UNITS or not self.text(memory).isdigit():
            raise self.error(
                f"<memory unit={unit!r}>{self.text(memory)}</memory> is not a memory size libvirt "
                "writes",
                "write the size as a whole number with a unit such as 'KiB', 'MiB' or 'GiB'",
            )
        size = int(self.text(memory)) * _UNITS[unit]
        mib = -(-size // 1024**2)
        comment = f"<memory unit='{memory.attrib.get('unit', 'KiB')}'>{self.text(memory)}</memory>"
        if mib * 1024**2 != size:
            comment += ", rounded up to whole MiB"
        vm.set("memory", f"{mib}M", comment)

    def _vcpus(self, vm: Entry) -> None:
        vcpu = self.find(self.root, "vcpu")
        if vcpu is None:
            vm.set("cpus", 1, "no <vcpu>: libvirt's default, one vCPU")
            return
        self.default_attr(vcpu, "placement", "static")
        count = self.text(vcpu)
        if not count.isdigit():
            raise self.error(f"<vcpu>{count}</vcpu> is not a number of vCPUs",
                             "write <vcpu>4</vcpu>")
        vm.set("cpus", int(count), f"<vcpu>{count}</vcpu>")

    def _domain_type(self, domain_type: str | None, vm: Entry) -> None:
        if domain_type == "kvm":
            vm.set("accel", "kvm", "<domain type='kvm'>: refuses to start where KVM does not work")
        elif domain_type == "qemu":
            vm.set("accel", "tcg", "<domain type='qemu'>: QEMU's emulator (TCG), no KVM")
        else:
            raise self.error(
                f"<domain type={domain_type!r}> is not a QEMU domain; handoff runs QEMU with KVM "
                "or TCG",
                "import a domain of type 'kvm' or 'qemu' (virsh dumpxml of a QEMU/KVM VM)",
            )

    def _cpu(self, vm: Entry) -> None:
        cpu = self.find(self.root, "cpu")
        if cpu is None:
            return
        mode = self.attr(cpu, "mode", "custom")
        self.default_attr(cpu, "check", "none", "partial")
        self.default_attr(cpu, "migratable", "on", "off")
        self.default_attr(cpu, "match", "exact")
        model = self.find(cpu, "model")
        if mode in ("host-passthrough", "host-model"):
            comment = f"<cpu mode='{mode}'>"
            if mode == "host-model":
                comment += ": handoff passes the host's CPU through (host) instead of a model"
            vm.set("cpu_model", "host", comment)
            if model is not None and cpu.attrib.get("mode") == "host-model":
                self.seen.use_tree(model)
        elif mode == "maximum":
            vm.set("cpu_model", "max", "<cpu mode='maximum'>")
        elif model is not None:
            self.default_attr(model, "fallback", "allow", "forbid")
            vm.set("cpu_model", self.text(model), f"<cpu><model>{self.text(model)}</model>")
        topology = self.find(cpu, "topology")
        if topology is not None:
            self.default_attr(topology, "dies", "1")
            self.default_attr(topology, "clusters", "1")
            given = {key: topology.attrib.get(key, "1") for key in ("sockets", "cores", "threads")}
            if all(value.isdigit() for value in given.values()):
                self.seen.use(topology, *(k for k in given if k in topology.attrib))
                # One socket of N single-thread cores is what a bare `-smp N` gives on q35:
                # the profile says nothing then, as handoff's own profiles do.
                if (given["sockets"], given["threads"]) != ("1", "1") or int(
                    given["cores"]
                ) != vm.values.get("cpus"):
                    for key, value in given.items():
                        vm.set(key, int(value))
        flags: list[str] = []
        for feature in self.findall(cpu, "feature"):
            policy = self.attr(feature, "policy", "require")
            name = self.attr(feature, "name") or ""
            if policy in ("require", "force"):
                flags.append(f"+{name}")
            elif policy in ("disable", "forbid"):
                flags.append(f"-{name}")
            else:  # optional: QEMU's model decides
                self.seen.note(self.where(feature), "an optional CPU feature: the model decides")
        if flags:
            vm.set("cpu_flags", flags, "<cpu><feature policy=…>")

    def _os(self, vm: Entry) -> None:
        os_element = self.find(self.root, "os")
        if os_element is None:
            return
        os_type = self.find(os_element, "type")
        if os_type is not None:
            arch = self.attr(os_type, "arch", "x86_64")
            if arch not in ("x86_64", "i686"):
                raise self.error(
                    f"<os><type arch={arch!r}>: handoff runs x86_64 guests "
                    "(qemu-system-x86_64)",
                    "import an x86_64 domain",
                )
            if self.text(os_type) != "hvm":
                raise self.error(
                    f"<os><type>{self.text(os_type)}</type>: handoff runs full (hvm) guests",
                    "import a domain whose <os><type> is hvm",
                )
            machine = self.attr(os_type, "machine")
            if machine is not None:
                match = re.fullmatch(r"pc-q35-(\d+\.\d+)|q35", machine)
                if match is not None:
                    vm.set("machine", machine, f"<type machine='{machine}'>")
                else:
                    self.seen.note(
                        self.where(os_type, "machine"),
                        "handoff builds a q35 machine (PCIe root ports for passthrough); the "
                        "guest will see a new chipset (Windows may ask to be reactivated)",
                    )
        firmware_attr = self.attr(os_element, "firmware")
        loader = self.find(os_element, "loader")
        nvram = self.find(os_element, "nvram")
        if loader is not None and self.text(loader) and self.attr(loader, "type",
                                                                  "pflash") == "pflash":
            self.default_attr(loader, "readonly", "yes")
            fw = self.draft.table("firmware")
            fw.set("type", "ovmf", "<os><loader type='pflash'>: UEFI")
            fw.set("code", self.text(loader))
            if self.attr(loader, "secure") == "yes":
                fw.set("secure_boot", True, "<loader secure='yes'>: Secure Boot")
            if nvram is not None:
                if self.text(nvram):
                    fw.set("vars", self.text(nvram), "<nvram>: the VM's own vars file, kept")
                template = self.attr(nvram, "template")
                if template:
                    fw.set("vars_template", template)
        elif firmware_attr == "efi":
            fw = self.draft.table("firmware")
            fw.set("type", "ovmf", "<os firmware='efi'>: UEFI, the build chosen from QEMU's "
                   "firmware descriptors as libvirt does")
            if loader is not None:
                self.default_attr(loader, "readonly", "yes")
                self.default_attr(loader, "type", "pflash")
                if self.attr(loader, "secure") == "yes":
                    fw.set("secure_boot", True, "<loader secure='yes'>: Secure Boot")
            if nvram is not None and self.text(nvram):
                fw.set("vars", self.text(nvram), "<nvram>: the VM's own vars file, kept")
            for wanted in os_element.findall("firmware"):
                self.seen.use(wanted)
                for feature in wanted.findall("feature"):
                    self.seen.use(feature, "enabled", "name")
                    on = feature.attrib.get("enabled") == "yes"
                    if feature.attrib.get("name") == "secure-boot" and on:
                        fw.set("secure_boot", True, "<firmware><feature name='secure-boot'>")

    def _features(self, vm: Entry) -> None:
        features = self.find(self.root, "features")
        if features is None:
            return
        for implied in ("acpi", "apic", "pae"):  # q35 with SeaBIOS or OVMF always has them
            element = features.find(implied)
            if element is not None:
                self.seen.use_tree(element)
        kvm = features.find("kvm")
        if kvm is not None:
            self.seen.use(kvm)
            hidden = kvm.find("hidden")
            if hidden is not None:
                self.seen.use(hidden, "state")
                if hidden.attrib.get("state") == "on":
                    vm.set("hide_hypervisor", True,
                           "<kvm><hidden state='on'/>: the guest does not see KVM")
        hyperv = features.find("hyperv")
        if hyperv is not None:
            self.seen.use(hyperv, "mode")
            vendor = hyperv.find("vendor_id")
            if vendor is not None and vendor.attrib.get("state") == "on":
                self.seen.use(vendor, "state", "value")
                if "hide_hypervisor" not in vm.values:
                    self.seen.note(self.where(vendor),
                                   "a Hyper-V vendor id without hidden KVM: handoff sets one "
                                   "only with hide_hypervisor")
            enlightenments = [e for e in hyperv if e.tag != "vendor_id"]
            for element in enlightenments:
                self.seen.use_tree(element)
            if any(e.attrib.get("state") == "on" for e in enlightenments):
                vm.set("hyperv", "on", "<features><hyperv>: handoff gives the set libvirt gives "
                       "Windows (relaxed, vapic, spinlocks, vpindex, synic, stimer, …), each "
                       "checked against this QEMU")
        smm = features.find("smm")
        if smm is not None and smm.attrib.get("state", "on") == "on" and self.draft.table(
            "firmware"
        ).values.get("secure_boot"):
            self.seen.use_tree(smm)  # Secure Boot turns SMM on itself

    def _guest_os(self, vm: Entry) -> None:
        """vm.os from libosinfo's id (virt-install, virt-manager) or Windows' clock."""
        guest = None
        info = self.root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo/{{{LIBOSINFO_NS}}}os")
        if info is not None:
            os_id = info.attrib.get("id", "")
            if "microsoft.com/win" in os_id:
                guest = "windows"
            elif os_id:
                guest = "linux" if any(d in os_id for d in LINUX_OSINFO) else None
            if guest is not None:
                self.seen.use_tree(self.root.find(f"metadata/{{{LIBOSINFO_NS}}}libosinfo"))  # type: ignore[arg-type]
                self.seen.use(self.root.find("metadata"))  # type: ignore[arg-type]
                vm.set("os", guest, f"libosinfo's {os_id}")
        clock = self.root.find("clock")
        if clock is None:
            return
        offset = clock.attrib.get("offset", "utc")
        if guest is None and offset == "localtime" and "hyperv" in vm.values:
            guest = "windows"
            vm.set("os", guest, "<clock offset='localtime'> with Hyper-V: a Windows guest")
        if (guest == "windows" and offset == "localtime") or (offset == "utc" and len(clock) == 0):
            self.seen.use_tree(clock)  # what handoff gives a Windows (or any other) guest

    def _cputune(self) -> None:
        cputune = self.find(self.root, "cputune")
        if cputune is None:
            return
        pins: dict[int, str] = {}
        for pin in self.findall(cputune, "vcpupin"):
            vcpu = self.attr(pin, "vcpu")
            cpuset = self.attr(pin, "cpuset")
            if vcpu is not None and vcpu.isdigit() and cpuset:
                pins[int(vcpu)] = cpuset
        cpu = self.draft.table("cpu") if pins or cputune.find("emulatorpin") is not None else None
        if pins and cpu is not None:
            cpus = self.draft.table("vm").values.get("cpus", 1)
            if sorted(pins) == list(range(int(str(cpus)))):
                cpu.set("pin", [pins[i] for i in sorted(pins)],
                        "<cputune><vcpupin>: one host CPU list per vCPU")
            else:
                for pin in cputune.findall("vcpupin"):
                    self.seen.note(self.where(pin),
                                   "handoff pins every vCPU or none; pin the rest too, or use "
                                   'pin = "auto"')
        emulator = self.find(cputune, "emulatorpin")
        if emulator is not None and cpu is not None:
            cpuset = self.attr(emulator, "cpuset")
            if cpuset:
                cpu.set("emulator", cpuset, "<cputune><emulatorpin>")

    def _memory_backing(self) -> None:
        backing = self.find(self.root, "memoryBacking")
        if backing is None:
            return
        shares = self.root.find("devices/filesystem/driver[@type='virtiofs']") is not None
        for name in ("source", "access"):  # the shared RAM virtiofs needs: handoff's own
            element = backing.find(name)
            if shares and element is not None:
                self.seen.use_tree(element)
        hugepages = self.find(backing, "hugepages")
        if hugepages is None:
            return
        size = "2M"
        page = self.find(hugepages, "page")
        if page is not None:
            unit = (self.attr(page, "unit") or "KiB").lower()
            raw = self.attr(page, "size") or "0"
            kib = int(raw) * _UNITS.get(unit, 1024) // 1024 if raw.isdigit() else 0
            if kib == 1024 * 1024:
                size = "1G"
            elif kib != 2048:
                self.seen.note(self.where(page), "handoff backs RAM with 2M or 1G pages only")
            self.default_attr(page, "nodeset", "0")
        self.draft.table("memory").set("hugepages", size, "<memoryBacking><hugepages>")

    def _qemu_commandline(self, vm: Entry) -> None:
        args: list[str] = []
        for commandline in self.root.findall("qemu:commandline", {"qemu": QEMU_NS}):
            self.seen.use(commandline)
            for arg in self.findall(commandline, "qemu:arg"):
                if "value" in arg.attrib:
                    self.seen.use(arg, "value")
                    args.append(arg.attrib["value"])
        if args:
            vm.set("extra_args", args, "<qemu:commandline>: appended to QEMU's argv as is")

    def _metadata_settings(self) -> None:
        metadata = self.root.find("metadata")
        if metadata is None:
            return
        element = metadata.find(f"{{{settings.NAMESPACE}}}{settings.ELEMENT}")
        if element is None:
            return
        self.seen.use(metadata)
        self.seen.use_tree(element)
        try:
            data = settings.read_settings(element.text or "")
        except ValueError as exc:
            raise self.error(f"handoff's <metadata> is not TOML: {exc}",
                             "remove the <handoff:settings> element, or fix it") from None
        settings.apply_settings(self.draft, data)

    # ------------------------------------------------------------------ what is left

    def _leftovers(self) -> Iterator[Unmapped]:
        """Every element and attribute the mapping did not use, outermost first."""
        for element in _walk(self.root, self.seen.elements):
            if id(element) not in self.seen.elements:
                yield Unmapped(self.where(element), _reason(self.paths[id(element)]))
                continue
            for name in element.attrib:
                if (id(element), name) not in self.seen.attributes:
                    yield Unmapped(self.where(element, name),
                                   _reason(f"{self.paths[id(element)]}/@{name}", attribute=True))


def _walk(element: ET.Element, used: set[int]) -> Iterator[ET.Element]:
    """Elements in document order; an unused element's children are not visited."""
    yield element
    if id(element) not in used:
        return
    for child in element:
        yield from _walk(child, used)


def _reason(path: str, attribute: bool = False) -> str:
    plain = re.sub(r"\[\d+\]", "", path)
    parts = plain.split("/")
    tag = parts[-1].lstrip("@")
    candidates = ["/".join(parts[-2:]), tag] if len(parts) > 1 else [tag]
    if attribute:
        candidates = [c for c in candidates if not c.startswith("@")] + [parts[-2] if len(
            parts) > 1 else tag]
    for candidate in candidates:
        if candidate in REASONS:
            return REASONS[candidate]
    return DEFAULT_REASON


def _preamble(source: str, name: str, unmapped: tuple[Unmapped, ...]) -> list[str]:
    lines = [
        f"{name}.toml - imported by `handoff import` from the libvirt domain in {source}.",
        "",
        "Each key below names the domain XML it came from. Check the paths (disks, firmware,",
        "ROM files) and run `handoff doctor PROFILE` before `handoff run PROFILE`.",
    ]
    if unmapped:
        lines += ["", "Not imported (the domain's element or attribute, and why):"]
        lines += [f"  {item.line()}" for item in unmapped]
    else:
        lines += ["", "Every element and attribute of the domain was imported."]
    return lines


def parse_domain(text: str, source: str, name: str | None = None) -> ImportResult:
    """Map a domain's XML text to a draft profile; ``name`` overrides ``<name>``.

    Raises :class:`DomainImportError` for text that is not a QEMU domain handoff
    can run (malformed XML, another hypervisor or architecture, a hostdev
    without an address).
    """
    if "<!DOCTYPE" in text or "<!ENTITY" in text:
        # libvirt never writes a DTD; refusing one leaves no entity to expand or fetch.
        raise DomainImportError(
            f"{source}: the XML has a <!DOCTYPE> or <!ENTITY>, which libvirt never writes",
            fix="give the output of `virsh dumpxml DOMAIN` as it is",
        )
    try:
        root = ET.fromstring(text)  # noqa: S314 - no DTD (refused above), so no entities
    except ET.ParseError as exc:
        raise DomainImportError(
            f"{source}: not well-formed XML ({exc})",
            fix="give the output of `virsh dumpxml DOMAIN` (or the domain's file under "
            "/etc/libvirt/qemu/)",
        ) from None
    if root.tag != "domain":
        raise DomainImportError(
            f"{source}: the root element is <{local(root.tag)}>, not <domain>",
            fix="give a libvirt domain: the output of `virsh dumpxml DOMAIN`",
        )
    return _Mapper(root, source).run(name)
