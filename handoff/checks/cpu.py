"""CPU vendor and virtualization extensions, from /proc/cpuinfo.

The vendor decides the rest of the advice (VT-d and ``intel_iommu=on`` on
Intel; AMD-Vi, on by default, on AMD), so it is parsed once here.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from handoff.checks import Check, DoctorEnv, fail, ok, read_text, warn
from handoff.profile import Accel, Profile


class Vendor(Enum):
    INTEL = "intel"
    AMD = "amd"
    OTHER = "other"


@dataclass(frozen=True)
class CpuInfo:
    vendor: Vendor
    flags: frozenset[str]

    @property
    def virt_flag(self) -> str | None:
        """``vmx`` (Intel VT-x) or ``svm`` (AMD-V) when the CPU exposes one."""
        for flag in ("vmx", "svm"):
            if flag in self.flags:
                return flag
        return None


def parse_cpuinfo(text: str) -> CpuInfo:
    """Vendor and flags of the first processor block (all cores agree on x86)."""
    vendor = Vendor.OTHER
    flags: frozenset[str] = frozenset()
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if not sep:
            continue
        key = key.strip()
        if key == "vendor_id" and vendor is Vendor.OTHER:
            vendor = {"GenuineIntel": Vendor.INTEL, "AuthenticAMD": Vendor.AMD}.get(
                value.strip(), Vendor.OTHER
            )
        elif key == "flags" and not flags:
            flags = frozenset(value.split())
    return CpuInfo(vendor, flags)


def read_cpuinfo(env: DoctorEnv) -> CpuInfo:
    return parse_cpuinfo(read_text(env.host.proc / "cpuinfo") or "")


FIRMWARE_VIRT_FIX = {
    Vendor.INTEL: "enable Intel Virtualization Technology (VT-x) in the firmware setup, "
    "then reboot",
    Vendor.AMD: "enable SVM Mode (AMD-V) in the firmware setup, then reboot",
    Vendor.OTHER: "enable the CPU's virtualization extensions in the firmware setup, then reboot",
}


def check_cpu_virtualization(env: DoctorEnv, profile: Profile | None = None) -> Check:
    """vmx/svm in /proc/cpuinfo: without them KVM cannot run and QEMU falls back to TCG.

    Only a warning unless the profile insists on KVM: handoff still runs a
    VM under TCG (the demo profile does), just far too slowly for a game.
    """
    name = "cpu-virtualization"
    cpu = read_cpuinfo(env)
    flag = cpu.virt_flag
    if flag is not None:
        what = {"vmx": "Intel VT-x", "svm": "AMD-V"}[flag]
        return ok(name, f"{flag} in {env.host.proc / 'cpuinfo'}: {what} available")
    detail = f"neither vmx nor svm in {env.host.proc / 'cpuinfo'}: KVM cannot run on this CPU"
    fix = FIRMWARE_VIRT_FIX[cpu.vendor]
    if profile is not None and profile.vm.accel is Accel.KVM:
        return fail(name, f'{detail}, but {profile.source} sets vm.accel = "kvm"', fix)
    return warn(name, f"{detail}; QEMU will use TCG (slow)", fix)
