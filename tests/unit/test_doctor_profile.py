"""handoff doctor's profile checks: devices, memlock, device nodes, QEMU and OVMF.

Passthrough devices are judged by the GPU engine's own planner on a fake
sysfs tree; QEMU is the real qemu-system-x86_64 of this host.
"""

from __future__ import annotations

import dataclasses
import gzip
import os
import resource
import shutil
from pathlib import Path

import pytest

from handoff.checks import Verdict
from handoff.checks.access import Identity, UnknownUserError, may_access, resolve_identity
from handoff.checks.devices import check_passthrough_devices
from handoff.checks.kernel import check_vfio_pci_vga
from handoff.checks.memlock import check_memlock, parse_memlock
from handoff.checks.nodes import (
    check_input_devices,
    check_udev_rule,
    check_uinput,
    check_vfio_nodes,
)
from handoff.checks.qemu import check_ovmf, check_qemu, needed_devices
from handoff.profile import Profile, parse_profile
from handoff.qemu.capabilities import probe
from handoff.qemu.probe_cache import QemuCapabilities
from tests.host_requirements import requires
from tests.unit.doctor_fakes import RELEASE, FakeHost
from tests.unit.fakesysfs import nvidia_driver_files

GAMER = Identity("gamer", 1500, frozenset({1500}))
ROOT = Identity("root", 0, frozenset({0}))
OTHER_GID = 4242


@pytest.fixture
def host(tmp_path: Path) -> FakeHost:
    h = FakeHost(tmp_path)
    h.cpu()
    h.iommu()
    h.modules_dep("vfio", "vfio_iommu_type1", "pci/vfio_pci")
    return h


def profile(tmp_path: Path, body: str = "", memory: str = "8G") -> Profile:
    text = f'[vm]\nname = "win"\nmemory = "{memory}"\n' + body
    return parse_profile(text, tmp_path / "win.toml")


GPU = '[[passthrough]]\naddress = "01:00.0"\nx_vga = true\n[[passthrough]]\naddress = "01:00.1"\n'


def seed_gpu(host: FakeHost, *, driver: str | None = "amdgpu", boot_vga: bool = False) -> None:
    """The seed's group 1: root port 00:01.0, the R9 290X and its HDMI audio."""
    host.pci("0000:00:01.0", group=1, class_code=0x060400, ids=(0x8086, 0x0C01), header_type=1)
    host.pci("0000:01:00.0", group=1, driver=driver, boot_vga=boot_vga, drm=("card1",))
    host.pci("0000:01:00.1", group=1, class_code=0x040300, ids=(0x1002, 0xAAC8))


# ---------------------------------------------------------------- passthrough devices


def test_a_clean_gpu_group_passes_and_the_plan_names_what_moves(
    host: FakeHost, tmp_path: Path
) -> None:
    seed_gpu(host)
    checks = check_passthrough_devices(host.env(), profile(tmp_path, GPU))
    assert [c.name for c in checks] == [
        "device:0000:01:00.0",
        "device:0000:01:00.1",
        "passthrough-plan",
    ]
    assert all(c.verdict is Verdict.OK for c in checks), checks
    assert "(amdgpu)" in checks[0].detail
    assert (
        "IOMMU group 1 also holds 01:00.1 (the whole group moves to vfio-pci)" in checks[0].detail
    )
    assert "IOMMU group 1 also holds 01:00.0 (" in checks[1].detail  # the root port stays
    assert "01:00.1, 01:00.0 to vfio-pci" in checks[2].detail


def test_a_missing_device_fails_naming_handoff_groups(host: FakeHost, tmp_path: Path) -> None:
    host.pci("0000:00:02.0", group=2, ids=(0x8086, 0x0412), driver="i915")
    checks = check_passthrough_devices(host.env(), profile(tmp_path, GPU))
    assert checks[0].verdict is Verdict.FAIL
    assert "PCI device 0000:01:00.0 does not exist" in checks[0].detail
    assert "handoff groups" in (checks[0].fix or "")
    assert checks[-1].name == "passthrough-plan"
    assert checks[-1].verdict is Verdict.FAIL


