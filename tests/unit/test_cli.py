"""The CLI's surface: its parser, profile lookup and error output (no QEMU needed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from handoff.cli import build_parser, format_status, main, resolve_profile
from handoff.errors import ProfileError


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices or ())


def test_every_documented_subcommand_exists() -> None:
    assert subcommands() == {
        "run", "argv", "status", "stop", "switch", "groups", "detach", "attach", "recover",
        "doctor",
    }


def test_run_takes_dry_run_and_its_show_command_alias() -> None:
    parser = build_parser()
    assert parser.parse_args(["run", "--dry-run", "p.toml"]).dry_run is True
    assert parser.parse_args(["run", "--show-command", "p.toml"]).dry_run is True
    args = parser.parse_args(["-vv", "run", "p.toml", "--trace-input", "/tmp/t"])
    assert args.verbose == 2
    assert args.trace_input == Path("/tmp/t")


def test_switch_accepts_a_side_or_nothing() -> None:
    parser = build_parser()
    assert parser.parse_args(["switch", "demo"]).to == "toggle"
    assert parser.parse_args(["switch", "demo", "guest"]).to == "guest"
    with pytest.raises(SystemExit):
        parser.parse_args(["switch", "demo", "sideways"])


def test_a_missing_profile_is_reported_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["run", str(tmp_path / "nope.toml")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"handoff: {tmp_path / 'nope.toml'}: no such profile file\n  fix: ")
    assert "Traceback" not in err


def test_a_malformed_profile_is_reported_with_key_and_fix(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[vm]\nname = "x"\nmemroy = "1G"\n')
    assert main(["argv", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("handoff: ")
    assert "memory" in err
    assert "\n  fix: " in err


def test_stop_of_a_session_that_is_not_running_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path))
    assert main(["stop", "demo"]) == 2
    assert capsys.readouterr().err.startswith("handoff: no session is running there")


def test_status_without_sessions_says_so(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "none"))
    assert main(["status"]) == 0
    assert capsys.readouterr().out == "no handoff session is running\n"
    assert main(["status", "--json"]) == 0
    assert capsys.readouterr().out == "[]\n"


def test_a_bare_name_is_looked_up_in_the_profile_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HANDOFF_PROFILE_DIR", str(tmp_path))
    monkeypatch.chdir(tmp_path.parent)
    (tmp_path / "win10.toml").write_text("")
    assert resolve_profile("win10") == tmp_path / "win10.toml"
    assert resolve_profile("some/where.toml") == Path("some/where.toml")
    with pytest.raises(ProfileError, match="no profile named 'win11'"):
        resolve_profile("win11")


def test_status_text_shows_phase_pids_accelerator_and_resources() -> None:
    text = format_status({
        "profile": "win10", "phase": "running", "pid": 10, "qemu_pid": 11, "accel": "kvm",
        "accel_reason": "/dev/kvm works", "uptime": 3725.0, "stopping": False,
        "resources": {"gpu": {"devices": 2}, "input": {"mode": "guest"}},
    })
    assert text.splitlines() == [
        "win10: running",
        "  supervisor pid 10, QEMU pid 11",
        "  accelerator kvm (/dev/kvm works)",
        "  up 1h02m05s",
        "  gpu: devices=2",
        "  input: mode=guest",
    ]


def test_argv_shows_a_kvm_profile_on_a_host_without_working_kvm_and_says_why(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fake_sys = tmp_path / "sys"
    (fake_sys / "module" / "kvm_pvm").mkdir(parents=True)
    monkeypatch.setenv("HANDOFF_SYSFS_ROOT", str(fake_sys))
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "run"))
    seed = Path(__file__).parents[2] / "profiles" / "seed-two-gpu.toml"
    assert main(["argv", str(seed)]) == 0
    captured = capsys.readouterr()
    assert "accel=kvm" in captured.out
    assert "-device vfio-pci,host=0000:01:00.0" in captured.out
    assert "`handoff run` would refuse here" in captured.err
    assert "kvm_pvm" in captured.err


def test_status_text_lists_each_handed_over_device_on_its_own_line() -> None:
    text = format_status({
        "profile": "win7", "phase": "running", "pid": 10, "qemu_pid": 11, "accel": "kvm",
        "accel_reason": "/dev/kvm works", "uptime": 5.0, "stopping": False,
        "resources": {
            "gpu": {
                "groups": [1],
                "devices": [
                    {"address": "0000:01:00.1", "original_driver": "snd_hda_intel",
                     "driver": "vfio-pci"},
                    {"address": "0000:01:00.0", "original_driver": "amdgpu",
                     "driver": "vfio-pci"},
                ],
                "journal": "/run/handoff/journal/win7.json",
            },
            "input": {"backend": "qmp", "mode": "host", "pending": None, "devices": []},
        },
    })
    assert text.splitlines()[4:] == [
        "  gpu: groups=1 journal=/run/handoff/journal/win7.json",
        "    - address=0000:01:00.1 original_driver=snd_hda_intel driver=vfio-pci",
        "    - address=0000:01:00.0 original_driver=amdgpu driver=vfio-pci",
        "  input: backend=qmp mode=host pending=- devices=-",
    ]
