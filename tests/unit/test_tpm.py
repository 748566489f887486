"""The emulated TPM's decisions: swtpm's commands, its state's verdicts, the argv, doctor.

The real swtpm, swtpm_setup and a guest reading its TPM are in
tests/qemu/test_tpm_agent.py; here the pure parts and the refusals that
happen before anything runs.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from handoff.base.errors import TpmError
from handoff.base.host import HostPaths
from handoff.checks import Verdict
from handoff.checks.tpm import check_tpm
from handoff.profile import Accelerator, TpmType, parse_profile
from handoff.qemu.cmdline import LaunchSpec, build_argv
from handoff.session.plan import ChangeKind, HostFacts, plan_session
from handoff.tpm.plan import (
    StateFacts,
    StateVerdict,
    judge_state,
    setup_argv,
    supports_tpm2,
    swtpm_argv,
)
from handoff.tpm.resource import _Owner, ensure_state

SOURCE = Path("/etc/handoff/win11.toml")
BASE = '[vm]\nname = "win11"\nmemory = "4G"\n'
TPM = BASE + '[tpm]\ntype = "emulated"\n'
CAPS = (
    '{ "type": "swtpm", "features": [ "tpm-1.2", "tpm-2.0", "tpm-send-command-header", '
    '"flags-opt-startup" ], "version": "0.7.1" }'
)


def test_no_tpm_section_means_no_tpm_and_no_argv() -> None:
    profile = parse_profile(BASE, SOURCE)
    assert profile.tpm.type is TpmType.NONE
    assert profile.tpm.state is None
    assert "-tpmdev" not in build_argv(profile, LaunchSpec())


def test_the_state_defaults_to_a_directory_next_to_the_profile_like_the_vars_copy() -> None:
    assert parse_profile(TPM, SOURCE).tpm.state == Path("/etc/handoff/win11.tpm")
    text = TPM + 'state = "tpm/win11"\n'
    assert parse_profile(text, SOURCE).tpm.state == Path("/etc/handoff/tpm/win11")


def test_qemu_gets_a_tpm_crb_on_swtpms_socket_in_its_own_directory() -> None:
    profile = parse_profile(TPM, SOURCE)
    facts = HostFacts(accel=Accelerator.TCG, accel_reason="test", supervisor_uid=0)
    plan = plan_session(profile, facts, HostPaths(run=Path("/run/handoff")))
    socket = "/run/handoff/qemu/win11/tpm.sock"
    argv = plan.argv
    at = argv.index("-tpmdev")
    assert argv[at - 2 : at + 4] == (
        "-chardev", f"socket,id=chrtpm,path={socket}",
        "-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
        "-device", "tpm-crb,tpmdev=tpm0",
    )
    assert "tpm-crb" in plan.devices
    kinds = [c.kind for c in plan.changes]
    assert ChangeKind.CREATE_TPM_STATE in kinds
    (start,) = [c for c in plan.changes if c.kind is ChangeKind.START_SWTPM]
    assert start.target == socket


def test_swtpm_setup_creates_a_tpm2_with_eks_and_certificates_as_libvirt_does() -> None:
    argv = setup_argv(Path("/s"), "win11")
    assert argv[:2] == ("swtpm_setup", "--tpm2")
    for flag in ("--createek", "--create-ek-cert", "--create-platform-cert", "--lock-nvram",
                 "--not-overwrite"):
        assert flag in argv
    assert argv[argv.index("--tpm-state") + 1] == "/s"
    assert argv[argv.index("--vmid") + 1] == "win11"
    assert "--config" not in argv
    assert setup_argv(Path("/s"), "w", Path("/s/c.conf"))[-2:] == ("--config", "/s/c.conf")


def test_swtpm_ends_with_its_client_and_keeps_its_files_private() -> None:
    argv = swtpm_argv(Path("/s"), Path("/q/tpm.sock"), 7)
    assert argv[:3] == ("swtpm", "socket", "--tpm2")
    assert "--terminate" in argv  # exits when QEMU hangs up, however QEMU ended
    assert "dir=/s,mode=0600" in argv
    assert "type=unixio,path=/q/tpm.sock,mode=0600" in argv
    assert "fd=7,level=1,prefix=swtpm: " in argv  # into QEMU's log: launch errors show it


def test_swtpms_capabilities_are_read_for_tpm2() -> None:
    assert supports_tpm2(CAPS)
    assert not supports_tpm2(CAPS.replace('"tpm-2.0", ', ""))
    assert not supports_tpm2("swtpm: unknown option")
    assert not supports_tpm2("[]")


@pytest.mark.parametrize(
    ("facts", "verdict"),
    [
        (StateFacts(exists=False), StateVerdict.CREATE),
        (StateFacts(exists=True, is_dir=True, uid=1000, has_state=True), StateVerdict.USE),
        (StateFacts(exists=True, is_dir=False, uid=1000), StateVerdict.NOT_A_DIRECTORY),
        (StateFacts(exists=True, is_dir=True, uid=1000), StateVerdict.NOT_A_TPM),
        (StateFacts(exists=True, is_dir=True, uid=0, has_state=True), StateVerdict.WRONG_OWNER),
    ],
)
def test_an_existing_state_is_used_only_when_it_is_the_vms(
    facts: StateFacts, verdict: StateVerdict
) -> None:
    assert judge_state(facts, 1000) is verdict


def _me() -> _Owner:
    return _Owner("me", os.geteuid(), os.getegid(), (), False)


def test_a_state_that_is_not_the_vms_is_refused_and_left_alone(tmp_path: Path) -> None:
    file = tmp_path / "win11.tpm"
    file.write_text("not a directory")
    with pytest.raises(TpmError, match="is not a directory"):
        ensure_state(file, "win11", _me())
    assert file.read_text() == "not a directory"
    empty = tmp_path / "other.tpm"
    empty.mkdir()
    with pytest.raises(TpmError, match=r"without a TPM 2\.0 state") as caught:
        ensure_state(empty, "win11", _me())
    assert caught.value.fix is not None
    assert "rmdir" in caught.value.fix
    owned = tmp_path / "owned.tpm"
    owned.mkdir()
    (owned / "tpm2-00.permall").write_bytes(b"state")
    stranger = _Owner("qemu", os.geteuid() + 1, os.getegid(), (), True)
    with pytest.raises(TpmError, match="belongs to uid") as caught:
        ensure_state(owned, "win11", stranger)
    assert caught.value.fix == f"give the VM's TPM state to that user: chown -R qemu: {owned}"
    assert (owned / "tpm2-00.permall").read_bytes() == b"state"


def test_a_crashed_creation_leaves_only_a_temporary_directory_the_next_run_removes(
    tmp_path: Path,
) -> None:
    leftover = tmp_path / ".win11.tpm.setup-abc123"
    leftover.mkdir()
    (leftover / "tpm2-00.permall").write_bytes(b"half")
    state = tmp_path / "win11.tpm"
    state.mkdir()
    (state / "tpm2-00.permall").write_bytes(b"state")
    assert ensure_state(state, "win11", _me()) is False  # used as it is
    assert not leftover.exists()


def test_a_missing_parent_directory_is_a_clear_refusal(tmp_path: Path) -> None:
    with pytest.raises(TpmError, match="does not exist") as caught:
        ensure_state(tmp_path / "no" / "win11.tpm", "win11", _me())
    assert caught.value.fix is not None
    assert caught.value.fix.startswith("create it (mkdir -p")


def test_doctor_names_the_packages_when_swtpm_is_missing() -> None:
    profile = parse_profile(TPM, SOURCE)
    check = check_tpm(profile, which=lambda _name: None, capabilities=lambda _b: CAPS)
    assert check.verdict is Verdict.FAIL
    assert check.fix is not None
    assert "apt-get install swtpm swtpm-tools" in check.fix


def test_doctor_wants_tpm2_in_swtpms_capabilities() -> None:
    profile = parse_profile(TPM, SOURCE)
    found = {"swtpm": "/usr/bin/swtpm", "swtpm_setup": "/usr/bin/swtpm_setup"}
    good = check_tpm(profile, which=found.get, capabilities=lambda _b: CAPS)
    assert good.verdict is Verdict.OK
    old = check_tpm(profile, which=found.get,
                    capabilities=lambda _b: CAPS.replace('"tpm-2.0", ', ""))
    assert old.verdict is Verdict.FAIL
    assert "tpm-2.0" in old.detail
    assert check_tpm(parse_profile(BASE, SOURCE)).verdict is Verdict.SKIP