def test_a_group_shared_with_the_sata_controller_fails_with_the_planners_fix(
    host: FakeHost, tmp_path: Path
) -> None:
    # The seed's group 13: ISA bridge + SATA + SMBus, here with a card behind it.
    host.pci("0000:00:1f.0", group=13, class_code=0x060100, ids=(0x8086, 0x8C44), driver="lpc_ich")
    host.pci("0000:00:1f.2", group=13, class_code=0x010601, ids=(0x8086, 0x8C02), driver="ahci")
    host.pci("0000:06:00.0", group=13, class_code=0x040100, ids=(0x13F6, 0x5011))
    body = '[[passthrough]]\naddress = "06:00.0"\n'
    checks = check_passthrough_devices(host.env(), profile(tmp_path, body))
    plan = checks[-1]
    assert plan.verdict is Verdict.FAIL
    assert "00:1f.2" in plan.detail
    assert "allow_in_group" in (plan.fix or "")


def test_a_group_member_accepted_by_allow_in_group_passes_the_plan(
    host: FakeHost, tmp_path: Path
) -> None:
    host.pci("0000:00:1f.2", group=13, class_code=0x010601, ids=(0x8086, 0x8C02), driver="ahci")
    host.pci("0000:06:00.0", group=13, class_code=0x040100, ids=(0x13F6, 0x5011))
    body = '[[passthrough]]\naddress = "06:00.0"\nallow_in_group = ["00:1f.2"]\n'
    device, plan = check_passthrough_devices(host.env(), profile(tmp_path, body))
    assert plan.verdict is Verdict.OK, plan
    assert device.verdict is Verdict.OK
    assert "(accepted by the profile's allow_in_group)" in device.detail


def test_a_gpu_held_open_by_a_process_fails_with_the_pid_to_stop(
    host: FakeHost, tmp_path: Path
) -> None:
    seed_gpu(host)
    host.process(4711, "Xorg", [host.dev / "dri" / "card1"])
    checks = check_passthrough_devices(host.env(), profile(tmp_path, GPU))
    gpu = checks[0]
    assert gpu.verdict is Verdict.FAIL
    assert "pid 4711 (Xorg)" in gpu.detail
    assert "`kill 4711`" in (gpu.fix or "")  # the planner's own fix, word for word


def nvidia_card(host: FakeHost, tmp_path: Path) -> Profile:
    """A GTX 1080 on NVIDIA's driver, alone in group 20, minor 0; the profile passing it."""
    host.pci("0000:05:00.0", group=20, ids=(0x10DE, 0x1B80), driver="nvidia")
    nvidia_driver_files(host.env().host, "05:00.0", 0)
    return profile(tmp_path, '[[passthrough]]\naddress = "05:00.0"\n')


def test_nvidia_persistenced_on_nvidiactl_warns_with_its_stop_command(
    host: FakeHost, tmp_path: Path
) -> None:
    prof = nvidia_card(host, tmp_path)
    host.process(811, "nvidia-persiste", [host.dev / "nvidiactl"])
    device, plan = check_passthrough_devices(host.env(), prof)
    assert device.verdict is Verdict.WARN
    assert f"pid 811 (nvidia-persiste) has {host.dev}/nvidiactl" in device.detail
    assert device.fix == (
        "stop nvidia-persistenced (`systemctl stop nvidia-persistenced`) before the hand-off"
    )
    assert plan.verdict is Verdict.OK


def test_a_cuda_program_on_dev_nvidia0_fails_like_the_run_would(
    host: FakeHost, tmp_path: Path
) -> None:
    prof = nvidia_card(host, tmp_path)
    host.process(4444, "python3", [host.dev / "nvidia0"])
    device, plan = check_passthrough_devices(host.env(), prof)
    assert device.verdict is Verdict.FAIL  # the plan refuses, so the group line fails
    assert plan.verdict is Verdict.FAIL
    assert f"pid 4444 (python3) has {host.dev}/nvidia0" in plan.detail


