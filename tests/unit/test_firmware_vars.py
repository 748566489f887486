"""The VM's vars copy records its template; another template later is refused
(handoff.qemu.firmware_vars), and doctor's ovmf check chooses from QEMU's descriptors as
run does."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from handoff.checks import Verdict
from handoff.checks.qemu import check_ovmf
from handoff.profile import Firmware, FirmwareType, Profile, parse_profile
from handoff.qemu.firmware_search import read_descriptors
from handoff.qemu.firmware_vars import ensure_firmware_vars, origin_record, vars_origin_refusal

DEBIAN = read_descriptors((Path(__file__).parent / "firmware",))


def profile(tmp_path: Path, template: Path, *, secure: bool = False) -> Profile:
    p = parse_profile('[vm]\nname = "w"\nmemory = "1G"\n', tmp_path / "w.toml")
    fw = Firmware(type=FirmwareType.OVMF, code=tmp_path / "CODE.fd", vars=tmp_path / "w.VARS.fd",
                  vars_template=template, secure_boot=secure)  # fmt: skip
    return replace(p, firmware=fw)


def test_the_copy_records_its_template_and_another_template_is_refused(tmp_path: Path) -> None:
    plain, ms = tmp_path / "VARS.fd", tmp_path / "VARS.ms.fd"
    plain.write_bytes(b"plain")
    ms.write_bytes(b"keys")
    first = profile(tmp_path, plain)
    vars_file = ensure_firmware_vars(first)
    assert vars_file is not None
    assert vars_file.read_bytes() == b"plain"
    assert origin_record(vars_file).read_text().strip() == str(plain)
    assert vars_origin_refusal(first) is None
    switched = profile(tmp_path, ms, secure=True)
    refusal = vars_origin_refusal(switched)
    assert refusal is not None
    assert f"was copied from {plain}, but the profile now asks for {ms} (with Secure Boot)" in (
        refusal.message
    )
    assert f'set vars_template = "{plain}"' in (refusal.fix or "")
    # Nothing replaced: the file is the VM's.
    assert ensure_firmware_vars(switched) == vars_file
    assert vars_file.read_bytes() == b"plain"


def test_a_vars_file_handoff_did_not_make_is_used_as_it_is(tmp_path: Path) -> None:
    own = profile(tmp_path, tmp_path / "VARS.ms.fd", secure=True)
    assert own.firmware.vars is not None
    own.firmware.vars.write_bytes(b"mine")
    assert vars_origin_refusal(own) is None


def test_doctor_names_the_descriptor_secure_boot_chose(tmp_path: Path) -> None:
    p = parse_profile(
        '[vm]\nname = "w"\nmemory = "1G"\n[firmware]\ntype = "ovmf"\nsecure_boot = true\n',
        tmp_path / "w.toml",
    )
    check = check_ovmf(p, descriptors=DEBIAN)  # ovmf is in contrib/install.sh's packages
    assert check.verdict is Verdict.OK, check.detail
    assert "code /usr/share/OVMF/OVMF_CODE_4M.ms.fd" in check.detail
    assert "40-edk2-x86_64-secure-enrolled.json" in check.detail
    assert "Secure Boot (SMM, secure pflash)" in check.detail


def test_doctor_fails_secure_boot_without_a_descriptor_with_the_features(tmp_path: Path) -> None:
    p = parse_profile(
        '[vm]\nname = "w"\nmemory = "1G"\n[firmware]\ntype = "ovmf"\nsecure_boot = true\n',
        tmp_path / "w.toml",
    )
    check = check_ovmf(p, descriptors=tuple(d for d in DEBIAN if not d.enrolled_keys))
    assert check.verdict is Verdict.FAIL
    assert "no QEMU firmware descriptor offers UEFI with Secure Boot and enrolled keys" in (
        check.detail
    )
    assert "apt-get install ovmf" in (check.fix or "")


def test_doctor_fails_a_vars_file_copied_from_another_template(tmp_path: Path) -> None:
    code, plain, ms = tmp_path / "CODE.fd", tmp_path / "VARS.fd", tmp_path / "VARS.ms.fd"
    for f in (code, plain, ms):
        f.write_bytes(b"x")
    ensure_firmware_vars(profile(tmp_path, plain))
    check = check_ovmf(profile(tmp_path, ms, secure=True), descriptors=())
    assert check.verdict is Verdict.FAIL
    assert f"was copied from {plain}" in check.detail
    assert "mv " in (check.fix or "")
