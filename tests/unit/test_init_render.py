"""The profile `handoff init` writes loads with load_profile, round-trips, and says why."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest

from handoff.init.choose import InitRequest, plan_init
from handoff.init.facts import DiskFact, DiskKind, InputDeviceFact, OvmfFiles
from handoff.init.render import render_profile
from handoff.pci.address import PciAddress
from handoff.profile import (
    DiskCache,
    DiskFormat,
    FirmwareType,
    InputBackend,
    NetworkType,
    Profile,
    Vga,
    load_profile,
    parse_profile,
    profile_to_toml,
)
from tests.unit.fakesysfs import dgpu_with_nic_host, igpu_dgpu_host, iommu_off_host
from tests.unit.test_init_choose import facts_of

A = PciAddress.parse


def written(tmp_path: Path, text: str, name: str = "win10") -> Profile:
    path = tmp_path / f"{name}.toml"
    path.write_text(text)
    profile = load_profile(path)
    assert parse_profile(profile_to_toml(profile), path) == profile  # round trip
    return profile


def test_the_seed_machine_s_profile_loads_round_trips_and_passes_the_whole_group(
    tmp_path: Path,
) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    plan = plan_init(facts, InitRequest(name="win10"))
    profile = written(tmp_path, render_profile(plan))
    assert [p.address for p in profile.passthrough] == [A("01:00.0"), A("01:00.1")]
    assert all(p.allow_in_group == () for p in profile.passthrough)
    assert (profile.vm.cpus, profile.vm.sockets, profile.vm.cores, profile.vm.threads) == (
        6, 1, 3, 2)
    assert profile.vm.memory_mib == 12032
    assert profile.display.vga is Vga.NONE
    assert profile.input.backend is InputBackend.QMP
    assert profile.input.hotkey == ("KEY_LEFTCTRL", "KEY_RIGHTCTRL")
    assert profile.input.devices == ()  # every keyboard and mouse
    assert [n.type for n in profile.networks] == [NetworkType.USER]
    assert profile.disks == ()
    assert profile.firmware.type is FirmwareType.SEABIOS  # no OVMF in this fake host
    assert not profile.vm.hide_hypervisor  # commented in the first-install block


def test_each_choice_is_explained_in_the_file(tmp_path: Path) -> None:
    text = render_profile(plan_init(facts_of(igpu_dgpu_host, tmp_path), InitRequest("win10")))
    assert "the host keeps max(2 GiB, 1/4)" in text
    assert "the host keeps one core" in text
    assert "00:02.0 not: it is the boot GPU" in text
    assert "# 01:00.1 Audio device [1002:aac8] (snd_hda_intel): in IOMMU group 1" in text
    assert "\n[cpu]\npin = \"auto\"\n" in text  # pinning has shipped: init uses it
    assert "until then leave it out" not in text
    assert "# hide_hypervisor = true" in text
    assert '# type = "tap"' in text
    assert "# [sound]" in text
    assert "SeaBIOS" in text
    assert "`handoff doctor win10`" in text


def test_allow_in_group_is_written_only_with_a_comment_naming_what_moves(tmp_path: Path) -> None:
    facts = facts_of(dgpu_with_nic_host, tmp_path)
    text = render_profile(plan_init(facts, InitRequest("game", gpu="26:00.0")))
    profile = written(tmp_path, text, "game")
    assert profile.passthrough[0].allow_in_group == (A("25:00.0"),)
    assert [p.address for p in profile.passthrough] == [A("26:00.0"), A("26:00.1")]
    before = text.split("allow_in_group = ")[0].splitlines()[-3:]
    assert any("25:00.0 Ethernet controller" in line for line in before), before
    assert any("the host goes without it" in line for line in before), before


def test_a_gpu_less_profile_shows_an_emulated_card_on_vnc(tmp_path: Path) -> None:
    facts = facts_of(iommu_off_host, tmp_path)
    profile = written(tmp_path, render_profile(plan_init(facts, InitRequest("vm", gpu="none"))),
                      "vm")
    assert profile.passthrough == ()
    assert profile.display.vga is Vga.STD
    assert profile.display.frontend.value == "vnc"


def test_ovmf_block_device_and_input_selectors(tmp_path: Path) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    code, template = tmp_path / "OVMF_CODE_4M.fd", tmp_path / "OVMF_VARS_4M.fd"
    facts = type(facts)(**{
        **facts.__dict__,
        "ovmf": OvmfFiles(code, template),
        "disk": DiskFact(Path("/dev/vg0/win"), DiskKind.BLOCK),
        "inputs": (InputDeviceFact("Logitech USB Receiver", "by-id:usb-Logitech-event-kbd",
                                   "keyboard"),),
    })
    plan = plan_init(facts, InitRequest("win10", disk=Path("/dev/vg0/win")))
    text = render_profile(plan)
    profile = written(tmp_path, text)
    assert profile.firmware.type is FirmwareType.OVMF
    assert profile.firmware.code == code
    assert profile.firmware.vars_template == template
    assert profile.firmware.vars == tmp_path / "win10.OVMF_VARS.fd"  # the per-VM copy
    (disk,) = profile.disks
    assert (disk.path, disk.format, disk.cache) == (Path("/dev/vg0/win"), DiskFormat.RAW,
                                                    DiskCache.NONE)
    assert '#   "by-id:usb-Logitech-event-kbd"  keyboard: Logitech USB Receiver' in text
    assert profile.input.devices == ()


@pytest.mark.parametrize("backend", list(InputBackend))
def test_every_input_backend_gives_a_profile_that_loads(tmp_path: Path,
                                                        backend: InputBackend) -> None:
    facts = facts_of(igpu_dgpu_host, tmp_path)
    text = render_profile(plan_init(facts, InitRequest("vm", input=backend)))
    assert written(tmp_path, text, "vm").input.backend is backend
    tomllib.loads(text)


def test_the_sound_section_names_the_active_desktop_sessions_user(tmp_path: Path) -> None:
    from dataclasses import replace

    from handoff.init.gather import desktop_user

    sessions = tmp_path / "sessions"
    sessions.mkdir()
    (sessions / "2").write_text("UID=1001\nUSER=bob\nACTIVE=0\nTYPE=x11\n")
    (sessions / "3").write_text("UID=1000\nUSER=alice\nACTIVE=1\nTYPE=wayland\n")
    (sessions / "4").write_text("UID=0\nUSER=root\nACTIVE=1\nTYPE=tty\n")
    (sessions / "3.ref").write_text("")
    assert desktop_user(sessions) == "alice"
    assert desktop_user(tmp_path / "none") is None
    facts = replace(facts_of(igpu_dgpu_host, tmp_path), desktop_user="alice")
    text = render_profile(plan_init(facts, InitRequest("win10")))
    assert '# user = "alice"  # the desktop session whose sound server plays it' in text
    profile = written(tmp_path, text.replace('# [sound]\n# model = "hda"\n# backend = "pa"\n'
                                             '# user', '[sound]\nmodel = "hda"\nbackend = "pa"\n'
                                             'user'))
    assert profile.sound.user == "alice"
