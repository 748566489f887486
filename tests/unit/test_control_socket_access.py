"""Only the session's owner reaches its control socket: a real socket, a real other uid.

A child forked from the test drops to ``nobody`` (setgid, setgroups, setuid)
and tries to connect. The run directory is 0700 with or without ``vm.user``;
QEMU's user gets its own 0700 socket directory beside it, never a way in.
"""

from __future__ import annotations

import errno
import os
import pwd
import socket
import stat
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from handoff.base.host import HostPaths
from handoff.control import server as control
from handoff.control.server import SOCKET_MODE, ControlCommands, serve_control
from handoff.session.resources import JsonObject
from handoff.session.rundir import RunDir
from tests.host_requirements import is_root, requires

pytestmark = requires(is_root(), "switching to another uid needs root")

NOBODY = "nobody"


@pytest.fixture
def open_root() -> Iterator[Path]:
    """A run root every user may pass through (pytest's tmp_path is root's 0700)."""
    with tempfile.TemporaryDirectory(prefix="handoff-control-") as name:
        os.chmod(name, 0o755)
        yield Path(name) / "run"


def connect_as_nobody(path: Path) -> int:
    """Fork; the child becomes nobody and connects to ``path``. Its errno (0: connected)."""
    entry = pwd.getpwnam(NOBODY)
    pid = os.fork()
    if pid == 0:  # the child: only system calls, then _exit
        code = 0
        try:
            os.setgroups([])
            os.setgid(entry.pw_gid)
            os.setuid(entry.pw_uid)
            client = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            client.connect(str(path))
        except OSError as exc:
            code = exc.errno or 255
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


async def status(_: object) -> JsonObject:
    return {"alive": True}


async def check_only_the_owner_connects(rundir: RunDir) -> None:
    commands = ControlCommands()
    commands.register("status", status)
    path = rundir.control_socket
    async with trio.open_nursery() as nursery:
        await nursery.start(serve_control, path, commands)
        info = os.stat(path)
        assert stat.S_ISSOCK(info.st_mode)
        assert stat.S_IMODE(info.st_mode) == SOCKET_MODE == 0o600
        assert info.st_uid == os.geteuid()
        assert connect_as_nobody(path) == errno.EACCES, "another uid must not connect"
        answer = await trio.to_thread.run_sync(lambda: control.request(path, {"command": "status"}))
        assert answer == {"alive": True}, "the owner still can"
        nursery.cancel_scope.cancel()


async def test_the_control_socket_is_0600_in_a_0700_dir_and_refuses_another_uid(
    open_root: Path,
) -> None:
    rundir = RunDir.acquire(HostPaths(run=open_root), "demo")
    try:
        assert stat.S_IMODE(os.stat(rundir.path).st_mode) == 0o700
        await check_only_the_owner_connects(rundir)
    finally:
        rundir.release()


async def test_qemus_user_reaches_its_own_socket_dir_but_not_the_run_dir(
    open_root: Path,
) -> None:
    rundir = RunDir.acquire(HostPaths(run=open_root), "demo", qemu_user=NOBODY)
    try:
        assert stat.S_IMODE(os.stat(rundir.path).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(rundir.qemu_dir).st_mode) == 0o700
        # QEMU's user reaches its own directory (ENOENT: no such socket yet) ...
        assert connect_as_nobody(rundir.qemu_dir / "no-such.sock") == errno.ENOENT
        # ... but not the run directory: not even the path to the control socket.
        assert connect_as_nobody(rundir.path / "no-such.sock") == errno.EACCES
        await check_only_the_owner_connects(rundir)
    finally:
        rundir.release()
