"""handoff doctor on a real kernel (the testbed: q35 + intel-iommu with interrupt
remapping, vfio-pci as a module), and the udev rule from contrib/ applied by the
guest's real systemd-udevd: the seed guide's unsolved udev rule, working."""

from __future__ import annotations

import dataclasses
import grp
import os
import pwd
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from handoff.checks import DoctorEnv, Verdict
from handoff.checks.access import Identity, resolve_identity
from handoff.checks.nodes import HANDOFF_GROUP, UDEV_RULE_NAME, check_udev_rule, check_vfio_nodes
from handoff.cli.doctor import render_text, run_checks
from handoff.pci.address import PciAddress
from handoff.profile import Profile, parse_profile
from tests.testbed import guest
from tests.testbed.devices import GpuLookalike, Ich9Group

pytestmark = pytest.mark.realkernel

RULE = Path(__file__).resolve().parents[2] / "contrib" / "udev" / UDEV_RULE_NAME
UDEV_ENV = {**os.environ, "SYSTEMD_IGNORE_CHROOT": "1"}


def passthrough_profile(tmp_path: Path, *addresses: PciAddress) -> Profile:
    body = "".join(f'[[passthrough]]\naddress = "{a}"\n' for a in addresses)
    return parse_profile(f'[vm]\nname = "tb"\nmemory = "256M"\n{body}', tmp_path / "tb.toml")


@pytest.mark.usefixtures("udev")
def test_doctor_sees_the_iommu_its_groups_interrupt_remapping_and_vfio_pci() -> None:
    checks = run_checks(DoctorEnv.from_environment(), None)
    print(render_text(checks))  # the real report, in the test's captured output
    by_name = {c.name: c for c in checks}
    assert by_name["iommu"].verdict is Verdict.OK
    assert "IOMMU groups in /sys/kernel/iommu_groups (dmar0)" in by_name["iommu"].detail
    assert by_name["interrupt-remapping"].verdict is Verdict.OK
    assert by_name["kernel-cmdline"].verdict is Verdict.OK
    assert "intel_iommu=on" in by_name["kernel-cmdline"].detail
    assert by_name["kernel-version"].verdict is Verdict.OK
    for module in ("vfio", "vfio_iommu_type1", "vfio_pci"):
        assert by_name[f"module:{module}"].verdict is Verdict.OK, by_name[f"module:{module}"]


@pytest.mark.usefixtures("vfio_pci")
def test_doctor_passes_the_gpu_lookalike_as_handoff_run_would(
    gpu_lookalike: GpuLookalike, tmp_path: Path
) -> None:
    profile = passthrough_profile(tmp_path, gpu_lookalike.vga, gpu_lookalike.audio)
    checks = run_checks(DoctorEnv.from_environment(), profile)
    print(render_text(checks))
    by_name = {c.name: c for c in checks}
    vga = by_name[f"device:{gpu_lookalike.vga}"]
    assert vga.verdict is Verdict.OK, vga
    assert "(bochs-drm)" in vga.detail
    assert f"IOMMU group {gpu_lookalike.group} also holds {gpu_lookalike.audio.short}" in vga.detail
    plan = by_name["passthrough-plan"]
    assert plan.verdict is Verdict.OK, plan
    assert "to vfio-pci and back" in plan.detail
    assert by_name["memlock"].verdict is Verdict.OK
    # doctor changed nothing
    assert guest.driver_of(gpu_lookalike.vga) == "bochs-drm"


@pytest.mark.usefixtures("vfio_pci")
def test_doctor_refuses_a_chipset_function_with_the_planners_reason(
    ich9_group: Ich9Group, tmp_path: Path
) -> None:
    profile = passthrough_profile(tmp_path, ich9_group.sata)
    checks = run_checks(DoctorEnv.from_environment(), profile)
    plan = next(c for c in checks if c.name == "passthrough-plan")
    assert plan.verdict is Verdict.FAIL
    assert ich9_group.lpc.short in plan.detail
    assert guest.driver_of(ich9_group.sata) == "ahci"


@pytest.fixture
def handoff_udev_rule() -> Iterator[int]:
    """The contrib rule installed in the guest's /etc (a tmpfs overlay), a handoff group."""
    guest.require_guest("the handoff_udev_rule fixture")
    try:
        gid = grp.getgrnam(HANDOFF_GROUP).gr_gid
    except KeyError:
        subprocess.run(["groupadd", "--system", HANDOFF_GROUP], check=True)
        gid = grp.getgrnam(HANDOFF_GROUP).gr_gid
    target = Path("/etc/udev/rules.d") / UDEV_RULE_NAME
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(RULE, target)
    subprocess.run(["udevadm", "control", "--reload"], check=True, env=UDEV_ENV)
    try:
        yield gid
    finally:
        target.unlink()
        subprocess.run(["udevadm", "control", "--reload"], check=True, env=UDEV_ENV)


def wait_for_group(node: Path, gid: int) -> os.stat_result:
    """Settle udev until ``node`` exists with group ``gid`` (bounded by guest.wait_for)."""

    def applied() -> os.stat_result | None:
        guest.udev_settle()
        st = node.stat() if node.exists() else None
        return st if st is not None and st.st_gid == gid else None

    return guest.wait_for(applied, f"udev to give {node} to group {gid}")


