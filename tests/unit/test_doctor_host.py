"""handoff doctor's host checks, against fake /sys, /proc, /dev and /lib/modules trees."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from handoff.checks import Verdict
from handoff.checks.access import Identity
from handoff.checks.cpu import Vendor, check_cpu_virtualization, parse_cpuinfo, read_cpuinfo
from handoff.checks.iommu import (
    check_interrupt_remapping,
    check_iommu,
    check_kernel_cmdline,
    parse_cmdline,
)
from handoff.checks.kernel import (
    ModuleState,
    check_kernel_version,
    check_module,
    module_state,
)
from handoff.checks.kvm import check_kvm
from handoff.checks.modprobe import check_modprobe_config
from handoff.profile import parse_profile
from tests.unit.doctor_fakes import AMD_FLAGS, RELEASE, FakeHost

ROOT = Identity("root", 0, frozenset({0}))


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path)
    h.cpu()
    return h


# ---------------------------------------------------------------- CPU


def test_cpuinfo_gives_vendor_and_flags_of_the_first_processor() -> None:
    info = parse_cpuinfo("processor\t: 0\nvendor_id\t: AuthenticAMD\nflags\t\t: fpu svm\n\n")
    assert info.vendor is Vendor.AMD
    assert info.virt_flag == "svm"


def test_vmx_in_cpuinfo_is_ok(host: FakeHost) -> None:
    check = check_cpu_virtualization(host.env())
    assert check.verdict is Verdict.OK
    assert "Intel VT-x" in check.detail


def test_missing_virtualization_flag_warns_with_the_vendors_firmware_setting(
    host: FakeHost,
) -> None:
    host.cpu("AuthenticAMD", "fpu vme de pse")
    check = check_cpu_virtualization(host.env())
    assert check.verdict is Verdict.WARN
    assert check.fix == "enable SVM Mode (AMD-V) in the firmware setup, then reboot"


def test_missing_virtualization_flag_fails_when_the_profile_demands_kvm(
    host: FakeHost, tmp_path: Path
) -> None:
    host.cpu("GenuineIntel", "fpu vme")
    profile = parse_profile('[vm]\nname = "k"\nmemory = "1G"\naccel = "kvm"\n', tmp_path / "k.toml")
    check = check_cpu_virtualization(host.env(), profile)
    assert check.verdict is Verdict.FAIL
    assert 'vm.accel = "kvm"' in check.detail
    assert "VT-x" in (check.fix or "")


# ---------------------------------------------------------------- IOMMU


def test_iommu_with_groups_is_ok_and_names_the_units(host: FakeHost) -> None:
    host.iommu(("dmar0", "dmar1"))
    host.pci("0000:01:00.0", group=1)
    check = check_iommu(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK
    assert "1 IOMMU groups" in check.detail
    assert "dmar0, dmar1" in check.detail


def test_no_iommu_on_intel_fails_with_vtd_and_intel_iommu_on(host: FakeHost) -> None:
    check = check_iommu(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert "enable VT-d in the firmware setup and add intel_iommu=on iommu=pt" in (check.fix or "")
    assert "contrib/kernel-cmdline/" in (check.fix or "")


def test_no_iommu_on_amd_fails_with_the_firmware_setting_not_a_bogus_option(
    host: FakeHost,
) -> None:
    host.cpu("AuthenticAMD", AMD_FLAGS)
    check = check_iommu(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert (check.fix or "").startswith("enable IOMMU (AMD-Vi) in the firmware setup")
    assert "amd_iommu=on" not in (check.fix or "")


def test_iommu_units_without_groups_point_at_the_off_switch(host: FakeHost) -> None:
    host.iommu(("dmar0",))
    check = check_iommu(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert "remove iommu=off / intel_iommu=off / amd_iommu=off" in (check.fix or "")


# ---------------------------------------------------------------- kernel command line


def test_cmdline_parsing_honours_quotes_and_stops_at_the_init_separator() -> None:
    params = parse_cmdline('root=/dev/sda1 acpi_osi="Windows 2020" quiet -- single')
    assert params == [("root", "/dev/sda1"), ("acpi_osi", "Windows 2020"), ("quiet", None)]


def test_intel_cmdline_with_intel_iommu_on_and_pt_is_ok(host: FakeHost) -> None:
    host.cmdline("root=/dev/sda1 intel_iommu=on iommu=pt fbcon=map:0")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK
    assert "intel_iommu=on" in check.detail
    assert "iommu=pt" in check.detail
    assert "fbcon=map:0" in check.detail


def test_intel_cmdline_without_intel_iommu_fails_when_the_iommu_is_off(host: FakeHost) -> None:
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert check.fix == (
        "add intel_iommu=on on the kernel command line (contrib/kernel-cmdline/ "
        "(GRUB, systemd-boot, Gentoo)), then reboot"
    )


def test_intel_cmdline_without_the_option_is_fine_when_the_kernel_enables_it_anyway(
    host: FakeHost,
) -> None:
    host.iommu()
    host.pci("0000:01:00.0", group=1)
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK
    assert "enables the IOMMU by default" in check.detail
    assert "iommu=pt not set" in check.detail


def test_the_seeds_blacklist_parameters_are_flagged_as_doing_nothing(host: FakeHost) -> None:
    host.cmdline("iommu=on intel_iommu=on radeon.blacklist=1 amdgpu.blacklist=1 fbcon=map:0")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.WARN
    assert "radeon.blacklist=1 is handed to radeon as an unknown parameter" in check.detail
    assert "iommu=on is not an x86 value (harmless)" in check.detail
    assert "replace it with modprobe.blacklist=amdgpu" in (check.fix or "")


def test_a_blacklist_parameter_for_intel_xe_is_flagged_like_the_other_gpu_drivers(
    host: FakeHost,
) -> None:
    host.cmdline("intel_iommu=on xe.blacklist=1")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.WARN
    assert "xe.blacklist=1 is handed to xe as an unknown parameter" in check.detail
    assert "replace it with modprobe.blacklist=xe" in (check.fix or "")


def test_iommu_off_on_the_cmdline_fails_with_its_removal(host: FakeHost) -> None:
    host.cpu("AuthenticAMD", AMD_FLAGS)
    host.cmdline("root=/dev/sda1 amd_iommu=off")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert (check.fix or "").startswith("remove amd_iommu=off")


def test_the_seeds_amd_line_notes_its_intel_option_and_amd_iommu_on(host: FakeHost) -> None:
    host.cpu("AuthenticAMD", AMD_FLAGS)
    host.iommu(("ivhd0",))
    host.pci("0000:01:00.0", group=1)
    host.cmdline("intel_iommu=on amd_iommu=on iommu=pt")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK
    assert "intel_iommu=on does nothing with an AMD IOMMU" in check.detail
    assert "amd_iommu=on is not a value the kernel knows" in check.detail


def test_an_intel_iommu_under_an_amd_cpu_model_is_judged_as_intel(host: FakeHost) -> None:
    # The testbed: q35's emulated intel-iommu (dmar0) while TCG's CPU says AuthenticAMD.
    host.cpu("AuthenticAMD", AMD_FLAGS)
    host.iommu(("dmar0",))
    host.pci("0000:00:06.0", group=1)
    host.cmdline("console=ttyS0 intel_iommu=on")
    check = check_kernel_cmdline(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK
    assert "intel_iommu=on" in check.detail
    assert "does nothing" not in check.detail


# ---------------------------------------------------------------- interrupt remapping


def test_ir_interrupt_chips_mean_interrupt_remapping_is_active(host: FakeHost) -> None:
    host.iommu()
    host.pci("0000:01:00.0", group=1)
    host.interrupts(
        "  0:   10   IR-IO-APIC   2-edge  timer\n 24:  0  IR-PCI-MSI-0000:00:1f.2 ahci\n"
    )
    check = check_interrupt_remapping(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.OK


def test_remapping_supported_by_dmar_but_unused_fails_with_intremap_advice(host: FakeHost) -> None:
    host.iommu(("dmar0",), ecap="f0050da")  # bit 3 set
    host.pci("0000:01:00.0", group=1)
    check = check_interrupt_remapping(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert "ecap bit 3" in check.detail
    assert (check.fix or "").startswith("remove intremap=off")


def test_no_remapping_at_all_fails_and_offers_the_unsafe_option_with_its_risk(
    host: FakeHost,
) -> None:
    host.iommu(("dmar0",), ecap="f0050d2")  # bit 3 clear
    host.pci("0000:01:00.0", group=1)
    check = check_interrupt_remapping(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.FAIL
    assert "options vfio_iommu_type1 allow_unsafe_interrupts=1" in (check.fix or "")
    assert "on a machine you trust" in (check.fix or "")


def test_allow_unsafe_interrupts_turns_the_failure_into_a_warning(host: FakeHost) -> None:
    host.iommu(("dmar0",), ecap="f0050d2")
    host.pci("0000:01:00.0", group=1)
    host.module("vfio_iommu_type1", params={"allow_unsafe_interrupts": "Y"})
    check = check_interrupt_remapping(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.WARN
    assert "forge interrupts" in (check.fix or "")


def test_interrupt_remapping_is_skipped_while_the_iommu_is_off(host: FakeHost) -> None:
    check = check_interrupt_remapping(host.env(), read_cpuinfo(host.env()))
    assert check.verdict is Verdict.SKIP


# ---------------------------------------------------------------- kernel and modules


def test_a_current_kernel_passes_the_version_check(host: FakeHost) -> None:
    check = check_kernel_version(host.env())
    assert check.verdict is Verdict.OK
    assert RELEASE in check.detail


@pytest.mark.parametrize(
    ("release", "verdict"),
    [("3.10.0-1160.el7.x86_64", Verdict.FAIL), ("3.19.8", Verdict.WARN), ("4.1.0", Verdict.OK)],
)
def test_kernels_before_3_16_fail_and_before_4_1_warn(
    host: FakeHost, release: str, verdict: Verdict
) -> None:
    host.write(host.proc / "sys" / "kernel" / "osrelease", release + "\n")
    check = check_kernel_version(host.env())
    assert check.verdict is verdict
    if verdict is not Verdict.OK:
        assert check.fix == "boot a kernel of version 4.1 or later"


def test_a_loaded_module_has_initstate_and_a_builtin_one_does_not(host: FakeHost) -> None:
    host.module("vfio_pci")
    host.module("vfio", builtin=True)
    assert module_state(host.env(), "vfio-pci") is ModuleState.LOADED
    assert module_state(host.env(), "vfio") is ModuleState.BUILTIN


def test_modules_dep_and_modules_builtin_are_read_for_the_running_release(host: FakeHost) -> None:
    host.modules_dep("pci/vfio_pci", "vfio_iommu_type1")
    host.modules_builtin("vfio")
    env = host.env()
    assert module_state(env, "vfio_pci") is ModuleState.LOADABLE
    assert module_state(env, "vfio_iommu_type1") is ModuleState.LOADABLE
    assert module_state(env, "vfio") is ModuleState.BUILTIN
    check = check_module(env, "vfio_pci")
    assert check.verdict is Verdict.OK
    assert "loadable (handoff runs modprobe vfio_pci when it binds)" in check.detail


def test_a_missing_vfio_pci_fails_with_the_kernel_option_to_enable(host: FakeHost) -> None:
    host.modules_dep("vfio")
    check = check_module(host.env(), "vfio_pci")
    assert check.verdict is Verdict.FAIL
    assert "CONFIG_VFIO_PCI" in (check.fix or "")
    assert f"{RELEASE}/modules.dep" in check.detail


def test_a_kernel_without_installed_modules_says_so(host: FakeHost) -> None:
    check = check_module(host.env(), "vfio")
    assert check.verdict is Verdict.FAIL
    assert "has no modules installed" in check.detail


# ---------------------------------------------------------------- /dev/kvm


def test_dev_kvm_usable_by_the_qemu_user_is_ok(host: FakeHost) -> None:
    host.node("kvm", 0o660, gid=4242)
    user = Identity("gamer", 1500, frozenset({1500, 4242}))
    check = check_kvm(host.env(), read_cpuinfo(host.env()), user)
    assert check.verdict is Verdict.OK
    assert "usable by gamer" in check.detail


def test_dev_kvm_closed_to_the_qemu_user_names_the_group_to_join(host: FakeHost) -> None:
    host.node("kvm", 0o660, gid=4242)
    user = Identity("gamer", 1500, frozenset({1500}))
    check = check_kvm(host.env(), read_cpuinfo(host.env()), user)
    assert check.verdict is Verdict.WARN
    assert check.fix == "usermod -aG kvm gamer (then log in again)"


def test_missing_dev_kvm_fails_only_when_the_profile_demands_kvm(
    host: FakeHost, tmp_path: Path
) -> None:
    cpu = read_cpuinfo(host.env())
    assert check_kvm(host.env(), cpu, ROOT).verdict is Verdict.WARN
    profile = parse_profile('[vm]\nname = "k"\nmemory = "1G"\naccel = "kvm"\n', tmp_path / "k.toml")
    check = check_kvm(host.env(), cpu, ROOT, profile)
    assert check.verdict is Verdict.FAIL
    assert (check.fix or "").startswith("modprobe kvm_intel")


def test_a_pvm_host_warns_that_kvm_crawls_and_tcg_is_used(host: FakeHost) -> None:
    host.node("kvm", 0o666)
    host.module("kvm_pvm")
    check = check_kvm(host.env(), read_cpuinfo(host.env()), ROOT)
    assert check.verdict is Verdict.WARN
    assert "KVM crawls here (PVM host), TCG will be used" in check.detail


# ---------------------------------------------------------------- modprobe.d


def test_the_seeds_two_module_blacklist_line_warns_that_amdgpu_stays_free(
    host: FakeHost,
) -> None:
    host.write(host.root / "etc/modprobe.d/radeon.conf", "blacklist radeon amdgpu\n")
    check = check_modprobe_config(host.env())
    assert check.verdict is Verdict.WARN
    assert "radeon.conf:1: 'blacklist radeon amdgpu' (amdgpu)" in check.detail
    assert (check.fix or "").startswith("write one `blacklist NAME` line per module")


def test_blacklisted_gpu_drivers_and_vfio_ids_are_reported(host: FakeHost) -> None:
    host.write(
        host.root / "etc/modprobe.d/vfio.conf",
        "blacklist radeon\nblacklist amdgpu  # the seed's card\n"
        "options vfio-pci ids=1002:67b0,1002:aac8 disable_vga=1\n",
    )
    check = check_modprobe_config(host.env())
    assert check.verdict is Verdict.OK
    assert "blacklisted: amdgpu, radeon" in check.detail
    assert "vfio-pci ids=1002:67b0,1002:aac8 reserves every device" in check.detail


def test_a_file_in_etc_overrides_the_same_name_in_usr_lib(host: FakeHost) -> None:
    host.write(host.root / "usr/lib/modprobe.d/gpu.conf", "blacklist nouveau extra\n")
    host.write(host.root / "etc/modprobe.d/gpu.conf", "# emptied by the admin\n")
    check = check_modprobe_config(host.env())
    assert check.verdict is Verdict.OK
    assert check.detail.startswith("nothing about GPUs or vfio-pci in")


@pytest.mark.skipif(shutil.which("modprobe") is None, reason="kmod's modprobe is not installed")
def test_kmod_itself_ignores_the_second_name_of_a_blacklist_line(tmp_path: Path) -> None:
    conf = tmp_path / "seed.conf"
    conf.write_text("blacklist radeon amdgpu\n")
    shown = subprocess.run(
        ["modprobe", "-C", str(conf), "--showconfig"], capture_output=True, text=True
    ).stdout
    assert "blacklist radeon" in shown
    assert "blacklist amdgpu" not in shown
