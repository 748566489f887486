"""[[share]] as a host resource: one virtiofsd per folder, started before QEMU, gone with it.

What runs and why is :mod:`handoff.desk.share`. Here: the descriptor files
are read, each folder checked (it exists, it is a directory), the listening
socket made in QEMU's 0700 socket directory (QEMU's user may connect, nobody
else), the daemon started in a session of its own (the terminal's Ctrl-C is
the supervisor's to handle, like QEMU's) with its log in the run directory,
and its pid journaled (:mod:`handoff.desk.journal`) so ``handoff recover``
ends a daemon whose QEMU never came. ``acquire`` returns once the daemon
waits for QEMU (its log says so), or fails with the daemon's own words.
After QEMU has exited the daemon ends by itself (QEMU's connection closed);
``release`` waits for that, bounded, then ends it.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from handoff import journal as jr
from handoff.base.errors import DeskError, ProfileError
from handoff.base.host import HostPaths, qemu_account
from handoff.base.run_layout import qemu_socket_dir
from handoff.desk import share as core
from handoff.desk.journal import DeskHold
from handoff.profile import Profile, Share
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

#: Seconds a started virtiofsd gets to say it waits for QEMU (its sandbox set-up).
READY_TIMEOUT = 60.0
#: Seconds a virtiofsd gets to end by itself once QEMU has exited.
EXIT_TIMEOUT = 10.0
READY_LINE = "Waiting for vhost-user socket connection"


def find_virtiofsd(dirs: tuple[Path, ...] = core.DESCRIPTOR_DIRS) -> Path:
    """The virtiofsd QEMU's vhost-user descriptors name; DeskError when none is usable."""
    found: list[tuple[str, str]] = []
    for directory in dirs:
        with contextlib.suppress(OSError):
            for entry in sorted(directory.iterdir()):
                if entry.suffix == ".json":
                    with contextlib.suppress(OSError):
                        found.append((entry.name, entry.read_text()))
    binary = core.choose_virtiofsd(found)
    if binary is None or not os.access(binary, os.X_OK):
        where = " or ".join(str(d) for d in dirs)
        raise DeskError(
            f"[[share]] needs virtiofsd; no vhost-user descriptor of type \"fs\" in {where}"
            + (f" names a program that runs ({binary} does not)" if binary else ""),
            fix="apt-get install qemu-system-common (Debian 12's QEMU ships virtiofsd) or the "
            "virtiofsd package of newer releases",
        )
    return binary


def userns_refused(uid: int, gid: int) -> str | None:
    """Why ``uid`` cannot make the user namespace virtiofsd runs in (None: it can). A
    chroot, ``user.max_user_namespaces = 0`` or a distribution switch refuse it."""
    argv = core.Daemon(Path("/bin/true"), Share(Path("/"), "probe"), uid, gid, 0).argv()
    probe = [*argv[:argv.index("--", argv.index("unshare")) + 1], "true"]
    result = subprocess.run(probe, capture_output=True, text=True, check=False, timeout=60)
    if result.returncode == 0:
        return None
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else "refused"


def _spawn(daemon: core.Daemon, log: Path) -> subprocess.Popen[bytes]:
    """The daemon in a session of its own, its output in ``log``, the socket fd inherited."""
    with open(log, "wb") as out:
        return subprocess.Popen(
            daemon.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=out,
            pass_fds=[daemon.fd], start_new_session=True,
        )


