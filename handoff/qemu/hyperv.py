"""A Windows guest's platform: Hyper-V enlightenments and the clock libvirt gives it. Pure.

Windows runs better when it knows it is virtualised: with the Hyper-V
enlightenments it asks the hypervisor (a hypercall, a synthetic timer)
instead of trapping on the APIC and timer hardware, and it stops
stuttering under load. libvirt and virt-manager turn these on for every
Windows guest; :data:`ENLIGHTENMENTS` is their list, each with why.

Each flag is checked against what the installed QEMU has (the capability
probe's CPU properties): a flag the QEMU lacks is dropped with one warning
line, never a start failure. A dropped flag takes the flags that need it
along (:data:`DEPENDS`, KVM's own rules: QEMU refuses hv-synic without
hv-vpindex under KVM). Without KVM, QEMU refuses hv-vpindex ("kernel doesn't
allow setting HyperV VP_INDEX", QEMU 7.2 under TCG), so a TCG session drops it
and its dependants; the others are accepted and do nothing useful.

The Windows clock (``vm.os = "windows"``), as libvirt writes it:

* ``-rtc base=localtime,driftfix=slew``: Windows keeps the RTC in local time
  and, after a pause, catches up with slewed (sped-up) RTC interrupts;
* ``-global kvm-pit.lost_tick_policy=delay`` (KVM only: the in-kernel PIT):
  missed PIT ticks are delivered late rather than merged or dropped;
* no HPET (``-machine ...,hpet=off``, or ``-no-hpet`` on a QEMU whose
  machine has no such property): Windows prefers an HPET when it sees one,
  and the emulated HPET costs far more exits than the Hyper-V clock;
* hv-time (with the enlightenments): the Hyper-V reference TSC page.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from handoff.profile import Accelerator, GuestOs, HyperV, Profile

#: (flag, why). ``hv-spinlocks=0x1fff``: retry a spinlock 8191 times before
#: telling the hypervisor (libvirt's value).
ENLIGHTENMENTS: tuple[tuple[str, str], ...] = (
    ("hv-relaxed", "no watchdog BSOD when a vCPU is descheduled (relaxed timing)"),
    ("hv-vapic", "the virtual APIC assist page: fewer exits on EOI and TPR"),
    ("hv-spinlocks=0x1fff", "a spinning vCPU yields to the hypervisor after 8191 tries"),
    ("hv-vpindex", "virtual processor numbers (needed by synic, tlbflush and ipi)"),
    ("hv-runtime", "the guest sees how long it really ran (steal time)"),
    ("hv-synic", "the synthetic interrupt controller (needed by stimer and VMBus)"),
    ("hv-stimer", "synthetic timers: no periodic APIC timer exits"),
    ("hv-reset", "a reset through the hypervisor MSR"),
    ("hv-frequencies", "TSC and APIC frequencies read from MSRs, not calibrated"),
    ("hv-time", "the Hyper-V reference TSC page clock (the Windows clock's source)"),
    ("hv-tlbflush", "remote TLB flushes by hypercall instead of IPIs to every vCPU"),
    ("hv-ipi", "IPIs to many vCPUs by one hypercall"),
)
#: Flags only some hosts support: stimer-direct (KVM since Linux 5.0) and, on
#: Intel with nested KVM, the enlightened VMCS (for Hyper-V/WSL2/VBS inside).
HOST_ENLIGHTENMENTS: tuple[tuple[str, str], ...] = (
    ("hv-stimer-direct", "synthetic timer expiry as a direct interrupt (KVM)"),
    ("hv-evmcs", "the enlightened VMCS for nested Hyper-V (Intel, nested KVM)"),
)
#: What KVM requires with each flag (QEMU's kvm_hyperv_properties dependencies).
DEPENDS: dict[str, tuple[str, ...]] = {
    "hv-synic": ("hv-vpindex",),
    "hv-stimer": ("hv-synic", "hv-time"),
    "hv-stimer-direct": ("hv-stimer",),
    "hv-tlbflush": ("hv-vpindex",),
    "hv-ipi": ("hv-vpindex",),
    "hv-evmcs": ("hv-vapic",),
}
#: Flags QEMU refuses without KVM (measured: QEMU 7.2 under TCG).
KVM_ONLY = frozenset({"hv-vpindex", "hv-stimer-direct", "hv-evmcs"})


@dataclass(frozen=True)
class Platform:
    """What a guest OS adds to the argv: -cpu flags, -machine options, other arguments."""

    cpu_flags: tuple[str, ...] = ()
    machine_options: tuple[tuple[str, str], ...] = ()
    args: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


#: The platform of a guest whose OS changes nothing (os = "other", hyperv off).
NO_PLATFORM = Platform()


def hyperv_enabled(profile: Profile) -> bool:
    """vm.hyperv, with "auto" on for a Windows guest."""
    mode = profile.vm.hyperv
    return mode is HyperV.ON or (mode is HyperV.AUTO and profile.vm.os is GuestOs.WINDOWS)


def wants_platform(profile: Profile) -> bool:
    """Whether the profile's guest OS changes the argv (and so needs the probe's answers)."""
    return hyperv_enabled(profile) or profile.vm.os is GuestOs.WINDOWS


def property_name(flag: str) -> str:
    return flag.split("=", 1)[0]


def _cascade(flags: list[str], dropped: set[str]) -> set[str]:
    """``dropped`` plus every flag that (transitively) needs one of them."""
    out = set(dropped)
    changed = True
    while changed:
        changed = False
        for flag in flags:
            name = property_name(flag)
            if name not in out and any(d in out for d in DEPENDS.get(name, ())):
                out.add(name)
                changed = True
    return out


def _names(names: Iterable[str]) -> str:
    return ", ".join(names)


def _drop(flags: list[str], names: set[str], why: str, warnings: list[str]) -> list[str]:
    """``flags`` without ``names`` and the flags that need them, the warning appended."""
    if not names:
        return flags
    gone = _cascade(flags, names)
    also = sorted(gone - names)
    warnings.append(
        f"vm.hyperv: {why} {_names(sorted(names))}: dropped"
        + (f" (with {_names(also)}, which need them)" if also else "")
    )
    return [f for f in flags if property_name(f) not in gone]


def enlightenments(
    accel: Accelerator,
    cpu_properties: frozenset[str] | None,
    *,
    host_evmcs: bool = False,
) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The hv-* flags to give and the warning lines for those dropped.

    ``cpu_properties``: the CPU properties the installed QEMU has (None: not
    probed, every flag kept); ``host_evmcs``: the host runs Intel KVM with
    nesting (hv-evmcs needs it).
    """
    flags = [flag for flag, _ in ENLIGHTENMENTS]
    if accel is Accelerator.KVM:
        flags.append("hv-stimer-direct")
        if host_evmcs:
            flags.append("hv-evmcs")
    warnings: list[str] = []
    if cpu_properties is not None:
        lacking = {property_name(f) for f in flags} - cpu_properties
        flags = _drop(flags, lacking, "this QEMU lacks", warnings)
    if accel is not Accelerator.KVM:
        refused = {property_name(f) for f in flags} & KVM_ONLY
        flags = _drop(flags, refused, "without KVM QEMU refuses", warnings)
    return tuple(flags), tuple(warnings)


def platform(
    profile: Profile,
    accel: Accelerator,
    *,
    cpu_properties: frozenset[str] | None = None,
    machine_options: frozenset[str] | None = None,
    host_evmcs: bool = False,
) -> Platform:
    """The guest OS's part of the argv (empty for ``os = "other"`` and hyperv off)."""
    cpu_flags: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    if hyperv_enabled(profile):
        cpu_flags, warnings = enlightenments(accel, cpu_properties, host_evmcs=host_evmcs)
    if profile.vm.os is not GuestOs.WINDOWS:
        return Platform(cpu_flags=cpu_flags, warnings=warnings)
    args = ["-rtc", "base=localtime,driftfix=slew"]
    if accel is Accelerator.KVM:
        args += ["-global", "kvm-pit.lost_tick_policy=delay"]
    options: tuple[tuple[str, str], ...] = ()
    if machine_options is None or "hpet" in machine_options:
        options = (("hpet", "off"),)
    else:
        args.append("-no-hpet")
    return Platform(cpu_flags, options, tuple(args), warnings)
