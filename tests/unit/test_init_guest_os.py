"""`handoff init --os`: the guest OS's profile (handoff.init.guest_os), and its bad input."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from handoff.cli.init import Target, run_init
from handoff.init.choose import InitError, InitRequest, plan_init
from handoff.init.facts import InitFacts, OvmfFiles
from handoff.init.guest_os import InitOs, InitOsError, parse_init_os
from handoff.init.render import render_profile
from handoff.profile import (
    DiskMedia,
    DisplayFrontend,
    FirmwareType,
    GuestOs,
    HyperV,
    TpmType,
    Vga,
)
from tests.unit.fakesysfs import igpu_dgpu_host
from tests.unit.test_init_choose import facts_of
from tests.unit.test_init_render import written


def uefi_facts(tmp_path: Path) -> InitFacts:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    ovmf = OvmfFiles(Path("/usr/share/OVMF/OVMF_CODE_4M.fd"),
                     Path("/usr/share/OVMF/OVMF_VARS_4M.fd"))  # fmt: skip
    return replace(facts, ovmf=ovmf)


def test_windows11_gets_secure_boot_hyperv_the_isos_and_the_install_window(
    tmp_path: Path,
) -> None:
    iso, drivers = Path("/isos/Win11_24H2.iso"), Path("/isos/virtio-win-0.1.262.iso")
    request = InitRequest("win11", guest_os=InitOs.WINDOWS11, iso=iso, virtio_win=drivers)
    text = render_profile(plan_init(uefi_facts(tmp_path), request))
    profile = written(tmp_path, text, "win11")
    assert profile.vm.os is GuestOs.WINDOWS
    assert profile.vm.hyperv is HyperV.AUTO  # on for Windows
    fw = profile.firmware
    assert fw.type is FirmwareType.OVMF
    assert fw.secure_boot
    assert fw.code is None  # chosen from QEMU's descriptors at run time
    cdroms = [d.path for d in profile.disks if d.media is DiskMedia.CDROM]
    assert cdroms == [iso, drivers]
    assert profile.display.vga is Vga.STD
    assert profile.display.frontend is DisplayFrontend.GTK
    assert profile.display.tablet
    assert [str(p.address) for p in profile.passthrough] == ["0000:01:00.0", "0000:01:00.1"]
    # What to change after installing; TPM 2.0 and the guest agent are on.
    assert 'set vga = "none" and frontend = "none"' in text.replace("\n# ", " ")
    assert profile.tpm.type is TpmType.EMULATED
    assert profile.guest_agent.enabled


def test_linux_gets_secure_boot_without_hyperv_or_a_virtio_win_cd(tmp_path: Path) -> None:
    request = InitRequest("deb", guest_os=InitOs.LINUX, gpu="none")
    facts = uefi_facts(tmp_path)
    profile = written(tmp_path, render_profile(plan_init(facts, request)), "deb")
    assert profile.vm.os is GuestOs.LINUX
    assert profile.firmware.secure_boot
    assert [d for d in profile.disks if d.media is DiskMedia.CDROM] == []  # commented example
    with pytest.raises(InitError, match="the drivers are for Windows"):
        plan_init(facts, replace(request, virtio_win=Path("/v.iso")))


def test_an_unknown_os_is_one_line_with_did_you_mean() -> None:
    with pytest.raises(InitOsError) as caught:
        parse_init_os("windows12")
    assert caught.value.message == (
        '--os: unknown guest OS "windows12"; expected one of windows11, windows10, linux'
    )
    assert caught.value.fix == "did you mean windows11? pass --os windows11"
    assert parse_init_os("windows10") is InitOs.WINDOWS10


def test_the_os_needs_uefi_and_the_isos_need_the_os(tmp_path: Path) -> None:
    facts = uefi_facts(tmp_path)
    request = InitRequest("win11", guest_os=InitOs.WINDOWS11, firmware=FirmwareType.SEABIOS)
    with pytest.raises(InitError, match="--firmware seabios asks for a BIOS"):
        plan_init(facts, request)
    with pytest.raises(InitError, match="OVMF is not installed"):
        plan_init(facts_of(igpu_dgpu_host, tmp_path / "bios"),
                  InitRequest("w", guest_os=InitOs.LINUX))  # fmt: skip
    with pytest.raises(InitError, match="--iso and --virtio-win go with --os"):
        plan_init(facts, InitRequest("w", iso=Path("/w.iso")))


def test_a_missing_iso_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    target = Target(tmp_path / "win11.toml", default=False)
    request = InitRequest("win11", guest_os=InitOs.WINDOWS11, iso=tmp_path / "nope.iso")
    with pytest.raises(InitError, match=r"--iso: .*nope\.iso is not a file"):
        run_init(request, target, force=False, gather=lambda _: uefi_facts(tmp_path),
                 out=lambda _: None)  # fmt: skip
    assert list(tmp_path.glob("*.toml")) == []


def test_the_command_refuses_an_unknown_os_in_one_line_and_writes_nothing(tmp_path: Path) -> None:
    out = tmp_path / "w.toml"
    done = subprocess.run(
        [sys.executable, "-m", "handoff", "init", "w", "--os", "windos11", "--gpu", "none",
         "--output", str(out)],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        'handoff: --os: unknown guest OS "windos11"; expected one of windows11, windows10, linux',
        "  fix: did you mean windows11? pass --os windows11",
    ]
    assert not out.exists()
