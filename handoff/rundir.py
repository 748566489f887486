"""A session's run directory and the lock that makes a profile run only once.

``<run>/<profile name>/`` (HostPaths.session_dir) is created 0700: it holds
the control socket, QEMU's log, a VNC socket, the GPU journal. Only the
session's owner can reach anything in it, so nothing there needs its own
access control and nothing listens on a network port.

The lock is ``flock(LOCK_EX | LOCK_NB)`` on ``lock`` in that directory; the
kernel drops it when the supervisor dies however it dies, so a stale lock
never blocks the next run. The holder writes its pid into the file so a
refused second run can say who holds it. Because cleanup unlinks the lock
file, a locker re-checks after flock that the path still names the inode it
locked (else it locked a file already removed, and tries again).

Cleanup removes the files the session made (:data:`SESSION_FILES`) and then
the directory only if it is empty: a journal another part left behind (a
device that could not be returned) stays for ``handoff recover``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from handoff.errors import SessionBusyError, SessionError
from handoff.host import HostPaths

__all__ = [
    "CONTROL_SOCKET",
    "LOCK_FILE",
    "QEMU_LOG",
    "SESSION_FILES",
    "RunDir",
    "holder_pid",
]

LOCK_FILE = "lock"
CONTROL_SOCKET = "control.sock"
QEMU_LOG = "qemu.log"
VNC_SOCKET = "vnc.sock"
QMP_SOCKET = "qmp.sock"

#: What a session creates in its run directory and removes on the way out.
SESSION_FILES = (CONTROL_SOCKET, QEMU_LOG, VNC_SOCKET, QMP_SOCKET, LOCK_FILE)

_LOCK_ATTEMPTS = 5


def holder_pid(directory: Path) -> int | None:
    """The pid recorded in a run directory's lock file, if readable."""
    try:
        text = (directory / LOCK_FILE).read_text().strip()
    except OSError:
        return None
    return int(text) if text.isdigit() else None


def _make_private_dir(path: Path) -> None:
    """Create ``path`` 0700 (parents 0755), or check an existing one is ours and private."""
    path.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise SessionError(
            f"{path} exists and is not a directory",
            fix=f"remove {path}",
        )
    if info.st_uid != os.geteuid():
        raise SessionError(
            f"{path} belongs to uid {info.st_uid}, not to you (uid {os.geteuid()})",
            fix=f"run handoff as the owner of {path}, or remove it",
        )
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)


@dataclass
class RunDir:
    """A locked, private run directory. Create with :meth:`acquire`; :meth:`release` undoes."""

    path: Path
    _lock_fd: int | None = field(default=None, repr=False)

    @classmethod
    def acquire(cls, paths: HostPaths, profile_name: str) -> RunDir:
        """Create and lock the profile's run directory.

        Raises :class:`SessionBusyError` naming the pid of the supervisor that
        already runs this profile.
        """
        path = paths.session_dir(profile_name)
        try:
            _make_private_dir(path)
        except PermissionError as exc:
            raise SessionError(
                f"cannot create the run directory {path}: {exc.strerror}",
                fix=f"run as root, or set HANDOFF_RUN_DIR to a directory you own "
                f"(now {paths.run})",
            ) from exc
        lock_path = path / LOCK_FILE
        for _ in range(_LOCK_ATTEMPTS):
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                os.close(fd)
                if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
                    raise
                pid = holder_pid(path)
                who = f"pid {pid}" if pid else "another handoff process"
                raise SessionBusyError(
                    f"profile {profile_name!r} is already running ({who} holds {lock_path})",
                    fix=f"use `handoff status {profile_name}` / `handoff stop {profile_name}`, "
                    "or wait for that session to end",
                ) from None
            try:
                same = os.fstat(fd).st_ino == os.stat(lock_path).st_ino
            except FileNotFoundError:
                same = False
            if not same:  # locked a file a finishing session just unlinked
                os.close(fd)
                continue
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            return cls(path=path, _lock_fd=fd)
        raise SessionError(f"could not lock {lock_path}: it keeps being replaced")

    @property
    def control_socket(self) -> Path:
        return self.path / CONTROL_SOCKET

    @property
    def qemu_log(self) -> Path:
        return self.path / QEMU_LOG

    @property
    def vnc_socket(self) -> Path:
        return self.path / VNC_SOCKET

    @property
    def locked(self) -> bool:
        return self._lock_fd is not None

    def release(self) -> bool:
        """Remove the session's files, unlock, remove the directory if empty.

        Returns True when the directory is gone, False when something else
        (a journal) was left in it on purpose. Idempotent.
        """
        for name in SESSION_FILES:
            if name == LOCK_FILE:
                continue
            with contextlib.suppress(FileNotFoundError):
                (self.path / name).unlink()
        if self._lock_fd is not None:
            # Unlink while still holding the lock, so nobody locks the old inode.
            with contextlib.suppress(FileNotFoundError):
                (self.path / LOCK_FILE).unlink()
            os.close(self._lock_fd)
            self._lock_fd = None
        try:
            self.path.rmdir()
        except FileNotFoundError:
            return True
        except OSError as exc:
            if exc.errno == errno.ENOTEMPTY:
                return False
            raise
        return True
