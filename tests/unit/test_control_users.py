"""A root session's desktop user: status/switch/gpu/stop from their own session, nobody else.

The pure rules (handoff.control.access) and the real thing: a session's
control sockets served by root, and clients run as other uids
(``subprocess`` with ``user=``): ``daemon`` plays the desktop user who ran
``sudo`` (SUDO_UID), ``nobody`` a third user, who is refused by the kernel
(the socket's owner and mode) and by the client's lookup with a clear error.
"""

from __future__ import annotations

import errno
import json
import os
import pwd
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trio

from handoff.base.run_layout import user_control_dir, user_socket
from handoff.control.access import (
    ControlAccess,
    control_access,
    peer_allowed,
    starter_uid,
    user_may,
)
from handoff.control.find import ControlNotAllowedError, locate, system_run_root
from handoff.control.server import ControlCommands, peer_uid, serve_control
from handoff.control.users import serve_user_control
from handoff.session.resources import JsonObject

CHECKOUT = Path(__file__).resolve().parents[2]
DESKTOP, THIRD = "daemon", "nobody"
#: An interpreter every user can run (this venv's may live in root's private home);
#: the light commands need only the standard library.
USER_PYTHON = "/usr/bin/python3"
as_root = pytest.mark.skipif(os.geteuid() != 0, reason="other uids need root")

# ------------------------------------------------------------------ the rules (pure)


def test_the_starter_is_the_sudo_or_pkexec_user_never_root() -> None:
    assert starter_uid({"SUDO_UID": "1000"}) == 1000
    assert starter_uid({"PKEXEC_UID": "1001"}) == 1001
    assert starter_uid({"SUDO_UID": "0"}) is None
    assert starter_uid({"SUDO_UID": "x"}) is None
    assert starter_uid({}) is None


def test_access_is_the_starter_the_named_users_and_the_group() -> None:
    access = control_access({"SUDO_UID": "1000"}, [1002, 0], (990, [1003]))
    assert access == ControlAccess(frozenset({1000, 1002}), 990, frozenset({1003}))
    assert not control_access({}, []).anyone
    assert peer_allowed(access, 1000, 1000)
    assert peer_allowed(access, 1000, 0)  # root always
    assert not peer_allowed(access, 1000, 1002)  # another allowed user's socket: no
    assert not peer_allowed(access, 1004, 1004)  # a socket of a uid not allowed
    assert peer_allowed(access, None, 1003)
    assert not peer_allowed(access, None, 1000)  # the group's socket: members only


def test_the_desktop_user_may_run_status_switch_gpu_and_stop_only() -> None:
    assert all(user_may(c) for c in ("status", "switch", "gpu", "stop"))
    assert not any(user_may(c) for c in ("recover", "detach", "attach", "secret", None, 1))


# ------------------------------------------------------------------ real sockets, real uids


@pytest.fixture
def run_root() -> Iterator[Path]:
    """A system run root every user may pass through (pytest's tmp_path is root's 0700)."""
    with tempfile.TemporaryDirectory(prefix="handoff-users-") as name:
        os.chmod(name, 0o755)
        yield Path(name) / "run"


def as_user(user: str, *argv: str, run_root: Path) -> subprocess.CompletedProcess[str]:
    """``python -m handoff ARGV`` as ``user``, with its own (empty) run root."""
    entry = pwd.getpwnam(user)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HANDOFF_SYSTEM_RUN_DIR": str(run_root),
        "XDG_RUNTIME_DIR": f"/nonexistent-{entry.pw_uid}",
        "PYTHONPATH": str(CHECKOUT),
    }
    return subprocess.run(
        [USER_PYTHON, "-m", "handoff", *argv], env=env, cwd="/", user=entry.pw_uid,
        group=entry.pw_gid, extra_groups=[], capture_output=True, text=True, check=False,
        timeout=120,
    )  # fmt: skip


def connect_errno(user: str, path: Path) -> int:
    """Connect to ``path`` as ``user``: 0, or the errno."""
    entry = pwd.getpwnam(user)
    code = (
        "import socket,sys\n"
        "s=socket.socket(socket.AF_UNIX)\n"
        "try:\n s.connect(sys.argv[1])\nexcept OSError as e:\n sys.exit(e.errno)\n"
    )
    done = subprocess.run(
        [USER_PYTHON, "-c", code, str(path)], user=entry.pw_uid, group=entry.pw_gid,
        extra_groups=[], check=False, timeout=60, cwd="/",
    )  # fmt: skip
    return done.returncode


def session_commands(calls: list[str]) -> ControlCommands:
    commands = ControlCommands()

    async def status(_: object) -> JsonObject:
        calls.append("status")
        return {"profile": "desk", "phase": "running", "pid": os.getpid()}

    async def switch(message: Any) -> JsonObject:
        calls.append(f"switch {message.get('mode')}")
        return {"mode": "guest", "pending": None}

    async def secret(_: object) -> JsonObject:
        calls.append("secret")
        return {}

    commands.register("status", status)
    commands.register("switch", switch)
    commands.register("secret", secret)
    return commands