def test_the_boot_gpu_under_a_bound_framebuffer_console_fails_and_unbinding_is_no_fix(
    host: FakeHost, tmp_path: Path
) -> None:
    seed_gpu(host, boot_vga=True)
    host.vtconsole(0, "(S) dummy device", bound=False)
    host.vtconsole(1, "(M) frame buffer device", bound=True)
    gpu = check_passthrough_devices(host.env(), profile(tmp_path, GPU))[0]
    assert gpu.verdict is Verdict.FAIL
    assert "boot_vga=1 with a framebuffer console bound" in gpu.detail
    # Unbinding the console would not make the boot GPU the guest's: not offered as a fix.
    assert "echo 0 > /sys/class/vtconsole/vtcon1/bind" not in (gpu.fix or "")
    assert "[host_display] handover = true" in (gpu.fix or "")


def test_the_boot_gpu_without_fbcon_fails_too(host: FakeHost, tmp_path: Path) -> None:
    # video=efifb:off unbinds the console, not the host's display: the boot GPU is still
    # the card the host starts and comes back on, so only [host_display] handover takes it.
    seed_gpu(host, boot_vga=True)
    gpu = check_passthrough_devices(host.env(), profile(tmp_path, GPU))[0]
    assert gpu.verdict is Verdict.FAIL
    assert "boot GPU" in gpu.detail
    assert "primary in the firmware setup" in (gpu.fix or "")
    assert "[host_display] handover = true" in (gpu.fix or "")


def test_no_passthrough_means_no_device_lines(host: FakeHost, tmp_path: Path) -> None:
    assert check_passthrough_devices(host.env(), profile(tmp_path)) == []


# ---------------------------------------------------------------- memlock


def test_memlock_limits_parse_bytes_and_unlimited() -> None:
    text = "Max locked memory         8388608              unlimited            bytes\n"
    assert parse_memlock(text) == (8388608, resource.RLIM_INFINITY)


def test_root_is_ok_because_handoff_raises_the_limit_for_qemu(
    host: FakeHost, tmp_path: Path
) -> None:
    host.memlock(8388608, 8388608)
    host.write(host.proc / "self" / "status", "Name:\tpython\nCapEff:\t000001ffffffffff\n")
    check = check_memlock(host.env(euid=0), profile(tmp_path, GPU))
    assert check.verdict is Verdict.OK
    assert "may raise its hard limit" in check.detail
    assert "9.0 GiB" in check.detail


def test_a_person_with_a_low_hard_limit_fails_with_the_sessions_limits_d_fix(
    host: FakeHost, tmp_path: Path
) -> None:
    host.memlock(8388608, 8388608)
    host.write(host.proc / "self" / "status", "Name:\tpython\nCapEff:\t0000000000000000\n")
    check = check_memlock(host.env(euid=1500), profile(tmp_path, GPU))
    assert check.verdict is Verdict.FAIL
    assert "9216 MiB (guest RAM + 1 GiB)" in check.detail
    # 8 GiB + 1 GiB = 9437184 KiB, in the session's own fix text
    assert "hard memlock 9437184" in (check.fix or "")
    assert "/etc/security/limits.d/" in (check.fix or "")


def test_a_hard_limit_covering_ram_plus_a_gib_is_ok(host: FakeHost, tmp_path: Path) -> None:
    host.memlock(65536, 10 * 1024**3)
    host.write(host.proc / "self" / "status", "CapEff:\t0000000000000000\n")
    check = check_memlock(host.env(euid=1500), profile(tmp_path, GPU))
    assert check.verdict is Verdict.OK
    assert "may raise its soft limit" in check.detail


def test_memlock_is_skipped_without_passthrough(host: FakeHost, tmp_path: Path) -> None:
    host.memlock(65536, 65536)
    assert check_memlock(host.env(euid=1500), profile(tmp_path)).verdict is Verdict.SKIP


# ---------------------------------------------------------------- permissions


@pytest.mark.parametrize(
    ("mode", "owner", "group", "who", "write", "allowed"),
    [
        (0o600, 1500, 0, GAMER, True, True),
        (0o600, 0, 0, GAMER, False, False),
        (0o660, 0, 1500, GAMER, True, True),
        (0o640, 0, 1500, GAMER, True, False),
        (0o666, 0, 0, GAMER, True, True),
        (0o000, 7, 7, ROOT, True, True),
    ],
)
def test_may_access_follows_owner_then_group_then_other(
    mode: int, owner: int, group: int, who: Identity, write: bool, allowed: bool
) -> None:
    assert may_access(mode, owner, group, who, write=write) is allowed


