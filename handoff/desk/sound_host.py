"""The desktop user's sound server, read: the account, the socket, whether it answers.

Read-only. A connect() to the socket tells a running server from a stale
socket file (PulseAudio leaves one behind when it is killed).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import socket
import stat
from collections.abc import Mapping
from pathlib import Path

from handoff.base.errors import ProfileError
from handoff.desk.sound import SoundServer, cookie_path, server_socket
from handoff.profile import AudioBackend, Profile


def default_server(environ: Mapping[str, str], euid: int) -> Path:
    """Where libpulse in QEMU looks without ``server=``: $PULSE_SERVER's unix path, else
    $XDG_RUNTIME_DIR/pulse/native, else /run/user/EUID/pulse/native."""
    given = environ.get("PULSE_SERVER", "")
    if given.startswith("unix:"):
        return Path(given.removeprefix("unix:"))
    runtime = environ.get("XDG_RUNTIME_DIR")
    return Path(runtime) / "pulse" / "native" if runtime else server_socket(euid)


def read_sound_server(profile: Profile, *, strict: bool = True) -> SoundServer | None:
    """``[sound] user``'s server, or with backend "pa" alone the one QEMU would find by
    itself (None: no pa, or an unknown user and not ``strict``)."""
    user = profile.sound.user
    if user is None:
        if profile.sound.backend is not AudioBackend.PULSEAUDIO:
            return None
        path = default_server(os.environ, os.geteuid())
        reachable, reason = _answers(path)
        return SoundServer(f"uid {os.geteuid()}", os.geteuid(), path, reachable, reason, None,
                           explicit=False)
    try:
        account = pwd.getpwnam(user)
    except KeyError:
        if not strict:
            return None
        raise ProfileError(
            f"found the string {user!r}; expected an existing user account on this host",
            path=str(profile.source), key="sound.user",
            fix="write the desktop user who hears the guest (`id -un` in their session)",
        ) from None
    path = server_socket(account.pw_uid)
    reachable, reason = _answers(path)
    cookie = cookie_path(account.pw_dir)
    return SoundServer(user, account.pw_uid, path, reachable, reason,
                       cookie if cookie.is_file() else None)


def _answers(path: Path) -> tuple[bool, str]:
    try:
        mode = path.stat().st_mode
    except OSError:
        return False, f"no sound server: {path} does not exist"
    if not stat.S_ISSOCK(mode):
        return False, f"{path} is not a socket"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.settimeout(2.0)
        probe.connect(str(path))
    except OSError as exc:
        return False, f"nothing answers on {path} ({exc.strerror or exc})"
    finally:
        with contextlib.suppress(OSError):
            probe.close()
    return True, ""
