"""Where a single-GPU session may run: never inside what stopping the display kills. Pure.

Stopping the display manager stops its unit's whole cgroup, and with it
the graphical session and every program started from it (a terminal
emulator, the shell in it, a handoff started there). A supervisor killed
halfway leaves the host without its screen and nobody to bring it back,
so such a run is refused before any change, saying how to run it instead.
The facts (this process's cgroup, each unit's ControlGroup, the graphical
sessions' scopes, whether a display server is in the environment) come
from :mod:`handoff.display.units`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class WhereFacts:
    own_cgroup: str  # /proc/self/cgroup's path (cgroup v2 "0::" line)
    unit_cgroups: Mapping[str, str | None]  # stop_units -> ControlGroup ("" / None: not running)
    graphical_cgroups: Sequence[str] = ()  # scopes of graphical logind sessions
    display_env: str | None = None  # WAYLAND_DISPLAY or DISPLAY when set


def _inside(cgroup: str, parent: str) -> bool:
    parent = parent.rstrip("/")
    return bool(parent) and (cgroup == parent or cgroup.startswith(parent + "/"))


def how_to_run(profile: str) -> str:
    return (
        f"start it as a service: `systemctl start handoff@{profile}` (contrib/systemd/"
        "handoff@.service), or run it from a text console (Ctrl+Alt+F3) or over SSH"
    )


def where_refusal(facts: WhereFacts, profile: str) -> tuple[str, str] | None:
    """(reason, fix) when this supervisor would die with the display; None when it may run."""
    for unit, cgroup in facts.unit_cgroups.items():
        if cgroup and _inside(facts.own_cgroup, cgroup):
            return (
                f"handoff runs inside {unit}'s cgroup ({facts.own_cgroup}); stopping {unit} "
                "for the hand-over would kill it halfway, leaving the host without a display",
                how_to_run(profile),
            )
    for cgroup in facts.graphical_cgroups:
        if _inside(facts.own_cgroup, cgroup):
            return (
                f"handoff runs inside a graphical session ({cgroup}), which ends when the "
                "display is handed over",
                how_to_run(profile),
            )
    if facts.display_env:
        return (
            f"handoff runs from a graphical session (its environment has a display: "
            f"{facts.display_env}), which ends when the display is handed over",
            how_to_run(profile),
        )
    return None
