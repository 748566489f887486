"""`handoff doctor` for a single-GPU profile: what the hand-over takes and brings back."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from handoff.checks import Check, DoctorEnv, Verdict
from handoff.checks.devices import check_passthrough_devices
from handoff.checks.display import check_host_display
from handoff.pci.address import PciAddress
from handoff.profile import HostDisplay, Passthrough, Profile, Vm
from tests.unit.fakedisplay import DM, DisplayHost, RecordedSystemd, single_gpu_host

PROFILE = Profile(
    vm=Vm(name="single", memory_mib=4096),
    source=Path("single.toml"),
    passthrough=(Passthrough(address=PciAddress.parse("0a:00.0")),
                 Passthrough(address=PciAddress.parse("0a:00.1"))),
    host_display=HostDisplay(handover=True, stop_units=(DM,)),
)


def checks(tmp_path: Path, profile: Profile = PROFILE) -> tuple[DisplayHost, dict[str, Check]]:
    display = single_gpu_host(tmp_path / "host")
    systemd = RecordedSystemd(display)
    systemd.add_display_manager()
    units = tmp_path / "units"
    units.mkdir()
    found = check_host_display(DoctorEnv(host=display.paths), profile, systemd, (units,))
    return display, {c.name: c for c in found}


def test_it_names_the_boot_gpu_consoles_framebuffer_and_units(tmp_path: Path) -> None:
    _, found = checks(tmp_path)
    assert found["host-display:boot-vga"].verdict is Verdict.OK
    assert "0a:00.0 is the boot GPU (boot_vga=1)" in found["host-display:boot-vga"].detail
    assert "vtcon1 ((M) frame buffer device)" in found["host-display:consoles"].detail
    assert "simple-framebuffer.0 (simple-framebuffer) sits on the card" in (
        found["host-display:framebuffer"].detail
    )
    assert found["host-display:units"].detail == f"stopped before, started after: {DM} (active)"


def test_a_missing_unit_and_an_uninstalled_service_warn_with_the_fix(tmp_path: Path) -> None:
    profile = replace(PROFILE, host_display=HostDisplay(True, (DM, "gdm3.service")))
    _, found = checks(tmp_path, profile)
    assert found["host-display:units"].verdict is Verdict.WARN
    assert "no such unit: gdm3.service" in found["host-display:units"].detail
    service = found["host-display:service"]
    assert service.verdict is Verdict.WARN
    assert "systemctl start handoff@single" in (service.fix or "")


def test_without_a_romfile_it_says_how_to_dump_the_rom_from_sysfs(tmp_path: Path) -> None:
    display = single_gpu_host(tmp_path / "host")
    rom = display.paths.sys / "bus/pci/devices/0000:0a:00.0/rom"
    rom.write_text("")
    systemd = RecordedSystemd(display)
    found = {c.name: c for c in check_host_display(DoctorEnv(host=display.paths), PROFILE,
                                                   systemd, ())}
    check = found["host-display:rom"]
    assert check.verdict is Verdict.WARN
    assert f"echo 1 > {rom}; cat {rom} > /etc/handoff/0a-00.0.rom; echo 0 > {rom}" in (
        check.fix or ""
    )


def test_the_boot_gpu_passes_the_device_checks_only_with_handover(tmp_path: Path) -> None:
    display, _ = checks(tmp_path)
    env = DoctorEnv(host=display.paths)
    with_handover = {c.name: c for c in check_passthrough_devices(env, PROFILE)}
    assert with_handover["passthrough-plan"].verdict is Verdict.OK
    plain = replace(PROFILE, host_display=HostDisplay())
    without = {c.name: c for c in check_passthrough_devices(env, plain)}
    assert without["passthrough-plan"].verdict is Verdict.FAIL
    assert "boot GPU" in without["passthrough-plan"].detail