@as_root
async def test_the_sudo_user_switches_and_reads_status_a_third_user_is_refused(
    run_root: Path,
) -> None:
    desktop = pwd.getpwnam(DESKTOP).pw_uid
    access = control_access({"SUDO_UID": str(desktop)}, [])
    calls: list[str] = []
    commands = session_commands(calls)
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_user_control, run_root, "desk", commands, access)
        directory = user_control_dir(run_root, "desk")
        mine = user_socket(run_root, "desk", desktop)
        info = os.stat(mine)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == 0o600
        assert info.st_uid == desktop
        assert os.stat(directory).st_uid == 0
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o755

        def clients() -> tuple[subprocess.CompletedProcess[str], ...]:
            return (
                as_user(DESKTOP, "switch", "desk", "guest", "--json", run_root=run_root),
                as_user(DESKTOP, "status", "desk", "--json", run_root=run_root),
                as_user(DESKTOP, "status", "--json", run_root=run_root),
                as_user(THIRD, "switch", "desk", run_root=run_root),
                as_user(THIRD, "status", "desk", run_root=run_root),
            )

        switched, status, listed, refused, refused_status = await trio.to_thread.run_sync(
            clients
        )
        third_errno = await trio.to_thread.run_sync(connect_errno, THIRD, mine)
        nursery.cancel_scope.cancel()
    assert switched.returncode == 0, switched.stderr
    assert json.loads(switched.stdout)["mode"] == "guest"
    assert status.returncode == 0
    assert json.loads(status.stdout)["profile"] == "desk"
    assert [s["profile"] for s in json.loads(listed.stdout)] == ["desk"]
    for answer in (refused, refused_status):
        assert answer.returncode == 2
        assert "runs as root and does not let nobody control it" in answer.stderr
        assert "[control] users" in answer.stderr
    assert third_errno == errno.EACCES  # the kernel: the socket is the desktop user's 0600
    assert calls == ["switch guest", "status", "status"]
    assert not directory.exists()  # removed with the session


@as_root
async def test_a_user_socket_answers_the_user_commands_only_and_checks_the_peer(
    run_root: Path,
) -> None:
    """Root's commands stay root's on the user's socket; and a peer the rules do not
    admit is dropped even where the file mode would let it connect."""
    desktop = pwd.getpwnam(DESKTOP).pw_uid
    calls: list[str] = []
    commands = session_commands(calls)
    path = run_root / "control" / "wide.sock"
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_user_control, run_root, "desk", commands,
                            control_access({"SUDO_UID": str(desktop)}, []))
        # A socket anyone may open (0666) that admits only the desktop user.
        await nursery.start(lambda task_status: serve_control(
            path, commands, mode=0o666, admit=lambda uid: uid == desktop, allowed=user_may,
            task_status=task_status))
        code = (
            "import json,socket,sys\n"
            "s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1])\n"
            "try:\n"
            " s.sendall(json.dumps({'command': sys.argv[2]}).encode()+b'\\n')\n"
            " print(s.recv(65536).decode().strip() or 'closed')\n"
            "except OSError:\n print('closed')\n"
        )

        def ask(user: str, socket_path: Path, command: str) -> str:
            entry = pwd.getpwnam(user)
            return subprocess.run(
                [USER_PYTHON, "-c", code, str(socket_path), command], user=entry.pw_uid,
                group=entry.pw_gid, extra_groups=[], capture_output=True, text=True,
                check=True, timeout=60, cwd="/",
            ).stdout.strip()  # fmt: skip

        mine = user_socket(run_root, "desk", desktop)
        secret = await trio.to_thread.run_sync(ask, DESKTOP, mine, "secret")
        stranger = await trio.to_thread.run_sync(ask, THIRD, path, "status")
        admitted = await trio.to_thread.run_sync(ask, DESKTOP, path, "status")
        nursery.cancel_scope.cancel()
    answer = json.loads(secret)
    assert answer["ok"] is False
    assert answer["code"] == "not-allowed"
    assert stranger == "closed"  # SO_PEERCRED: not the desktop user
    assert json.loads(admitted)["ok"] is True
    assert calls == ["status"]


def test_the_lookup_prefers_the_users_own_session(tmp_path: Path) -> None:
    own, system = tmp_path / "own", tmp_path / "system"
    (own / "desk").mkdir(parents=True)
    (own / "desk" / "control.sock").touch()
    assert locate("desk", own, system, 1000) == own / "desk" / "control.sock"
    assert locate("other", own, system, 1000) == own / "other" / "control.sock"  # none runs
    (system / "other").mkdir(parents=True)
    with pytest.raises(ControlNotAllowedError, match="runs as root"):
        locate("other", own, system, 1000)
    assert locate("other", system, system, 0) == system / "other" / "control.sock"


def test_root_sessions_are_in_run_handoff_unless_handoff_system_run_dir_moves_them() -> None:
    assert system_run_root({}) == Path("/run/handoff")
    assert system_run_root({"HANDOFF_SYSTEM_RUN_DIR": "/srv/run"}) == Path("/srv/run")


def test_peer_uid_is_the_kernels_word() -> None:
    async def main() -> int | None:
        left, right = trio.socket.socketpair()
        stream = trio.SocketStream(left)
        try:
            return peer_uid(stream)
        finally:
            left.close()
            right.close()

    assert trio.run(main) == os.geteuid()


def test_control_users_are_checked(tmp_path: Path) -> None:
    from handoff.base.errors import ProfileError
    from handoff.control.accounts import resolve_access
    from handoff.profile import parse_profile

    base = '[vm]\nname = "w"\nmemory = "1G"\n[control]\n'
    source = tmp_path / "w.toml"
    profile = parse_profile(base + 'users = ["daemon"]\n', source)
    assert profile.control.users == ("daemon",)
    assert pwd.getpwnam("daemon").pw_uid in resolve_access(profile, {}).uids
    with pytest.raises(ProfileError, match=r"control\.users\[0\].*expected an account name"):
        parse_profile(base + 'users = ["1000"]\n', source)
    with pytest.raises(ProfileError, match='did you mean "users"'):
        parse_profile(base + 'user = ["daemon"]\n', source)
    missing = parse_profile(base + 'users = ["no-such-user-here"]\n', source)
    with pytest.raises(ProfileError, match="does not exist on this host"):
        resolve_access(missing, {})
