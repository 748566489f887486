"""logind and cgroups for the display hand-over: where the supervisor runs.

systemctl itself (units stopped and started, the system journal report) is
:mod:`handoff.base.systemctl`'s, the one systemd edge; this module reads this
process's cgroup and logind's graphical sessions for
:func:`handoff.display.where.where_refusal`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from handoff.base.host import HostPaths
from handoff.base.systemctl import Runner, show
from handoff.display.where import WhereFacts

#: logind session types that own a display.
GRAPHICAL_TYPES = frozenset({"x11", "wayland", "mir"})


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


def graphical_cgroups(paths: HostPaths) -> list[str]:
    """The cgroups of logind's graphical sessions (TYPE x11/wayland/mir).

    Read from logind's own state files (``/run/systemd/sessions/ID``: TYPE=,
    SCOPE=, UID=), not loginctl: no D-Bus call, nothing activated on a host
    without logind (no sessions then).
    """
    try:
        entries = sorted(paths.logind.iterdir())
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
) -> WhereFacts:
    """What :func:`handoff.display.where.where_refusal` decides from."""
    return WhereFacts(
        own_cgroup=own_cgroup(paths),
        unit_cgroups={u: show(runner, u, "ControlGroup").get("ControlGroup") for u in units},
        graphical_cgroups=tuple(graphical_cgroups(paths)),
        display_env=environ.get("WAYLAND_DISPLAY") or environ.get("DISPLAY") or None,
    )