@pytest.mark.usefixtures("vfio_pci")
def test_the_udev_rule_gives_dev_vfio_n_to_the_handoff_group(
    edu: PciAddress, handoff_udev_rule: int
) -> None:
    group = guest.iommu_group_of(edu)
    guest.bind_to(edu, "vfio-pci")
    guest.wait_for_driver(edu, "vfio-pci")
    node = Path(f"/dev/vfio/{group}")

    st = wait_for_group(node, handoff_udev_rule)
    assert stat.S_ISCHR(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert check_udev_rule(DoctorEnv.from_environment()).verdict is Verdict.OK


@pytest.mark.usefixtures("udev")
def test_the_udev_rule_gives_dev_uinput_to_the_handoff_group(handoff_udev_rule: int) -> None:
    guest.modprobe("uinput")
    subprocess.run(
        [
            "udevadm",
            "trigger",
            "--action=change",
            "--subsystem-match=misc",
            "--sysname-match=uinput",
        ],
        check=True,
        env=UDEV_ENV,
    )
    guest.udev_settle()
    st = Path("/dev/uinput").stat()
    assert st.st_gid == handoff_udev_rule
    assert stat.S_IMODE(st.st_mode) == 0o660


@pytest.fixture
def gamer() -> Identity:
    """A person in the handoff group (the guest's /etc is a tmpfs overlay)."""
    guest.require_guest("the gamer fixture")
    try:
        grp.getgrnam(HANDOFF_GROUP)
    except KeyError:
        subprocess.run(["groupadd", "--system", HANDOFF_GROUP], check=True)
    try:
        pwd.getpwnam("gamer")
    except KeyError:
        subprocess.run(["useradd", "--no-create-home", "-G", HANDOFF_GROUP, "gamer"], check=True)
    return resolve_identity("gamer", 0)


@pytest.mark.usefixtures("vfio_pci")
def test_without_the_rule_doctor_says_a_person_cannot_open_dev_vfio_n(
    edu: PciAddress, gamer: Identity
) -> None:
    group = guest.iommu_group_of(edu)
    guest.bind_to(edu, "vfio-pci")
    guest.wait_for_driver(edu, "vfio-pci")
    guest.udev_settle()
    env = dataclasses.replace(DoctorEnv.from_environment(), euid=gamer.uid)
    check = check_vfio_nodes(env, gamer, [group])
    assert check.verdict is Verdict.FAIL, check
    assert f"/dev/vfio/{group} (root:root 0600) is not read/write for gamer" in check.detail
    assert "70-handoff.rules" in (check.fix or "")


@pytest.mark.usefixtures("vfio_pci")
def test_with_the_rule_doctor_says_a_handoff_group_member_can_open_dev_vfio_n(
    edu: PciAddress, gamer: Identity, handoff_udev_rule: int
) -> None:
    group = guest.iommu_group_of(edu)
    guest.bind_to(edu, "vfio-pci")
    guest.wait_for_driver(edu, "vfio-pci")
    node = Path(f"/dev/vfio/{group}")
    wait_for_group(node, handoff_udev_rule)
    env = dataclasses.replace(DoctorEnv.from_environment(), euid=gamer.uid)
    check = check_vfio_nodes(env, gamer, [group])
    assert check.verdict is Verdict.OK, check
    assert f"/dev/vfio/{group} (root:{HANDOFF_GROUP} 0660)" in check.detail


def test_doctor_checks_i2c_dev_and_the_monitors_bus_on_the_real_kernel(tmp_path: Path) -> None:
    """[monitor]: without i2c-dev there is no /dev/i2c-N for ddcutil and doctor says how
    to load it; with it (the ICH9 SMBus, i801, is an I2C adapter here), the bus's node is
    there and usable."""
    from handoff.checks.monitor import check_bus, check_i2c_dev

    env = DoctorEnv.from_environment()
    loaded = Path("/sys/module/i2c_dev").exists()
    if loaded:
        subprocess.run(["modprobe", "-r", "i2c_dev"], check=True)
    try:
        without = check_i2c_dev(env)
        assert without.verdict is Verdict.FAIL, without
        assert "modprobe i2c-dev" in (without.fix or "")
        guest.modprobe("i2c-dev")
        assert check_i2c_dev(env).verdict is Verdict.OK
        buses = sorted(int(p.name.split("-")[1]) for p in Path("/sys/class/i2c-dev").iterdir())
        assert buses, "the ICH9 SMBus gives at least one I2C adapter"
        profile = parse_profile(
            f'[vm]\nname = "tb"\nmemory = "256M"\n[monitor]\nddc_bus = {buses[0]}\n'
            'guest_input = "DisplayPort1"\nhost_input = "HDMI1"\n', tmp_path / "tb.toml",
        )
        guest.wait_for(lambda: Path(f"/dev/i2c-{buses[0]}").exists() or None,
                       f"/dev/i2c-{buses[0]}")
        assert check_bus(env, profile.monitor).verdict is Verdict.OK
        missing = dataclasses.replace(profile.monitor, ddc_bus=buses[-1] + 50)
        assert check_bus(env, missing).verdict is Verdict.FAIL
    finally:
        if not loaded:
            subprocess.run(["modprobe", "-r", "i2c_dev"], check=False)
