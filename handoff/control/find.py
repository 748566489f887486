"""Where `handoff status/switch/gpu/stop NAME` finds a session's control socket (light: no trio).

A desktop user's own sessions are in their own run root
(``$XDG_RUNTIME_DIR/handoff``); a root session (``sudo handoff run``, the
systemd unit) is found by name in the system run root (``/run/handoff``,
``HANDOFF_SYSTEM_RUN_DIR`` to move it), through the socket the session made
for that user or for the ``handoff`` group (:mod:`handoff.control.users`).
A root session that made none for this user is refused here with who may.
"""

from __future__ import annotations

import os
import pwd
from collections.abc import Mapping
from pathlib import Path

from handoff.base.errors import SessionError
from handoff.base.run_layout import (
    CONTROL_SOCKET,
    USER_CONTROL_DIR,
    user_control_dir,
    user_socket,
)

#: Where root sessions live (HostPaths' default run root for root).
SYSTEM_RUN_ROOT = Path("/run/handoff")


def system_run_root(environ: Mapping[str, str]) -> Path:
    """The run root of root's sessions: ``/run/handoff`` or ``HANDOFF_SYSTEM_RUN_DIR``."""
    return Path(environ.get("HANDOFF_SYSTEM_RUN_DIR", str(SYSTEM_RUN_ROOT)))


class ControlNotAllowedError(SessionError):
    """A root session runs under that name but lets this user in through no socket."""


def _user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def locate(name: str, own_run: Path, system_run: Path, uid: int) -> Path:
    """The control socket for session ``name`` as seen by ``uid``.

    Its own session first; else a root session's socket for this uid, else the
    group's when this process is in its group. Raises
    :class:`ControlNotAllowedError` when a root session of that name exists but
    lets this user in through none; otherwise returns the own path (the request
    then says no session runs there).
    """
    own = own_run / name / CONTROL_SOCKET
    if uid == 0 or own.exists() or own_run == system_run:
        return own
    mine = user_socket(system_run, name, uid)
    if mine.exists():
        return mine
    group = user_socket(system_run, name, None)
    try:
        gid = group.stat().st_gid
    except OSError:
        gid = None
    if gid is not None and (gid == os.getgid() or gid in os.getgroups()):
        return group
    if user_control_dir(system_run, name).exists() or (system_run / name).is_dir():
        who = _user_name(uid)
        raise ControlNotAllowedError(
            f"the session {name!r} runs as root and does not let {who} control it "
            f"(no socket for uid {uid} in {user_control_dir(system_run, name)})",
            fix=f"start it as {who} with sudo (SUDO_UID), add {who!r} to its profile's "
            "[control] users, or add the user to the 'handoff' group; or run this "
            "command as root",
        )
    return own


def root_sessions(system_run: Path, uid: int) -> list[str]:
    """Root sessions this uid can reach (for `handoff status` without a name)."""
    if uid == 0:
        return []
    try:
        entries = sorted((system_run / USER_CONTROL_DIR).iterdir())
    except OSError:
        return []
    found = []
    for entry in entries:
        try:
            found_path = locate(entry.name, Path("/nonexistent"), system_run, uid)
        except ControlNotAllowedError:
            continue
        if found_path.exists():
            found.append(entry.name)
    return found



def running_sessions(own_run: Path, environ: Mapping[str, str], uid: int) -> list[str]:
    """Sessions `handoff status` lists: this user's own, then root's it may reach."""
    try:
        entries = sorted(own_run.iterdir())
    except OSError:
        entries = []
    own = [entry.name for entry in entries if (entry / CONTROL_SOCKET).exists()]
    system_run = system_run_root(environ)
    system = root_sessions(system_run, uid) if own_run != system_run else []
    return own + [name for name in system if name not in own]