# ---------------------------------------------------------------- udev rule and /dev/vfio


def test_the_installed_udev_rule_is_found_in_etc(host: FakeHost) -> None:
    host.write(host.etc_rules / "70-handoff.rules", "# rule\n")
    check = check_udev_rule(host.env(euid=1500))
    assert check.verdict is Verdict.OK
    assert str(host.etc_rules / "70-handoff.rules") in check.detail


def test_a_missing_udev_rule_warns_a_person_with_the_install_commands(host: FakeHost) -> None:
    check = check_udev_rule(host.env(euid=1500))
    assert check.verdict is Verdict.WARN
    assert check.fix == (
        "groupadd --system handoff; install -m 0644 contrib/udev/70-handoff.rules "
        "/etc/udev/rules.d/; udevadm control --reload; udevadm trigger --subsystem-match=vfio "
        "--subsystem-match=misc"
    )


def test_root_does_not_need_the_udev_rule(host: FakeHost) -> None:
    assert check_udev_rule(host.env(euid=0)).verdict is Verdict.OK


def test_vfio_nodes_usable_by_the_handoff_group_are_ok(host: FakeHost) -> None:
    gamer = Identity("gamer", 1500, frozenset({1500, OTHER_GID}))
    host.node("vfio/vfio", 0o666)
    host.node("vfio/1", 0o660, gid=OTHER_GID)
    check = check_vfio_nodes(host.env(euid=1500), gamer, [1])
    assert check.verdict is Verdict.OK
    assert "vfio/1" in check.detail


def test_a_vfio_group_node_closed_to_the_qemu_user_fails_with_the_udev_rule(
    host: FakeHost,
) -> None:
    host.node("vfio/vfio", 0o666)
    host.node("vfio/1", 0o600)
    check = check_vfio_nodes(host.env(euid=1500), GAMER, [1])
    assert check.verdict is Verdict.FAIL
    assert "is not read/write for gamer" in check.detail
    assert "usermod -aG handoff gamer" in (check.fix or "")


def test_root_gives_the_vfio_node_to_the_qemu_user_itself(host: FakeHost) -> None:
    host.node("vfio/vfio", 0o666)
    host.node("vfio/1", 0o600)
    check = check_vfio_nodes(host.env(euid=0), GAMER, [1])
    assert check.verdict is Verdict.OK
    assert "handoff (root) gives /dev/vfio/N to gamer" in check.detail


def test_a_missing_vfio_container_is_fine_while_vfio_is_loadable(host: FakeHost) -> None:
    check = check_vfio_nodes(host.env(), GAMER, [1])
    assert check.verdict is Verdict.OK
    assert "appears when handoff loads vfio-pci" in check.detail


# ---------------------------------------------------------------- input


def test_uinput_is_skipped_for_the_qmp_backend(host: FakeHost, tmp_path: Path) -> None:
    p = profile(tmp_path, '[input]\nbackend = "qmp"\n')
    assert check_uinput(host.env(), ROOT, p).verdict is Verdict.SKIP


def test_a_missing_uinput_node_fails_with_modprobe(host: FakeHost, tmp_path: Path) -> None:
    host.modules_dep("vfio", "../input/misc/uinput")
    p = profile(tmp_path, '[input]\nbackend = "virtio"\n')
    check = check_uinput(host.env(), ROOT, p)
    assert check.verdict is Verdict.FAIL
    assert check.fix == "modprobe uinput; echo uinput > /etc/modules-load.d/handoff.conf"


def test_uinput_closed_to_the_supervisor_fails_with_the_udev_rule(
    host: FakeHost, tmp_path: Path
) -> None:
    host.node("uinput", 0o600)
    p = profile(tmp_path, '[input]\nbackend = "virtio"\n')
    check = check_uinput(host.env(euid=1500), GAMER, p)
    assert check.verdict is Verdict.FAIL
    assert "70-handoff.rules" in (check.fix or "")


