"""systemctl and logger: the one edge every capability talks to systemd through.

Every call goes through a :class:`Runner` (argv -> :class:`Ran`), so the unit
tests record the exact command lines and answer them;
:class:`SubprocessRunner` is the real one and never raises (a command that
cannot start is status 127, its reason in ``stderr``). Queries whose failure
is an answer (:func:`show`, :func:`is_active`) return it; changes that must
happen (:func:`set_allowed_cpus`) raise :class:`handoff.base.errors.SystemdError`
with the command, its status and what systemd said. The display hand-over
stops and starts units and reports to the system journal; the tuning reads
and sets units' AllowedCPUs=.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from handoff.base.errors import SystemdError

#: Seconds a systemctl call may take (a stop waits for the unit; PID 1 may be busy).
SYSTEMCTL_TIMEOUT = 120.0


@dataclass(frozen=True)
class Ran:
    """A finished command: its exit status and output."""

    status: int
    stdout: str
    stderr: str = ""


class Runner(Protocol):
    def __call__(self, argv: Sequence[str]) -> Ran: ...


class SubprocessRunner:
    """Runs the command for real (no shell), output captured, bounded; never raises."""

    def __call__(self, argv: Sequence[str]) -> Ran:
        try:
            done = subprocess.run(
                list(argv), capture_output=True, text=True, timeout=SYSTEMCTL_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return Ran(127, "", str(exc))
        return Ran(done.returncode, done.stdout, done.stderr)


def checked(runner: Runner, argv: Sequence[str], *, fix: str) -> str:
    """Run ``argv``; its stdout, or a SystemdError naming the command, status and stderr."""
    ran = runner(argv)
    if ran.status != 0:
        said = ran.stderr.strip() or ran.stdout.strip() or "no output"
        raise SystemdError(
            f"{' '.join(argv)} failed ({ran.status}): {said}", fix=fix,
            argv=tuple(argv), status=ran.status,
        )
    return ran.stdout


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


def system_journal(runner: Runner, text: str) -> None:
    """One error-priority entry in the system journal (syslog), tagged handoff."""
    runner(["logger", "--tag", "handoff", "--priority", "daemon.err", "--", text])


_ISOLATE_FIX = (
    "run handoff as root on a host whose PID 1 is systemd; or set cpu.isolate = false"
)


def allowed_cpus(runner: Runner, unit: str) -> str:
    """The unit's AllowedCPUs= as systemd holds it ("" when unset: every CPU); raises."""
    argv = ["systemctl", "show", "-p", "AllowedCPUs", "--value", unit]
    return checked(runner, argv, fix=_ISOLATE_FIX).strip()


def set_allowed_cpus(runner: Runner, unit: str, value: str) -> None:
    """``systemctl set-property --runtime UNIT AllowedCPUs=VALUE``; raises SystemdError."""
    argv = ["systemctl", "set-property", "--runtime", unit, f"AllowedCPUs={value}"]
    checked(runner, argv, fix=_ISOLATE_FIX)


def active_state(runner: Runner, unit: str) -> str:
    """The unit's ActiveState ("active", "inactive", ...); raises SystemdError."""
    argv = ["systemctl", "show", "-p", "ActiveState", "--value", unit]
    return checked(runner, argv, fix=_ISOLATE_FIX).strip()
