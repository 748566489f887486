"""``[monitor]``: DDC/CI input switching through ddcutil.

No monitor here: a fake ``ddcutil`` on PATH records its arguments, so the
exact commands handoff runs are pinned, and answers ``getvcp`` as a monitor
would. Doctor's checks run on a fake /sys and /dev (the real kernel's
i2c-dev is the testbed's, tests/testbed/test_doctor_realkernel.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import trio

from handoff.base.errors import ProfileError
from handoff.base.host import HostPaths
from handoff.checks import Verdict
from handoff.checks.monitor import check_monitor
from handoff.checks.profile_files import check_profile_on_host
from handoff.hooks.runner import HookRunner
from handoff.monitor.mccs import input_value, same_input
from handoff.monitor.plan import getvcp_argv, monitor_hooks, parse_getvcp, setvcp_argv
from handoff.profile import HookEvent, InputMode, Monitor, MonitorFollow, Profile, parse_profile
from handoff.session.host_facts import gather_host_facts
from handoff.session.plan import plan_session
from handoff.session.supervisor import default_resources
from tests.unit.doctor_fakes import FakeHost

BASE = '[vm]\nname = "w"\nmemory = "1G"\n'


def monitor_profile(tmp_path: Path, section: str, extra: str = "") -> Profile:
    return parse_profile(BASE + extra + f"[monitor]\n{section}\n", tmp_path / "w.toml")


def fake_ddcutil(directory: Path, answer: str = "VCP 60 SNC x0f", status: int = 0) -> Path:
    """A ``ddcutil`` that appends its argv (one line) to ``calls`` and prints ``answer``."""
    directory.mkdir(parents=True, exist_ok=True)
    calls = directory / "calls"
    script = directory / "ddcutil"
    script.write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\n'
        + (f'echo "{answer}"\n' if answer else "")
        + f"exit {status}\n"
    )
    script.chmod(0o755)
    return calls


# ------------------------------------------------------------------ the profile


def test_inputs_are_mccs_names_or_raw_numbers(tmp_path: Path) -> None:
    profile = monitor_profile(
        tmp_path, 'ddc_bus = 5\nguest_input = "DisplayPort1"\nhost_input = "hdmi-2"'
    )
    assert profile.monitor == Monitor(ddc_bus=5, guest_input=0x0F, host_input=0x12)
    raw = monitor_profile(tmp_path, "ddc_display = 1\nguest_input = 27\nhost_input = 0x11")
    assert (raw.monitor.guest_input, raw.monitor.host_input) == (27, 0x11)
    assert input_value("S-Video2") == 0x08


@pytest.mark.parametrize(
    ("section", "message", "fix"),
    [
        ('ddc_bus = 5\nguest_input = "DisplayPrt1"', r'monitor\.guest_input: found "DisplayPrt1"; '
         "expected an MCCS input name", 'did you mean "DisplayPort1"'),
        ('ddc_bus = 5\nhost_input = "Thunderbolt"', "expected an MCCS input name", "HDMI1"),
        ("ddc_bus = 5\nhost_input = 300", "expected a VCP 0x60 value from 1 to 255", "0x0f"),
        ('guest_input = "HDMI1"', "neither ddc_bus nor ddc_display", "ddcutil detect"),
        ('ddc_bus = 5\nddc_display = 1\nguest_input = "HDMI1"', "both ddc_bus and ddc_display",
         "ddc_bus = N"),
        ("ddc_bus = 5", r"monitor\.guest_input: is missing", "ddcutil capabilities"),
        ('ddc_bus = 5\nguest_input = "HDMI1"\nfollow = "gpu"', "no \\[\\[passthrough\\]\\] live",
         'follow = "input"'),
        ('ddc_buss = 5\nguest_input = "HDMI1"', 'unknown key "ddc_buss"', 'did you mean'),
    ],
)  # fmt: skip
def test_bad_monitor_settings_are_refused_with_the_fix(
    tmp_path: Path, section: str, message: str, fix: str
) -> None:
    with pytest.raises(ProfileError, match=message) as caught:
        monitor_profile(tmp_path, section)
    assert fix in (caught.value.fix or "")


# ------------------------------------------------------------------ the commands


def test_the_ddcutil_commands_are_fast_and_tolerant() -> None:
    monitor = Monitor(ddc_bus=5, guest_input=0x0F, host_input=0x11)
    assert setvcp_argv(monitor, 0x0F) == (
        "ddcutil", "--bus", "5", "--noverify", "--sleep-multiplier", "0.5", "setvcp", "60", "0x0f",
    )
    assert getvcp_argv(Monitor(ddc_display=2, guest_input=1)) == (
        "ddcutil", "--display", "2", "--sleep-multiplier", "0.5", "--terse", "getvcp", "60",
    )
    assert parse_getvcp("VCP 60 SNC x0f\n") == 0x0F
    assert parse_getvcp("Display not found\n") is None
    assert same_input(0x010F, 0x0F)  # high bits some monitors set
    assert [h.on for h in monitor_hooks(monitor)] == [HookEvent.GUEST, HookEvent.HOST]
    gpu = Monitor(ddc_bus=5, guest_input=0x0F, host_input=0x11, follow=MonitorFollow.GPU)
    assert [h.on for h in monitor_hooks(gpu)] == [HookEvent.GPU_GUEST, HookEvent.GPU_HOST]


async def test_a_switch_runs_ddcutil_with_exactly_these_arguments(tmp_path: Path) -> None:
    calls = fake_ddcutil(tmp_path / "bin")
    profile = monitor_profile(
        tmp_path, 'ddc_bus = 5\nguest_input = "DisplayPort1"\nhost_input = "HDMI1"',
        extra='[input]\nbackend = "qmp"\n',
    )
    paths = _paths(tmp_path)
    plan = plan_session(profile, gather_host_facts(profile, paths, strict=False), paths)
    (runner,) = [r for r in default_resources(plan, paths) if r.name == "hooks"]
    assert isinstance(runner, HookRunner)
    runner._environ["PATH"] = f"{tmp_path / 'bin'}:/usr/bin:/bin"

    class Vm:
        pid = 0

        async def execute(self, command: str, arguments: object = None) -> object:
            return None

    class Control:
        def register(self, command: str, handler: object) -> None:
            """Nothing registered."""

    async with trio.open_nursery() as nursery:
        await runner.vm_started(Vm(), nursery, Control())
        runner.on_input_mode(InputMode.GUEST)
        runner.on_input_mode(InputMode.HOST)
        with trio.fail_after(60):
            while len(_lines(calls)) < 2:  # noqa: ASYNC110 (another process writes it)
                await trio.sleep(0.02)
        nursery.cancel_scope.cancel()
    assert _lines(calls) == [
        "--bus 5 --noverify --sleep-multiplier 0.5 setvcp 60 0x0f",
        "--bus 5 --noverify --sleep-multiplier 0.5 setvcp 60 0x11",
    ]
    assert [h["last"] for h in runner.status()["hooks"]] == ["exit 0", "exit 0"]


def _paths(tmp_path: Path) -> HostPaths:
    return HostPaths(run=tmp_path / "run")


def _lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def test_a_monitor_without_ddcutil_is_refused_before_the_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    profile = monitor_profile(tmp_path, 'ddc_bus = 5\nguest_input = "HDMI1"')
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(ProfileError, match=r"monitor: .*ddcutil is not installed"):
        check_profile_on_host(profile)
    fake_ddcutil(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    check_profile_on_host(profile)


# ------------------------------------------------------------------ doctor


def test_doctor_checks_ddcutil_i2c_dev_and_the_bus(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = FakeHost(tmp_path / "host")
    profile = monitor_profile(
        tmp_path, 'ddc_bus = 5\nguest_input = "DisplayPort1"\nhost_input = 17'
    )
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    before = {c.name: c for c in check_monitor(host.env(), profile)}
    assert before["ddcutil"].verdict is Verdict.FAIL
    assert "apt-get install ddcutil" in (before["ddcutil"].fix or "")
    assert before["i2c-dev"].verdict is Verdict.FAIL
    assert "modprobe i2c-dev" in (before["i2c-dev"].fix or "")
    assert before["i2c-bus"].verdict is Verdict.FAIL
    fake_ddcutil(tmp_path / "bin")
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    (host.sys / "module" / "i2c_dev").mkdir(parents=True)
    host.node("i2c-5", 0o600)
    after = {c.name: c.verdict for c in check_monitor(host.env(), profile)}
    assert after == {"ddcutil": Verdict.OK, "i2c-dev": Verdict.OK, "i2c-bus": Verdict.OK}
    if os.geteuid() != 0:
        assert check_monitor(host.env(euid=os.geteuid() + 1), profile)[2].verdict is Verdict.FAIL


@pytest.mark.parametrize(
    ("answer", "status", "verdict", "detail"),
    [
        ("VCP 60 SNC x10f", 0, Verdict.OK, "DisplayPort1 (0x0f): the guest input"),
        ("VCP 60 SNC x11", 0, Verdict.OK, "HDMI1 (0x11): the host input"),
        ("VCP 60 SNC x12", 0, Verdict.WARN, "neither guest_input nor host_input"),
        ("DDC communication failed", 1, Verdict.FAIL, "did not read the input"),
    ],
)
def test_doctor_probe_reads_the_input_as_value_and_0xff(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, answer: str, status: int,
    verdict: Verdict, detail: str,
) -> None:
    host = FakeHost(tmp_path / "host")
    profile = monitor_profile(
        tmp_path, 'ddc_bus = 5\nguest_input = "DisplayPort1"\nhost_input = 17'
    )
    calls = fake_ddcutil(tmp_path / "bin", answer, status)
    monkeypatch.setenv("PATH", str(tmp_path / "bin"))
    assert [c.name for c in check_monitor(host.env(), profile)] == [
        "ddcutil", "i2c-dev", "i2c-bus"]  # no probe without --probe
    assert not calls.exists()
    probed = check_monitor(host.env(), profile, probe=True)[-1]
    assert (probed.name, probed.verdict) == ("monitor-input", verdict)
    assert detail in probed.detail
    assert _lines(calls) == ["--bus 5 --sleep-multiplier 0.5 --terse getvcp 60"]


# ------------------------------------------------------------------ handoff init

DETECT = """Display 1
   I2C bus:  /dev/i2c-5
   Monitor:             DEL:DELL U2415:7MT0167B2YNL