def _wait(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` ends within :data:`EXIT_TIMEOUT`."""
    try:
        proc.wait(EXIT_TIMEOUT)
    except subprocess.TimeoutExpired:
        return False
    return True


class VirtiofsShares:
    """The ``shares`` resource (:class:`handoff.session.resources.HostResource`)."""

    name = "shares"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, report: Callable[[str], None] = print,
        descriptor_dirs: tuple[Path, ...] = core.DESCRIPTOR_DIRS,
    ) -> None:
        self.profile = profile
        self.paths = paths
        self.report = report
        self.descriptor_dirs = descriptor_dirs
        self._procs: list[subprocess.Popen[bytes]] = []
        self._sockets: list[Path] = []
        self._hold = DeskHold(paths)

    @property
    def memlock_bytes(self) -> int | None:
        return None

    def check(self) -> Path:
        """The refusals before anything changes: no virtiofsd, a folder that is not there."""
        for index, share in enumerate(self.profile.shares):
            if not share.path.is_dir():
                what = "is not a directory" if share.path.exists() else "does not exist"
                raise ProfileError(
                    f"found {str(share.path)!r}; the folder {what}",
                    path=str(self.profile.source), key=f"share[{index}].path",
                    fix=f"create it (mkdir -p {share.path}) or correct the path",
                )
        return find_virtiofsd(self.descriptor_dirs)

    def _runs_as(self, path: Path) -> tuple[int, int, str]:
        user = self.profile.vm.user
        if user is not None:
            account = qemu_account(user)
            return account.pw_uid, account.pw_gid, user
        st = os.stat(path)
        try:
            name = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            name = str(st.st_uid)
        return st.st_uid, st.st_gid, name

    def _qemu_ids(self) -> tuple[int, int]:
        user = self.profile.vm.user
        if user is None:
            return os.geteuid(), os.getegid()
        account = qemu_account(user)
        return account.pw_uid, account.pw_gid

    async def acquire(self) -> None:
        binary = self.check()
        name = self.profile.name
        self._hold.take(name, "shares", f"the virtiofsd of {name}")
        try:
            for index, share in enumerate(self.profile.shares):
                await self._start(index, share, binary)
        except BaseException:
            with trio.CancelScope(shield=True):
                await self.release()
            raise

    async def _start(self, index: int, share: Share, binary: Path) -> None:
        journal = self._hold.journal
        assert journal is not None
        sock_path = core.socket_path(qemu_socket_dir(self.paths, self.profile.name), index)
        uid, gid, who = self._runs_as(share.path)
        if uid != 0:
            refused = await trio.to_thread.run_sync(userns_refused, uid, gid)
            if refused is not None:  # the least privilege left that serves the folder
                self.report(f"share: {who} may not create a user namespace here ({refused}); "
                            f"virtiofsd for {share.path} runs as root")
                uid, gid, who = 0, 0, "root"
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            with contextlib.suppress(FileNotFoundError):
                sock_path.unlink()
            listener.bind(str(sock_path))
            self._sockets.append(sock_path)
            os.chown(sock_path, *self._qemu_ids())
            os.chmod(sock_path, 0o600)
            listener.listen(1)
            daemon = core.Daemon(binary, share, uid, gid, listener.fileno())
            log = self._log(index)
            proc = await trio.to_thread.run_sync(_spawn, daemon, log)
        finally:
            listener.close()
        self._procs.append(proc)
        journal.pids.append([proc.pid, jr.process_start_time(self.paths, proc.pid) or 0])
        journal.save()
        with trio.move_on_after(READY_TIMEOUT):
            while READY_LINE not in log.read_text(errors="replace"):
                if proc.poll() is not None:
                    break
                await trio.sleep(0.05)
        text = log.read_text(errors="replace")
        if READY_LINE not in text:
            raise DeskError(
                f"share[{index}]: virtiofsd for {share.path} (as {who}) "
                + (f"exited with status {proc.returncode}" if proc.poll() is not None
                   else f"did not start within {READY_TIMEOUT:g} s")
                + f": {text.strip()[-500:] or 'no output'}",
                fix=f"the folder must be readable by {who}"
                + ("" if share.readonly else " and writable")
                + " (vm.user where set, else the folder's owner)",
            )
        mode = "read-only" if share.readonly else "read-write"
        self.report(f"share: {share.path} as tag {share.tag!r} ({mode}, virtiofsd as {who}, "
                    f"pid {proc.pid}); in a Linux guest: mount -t virtiofs {share.tag} /mnt")

    def _log(self, index: int) -> Path:
        return self.paths.session_dir(self.profile.name) / f"virtiofsd-{index}.log"

    def note_qemu_pid(self, pid: int) -> None:
        self._hold.note_qemu_pid(pid)

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return None

    async def release(self) -> None:
        """After QEMU has exited: each daemon ends by itself; one that does not is ended."""
        for proc in self._procs:
            for sig in (None, signal.SIGTERM, signal.SIGKILL):
                if sig is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, sig)
                if await trio.to_thread.run_sync(_wait, proc):
                    break
        self._procs = []
        for sock in self._sockets:  # the log beside the run dir goes too: it is removed
            with contextlib.suppress(FileNotFoundError):
                sock.unlink()
        for index in range(len(self.profile.shares)):
            with contextlib.suppress(FileNotFoundError):
                self._log(index).unlink()
        self._sockets = []
        self._hold.end()

    def status(self) -> JsonObject:
        out = []
        for share, proc in zip(self.profile.shares, self._procs, strict=False):
            out.append({"tag": share.tag, "path": str(share.path), "readonly": share.readonly,
                        "virtiofsd": proc.pid, "running": proc.poll() is None})
        return {"shares": out}
