"""Durable, atomic journal files under ``<run>/journal/``: the one writer.

Every journal write (GPU, tuning, live, display) goes through
:func:`write_atomic`: a temp file, fsync, rename over the old file, fsync
of the directory, so a crash leaves either the old or the new record,
never half of one. On tmpfs/ramfs (the default /run/handoff) the fsyncs are
skipped: there is nothing to flush, and a power cut clears the journal
together with the state it records; the rename, which is what makes a save
atomic, always stays.

Test-only fault injection: with ``HANDOFF_TEST_CRASH_AFTER_JOURNAL_WRITE=N``
the process SIGKILLs itself right after its N-th journal write, whichever
capability wrote it (the realkernel crash-recovery tests).
"""

from __future__ import annotations

import functools
import json
import os
import signal
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from handoff.base.errors import JournalError
from handoff.base.host import HostPaths

#: Fault injection for the crash-recovery tests (realkernel). Never set it outside tests.
CRASH_AFTER_ENV = "HANDOFF_TEST_CRASH_AFTER_JOURNAL_WRITE"

T = TypeVar("T")


def journal_dir(paths: HostPaths) -> Path:
    """``<run>/journal``: the device and setting journals (capabilities may add sub-dirs)."""
    return paths.run / "journal"


def locks_dir(paths: HostPaths) -> Path:
    return paths.run / "locks"


def list_files(directory: Path) -> list[Path]:
    """The ``*.json`` journals directly in ``directory`` (sub-directories are not read)."""
    try:
        return sorted(p for p in directory.iterdir() if p.suffix == ".json")
    except FileNotFoundError:
        return []


def read_record(
    path: Path, version: int, build: Callable[[dict[str, Any]], T], *, what: str, fix: str
) -> T:
    """``build`` of the JSON record at ``path`` after checking its ``version``: the one
    loader. An unreadable file, a wrong version or a missing or mistyped key is a
    :class:`JournalError` naming ``what`` and the file, with ``fix``."""
    try:
        return build(_versioned(json.loads(path.read_text(encoding="utf-8")), version))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise JournalError(f"cannot read {what} {path}: {exc}", fix=fix) from exc


def _versioned(data: Any, version: int) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise TypeError("not a JSON object")
    if data.get("version") != version:
        raise ValueError(f"version {data.get('version')!r}, expected {version}")
    return data


def write_atomic(path: Path, data: Mapping[str, Any], *, what: str, proc: Path) -> None:
    """Replace ``path`` with ``data`` as JSON: temp + fsync + rename + fsync(dir).

    ``what`` names the journal for people ("the hand-off journal"); ``proc``
    is the /proc whose mountinfo tells whether the directory is volatile.
    """
    directory = path.parent
    tmp = directory / f".{path.name}.tmp"
    encoded = json.dumps(data, separators=(",", ":")).encode()
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        durable = not volatile(str(directory), str(proc / "self" / "mountinfo"))
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, encoded)
            if durable:
                os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        if durable:
            _fsync_dir(directory)
    except OSError as exc:
        raise JournalError(
            f"cannot write {what} {path}: {exc}",
            fix=f"make {directory} writable (it is on tmpfs under the run directory) "
            "and free some space",
        ) from exc
    _count_write()


def remove_file(path: Path, *, what: str) -> None:
    """Delete a journal whose every change was undone (absent: nothing to do)."""
    try:
        path.unlink()
        _fsync_dir(path.parent)
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise JournalError(
            f"cannot delete {what} {path}: {exc}",
            fix=f"delete it by hand once the host is back as it was: rm {path}",
        ) from exc


_VOLATILE_FS = frozenset({"tmpfs", "ramfs"})


@functools.lru_cache(maxsize=8)
def volatile(directory: str, mountinfo: str) -> bool:
    """Whether ``directory`` is on tmpfs/ramfs, by the longest mount point holding it."""
    best, fstype = "", ""
    try:
        with open(mountinfo, encoding="utf-8", errors="replace") as mounts:
            for line in mounts:
                fields = line.split()
                point = fields[4].replace("\\040", " ")
                fs = fields[fields.index("-") + 1]
                inside = directory == point or directory.startswith(point.rstrip("/") + "/")
                if inside and len(point) >= len(best):
                    best, fstype = point, fs
    except (OSError, ValueError, IndexError):
        return False
    return fstype in _VOLATILE_FS


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class _Crash:
    """Test-only: SIGKILL after the N-th journal write of this process (read once)."""

    limit = int(os.environ.get(CRASH_AFTER_ENV) or 0)
    count = 0


def _count_write() -> None:
    if not _Crash.limit:
        return
    _Crash.count += 1
    if _Crash.count >= _Crash.limit:
        os.kill(os.getpid(), signal.SIGKILL)
