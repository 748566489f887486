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

QEMU may run as an unprivileged user (``vm.user``) who cannot create
anything in a root-owned 0700 directory, yet QEMU itself creates its
listening sockets (VNC, the input monitor ``input.qmp``; the virtio proxies'
links ``keyboard.evdev``/``mouse.evdev`` go there too). Those go into
``<run>/qemu/<profile name>/`` (:func:`qemu_socket_dir`), a 0700 directory
owned by the user QEMU runs as, *beside* the run directory rather than in
it: every socket lives in a 0700 directory of its owner, and QEMU's user can
reach neither the lock, the control socket nor the GPU journal.
``<run>/qemu`` itself is 0755, like ``<run>``; profile names may not be
``qemu`` or ``journal`` (:data:`RESERVED_NAMES`).

Cleanup removes the files the session made (:data:`SESSION_FILES`, QEMU's
socket directory and its sockets) and then the directory only if it is
empty: a journal another part left behind (a device that could not be
returned) stays for ``handoff recover``.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from handoff.base.errors import SessionBusyError, SessionError
from handoff.base.host import HostPaths, qemu_account
from handoff.base.run_layout import (
    CONTROL_SOCKET,
    INPUT_MONITOR,
    JOURNAL_DIR,
    KEYBOARD_LINK,
    LOCK_FILE,
    MOUSE_LINK,
    QEMU_DIR,
    QEMU_LOG,
    VNC_SOCKET,
    input_monitor_path,
    qemu_socket_dir,
)
from handoff.profile.model import RESERVED_NAMES

__all__ = [
    "CONTROL_SOCKET",
    "INPUT_MONITOR",
    "JOURNAL_DIR",
    "LOCK_FILE",
    "QEMU_DIR",
    "QEMU_LOG",
    "QEMU_SOCKETS",
    "SESSION_FILES",
    "RunDir",
    "holder_pid",
    "input_monitor_path",
    "qemu_socket_dir",
]

#: What a session creates in its run directory and removes on the way out
#: (QEMU's own sockets, :data:`QEMU_SOCKETS`, go with the ``qemu/`` directory).
SESSION_FILES = (CONTROL_SOCKET, QEMU_LOG, LOCK_FILE)
#: What lives in ``qemu/``: QEMU's listening sockets and the virtio proxies' links.
QEMU_SOCKETS = (VNC_SOCKET, INPUT_MONITOR, KEYBOARD_LINK, MOUSE_LINK)


_LOCK_ATTEMPTS = 5


@dataclass(frozen=True)
class LockHolder:
    """What a lock file records of its holder: ``<pid> <owner>``."""

    pid: int | None
    owner: str

    def describe(self) -> str:
        who = f"pid {self.pid}" if self.pid is not None else "unknown pid"
        return f"{who} ({self.owner})" if self.owner else who


def flock_nowait(path: Path) -> int | None:
    """Open (0600, created) and ``flock(LOCK_EX | LOCK_NB)`` ``path``: the fd, or None when
    another live process holds it (the kernel drops a flock when its holder dies)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN):
            raise
        return None
    return fd


def record_holder(fd: int, owner: str) -> None:
    """Write ``<this pid> <owner>`` into a lock file this process holds."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()} {owner}\n".encode(), 0)


def read_holder(path: Path) -> LockHolder | None:
    """The holder a lock file records, None when it is unreadable or empty."""
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return None
    pid, _, owner = text.partition(" ")
    if not text:
        return None
    return LockHolder(int(pid) if pid.isdigit() else None, owner.strip())


def holder_pid(directory: Path) -> int | None:
    """The pid recorded in a run directory's lock file, if readable."""
    holder = read_holder(directory / LOCK_FILE)
    return holder.pid if holder is not None else None


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
    def acquire(
        cls, paths: HostPaths, profile_name: str, *, qemu_user: str | None = None
    ) -> RunDir:
        """Create and lock the profile's run directory (and ``qemu/`` for ``qemu_user``).

        Raises :class:`SessionBusyError` naming the pid of the supervisor that
        already runs this profile.
        """
        if profile_name in RESERVED_NAMES:
            raise SessionError(
                f"the profile name {profile_name!r} is reserved: {paths.run / profile_name} "
                "holds other sessions' files",
                fix=f"rename the profile (vm.name = \"{profile_name}-vm\")",
            )
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
            fd = flock_nowait(lock_path)
            if fd is None:
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
            record_holder(fd, f"handoff run {profile_name}")
            rundir = cls(path=path, _lock_fd=fd)
            try:
                rundir._make_qemu_dir(qemu_user)
            except BaseException:
                rundir.release()
                raise
            return rundir
        raise SessionError(f"could not lock {lock_path}: it keeps being replaced")

    def _make_qemu_dir(self, user: str | None) -> None:
        qemu_dir = self.qemu_dir
        _remove_tree_of_sockets(qemu_dir)  # a crashed session's leftovers
        for _ in range(_LOCK_ATTEMPTS):
            qemu_dir.parent.mkdir(mode=0o755, exist_ok=True)
            try:
                qemu_dir.mkdir(mode=0o700)
                break
            except FileNotFoundError:  # another session's release removed the empty parent
                continue
        os.chmod(qemu_dir, 0o700)
        if user is not None:
            entry = qemu_account(user)
            os.chown(qemu_dir, entry.pw_uid, entry.pw_gid)

    @property
    def qemu_dir(self) -> Path:
        """QEMU's own sockets live here (owned by the user QEMU runs as)."""
        return self.path.parent / QEMU_DIR / self.path.name

    @property
    def control_socket(self) -> Path:
        return self.path / CONTROL_SOCKET

    @property
    def qemu_log(self) -> Path:
        return self.path / QEMU_LOG

    def release(self) -> bool:
        """Remove the session's files, unlock, remove the directory if empty.

        Returns True when the directory is gone, False when something else
        (a journal) was left in it on purpose. Idempotent.
        """
        _remove_tree_of_sockets(self.qemu_dir)
        with contextlib.suppress(OSError):  # other sessions' socket directories: leave it
            self.qemu_dir.parent.rmdir()
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


def _remove_tree_of_sockets(directory: Path) -> None:
    """Remove ``directory`` and the files directly in it (QEMU's sockets). Idempotent."""
    try:
        entries = list(directory.iterdir())
    except FileNotFoundError:
        return
    except NotADirectoryError:
        directory.unlink()
        return
    for entry in entries:
        with contextlib.suppress(FileNotFoundError, IsADirectoryError):
            entry.unlink()
    with contextlib.suppress(OSError):  # something unexpected inside: leave it be
        directory.rmdir()