Invalid display
   I2C bus:  /dev/i2c-7
   Monitor:             GSM:LG HDR 4K:

Display 2
   I2C bus:  /dev/i2c-9
   Monitor:             AUS:VG27A:M3LMQS370969
"""


def test_init_lists_the_monitors_ddcutil_detects_in_a_comment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import dataclasses

    from handoff.init.choose import InitRequest, plan_init
    from handoff.init.facts import MonitorFact
    from handoff.init.gather import ddcutil_monitors, parse_detect
    from handoff.init.render import render_profile
    from tests.unit.fakesysfs import igpu_dgpu_host
    from tests.unit.test_init_choose import facts_of
    from tests.unit.test_init_render import written

    assert parse_detect(DETECT) == (
        MonitorFact(1, 5, "DEL:DELL U2415:7MT0167B2YNL"),
        MonitorFact(None, 7, "GSM:LG HDR 4K:"),
        MonitorFact(2, 9, "AUS:VG27A:M3LMQS370969"),
    )
    calls = fake_ddcutil(tmp_path / "bin", answer="")
    (tmp_path / "bin" / "ddcutil").write_text(
        f'#!/bin/sh\necho "$*" >> {calls}\ncat <<EOF\n{DETECT}EOF\n'
    )
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}:/usr/bin:/bin")
    monitors = ddcutil_monitors()
    assert _lines(calls) == ["detect --terse"]
    assert monitors is not None
    assert len(monitors) == 3
    facts = dataclasses.replace(facts_of(igpu_dgpu_host, tmp_path), monitors=monitors)
    text = render_profile(plan_init(facts, InitRequest("win10")))
    assert "#   ddc_bus = 5 (display 1): DEL:DELL U2415:7MT0167B2YNL" in text
    assert "# [monitor]\n# ddc_bus = 5\n" in text
    assert written(tmp_path, text).monitor == Monitor()  # only a comment
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert ddcutil_monitors() is None  # not installed: nothing listed
    (tmp_path / "again").mkdir()
    again = facts_of(igpu_dgpu_host, tmp_path / "again")
    plain = render_profile(plan_init(again, InitRequest("win10")))
    assert "ddc_bus" not in plain
