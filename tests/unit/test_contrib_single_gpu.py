"""contrib for single-GPU hosts: the unit's stop timeout with the display resource, and
the desktop entry that starts the unit (never the VM inside the desktop session)."""

from __future__ import annotations

import configparser
from pathlib import Path

from handoff.session import ladder
from handoff.session import supervisor as session

CONTRIB = Path(__file__).resolve().parents[2] / "contrib"
UNIT = CONTRIB / "systemd" / "handoff@.service"
DESKTOP = CONTRIB / "desktop" / "handoff-vm.desktop"


def test_the_units_stop_timeout_covers_the_ladder_and_four_releases() -> None:
    # display, GPU, input and tuning: a single-GPU profile with everything.
    worst_case = (
        120.0 + ladder.QUIT_TIMEOUT + ladder.SIGTERM_TIMEOUT
        + ladder.SIGTERM_TIMEOUT_PER_DEVICE * 8 + ladder.SIGKILL_TIMEOUT
        + session.RELEASE_TIMEOUT * 4
    )
    values = [line.split("=", 1)[1] for line in UNIT.read_text().splitlines()
              if line.startswith("TimeoutStopSec=")]
    assert values == ["520"]
    assert float(values[0]) > worst_case


def test_the_desktop_entry_starts_the_unit() -> None:
    entry = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read_string(DESKTOP.read_text())
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    assert section["Exec"] == "systemctl start handoff@win10.service"
    assert section["Terminal"] == "false"


SWITCH = CONTRIB / "desktop" / "handoff-switch.desktop"


def test_the_switch_shortcut_runs_a_command_handoff_parses_as_switch() -> None:
    import shlex

    from handoff.cli.main import build_parser

    entry = configparser.ConfigParser(interpolation=None, comment_prefixes=("#",))
    entry.optionxform = str  # type: ignore[assignment,method-assign]
    entry.read_string(SWITCH.read_text())
    section = entry["Desktop Entry"]
    assert section["Type"] == "Application"
    argv = shlex.split(section["Exec"])
    assert argv[0] == "handoff"
    args = build_parser().parse_args(argv[1:])
    assert (args.command, args.profile, args.to) == ("switch", "win10", "toggle")
    comment = SWITCH.read_text()
    assert "gsettings set $k command 'handoff switch win10'" in comment
