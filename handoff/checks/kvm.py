"""/dev/kvm: present, usable by the user QEMU runs as, and really fast.

A PVM host (/sys/module/kvm_pvm: KVM implemented in a guest kernel without
hardware virtualization) offers a working /dev/kvm on which unmodified
guests crawl (measured: ~55 KB/s in the kernel decompressor), so handoff's
``accel = "auto"`` uses TCG there (:func:`handoff.qemu.accel.choose_accel`,
on the same /sys/module/kvm_pvm test) and this check says so.
"""

from __future__ import annotations

from handoff.checks import Check, DoctorEnv, fail, ok, warn
from handoff.checks.access import Identity, describe_node, node_access
from handoff.checks.cpu import CpuInfo, Vendor
from handoff.profile import Accel, Profile
from handoff.qemu.accel import is_pvm_host


def check_kvm(
    env: DoctorEnv, cpu: CpuInfo, qemu_user: Identity, profile: Profile | None = None
) -> Check:
    name = "kvm"
    node = env.host.dev / "kvm"
    wants_kvm = profile is not None and profile.vm.accel is Accel.KVM
    downgrade = fail if wants_kvm else warn
    if not node.exists():
        module = {Vendor.INTEL: "kvm_intel", Vendor.AMD: "kvm_amd"}.get(cpu.vendor, "kvm_intel")
        return downgrade(
            name,
            f"{node} does not exist: QEMU will use TCG (slow)",
            f"modprobe {module} (and enable VT-x/AMD-V in the firmware if it fails)",
        )
    if not node_access(node, qemu_user, write=True):
        return downgrade(
            name,
            f"{describe_node(node)} is not read/write for {qemu_user.name}, who runs QEMU",
            f"usermod -aG kvm {qemu_user.name} (then log in again)",
        )
    if is_pvm_host(env.host):
        return warn(
            name,
            f"{env.host.sys / 'module' / 'kvm_pvm'} exists: KVM crawls here (PVM host), "
            "TCG will be used",
            "nothing to change on this host; GPU passthrough needs a machine with VT-x/AMD-V "
            "and an IOMMU",
        )
    return ok(name, f"{describe_node(node)} usable by {qemu_user.name}")
