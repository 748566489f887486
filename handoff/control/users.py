"""The desktop user's way into a root session: sockets of their own, checked twice.

A session run as root (``sudo handoff run``, ``pkexec``, the systemd unit)
serves, besides root's ``<run>/<name>/control.sock`` (0700 directory), one
socket per allowed user in ``<run>/control/<name>/`` (root's, 0755):
``uid-<N>.sock`` owned by that uid, mode 0600, and ``group.sock`` owned by
root and the ``handoff`` group, mode 0660. So the kernel lets exactly root
and that user (or the group) connect; the session also checks every peer's
SO_PEERCRED uid and answers only :data:`~handoff.control.access.USER_COMMANDS`
there. Who is allowed is decided by :mod:`handoff.control.access`; the
client finds these sockets by name (:mod:`handoff.control.find`).
"""

from __future__ import annotations

import contextlib
import os
import stat
from collections.abc import Callable
from functools import partial
from pathlib import Path

import trio

from handoff.base.errors import SessionError
from handoff.base.run_layout import USER_CONTROL_DIR, user_control_dir, user_socket
from handoff.control.access import (
    ControlAccess,
    peer_allowed,
    user_may,
)
from handoff.control.server import ControlCommands, serve_control

#: Mode of ``<run>/control`` and ``<run>/control/<name>``: anyone may look up a socket.
DIRECTORY_MODE = 0o755


def _admit(access: ControlAccess, socket_uid: int | None) -> Callable[[int | None], bool]:
    """The peer check of one user socket (the kernel's SO_PEERCRED uid)."""

    def admit(peer: int | None) -> bool:
        return peer is not None and peer_allowed(access, socket_uid, peer)

    return admit


def _root_directory(path: Path) -> None:
    """Create ``path`` 0755, or check an existing one is root's own directory."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=DIRECTORY_MODE)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise SessionError(
            f"{path} is not a directory of uid {os.geteuid()}",
            fix=f"remove {path} (only handoff makes it)",
        )
    if stat.S_IMODE(info.st_mode) != DIRECTORY_MODE:
        os.chmod(path, DIRECTORY_MODE)


def _make_directories(run: Path, directory: Path) -> None:
    run.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
    _root_directory(run / USER_CONTROL_DIR)
    _root_directory(directory)


async def serve_user_control(
    run: Path, profile_name: str, commands: ControlCommands, access: ControlAccess,
    *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Serve the allowed users' sockets until cancelled; then remove them and their directory."""
    if not access.anyone or os.geteuid() != 0:
        task_status.started()
        return
    directory = user_control_dir(run, profile_name)
    _make_directories(run, directory)
    try:
        async with trio.open_nursery() as nursery:
            sockets: list[tuple[int | None, tuple[int, int], int]] = [
                (uid, (uid, 0), 0o600) for uid in sorted(access.uids)
            ]
            if access.group_gid is not None:
                sockets.append((None, (0, access.group_gid), 0o660))
            for uid, owner, mode in sockets:
                await nursery.start(partial(
                    serve_control, user_socket(run, profile_name, uid), commands,
                    owner=owner, mode=mode, admit=_admit(access, uid), allowed=user_may,
                ))
            task_status.started()
    finally:
        with contextlib.suppress(OSError):
            directory.rmdir()
        with contextlib.suppress(OSError):  # other sessions' sockets: leave it
            directory.parent.rmdir()
