"""How a session ended, as a person and a shell read it. Pure.

:class:`ExitStatus` is the supervisor's exit code: 0 when the guest powered
off or the session was stopped on request and QEMU went cleanly; 128 + N when
signal N (SIGINT, SIGTERM, SIGHUP) ended it; 1 when the end was abnormal
(QEMU crashed or was killed, the guest panicked, QEMU needed SIGKILL); 2 for a
HandoffError. :func:`classify_end` turns QEMU's exit and its last SHUTDOWN
event into that status and one sentence; :func:`launch_failure_fix` reads a
QEMU that died before its monitor answered (its log tail) and says what to
do, blaming the profile only when the log points at it.

Nothing here does I/O: the session passes in what it observed.
"""

from __future__ import annotations

import enum
import re
import signal
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import PurePath
from typing import Any

__all__ = [
    "ExitStatus",
    "StopRequest",
    "classify_end",
    "describe_exit",
    "launch_failure_fix",
]


class ExitStatus(enum.IntEnum):
    """The supervisor's exit codes (also the CLI's for `handoff run`)."""

    OK = 0
    ABNORMAL = 1
    ERROR = 2  # a HandoffError: nothing ran or a user-fixable failure
    SIGHUP = 128 + signal.SIGHUP
    SIGINT = 128 + signal.SIGINT
    SIGTERM = 128 + signal.SIGTERM


@dataclass(frozen=True)
class StopRequest:
    """Why the session was asked to stop: ``signal`` (SIGINT...) or ``control``."""

    source: str
    signal_number: int | None = None

    @property
    def label(self) -> str:
        if self.signal_number is not None:
            return signal.Signals(self.signal_number).name
        return self.source


def describe_exit(returncode: int) -> str:
    """'exited with status 1' / 'was killed by SIGKILL' (Popen's negative codes)."""
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with status {returncode}"


_DENIED = re.compile(r"Permission denied|Operation not permitted")
_PATH = re.compile(r"(/[^\s':,\"]+)")
_MEMLOCK = re.compile(r"VFIO_MAP_DMA|vfio_pin_pages|vfio_dma_map|pin.*Cannot allocate memory")
_BUSY = re.compile(r"Device or resource busy")
#: Nodes handoff itself gives QEMU's user for the session (run dir, vfio, input proxies).
_HANDOFF_NODES = ("/dev/vfio/", "/dev/input/")
_PROFILE_FIX = (
    "the log above names the option or file QEMU rejected; fix the profile "
    "(`handoff argv PROFILE` prints the command)"
)


def _first_path(line: str) -> str | None:
    match = _PATH.search(line)
    return match[1] if match else None


def launch_failure_fix(
    returncode: int, log_tail: str, *, user: str | None, run_dir: PurePath | str
) -> str:
    """Pure: the fix for QEMU dying before its monitor answered, from how and why it died.

    Says "fix the profile" only when the log points at the profile (an option
    or file QEMU rejected); a signal, a refused handoff-made path, memlock or
    a busy device are not the profile's fault.
    """
    if returncode < 0:
        return (
            f"QEMU {describe_exit(returncode)} from outside handoff while it started (the "
            "profile is not at fault): find what sent it (`dmesg` shows the OOM killer) "
            "and run again"
        )
    lines = log_tail.splitlines()
    denied = next((line for line in lines if _DENIED.search(line)), None)
    if denied is not None:
        return _denied_fix(_first_path(denied), user, str(run_dir))
    if any(_MEMLOCK.search(line) for line in lines):
        return (
            "QEMU could not pin guest RAM for the passthrough device: raise its memlock "
            "limit (contrib/limits.d/handoff-memlock.conf; `handoff doctor PROFILE` checks it)"
        )
    if any(line.startswith("swtpm: Error") for line in lines):
        return (
            "swtpm could not start the VM's TPM from its state ([tpm] state; the lines above "
            "say why): restore the state directory from a backup, or move it away to give the "
            "guest a new, empty TPM (what the guest sealed in the old one is lost)"
        )
    busy = next((line for line in lines if _BUSY.search(line)), None)
    if busy is not None:
        what = _first_path(busy) or "a passthrough device"
        return (
            f"another process holds {what}: stop it (`handoff doctor PROFILE` names the "
            "holder) and run again"
        )
    return _PROFILE_FIX


def _denied_fix(path: str | None, user: str | None, run_dir: str) -> str:
    what = path or "a file"
    if user is None:
        return f"QEMU was refused {what}: check its permissions (`namei -l {what}`)"
    if path is not None and path.startswith(run_dir.rstrip("/") + "/"):
        return (
            f"QEMU runs as {user!r} (vm.user) and cannot reach {what} under handoff's run "
            "directory: "
            f"every directory above it must be searchable by {user} (`namei -l {what}`); "
            "set HANDOFF_RUN_DIR to such a place (the default /run/handoff is). The profile "
            "is not at fault"
        )
    if path is not None and path.startswith(_HANDOFF_NODES):
        return (
            f"handoff gives {what} to QEMU's user {user!r} (vm.user) for the session, yet "
            f"QEMU was refused it: something changed its owner or mode meanwhile (a udev "
            f"rule with OWNER= or MODE=? `ls -l {what}`). The profile is not at fault"
        )
    return (
        f"QEMU runs as {user!r} (vm.user) and was refused {what}: give {user} access to "
        f"it (chown or setfacl, and search permission on the directories above it), or "
        "remove vm.user from the profile"
    )


def classify_end(
    returncode: int,
    shutdown: Mapping[str, Any] | None,
    stop: StopRequest | None,
    *,
    killed_by_ladder: bool = False,
    panicked: bool = False,
) -> tuple[int, str]:
    """(exit status, explanation) from how QEMU ended. Pure.

    ``shutdown`` is the data of QEMU's last SHUTDOWN event (``guest``,
    ``reason``), ``stop`` what asked the session to stop, ``killed_by_ladder``
    whether the ladder had to send SIGKILL.
    """
    how = f"QEMU {describe_exit(returncode)}"
    reason = str(shutdown.get("reason", "")) if shutdown else ""
    if stop is not None and stop.signal_number is not None:
        status = 128 + stop.signal_number
        extra = " (it had to be killed)" if killed_by_ladder else ""
        return status, f"stopped on {stop.label}; {how}{extra}"
    if killed_by_ladder:
        return ExitStatus.ABNORMAL, f"{how}: it ignored quit and SIGTERM and had to be killed"
    if stop is not None:
        if reason == "guest-shutdown":
            return ExitStatus.OK, "stopped on request: the guest powered off"
        return ExitStatus.OK, f"stopped on request; {how}"
    if panicked or reason == "guest-panic":
        return ExitStatus.ABNORMAL, f"the guest panicked; {how}"
    if returncode < 0:
        return ExitStatus.ABNORMAL, f"{how}: QEMU crashed or was killed from outside handoff"
    if returncode > 0:
        return ExitStatus.ABNORMAL, f"{how} on its own: QEMU failed"
    if reason == "guest-shutdown":
        return ExitStatus.OK, "the guest powered off"
    if reason == "host-qmp-quit":
        return ExitStatus.OK, "QEMU quit on a QMP request"
    if reason == "host-signal":
        return ExitStatus.ABNORMAL, "QEMU was stopped by a signal from outside handoff"
    if shutdown is not None and shutdown.get("guest"):
        return ExitStatus.OK, f"the guest ended the VM ({reason})"
    return ExitStatus.ABNORMAL, f"{how} without a shutdown event"
