"""`handoff doctor` as a whole: the order of checks, text and JSON output, exit status."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from handoff.checks import Check, Verdict, fail, ok, skip, warn
from handoff.cli.doctor import (
    EXIT_FAIL,
    EXIT_OK,
    EXIT_WARN,
    add_arguments,
    cmd_doctor,
    exit_status,
    render_json,
    render_text,
    run_checks,
)
from handoff.profile import parse_profile
from tests.host_requirements import requires
from tests.unit.doctor_fakes import FakeHost

needs_qemu = requires(
    shutil.which("qemu-system-x86_64") is not None, "qemu-system-x86_64 is not installed"
)


def ready_host(root: Path) -> FakeHost:
    """A host set up the way the seed guide ends: everything in place."""
    h = FakeHost(root)
    h.cpu()
    h.cmdline("root=/dev/sda1 ro intel_iommu=on iommu=pt fbcon=map:0")
    h.iommu(("dmar0",), ecap="f0050da")
    h.interrupts("  0:  10  IR-IO-APIC  2-edge  timer\n")
    h.modules_dep("vfio", "vfio_iommu_type1", "pci/vfio_pci")
    h.node("kvm", 0o666)
    h.pci("0000:00:02.0", group=2, ids=(0x8086, 0x0412), driver="i915", boot_vga=True)
    h.pci("0000:01:00.0", group=1, driver="amdgpu", boot_vga=False, reset_method="bus")
    h.pci("0000:01:00.1", group=1, class_code=0x040300, ids=(0x1002, 0xAAC8),
          reset_method="bus")
    h.memlock(8388608, 8388608)
    h.write(h.etc_rules / "70-handoff.rules", "# installed\n")
    return h


GPU_PROFILE = """
[vm]
name = "win"
memory = "8G"
[[passthrough]]
address = "01:00.0"
x_vga = true
[[passthrough]]
address = "01:00.1"
"""


@needs_qemu
def test_a_ready_host_and_profile_pass_every_check_in_the_seeds_order(tmp_path: Path) -> None:
    host = ready_host(tmp_path)
    profile = parse_profile(GPU_PROFILE, tmp_path / "win.toml")
    checks = run_checks(host.env(), profile)
    names = [c.name for c in checks]
    assert names[:10] == [
        "cpu-virtualization",
        "iommu",
        "kernel-cmdline",
        "interrupt-remapping",
        "kernel-version",
        "module:vfio",
        "module:vfio_iommu_type1",
        "module:vfio_pci",
        "modprobe.d",
        "kvm",
    ]
    assert "passthrough-plan" in names
    assert names[-3:] == ["udev-rule", "qemu", "ovmf"]
    bad = [c for c in checks if c.verdict not in (Verdict.OK, Verdict.SKIP)]
    assert bad == []
    assert exit_status(checks) == EXIT_OK


@needs_qemu
def test_host_only_doctor_has_no_profile_lines(tmp_path: Path) -> None:
    checks = run_checks(ready_host(tmp_path).env(), None)
    names = {c.name for c in checks}
    assert not names & {"memlock", "passthrough-plan", "ovmf", "uinput", "profile-files"}
    assert exit_status(checks) == EXIT_OK


def test_an_unknown_vm_user_is_a_failed_check_not_a_crash(tmp_path: Path) -> None:
    host = ready_host(tmp_path)
    profile = parse_profile(
        GPU_PROFILE.replace('memory = "8G"', 'memory = "8G"\nuser = "nobody-here-xyz"'),
        tmp_path / "win.toml",
    )
    checks = run_checks(host.env(), profile)
    user = next(c for c in checks if c.name == "vm-user")
    assert user.verdict is Verdict.FAIL
    assert user.fix == "useradd --system --no-create-home nobody-here-xyz, or remove vm.user"


@pytest.mark.parametrize(
    ("verdicts", "status"),
    [
        ([], EXIT_OK),
        ([Verdict.OK, Verdict.SKIP], EXIT_OK),
        ([Verdict.OK, Verdict.WARN], EXIT_WARN),
        ([Verdict.WARN, Verdict.FAIL, Verdict.OK], EXIT_FAIL),
    ],
)
def test_the_exit_status_is_the_worst_verdict(verdicts: list[Verdict], status: int) -> None:
    checks = [Check(f"c{i}", v, "d", "f") for i, v in enumerate(verdicts)]
    assert exit_status(checks) == status


def test_text_output_is_one_line_per_check_with_fix_lines_under_problems() -> None:
    checks = [
        ok("iommu", "5 IOMMU groups"),
        skip("uinput", "not used"),
        warn("kvm", "PVM host", "nothing to change"),
        fail("module:vfio_pci", "missing", "build CONFIG_VFIO_PCI"),
    ]
    assert render_text(checks).splitlines() == [
        "ok    iommu            5 IOMMU groups",
        "skip  uinput           not used",
        "warn  kvm              PVM host",
        "                       fix: nothing to change",
        "fail  module:vfio_pci  missing",
        "                       fix: build CONFIG_VFIO_PCI",
        "doctor: 1 ok, 1 skip, 1 warn, 1 fail",
    ]


def test_json_output_lists_every_field_for_scripts() -> None:
    data = json.loads(render_json([fail("iommu", "off", "enable VT-d")]))
    assert data == [{"name": "iommu", "verdict": "fail", "detail": "off", "fix": "enable VT-d"}]


def _args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="handoff doctor")
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _point_at(host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HANDOFF_SYSFS_ROOT", str(host.sys))
    monkeypatch.setenv("HANDOFF_PROC_ROOT", str(host.proc))
    monkeypatch.setenv("HANDOFF_DEV_ROOT", str(host.dev))
    monkeypatch.setenv("HANDOFF_MODULES_ROOT", str(host.modules))


def test_cmd_doctor_reads_the_roots_from_the_environment_and_prints_json(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = FakeHost(tmp_path)
    host.cpu("GenuineIntel", "fpu")
    _point_at(host, monkeypatch)
    status = cmd_doctor(_args("--json", "--qemu", "qemu-system-does-not-exist"))
    data = json.loads(capsys.readouterr().out)
    by_name = {c["name"]: c for c in data}
    assert by_name["iommu"]["verdict"] == "fail"
    assert by_name["cpu-virtualization"]["verdict"] == "warn"
    assert by_name["qemu"]["verdict"] == "fail"
    assert status == EXIT_FAIL


def test_an_invalid_profile_is_reported_and_the_host_checks_still_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = ready_host(tmp_path / "host")
    _point_at(host, monkeypatch)
    bad = tmp_path / "bad.toml"
    bad.write_text('[vm]\nname = "x"\nmemroy = "1G"\n')
    status = cmd_doctor(_args(str(bad)))
    out = capsys.readouterr().out
    first = out.splitlines()[0]
    assert first.startswith("fail  profile")
    assert "memroy" in first
    assert "ok    iommu" in out
    assert status == EXIT_FAIL


@needs_qemu
def test_a_profile_without_passthrough_does_not_fail_on_a_host_without_iommu(
    tmp_path: Path,
) -> None:
    host = FakeHost(tmp_path)
    host.cpu()
    host.node("kvm", 0o666)
    demo = parse_profile('[vm]\nname = "demo"\nmemory = "256M"\n', tmp_path / "demo.toml")
    checks = {c.name: c for c in run_checks(host.env(), demo)}
    assert checks["iommu"].verdict is Verdict.SKIP
    assert checks["iommu"].detail.startswith("not needed without [[passthrough]] (fail: no IOMMU")
    assert checks["module:vfio_pci"].verdict is Verdict.SKIP
    assert exit_status(list(checks.values())) == EXIT_OK
    # the same host, asked without a profile, is not ready for passthrough
    assert exit_status(run_checks(host.env(), None)) == EXIT_FAIL


def test_a_bare_profile_name_is_looked_up_like_handoff_run_does(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = ready_host(tmp_path / "host")
    _point_at(host, monkeypatch)
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "win.toml").write_text(GPU_PROFILE)
    monkeypatch.setenv("HANDOFF_PROFILE_DIR", str(profiles))
    cmd_doctor(_args("win", "--json"))
    first = json.loads(capsys.readouterr().out)[0]
    assert first == {
        "name": "profile",
        "verdict": "ok",
        "detail": f"{profiles / 'win.toml'} is valid (vm win)",
        "fix": None,
    }


def test_the_real_cli_runs_doctor_and_returns_its_exit_status(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from handoff.cli.main import main

    host = FakeHost(tmp_path)
    host.cpu("GenuineIntel", "fpu")
    _point_at(host, monkeypatch)
    status = main(["doctor", "--qemu", "qemu-system-does-not-exist"])
    out = capsys.readouterr().out
    assert "fail  iommu" in out
    assert status == EXIT_FAIL


@needs_qemu
def test_a_profile_naming_a_missing_disk_fails_profile_files_with_the_parsers_fix(
    tmp_path: Path,
) -> None:
    host = ready_host(tmp_path / "host")
    missing = tmp_path / "win.img"
    profile = parse_profile(
        GPU_PROFILE + f'[[disk]]\npath = "{missing}"\nformat = "qcow2"\n', tmp_path / "win.toml"
    )
    files = next(c for c in run_checks(host.env(), profile) if c.name == "profile-files")
    assert files.verdict is Verdict.FAIL
    assert "disk[0].path" in files.detail
    assert (
        files.fix
        == f"create the image (qemu-img create -f qcow2 {missing} 64G) or correct the path"
    )
