"""Where reset facts reach a person: doctor, `handoff groups`, `handoff status`, the profile."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from handoff.base.errors import BindError, ProfileError
from handoff.checks import DoctorEnv, Verdict
from handoff.checks.reset import check_resets
from handoff.cli import main as cli
from handoff.pci.address import PciAddress
from handoff.pci.commands import run_groups
from handoff.pci.engine import Engine
from handoff.pci.plan import plan_handoff
from handoff.pci.reset import ResetChoice
from handoff.pci.snapshot import take_snapshot
from handoff.profile import Profile, parse_profile
from tests.unit.fakesysfs import FakeHost, session_journal
from tests.unit.test_pci_reset import SysLog, polaris_host

A = PciAddress.parse


def profile(tmp_path: Path, reset: str | None = None) -> Profile:
    line = f'reset = "{reset}"\n' if reset else ""
    return parse_profile(
        f'[vm]\nname = "gaming"\nmemory = "8G"\n[[passthrough]]\naddress = "0a:00.0"\n{line}',
        tmp_path / "gaming.toml",
    )


def env(host: FakeHost, tmp_path: Path, *, installed: bool = False) -> DoctorEnv:
    modules = tmp_path / "lib-modules"
    release = modules / "6.1.0-27-amd64"
    release.mkdir(parents=True)
    dep = "kernel/drivers/misc/vendor-reset.ko:\n" if installed else ""
    (release / "modules.dep").write_text(dep)
    (release / "modules.builtin").write_text("")
    return DoctorEnv(host=host.paths, modules=modules)


def test_the_profile_takes_the_kernels_method_names_and_refuses_others(tmp_path: Path) -> None:
    assert profile(tmp_path).passthrough[0].reset is ResetChoice.AUTO
    assert profile(tmp_path, "device_specific").passthrough[0].reset is ResetChoice.DEVICE_SPECIFIC
    with pytest.raises(ProfileError) as bad:
        profile(tmp_path, "flr2")
    assert "passthrough[0].reset" in str(bad.value)
    assert 'did you mean "flr"' in str(bad.value)


def test_a_pinned_reset_on_a_live_group_is_refused_at_load(tmp_path: Path) -> None:
    with pytest.raises(ProfileError) as bad:
        parse_profile(
            '[vm]\nname = "g"\nmemory = "8G"\n[[passthrough]]\naddress = "0a:00.0"\n'
            'live = true\nreset = "bus"\n', tmp_path / "g.toml",
        )
    assert "passthrough[0].reset" in str(bad.value)
    assert "live = true" in bad.value.message


def test_doctor_warns_about_a_polaris_card_without_vendor_reset(tmp_path: Path) -> None:
    host = polaris_host(tmp_path / "host")
    (check,) = check_resets(env(host, tmp_path), profile(tmp_path))
    assert check.name == "reset:0000:0a:00.0"
    assert check.verdict is Verdict.WARN
    assert "AMD Polaris 10 card" in check.detail
    assert "(reset methods: flr bus)" in check.detail
    assert check.fix is not None
    assert check.fix.startswith("install vendor-reset")


def test_doctor_says_load_it_when_vendor_reset_is_installed(tmp_path: Path) -> None:
    host = polaris_host(tmp_path / "host")
    (check,) = check_resets(env(host, tmp_path, installed=True), profile(tmp_path))
    assert "installed but not loaded" in check.detail


def test_doctor_gives_the_exact_write_when_vendor_reset_is_loaded_but_not_chosen(
    tmp_path: Path,
) -> None:
    host = polaris_host(tmp_path / "host", methods=("device_specific", "flr", "bus"))
    (host.paths.sys / "module/vendor_reset").mkdir(parents=True)
    (host.paths.sys / "bus/pci/devices/0000:0a:00.0/reset_method").write_text("flr bus\n")
    (check,) = check_resets(env(host, tmp_path), profile(tmp_path))
    assert check.verdict is Verdict.WARN
    assert check.fix is not None
    assert check.fix.startswith(
        "echo device_specific > /sys/bus/pci/devices/0000:0a:00.0/reset_method"
    )
    (host.paths.sys / "bus/pci/devices/0000:0a:00.0/reset_method").write_text(
        "device_specific flr bus\n")  # fmt: skip
    (fine,) = check_resets(env(host, tmp_path / "again"), profile(tmp_path, "device_specific"))
    assert fine.verdict is Verdict.OK
    assert fine.detail == "0a:00.0 resets with device_specific flr bus (pinned: device_specific)"


def test_doctor_fails_a_pinned_reset_the_kernel_does_not_offer(tmp_path: Path) -> None:
    host = polaris_host(tmp_path / "host")
    (check,) = check_resets(env(host, tmp_path), profile(tmp_path, "pm"))
    assert check.verdict is Verdict.FAIL
    assert "only these reset methods: flr bus" in check.detail
    assert check.fix == 'set reset to one of "auto", "none", "flr", "bus"'


def test_doctor_says_a_function_without_a_reset_needs_a_reboot_before_the_first_start(
    tmp_path: Path,
) -> None:
    host = polaris_host(tmp_path / "host", methods=None)
    (host.paths.sys / "module/vendor_reset").mkdir(parents=True)
    (check,) = check_resets(env(host, tmp_path), profile(tmp_path))
    assert "the VM's second start needs a reboot or a bus reset" in check.detail


def test_groups_shows_the_reset_methods_of_what_a_vm_can_take(tmp_path: Path) -> None:
    host = polaris_host(tmp_path)
    lines: list[str] = []
    assert run_groups(host.paths, host, as_json=False, out=lines.append) == 0
    text = "\n".join(lines)
    assert "reset methods of the functions a VM can take:\n  0a:00.0    flr bus" in text
    assert "    warning: 0a:00.0 is an AMD Polaris 10 card" in text
    assert "  00:03.1 " not in text.split("reset methods")[1]  # the bridge stays


def test_groups_says_on_the_line_that_a_function_without_a_reset_needs_a_reboot(
    tmp_path: Path,
) -> None:
    host = polaris_host(tmp_path, methods=None)
    (host.paths.sys / "module/vendor_reset").mkdir(parents=True)
    lines: list[str] = []
    run_groups(host.paths, host, as_json=False, out=lines.append)
    section = "\n".join(lines).split("reset methods of the functions a VM can take:\n")[1]
    assert section.splitlines()[0] == (
        "  0a:00.0    none (a second start of the VM needs a reboot or a bus reset)"
    )
    assert "warning" not in section


def test_groups_json_carries_every_reset_fact(tmp_path: Path) -> None:
    host = polaris_host(tmp_path)
    lines: list[str] = []
    run_groups(host.paths, host, as_json=True, out=lines.append)
    (gpu, audio) = json.loads("\n".join(lines))["reset"]
    assert gpu["address"] == "0000:0a:00.0"
    assert gpu["reset_method"] == ["flr", "bus"]
    assert gpu["vendor_reset"] == "Polaris 10"
    assert gpu["warnings"][0]["fix"].startswith("install vendor-reset")
    assert audio["warnings"] == []


async def test_status_names_a_card_the_ladder_gave_up_on_and_the_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    host = polaris_host(tmp_path)
    journal = session_journal(host, "gaming")
    plan = plan_handoff([A("0a:00.0")], take_snapshot(host.paths, host.module_loadable))
    engine = Engine(host.paths, host, syslog=SysLog())
    await engine.detach(plan, journal)
    host.kill("0a:00.0")
    host.stays_dead.add(A("0a:00.0"))
    with pytest.raises(BindError):
        await engine.give_back(journal)
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(host.paths.run))
    monkeypatch.setattr(cli, "_running_sessions", lambda: [])
    assert cli.main(["status"]) == 0
    out = capsys.readouterr().out
    assert "reset: gaming: 0a:00.0 is still dead (config space reads ffff)" in out
    assert "fix: reboot the host to bring 0a:00.0 back" in out
