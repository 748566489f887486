"""The CLI's surface: its parser, profile lookup and error output (no QEMU needed)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff.cli.main import DELEGATED, build_parser, format_status, main
from handoff.control.server import ControlCommands, serve_control
from handoff.session.resources import JsonObject

REPO = Path(__file__).resolve().parents[2]


def subcommands() -> set[str]:
    parser = build_parser()
    action = next(a for a in parser._actions if a.dest == "command")
    return set(action.choices or ())


def test_every_documented_subcommand_exists() -> None:
    assert subcommands() == {
        "run", "argv", "status", "stop", "switch", "groups", "detach", "attach", "recover",
        "gpu", "doctor", "init", "import", "export",
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


def test_run_and_argv_find_a_bare_name_in_handoff_profile_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    profiles = tmp_path / "profiles"
    profiles.mkdir()
    (profiles / "tiny.toml").write_text('[vm]\nname = "tiny"\nmemory = "64M"\naccel = "tcg"\n')
    monkeypatch.setenv("HANDOFF_PROFILE_DIR", str(profiles))
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path / "run"))
    monkeypatch.chdir(tmp_path)
    assert main(["argv", "tiny"]) == 0
    assert "-name guest=tiny," in capsys.readouterr().out
    assert main(["argv", "huge"]) == 2
    assert f"looked for huge.toml in {profiles}, " in capsys.readouterr().err


# ------------------------------------------------------------------ start-up: imports

#: What a desktop shortcut's `handoff switch` must not pay for.
HEAVY = ("trio", "qemu.qmp", "evdev", "pyudev", "handoff.pci", "handoff.session.supervisor",
         "handoff.qemu", "handoff.cli.doctor")


def modules_after(argv: list[str], env: Mapping[str, str]) -> set[str]:
    """The modules a fresh `python -m handoff ARGV` process has imported when main returns."""
    program = (
        "import json, sys\n"
        "from handoff.cli.main import main\n"
        f"status = main({argv!r})\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], env={**os.environ, **env, "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=False, cwd=REPO,
    )
    modules: list[str] = json.loads(done.stderr.splitlines()[-1])
    return set(modules)


@pytest.mark.parametrize(
    "argv",
    [["status"], ["status", "--json"], ["status", "demo"], ["switch", "demo"],
     ["switch", "demo", "guest"], ["stop", "demo"], ["stop", "--force", "demo"]],
    ids=" ".join,
)
def test_status_switch_and_stop_import_no_trio_qmp_pci_or_input(
    argv: list[str], tmp_path: Path
) -> None:
    loaded = modules_after(argv, {"HANDOFF_RUN_DIR": str(tmp_path)})
    assert "handoff.cli.main" in loaded
    heavy = sorted(m for m in loaded if m.startswith(HEAVY))
    assert heavy == []


#: What `handoff run` of a plain profile (the demo: no disk, GPU, input, tuning, desk,
#: TPM, hook or monitor) must not load before QEMU is spawned: trio and the QMP bridge
#: load while QEMU starts; the capabilities the profile has no section for, never.
NOT_BEFORE_SPAWN = (
    "trio", "qemu.qmp", "asyncio", "attr", "outcome", "evdev", "pyudev",
    "handoff.session.supervisor", "handoff.control.server", "handoff.control.users",
    "handoff.qemu.process", "handoff.qemu.qmp", "handoff.qemu.agent",
    "handoff.qemu.firmware_descriptors", "handoff.qemu.firmware_search",
    "handoff.tune.plan", "handoff.tune.pinning", "handoff.tune.hugepages",
    "handoff.tune.governor", "handoff.tune.isolation", "handoff.tune.topology",
    "handoff.tune.resource", "handoff.desk.", "handoff.live.", "handoff.input.",
    "handoff.tpm.", "handoff.hooks.", "handoff.monitor.plan", "handoff.display.",
    "handoff.journal", "handoff.interop", "handoff.init", "handoff.pci.sysfs",
    "handoff.pci.resource", "handoff.pci.ops", "handoff.cli.doctor", "handoff.checks.tune",
)


def test_run_of_a_plain_profile_loads_no_trio_and_no_unused_capability_before_qemu(
    tmp_path: Path,
) -> None:
    """Everything `handoff run` does before the early spawn (the preflight's modules,
    the plan, the resources built from it, the spawn's own) on the demo profile."""
    program = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from handoff.base.host import HostPaths\n"
        "from handoff.cli.main import build_parser\n"
        "from handoff.profile import load_profile\n"
        "from handoff.session import early\n"
        "from handoff.session.host_facts import gather_host_facts\n"
        "from handoff.session.start import default_resources, session_plan\n"
        "build_parser(['run'])\n"
        "profile = load_profile(Path('profiles/demo.toml'))\n"
        "paths = HostPaths.from_environment()\n"
        "plan = session_plan(profile, paths, gather_host_facts(profile, paths, strict=False))\n"
        "assert default_resources(plan, paths) == []\n"
        "print(json.dumps(sorted(sys.modules)), file=sys.stderr)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program],
        env={**os.environ, "HANDOFF_RUN_DIR": str(tmp_path), "PYTHONPATH": str(REPO)},
        capture_output=True, text=True, check=True, cwd=REPO,
    )
    loaded = set(json.loads(done.stderr.splitlines()[-1]))
    assert "handoff.session.early" in loaded
    assert sorted(m for m in loaded if m.startswith(NOT_BEFORE_SPAWN)) == []


def test_a_delegated_subcommand_is_imported_only_when_it_is_the_command(tmp_path: Path) -> None:
    loaded = modules_after(["groups", "--json"], {"HANDOFF_SYSFS_ROOT": str(tmp_path)})
    assert "handoff.pci.commands" in loaded
    assert "handoff.cli.doctor" not in loaded


def test_every_delegated_subcommand_gets_its_module_s_arguments() -> None:
    parser = build_parser()
    for command in DELEGATED:
        operands = {"detach": ["01:00.0"], "attach": ["01:00.0"], "init": ["vm"],
                    "gpu": ["vm"], "export": ["vm", "--libvirt"]}
        args = parser.parse_args([command.name, *operands.get(command.name, [])])
        assert args.handler == command.run
    assert parser.parse_args(["doctor", "--json", "--qemu", "q"]).qemu == "q"
    assert parser.parse_args(["detach", "--dry-run", "01:00.0"]).dry_run is True


def test_help_for_a_delegated_subcommand_shows_its_options(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["doctor", "--help"])
    assert "--qemu BINARY" in capsys.readouterr().out


# ------------------------------------------------------------------ switch


async def test_switch_to_a_session_without_input_forwarding_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """The session answers code unknown-command (no `switch` registered), whatever the text."""

    async def status(message: Mapping[str, Any]) -> JsonObject:
        return {"phase": "running"}

    commands = ControlCommands()
    commands.register("status", status)
    monkeypatch.setenv("HANDOFF_RUN_DIR", str(tmp_path))
    (tmp_path / "vm").mkdir()
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, tmp_path / "vm" / "control.sock", commands)
        status_code = await trio.to_thread.run_sync(main, ["switch", "vm"])
        nursery.cancel_scope.cancel()
    assert status_code == 2
    err = capsys.readouterr().err
    assert err.startswith("handoff: the session 'vm' does not hand off keyboard and mouse\n")
    assert 'input.backend = "qmp"' in err


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
