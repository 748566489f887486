"""The guest OS's platform (handoff.qemu.hyperv): enlightenments, the dropping rule, the clock."""

from __future__ import annotations

from pathlib import Path

from handoff.profile import Accelerator, Profile, parse_profile
from handoff.qemu.hyperv import DEPENDS, ENLIGHTENMENTS, enlightenments, platform

ALL = [flag for flag, _ in ENLIGHTENMENTS]
KVM, TCG = Accelerator.KVM, Accelerator.TCG
LIBVIRT_WINDOWS = [
    "hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff", "hv-vpindex", "hv-runtime", "hv-synic",
    "hv-stimer", "hv-reset", "hv-frequencies", "hv-time", "hv-tlbflush", "hv-ipi",
]  # fmt: skip


def profile(body: str) -> Profile:
    return parse_profile('[vm]\nname = "w"\nmemory = "4G"\n' + body, Path("/p/w.toml"))


def test_a_windows_guest_under_kvm_gets_libvirts_enlightenments_and_stimer_direct() -> None:
    flags, warnings = enlightenments(KVM, None)
    assert list(flags) == [*LIBVIRT_WINDOWS, "hv-stimer-direct"]
    assert warnings == ()


def test_evmcs_only_where_the_host_has_nested_intel_kvm() -> None:
    assert "hv-evmcs" in enlightenments(KVM, None, host_evmcs=True)[0]
    assert "hv-evmcs" not in enlightenments(KVM, None, host_evmcs=False)[0]
    assert "hv-evmcs" not in enlightenments(TCG, None, host_evmcs=True)[0]


def test_a_flag_the_qemu_lacks_is_dropped_with_one_warning_and_takes_its_dependants() -> None:
    have = frozenset({f.split("=")[0] for f in ALL} | {"hv-stimer-direct"}) - {"hv-synic"}
    flags, warnings = enlightenments(KVM, have)
    # hv-stimer needs hv-synic, hv-stimer-direct needs hv-stimer (KVM refuses them alone).
    for gone in ("hv-synic", "hv-stimer", "hv-stimer-direct"):
        assert gone not in flags
    assert "hv-vpindex" in flags
    assert "hv-time" in flags
    assert warnings == (
        "vm.hyperv: this QEMU lacks hv-synic: dropped (with hv-stimer, hv-stimer-direct, "
        "which need them)",
    )


def test_without_kvm_vpindex_and_what_needs_it_are_dropped_in_one_line() -> None:
    flags, warnings = enlightenments(TCG, None)
    assert list(flags) == [
        "hv-relaxed", "hv-vapic", "hv-spinlocks=0x1fff", "hv-runtime", "hv-reset",
        "hv-frequencies", "hv-time",
    ]  # fmt: skip
    assert warnings == (
        "vm.hyperv: without KVM QEMU refuses hv-vpindex: dropped (with hv-ipi, hv-stimer, "
        "hv-synic, hv-tlbflush, which need them)",
    )


def test_every_dependency_names_a_flag_handoff_gives() -> None:
    known = {f.split("=")[0] for f in ALL} | {"hv-stimer-direct", "hv-evmcs"}
    for flag, needs in DEPENDS.items():
        assert flag in known
        assert set(needs) <= known


def test_os_other_changes_nothing_and_hyperv_auto_is_on_only_for_windows() -> None:
    assert platform(profile(""), KVM) == platform(profile('os = "linux"\n'), KVM)
    assert platform(profile(""), KVM).cpu_flags == ()
    assert platform(profile('os = "windows"\n'), KVM).cpu_flags[0] == "hv-relaxed"
    assert platform(profile('os = "windows"\nhyperv = "off"\n'), KVM).cpu_flags == ()
    assert platform(profile('os = "linux"\nhyperv = "on"\n'), KVM).cpu_flags[0] == "hv-relaxed"


def test_the_windows_clock_is_libvirts() -> None:
    kvm = platform(profile('os = "windows"\n'), KVM, machine_options=frozenset({"hpet"}))
    assert kvm.args == ("-rtc", "base=localtime,driftfix=slew",
                        "-global", "kvm-pit.lost_tick_policy=delay")  # fmt: skip
    assert kvm.machine_options == (("hpet", "off"),)
    # The in-kernel PIT exists only under KVM.
    tcg = platform(profile('os = "windows"\n'), TCG, machine_options=frozenset({"hpet"}))
    assert tcg.args == ("-rtc", "base=localtime,driftfix=slew")
    # A QEMU whose machine has no hpet property gets the old switch.
    old = platform(profile('os = "windows"\n'), KVM, machine_options=frozenset({"smm"}))
    assert old.machine_options == ()
    assert old.args[-1] == "-no-hpet"
    # Hyper-V off keeps the clock (the guest is still Windows).
    off = platform(profile('os = "windows"\nhyperv = "off"\n'), KVM)
    assert off.args[:2] == ("-rtc", "base=localtime,driftfix=slew")


def test_hide_hypervisor_keeps_its_vendor_id_beside_the_enlightenments() -> None:
    from handoff.base.host import HostPaths
    from handoff.session.plan import HostFacts, plan_session

    p = profile('os = "windows"\nhide_hypervisor = true\ncpu_flags = ["+invtsc"]\n')
    facts = HostFacts(accel=KVM, accel_reason="test", supervisor_uid=0)
    argv = plan_session(p, facts, HostPaths(run=Path("/run/handoff"))).argv
    cpu = argv[argv.index("-cpu") + 1]
    assert cpu.startswith("host,kvm=off,hv-vendor-id=handoffvm,hv-relaxed,hv-vapic,")
    assert cpu.endswith(",hv-ipi,hv-stimer-direct,+invtsc")
    assert "q35,accel=kvm,hpet=off" in argv
