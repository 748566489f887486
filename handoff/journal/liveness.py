"""The boot id and process liveness: whether what a journal records is still there.

A journal from another boot is stale (the reboot reset every binding and
setting); a recorded process (QEMU) is the same process only if its pid
exists with the recorded start time, so a recycled pid is not mistaken for it.
"""

from __future__ import annotations

from handoff.base.errors import JournalError
from handoff.base.host import HostPaths


def read_boot_id(paths: HostPaths) -> str:
    """This boot's random id: journals from another boot are stale."""
    path = paths.proc / "sys" / "kernel" / "random" / "boot_id"
    try:
        text = path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        text = ""
    if not text:
        raise JournalError(
            f"cannot read {path}",
            fix="mount /proc (handoff needs it to recognise journals from an earlier boot)",
        )
    return text


def process_start_time(paths: HostPaths, pid: int) -> int | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks), None if the pid is gone."""
    try:
        text = (paths.proc / str(pid) / "stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return None
    try:
        fields = text[text.rindex(")") + 2 :].split()
        return int(fields[19])
    except (ValueError, IndexError):
        return None


def process_alive(paths: HostPaths, pid: int, start_time: int | None) -> bool:
    """Whether ``pid`` still runs and is the process recorded (same start time, if known)."""
    if not (paths.proc / str(pid)).exists():
        return False
    if start_time is None:
        return True
    now = process_start_time(paths, pid)
    return now is None or now == start_time