def test_uinput_usable_by_root_is_ok(host: FakeHost, tmp_path: Path) -> None:
    host.node("uinput", 0o600)
    p = profile(tmp_path, '[input]\nbackend = "virtio"\n')
    assert check_uinput(host.env(), ROOT, p).verdict is Verdict.OK


def test_no_event_nodes_fail_when_input_is_handed_off(host: FakeHost, tmp_path: Path) -> None:
    p = profile(tmp_path, '[input]\nbackend = "qmp"\n')
    check = check_input_devices(host.env(), ROOT, p)
    assert check.verdict is Verdict.FAIL
    assert "no keyboard or mouse to hand off" in check.detail


def test_event_nodes_unreadable_by_a_person_name_the_input_group_and_its_risk(
    host: FakeHost, tmp_path: Path
) -> None:
    host.node("input/event0", 0o660)
    host.node("input/event1", 0o660)
    p = profile(tmp_path, '[input]\nbackend = "qmp"\n')
    check = check_input_devices(host.env(euid=1500), GAMER, p)
    assert check.verdict is Verdict.FAIL
    assert "2 of 2 event nodes" in check.detail
    assert "usermod -aG input gamer" in (check.fix or "")
    assert "every keystroke" in (check.fix or "")


def test_input_checks_are_skipped_without_input_handoff(host: FakeHost, tmp_path: Path) -> None:
    assert check_input_devices(host.env(), ROOT, profile(tmp_path)).verdict is Verdict.SKIP


# ---------------------------------------------------------------- QEMU and OVMF

needs_qemu = requires(
    shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed"
)


@needs_qemu
def test_the_real_qemu_reports_its_version_and_has_the_seed_profiles_devices(
    host: FakeHost, tmp_path: Path
) -> None:
    body = GPU + '[sound]\nmodel = "hda"\n[display]\ntablet = true\n[input]\nbackend = "virtio"\n'
    check = check_qemu(host.env(), profile(tmp_path, body))
    assert check.verdict is Verdict.OK, check
    for device in ("vfio-pci", "hda-duplex", "usb-tablet", "virtio-input-host-pci"):
        assert device in check.detail
    assert "tcg accelerator" in check.detail  # the fake host has no /dev/kvm


def test_the_needed_devices_are_read_off_the_profiles_argv(tmp_path: Path) -> None:
    p = profile(tmp_path, GPU + '[[network]]\ntype = "user"\nmodel = "e1000e"\n')
    need = needed_devices(p)
    assert "vfio-pci" in need
    assert "e1000e" in need


@needs_qemu
def test_a_device_missing_from_qemu_fails_naming_the_profile_key(
    host: FakeHost, tmp_path: Path
) -> None:
    def without_vfio(binary: str) -> QemuCapabilities:
        caps = probe(binary)  # the real QEMU's answers, minus one device
        return dataclasses.replace(caps, devices=caps.devices - {"vfio-pci"})

    check = check_qemu(host.env(), profile(tmp_path, GPU), prober=without_vfio)
    assert check.verdict is Verdict.FAIL
    assert "passthrough[0].address: needs the QEMU device 'vfio-pci'" in check.detail
    assert "VFIO support" in (check.fix or "")


@needs_qemu
def test_cpu_model_host_without_kvm_is_reported_by_the_qemu_check(
    host: FakeHost, tmp_path: Path
) -> None:
    p = parse_profile('[vm]\nname = "w"\nmemory = "1G"\ncpu_model = "host"\n', tmp_path / "w.toml")
    check = check_qemu(host.env(), p)
    assert check.verdict is Verdict.FAIL
    assert "host" in check.detail


def test_a_missing_qemu_binary_fails_with_the_package_to_install(host: FakeHost) -> None:
    check = check_qemu(host.env(), None, "qemu-system-does-not-exist")
    assert check.verdict is Verdict.FAIL
    assert "qemu-system-does-not-exist" in check.detail
    assert "apt-get install qemu-system-x86" in (check.fix or "")


def test_ovmf_is_skipped_for_seabios(tmp_path: Path) -> None:
    assert check_ovmf(profile(tmp_path)).verdict is Verdict.SKIP


