"""systemd and logind for the display hand-over: stop/start units, read cgroups.

Every call goes through a :class:`Runner` (argv -> exit status and stdout),
so the unit tests record the exact systemctl command lines and
answer them; :class:`SubprocessRunner` is the real one. Also the system
journal report (``logger``) of a display that could not be restored.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from handoff.display.where import WhereFacts
from handoff.host import HostPaths

#: Seconds a systemctl call may take (a stop waits for the unit).
SYSTEMCTL_TIMEOUT = 120.0
#: logind's session state files.
SESSIONS = Path("/run/systemd/sessions")
#: logind session types that own a display.
GRAPHICAL_TYPES = frozenset({"x11", "wayland", "mir"})


@dataclass(frozen=True)
class Ran:
    status: int
    stdout: str


class Runner(Protocol):
    def __call__(self, argv: Sequence[str]) -> Ran: ...


class SubprocessRunner:
    """Runs the command for real (no shell), output captured, bounded."""

    def __call__(self, argv: Sequence[str]) -> Ran:
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Ran(127, str(exc))
        return Ran(done.returncode, done.stdout)


def show(runner: Runner, unit: str, *props: str) -> dict[str, str]:
    """``systemctl show UNIT -p A -p B``: the properties as a dict (empty on failure)."""
    argv = ["systemctl", "show", unit]
    for prop in props:
        argv += ["-p", prop]
    ran = runner(argv)
    if ran.status != 0:
        return {}
    values: dict[str, str] = {}
    for line in ran.stdout.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            values[key] = value
    return values


def unit_exists(runner: Runner, unit: str) -> bool:
    return show(runner, unit, "LoadState").get("LoadState") not in (None, "not-found")


def is_active(runner: Runner, unit: str) -> bool:
    return runner(["systemctl", "is-active", "--quiet", unit]).status == 0


def stop_units(runner: Runner, units: Sequence[str]) -> Ran:
    return runner(["systemctl", "stop", *units])


def start_units(runner: Runner, units: Sequence[str]) -> Ran:
    return runner(["systemctl", "start", *units])


def own_cgroup(paths: HostPaths) -> str:
    """This process's cgroup (v2: the ``0::`` line of /proc/self/cgroup; v1: name=systemd)."""
    try:
        text = (paths.proc / "self" / "cgroup").read_text(encoding="utf-8")
    except OSError:
        return ""
    fallback = ""
    for line in text.splitlines():
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        if hierarchy == "0" and not controllers:
            return path
        if controllers == "name=systemd":
            fallback = path
    return fallback


def graphical_cgroups(sessions: Path = SESSIONS) -> list[str]:
    """The cgroups of logind's graphical sessions (TYPE x11/wayland/mir).

    Read from logind's own state files (``/run/systemd/sessions/ID``: TYPE=,
    SCOPE=, UID=), not loginctl: no D-Bus call, nothing activated on a host
    without logind (no sessions then).
    """
    try:
        entries = sorted(sessions.iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        if entry.suffix:  # ID.ref pipes and other helpers
            continue
        try:
            text = entry.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        props = dict(line.partition("=")[::2] for line in text.splitlines())
        if props.get("TYPE") in GRAPHICAL_TYPES and props.get("SCOPE") and props.get("UID"):
            uid = props["UID"]
            found.append(f"/user.slice/user-{uid}.slice/{props['SCOPE']}")
    return found


def where_facts(
    paths: HostPaths, runner: Runner, units: Sequence[str], environ: Mapping[str, str],
    sessions: Path = SESSIONS,
) -> WhereFacts:
    """What :func:`handoff.display.where.where_refusal` decides from."""
    return WhereFacts(
        own_cgroup=own_cgroup(paths),
        unit_cgroups={u: show(runner, u, "ControlGroup").get("ControlGroup") for u in units},
        graphical_cgroups=tuple(graphical_cgroups(sessions)),
        display_env=environ.get("WAYLAND_DISPLAY") or environ.get("DISPLAY") or None,
    )


def system_journal(runner: Runner, text: str) -> None:
    """One error-priority entry in the system journal (syslog), tagged handoff."""
    runner(["logger", "--tag", "handoff", "--priority", "daemon.err", "--", text])
