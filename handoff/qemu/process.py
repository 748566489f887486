"""The QEMU process under trio: spawn, wait, terminate, kill.

:func:`handoff.qemu.spawn.spawn_qemu` creates the process (its own session,
output to the log file in the 0700 run directory, ``vm.user``'s identity,
the memlock limit); :class:`QemuProcess` is that process seen from trio:
:meth:`~QemuProcess.start` spawns one, :meth:`~QemuProcess.adopt` takes one
spawned before trio was imported (``handoff run`` of a profile that changes
nothing on the host, :mod:`handoff.session.supervisor.early`). Waiting uses a pidfd in
trio's event loop (a thread on kernels without ``pidfd_open``), as
``trio.Process`` does. Their log's tail is shown when QEMU fails to start or
dies.
"""

from __future__ import annotations

import contextlib
import os
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import trio

from handoff.base.errors import QemuLaunchError
from handoff.qemu.spawn import raised_memlock, spawn_qemu
from handoff.session.end import describe_exit

__all__ = [
    "LOG_TAIL_LINES",
    "QemuProcess",
    "raised_memlock",
    "read_log_tail",
]

#: How many lines of QEMU's log a failure report shows.
LOG_TAIL_LINES = 20


def read_log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> str:
    """The last ``lines`` lines of a log file ('' when missing or empty)."""
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            data = f.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return "\n".join(text.splitlines()[-lines:])


@dataclass
class QemuProcess:
    """A running (or finished) QEMU: :meth:`start` spawns it, :meth:`adopt` takes it."""

    argv: tuple[str, ...]
    log_path: Path
    _popen: subprocess.Popen[bytes]
    _pidfd: int | None = None
    _wait_lock: trio.Lock = field(default_factory=trio.Lock)

    @classmethod
    async def start(
        cls,
        argv: Sequence[str],
        *,
        log_path: Path,
        pass_fds: Sequence[int] = (),
        user: str | None = None,
        memlock_bytes: int | None = None,
        scoped: bool = False,
        environment: Sequence[tuple[str, str]] = (),
    ) -> QemuProcess:
        """:func:`handoff.qemu.spawn.spawn_qemu` in a worker thread (the fork and exec
        do not stall the event loop), adopted. Raises QemuNotFoundError when the binary
        is missing."""
        spawn = partial(
            spawn_qemu, argv, log_path=log_path, pass_fds=pass_fds, user=user,
            memlock_bytes=memlock_bytes, scoped=scoped, environment=environment,
        )
        return cls.adopt(await trio.to_thread.run_sync(spawn), argv, log_path)

    @classmethod
    def adopt(
        cls, popen: subprocess.Popen[bytes], argv: Sequence[str], log_path: Path
    ) -> QemuProcess:
        """The QEMU ``popen`` runs: ``argv`` spawned by
        :func:`~handoff.qemu.spawn.spawn_qemu`, its output in ``log_path``."""
        pidfd = None
        with contextlib.suppress(AttributeError, OSError):  # no pidfd: waitid in a thread
            pidfd = os.pidfd_open(popen.pid)
        return cls(argv=tuple(argv), log_path=log_path, _popen=popen, _pidfd=pidfd)

    @property
    def pid(self) -> int:
        return self._popen.pid

    @property
    def returncode(self) -> int | None:
        """None while QEMU runs; its exit status (negative: killed by that signal) after."""
        return self._popen.poll()

    async def wait(self) -> int:
        """Wait for QEMU to exit; safe to call from several tasks at once."""
        async with self._wait_lock:
            if self._popen.poll() is None:
                if self._pidfd is not None:
                    await trio.lowlevel.wait_readable(self._pidfd)
                else:
                    waitid = partial(os.waitid, os.P_PID, self.pid, os.WEXITED | os.WNOWAIT)
                    await trio.to_thread.run_sync(waitid, abandon_on_cancel=True)
                self._popen.wait()  # exited: reaps at once
            self._close_pidfd()
        returncode = self._popen.returncode
        assert returncode is not None
        return returncode

    def _close_pidfd(self) -> None:
        if self._pidfd is not None:
            trio.lowlevel.notify_closing(self._pidfd)
            os.close(self._pidfd)
            self._pidfd = None

    def terminate(self) -> None:
        """SIGTERM: QEMU shuts the VM down as if the power were cut, then exits."""
        self._popen.terminate()

    def kill(self) -> None:
        """SIGKILL: the last rung of the ladder."""
        self._popen.kill()

    def kill_and_reap(self, timeout: float) -> bool:
        """SIGKILL and wait up to ``timeout`` seconds, blocking: for a QEMU no ladder
        will handle (started early, paused, and the session failed before supervising
        it). False: it did not exit in time (stuck in the kernel), left as it is."""
        self._popen.kill()
        try:
            self._popen.wait(timeout)
        except subprocess.TimeoutExpired:
            return False
        self._close_pidfd()
        return True

    @property
    def command(self) -> str:
        """The command line as a person can paste it into a shell."""
        return shlex.join(self.argv)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        return read_log_tail(self.log_path, lines)

    def launch_error(self, returncode: int, detail: str = "") -> QemuLaunchError:
        """The error for QEMU exiting before its monitor answered: code, command, log."""
        tail = self.log_tail()
        log_text = "\n".join(f"    {line}" for line in tail.splitlines()) or "    (empty)"
        why = f" ({detail})" if detail else ""
        return QemuLaunchError(
            f"QEMU {describe_exit(returncode)} before its monitor answered{why}\n"
            f"  command: {self.command}\n"
            f"  QEMU's log ({self.log_path}, last lines):\n{log_text}",
            fix="the log above names the option or file QEMU rejected; fix the profile "
            "(`handoff argv PROFILE` prints the command)",
        )