def test_ovmf_files_present_are_ok_and_missing_ones_fail(tmp_path: Path) -> None:
    code = tmp_path / "OVMF_CODE_4M.fd"
    template = tmp_path / "OVMF_VARS_4M.fd"
    code.write_bytes(b"\0" * 16)
    body = f'[firmware]\ntype = "ovmf"\ncode = "{code}"\nvars_template = "{template}"\n'
    p = profile(tmp_path, body)
    missing = check_ovmf(p)
    assert missing.verdict is Verdict.FAIL
    assert "neither firmware.vars nor firmware.vars_template exists" in missing.detail
    assert str(template) in missing.detail
    template.write_bytes(b"\0" * 16)
    present = check_ovmf(p)
    assert present.verdict is Verdict.OK
    assert present.detail == f"code {code}; vars created from {template} on first run"


def test_a_missing_ovmf_code_image_is_answered_with_the_installed_one(tmp_path: Path) -> None:
    installed = tmp_path / "usr-share-OVMF" / "OVMF_CODE_4M.fd"
    installed.parent.mkdir()
    installed.write_bytes(b"\0" * 16)
    (tmp_path / "VARS.fd").write_bytes(b"\0" * 16)
    body = (
        '[firmware]\ntype = "ovmf"\ncode = "/nonexistent/OVMF_CODE.fd"\n'
        f'vars_template = "{tmp_path / "VARS.fd"}"\n'
    )
    check = check_ovmf(profile(tmp_path, body), candidates=(tmp_path / "nope.fd", installed))
    assert check.verdict is Verdict.FAIL
    assert check.fix == f'set firmware.code = "{installed}"'


def test_the_fake_tree_owner_is_this_test_user(host: FakeHost) -> None:
    node = host.node("kvm", 0o600)
    assert node.stat().st_uid == os.getuid()


def test_an_invoking_uid_without_a_passwd_entry_still_gets_an_identity() -> None:
    who = resolve_identity(None, 987654)
    assert who.uid == 987654
    assert who.name == "987654"
    with pytest.raises(UnknownUserError):
        resolve_identity("no-such-user-xyz", 0)


# ---------------------------------------------------------------- x-vga


def test_x_vga_with_vfio_pci_vga_in_proc_config_gz_is_ok(host: FakeHost, tmp_path: Path) -> None:
    (host.proc / "config.gz").write_bytes(
        gzip.compress(b"CONFIG_VFIO_PCI=m\nCONFIG_VFIO_PCI_VGA=y\n")
    )
    check = check_vfio_pci_vga(host.env(), profile(tmp_path, GPU))
    assert check.verdict is Verdict.OK
    assert check.detail == f"CONFIG_VFIO_PCI_VGA=y in {host.proc / 'config.gz'}"


def test_x_vga_on_a_kernel_without_vfio_pci_vga_fails(host: FakeHost, tmp_path: Path) -> None:
    boot = host.root / "boot"
    host.write(boot / f"config-{RELEASE}", "CONFIG_VFIO_PCI=m\n# CONFIG_VFIO_PCI_VGA is not set\n")
    env = dataclasses.replace(host.env(), boot=boot)
    check = check_vfio_pci_vga(env, profile(tmp_path, GPU))
    assert check.verdict is Verdict.FAIL
    assert str(boot / f"config-{RELEASE}") in check.detail
    assert "CONFIG_VFIO_PCI_VGA=y" in (check.fix or "")


def test_x_vga_is_skipped_when_no_device_asks_for_it_or_the_config_is_unreadable(
    host: FakeHost, tmp_path: Path
) -> None:
    plain = '[[passthrough]]\naddress = "01:00.0"\n'
    assert check_vfio_pci_vga(host.env(), profile(tmp_path, plain)).verdict is Verdict.SKIP
    env = dataclasses.replace(host.env(), boot=host.root / "no-boot")
    unreadable = check_vfio_pci_vga(env, profile(tmp_path, GPU))
    assert unreadable.verdict is Verdict.SKIP
    assert "cannot read the kernel configuration" in unreadable.detail
