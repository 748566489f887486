"""Spawning QEMU: own session, inherited fds, log file, exit descriptions."""

from __future__ import annotations

import os
import resource
import signal
import socket
from pathlib import Path

import pytest
import trio

from handoff.base.errors import QemuNotFoundError
from handoff.qemu.process import QemuProcess
from handoff.qemu.qmp import open_qmp
from handoff.session.end import describe_exit

from .conftest import bare_argv

pytestmark = pytest.mark.qemu


async def test_qemu_runs_in_its_own_session_with_output_in_the_log(log_path: Path) -> None:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(
        bare_argv(theirs.fileno(), "-S"), log_path=log_path, pass_fds=[theirs.fileno()]
    )
    theirs.close()
    try:
        assert os.getsid(process.pid) == process.pid != os.getsid(0)
        assert os.stat(log_path).st_mode & 0o777 == 0o600
        async with open_qmp(ours) as qmp:  # QEMU's signal handlers are up once it greets
            await qmp.execute("query-status")
            process.terminate()
            with trio.fail_after(30):
                code = await process.wait()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    # QEMU exits 0 on SIGTERM and says so in its log.
    assert code == 0
    assert "terminating on signal 15" in process.log_tail()


async def test_a_killed_qemu_is_described_by_its_signal(log_path: Path) -> None:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(
        bare_argv(theirs.fileno(), "-S"), log_path=log_path, pass_fds=[theirs.fileno()]
    )
    theirs.close()
    process.kill()
    with trio.fail_after(30):
        code = await process.wait()
    ours.close()
    assert code == -signal.SIGKILL
    assert describe_exit(code) == "was killed by SIGKILL"
    assert process.returncode == code


async def test_launch_error_names_exit_code_command_and_log_tail(log_path: Path) -> None:
    ours, theirs = socket.socketpair()
    process = await QemuProcess.start(
        bare_argv(theirs.fileno(), "-bogus-flag"), log_path=log_path,
        pass_fds=[theirs.fileno()],
    )
    theirs.close()
    with trio.fail_after(30):
        code = await process.wait()
    ours.close()
    error = process.launch_error(code)
    assert "QEMU exited with status 1 before its monitor answered" in error.message
    assert "-bogus-flag" in error.message.splitlines()[1]
    assert "invalid option" in error.message
    assert error.fix


async def test_a_missing_binary_is_qemu_not_found(log_path: Path) -> None:
    with pytest.raises(QemuNotFoundError, match="not installed"):
        await QemuProcess.start(["/nonexistent/qemu-system-x86_64"], log_path=log_path)


async def test_an_unknown_user_is_refused_before_spawning(log_path: Path) -> None:
    with pytest.raises(Exception, match="does not exist"):
        await QemuProcess.start(["true"], log_path=log_path, user="no-such-user-handoff")


async def test_memlock_is_raised_for_the_child_and_restored(log_path: Path) -> None:
    before = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    hard = before[1]
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 40
    lowered = (hard // 2 // 1024) * 1024
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (lowered, before[1]))
    try:
        process = await QemuProcess.start(
            ["sh", "-c", "ulimit -l"], log_path=log_path, memlock_bytes=hard
        )
        with trio.fail_after(30):
            assert await process.wait() == 0
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == (lowered, before[1])
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, before)
    assert process.log_tail().strip() == str(hard // 1024)
