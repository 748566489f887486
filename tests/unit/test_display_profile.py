"""[host_display] handover/stop_units and the input side it defaults to (pure parse/render)."""

from __future__ import annotations

from pathlib import Path

from handoff.profile import InputMode, parse_profile, profile_to_toml

SOURCE = Path("/etc/handoff/profiles/single.toml")
SINGLE = """
[vm]
name = "single"
memory = "4G"
[[passthrough]]
address = "0000:00:02.0"
[host_display]
handover = true
stop_units = ["display-manager.service", "fake-dm.service"]
[input]
backend = "virtio"
"""


def test_handover_and_units_are_read() -> None:
    profile = parse_profile(SINGLE, SOURCE)
    assert profile.host_display.handover is True
    assert profile.host_display.stop_units == ("display-manager.service", "fake-dm.service")


def test_input_starts_in_the_guest_with_handover_and_on_the_host_without() -> None:
    assert parse_profile(SINGLE, SOURCE).input.start_in is InputMode.GUEST
    plain = SINGLE.replace("handover = true", "handover = false").replace(
        'stop_units = ["display-manager.service", "fake-dm.service"]', ""
    )
    assert parse_profile(plain, SOURCE).input.start_in is InputMode.HOST
    explicit = SINGLE + 'start_in = "host"\n'
    assert parse_profile(explicit, SOURCE).input.start_in is InputMode.HOST


def test_a_handover_profile_round_trips_with_its_start_side() -> None:
    for text in (SINGLE, SINGLE + 'start_in = "host"\n'):
        profile = parse_profile(text, SOURCE)
        assert parse_profile(profile_to_toml(profile), SOURCE) == profile


def test_without_the_section_the_host_keeps_its_display() -> None:
    profile = parse_profile('[vm]\nname = "w"\nmemory = "1G"\n', SOURCE)
    assert profile.host_display.handover is False
    assert profile.host_display.stop_units == ()
