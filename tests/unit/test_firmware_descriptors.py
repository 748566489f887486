"""UEFI firmware chosen from QEMU's firmware descriptors (handoff.qemu.firmware_descriptors).

The descriptors here are Debian 12's (ovmf 2022.11), copied into tests/unit/firmware.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from handoff.base.errors import FirmwareError
from handoff.profile import Firmware, FirmwareType
from handoff.qemu.firmware_descriptors import (
    FirmwareDescriptor,
    choose_firmware,
    machine_matches,
    parse_descriptor,
)
from handoff.qemu.firmware_search import read_descriptors

HERE = Path(__file__).parent
DEBIAN = read_descriptors((HERE / "firmware",))
OVMF = Firmware(type=FirmwareType.OVMF, vars=Path("/vms/w.OVMF_VARS.fd"))
SECURE = replace(OVMF, secure_boot=True)


def test_debians_descriptors_are_read_in_priority_order() -> None:
    assert [Path(d.source).name for d in DEBIAN] == [
        "40-edk2-x86_64-secure-enrolled.json", "50-edk2-x86_64-secure.json",
        "60-edk2-x86_64.json",
    ]  # fmt: skip
    enrolled = DEBIAN[0]
    assert enrolled.code == Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
    assert enrolled.vars_template == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    assert enrolled.secure_boot
    assert enrolled.enrolled_keys
    assert enrolled.requires_smm


def test_secure_boot_picks_the_build_with_microsofts_keys_and_needs_smm() -> None:
    choice = choose_firmware(SECURE, "q35", DEBIAN)
    assert choice is not None
    assert choice.firmware.code == Path("/usr/share/OVMF/OVMF_CODE_4M.ms.fd")
    assert choice.firmware.vars_template == Path("/usr/share/OVMF/OVMF_VARS_4M.ms.fd")
    assert choice.firmware.vars == OVMF.vars
    assert choice.smm
    assert choice.secure_boot


def test_plain_uefi_picks_the_build_without_secure_boot_or_smm() -> None:
    choice = choose_firmware(OVMF, "pc-q35-7.2", DEBIAN)
    assert choice is not None
    assert choice.firmware.code == Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    assert choice.firmware.vars_template == Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert not choice.smm
    assert not choice.secure_boot


def test_an_explicit_code_file_wins_and_its_descriptor_still_says_it_needs_smm() -> None:
    code = Path("/usr/share/OVMF/OVMF_CODE_4M.secboot.fd")
    choice = choose_firmware(replace(OVMF, code=code), "q35", DEBIAN)
    assert choice is not None
    assert choice.firmware.code == code
    assert choice.firmware.vars_template == Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
    assert choice.smm
    assert not choice.secure_boot
    own = replace(OVMF, code=Path("/opt/my/CODE.fd"), vars_template=Path("/opt/my/VARS.fd"))
    mine = choose_firmware(own, "q35", DEBIAN)
    assert mine is not None
    assert mine.firmware == own
    assert mine.descriptor is None


def test_secure_boot_without_a_matching_descriptor_is_refused_with_the_fix() -> None:
    plain_only = tuple(d for d in DEBIAN if not d.secure_boot)
    with pytest.raises(FirmwareError) as caught:
        choose_firmware(SECURE, "q35", plain_only, source="/p/w.toml")
    assert caught.value.message.startswith("/p/w.toml: firmware.secure_boot: no QEMU firmware "
                                           "descriptor offers UEFI with Secure Boot")
    assert "60-edk2-x86_64.json: no secure-boot" in caught.value.message
    assert "apt-get install ovmf" in (caught.value.fix or "")
    with pytest.raises(FirmwareError, match="offers UEFI for machine"):
        choose_firmware(OVMF, "q35", ())


def test_an_explicit_code_without_secure_boot_is_refused_for_secure_boot() -> None:
    code = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
    with pytest.raises(FirmwareError) as caught:
        choose_firmware(replace(SECURE, code=code), "q35", DEBIAN)
    assert "has no Secure Boot" in caught.value.message
    assert "remove code" in (caught.value.fix or "")


def test_a_build_requiring_smm_on_a_machine_without_it_is_refused() -> None:
    microvm = replace(
        DEBIAN[1], targets=(replace(DEBIAN[1].targets[0], machines=("microvm",)),)
    )
    with pytest.raises(FirmwareError) as caught:
        choose_firmware(replace(OVMF, code=microvm.code), "microvm", (microvm,))
    assert "has no System Management Mode" in caught.value.message
    assert caught.value.fix == 'use machine = "q35"'


def test_machine_aliases_match_the_versioned_patterns() -> None:
    assert machine_matches("q35", ("pc-q35-*",))
    assert machine_matches("pc-q35-7.2", ("pc-q35-*",))
    assert not machine_matches("q35", ("pc-i440fx-*",))


def test_descriptors_handoff_cannot_use_are_skipped_and_broken_ones_raise() -> None:
    memory = '{"interface-types": ["uefi"], "mapping": {"device": "memory", "filename": "x"}}'
    assert parse_descriptor(memory, "m.json") is None
    with pytest.raises(ValueError, match="executable"):
        parse_descriptor('{"mapping": {"device": "flash"}}', "b.json")


def test_a_file_in_etc_replaces_the_distributions_and_an_empty_one_hides_it(
    tmp_path: Path,
) -> None:
    usr, etc = tmp_path / "usr", tmp_path / "etc"
    usr.mkdir()
    etc.mkdir()
    for f in (HERE / "firmware").iterdir():
        (usr / f.name).write_text(f.read_text())
    (etc / "40-edk2-x86_64-secure-enrolled.json").write_text("")
    (etc / "10-broken.json").write_text("{not json")
    found: tuple[FirmwareDescriptor, ...] = read_descriptors((usr, etc))
    assert [Path(d.source).name for d in found] == [
        "50-edk2-x86_64-secure.json", "60-edk2-x86_64.json",
    ]  # fmt: skip
