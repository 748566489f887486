"""The emulated TPM as a :class:`~handoff.session.resources.HostResource`.

swtpm before QEMU, gone after.

acquire: the swtpm binaries are there (else the packages are named); the
VM's state directory exists or is created (``swtpm_setup`` into a temporary
directory beside it, given to ``vm.user``, 0700, then renamed into place: a
crash leaves no half state, only a temporary directory the next run
removes); swtpm is started in its own session (a Ctrl-C at the terminal is
the supervisor's, not swtpm's) as the user QEMU runs as, its control socket
in QEMU's 0700 socket directory, its errors appended to QEMU's log.

release: swtpm ends by itself when QEMU hangs up (``--terminate``); release
waits for that, bounded, then signals it. So swtpm never outlives QEMU: on a
guest power-off, Ctrl-C, SIGTERM or a QEMU crash the session's release
reaps it, and if the supervisor itself is killed, QEMU's end still closes
the control connection and swtpm exits on its own. The one window it
cannot cover is a supervisor killed between swtpm's start and QEMU's (no
client yet): the resource is acquired last to keep that window to the
QEMU fork (ARCHITECTURE.md, "TPM").

Never: remove, re-create or re-own an existing state directory (it holds
the guest's keys); a state that is not the VM's is refused with the fix.
"""

from __future__ import annotations

import contextlib
import logging
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from handoff.base.errors import TpmError
from handoff.base.host import HostPaths, qemu_account
from handoff.base.run_layout import QEMU_LOG, tpm_socket_path
from handoff.profile import Profile, TpmType
from handoff.qemu.process import read_log_tail
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle
from handoff.tpm.plan import (
    LOCALCA_DIR,
    PACKAGES,
    STATE_FILE,
    SWTPM,
    SWTPM_SETUP,
    StateFacts,
    StateVerdict,
    judge_state,
    localca_config,
    setup_argv,
    swtpm_argv,
)

__all__ = [
    "SWTPM_EXIT_TIMEOUT",
    "SWTPM_SELF_EXIT",
    "SWTPM_SETUP_TIMEOUT",
    "SWTPM_START_TIMEOUT",
    "Swtpm",
    "require_swtpm",
]

log = logging.getLogger(__name__)

#: Seconds swtpm_setup gets to create a state (it takes ~1.5 s; key generation).
SWTPM_SETUP_TIMEOUT = 300.0
#: Seconds swtpm gets to create its control socket.
SWTPM_START_TIMEOUT = 30.0
#: Seconds swtpm gets to exit by itself once QEMU has gone (it does at once when QEMU
#: had connected; a QEMU that failed before connecting leaves it waiting).
SWTPM_SELF_EXIT = 3.0
#: Seconds swtpm gets to exit after SIGTERM (it saves its state), then after SIGKILL.
SWTPM_EXIT_TIMEOUT = 10.0
_POLL = 0.002  # swtpm makes its socket in a few ms; a finer poll costs nothing
_SETUP_PREFIX = ".setup-"
_INSTALL = f"apt-get install {' '.join(PACKAGES)}"


def require_swtpm(profile: Profile) -> None:
    """Refuse (TpmError naming the packages) a profile with a TPM on a host without swtpm.

    Preflight calls it, so a missing package is reported before anything changes.
    """
    if profile.tpm.type is not TpmType.EMULATED:
        return
    for binary in (SWTPM, SWTPM_SETUP):
        if shutil.which(binary) is None:
            raise TpmError(
                f'{profile.source}: [tpm] type = "emulated" needs {binary}, which is not '
                "installed",
                fix=f"{_INSTALL} (or set [tpm] type = \"none\")",
            )


@dataclass(frozen=True)
class _Owner:
    """The account swtpm runs as and its state belongs to (vm.user, or ours)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...]
    switch: bool  # the child must change to this account


def _owner(user: str | None) -> _Owner:
    if user is None:
        uid = os.geteuid()
        try:
            name = pwd.getpwuid(uid).pw_name
        except KeyError:
            name = str(uid)
        return _Owner(name, uid, os.getegid(), (), False)
    entry = qemu_account(user)
    if os.geteuid() != 0 and entry.pw_uid != os.geteuid():
        raise TpmError(
            f"vm.user: running swtpm (and QEMU) as {user!r} needs root",
            fix="run handoff as root, or remove vm.user from the profile",
        )
    groups = tuple(os.getgrouplist(user, entry.pw_gid))
    return _Owner(user, entry.pw_uid, entry.pw_gid, groups, entry.pw_uid != os.geteuid())


def observe_state(state: Path) -> StateFacts:
    """What is at ``state`` now (never follows a symlink at the path itself)."""
    try:
        info = state.lstat()
    except FileNotFoundError:
        return StateFacts(exists=False)
    import stat

    is_dir = stat.S_ISDIR(info.st_mode)
    return StateFacts(
        exists=True, is_dir=is_dir, uid=info.st_uid,
        has_state=is_dir and (state / STATE_FILE).is_file(),
    )


def _refusal(state: Path, verdict: StateVerdict, facts: StateFacts, owner: _Owner) -> TpmError:
    if verdict is StateVerdict.NOT_A_DIRECTORY:
        return TpmError(
            f"tpm.state: {state} exists and is not a directory",
            fix="point [tpm] state at a directory of its own (handoff creates it), or move "
            "the file away",
        )
    if verdict is StateVerdict.NOT_A_TPM:
        return TpmError(
            f"tpm.state: {state} is a directory without a TPM 2.0 state ({STATE_FILE})",
            fix=f"remove it if it is empty (`rmdir {state}`: handoff creates the state), or "
            "point [tpm] state at the VM's own swtpm state directory",
        )
    return TpmError(
        f"tpm.state: {state} belongs to uid {facts.uid}, but swtpm runs as {owner.name} "
        f"(uid {owner.uid})",
        fix=f"give the VM's TPM state to that user: chown -R {owner.name}: {state}",
    )


def ensure_state(state: Path, vm_name: str, owner: _Owner) -> bool:
    """Create the VM's TPM state on first use; True when it was created now.

    Raises TpmError for a state that is not the VM's, and when swtpm_setup fails
    (with its output); a failed creation leaves nothing behind.
    """
    parent = state.parent
    for stale in parent.glob(f".{state.name}{_SETUP_PREFIX}*"):  # a crashed creation
        shutil.rmtree(stale, ignore_errors=True)
    facts = observe_state(state)
    verdict = judge_state(facts, owner.uid)
    if verdict is StateVerdict.USE:
        return False
    if verdict is not StateVerdict.CREATE:
        raise _refusal(state, verdict, facts, owner)
    try:
        tmp = Path(tempfile.mkdtemp(prefix=f".{state.name}{_SETUP_PREFIX}", dir=parent))
    except FileNotFoundError:
        raise TpmError(
            f"tpm.state: the directory {parent} for the TPM state does not exist",
            fix=f"create it (mkdir -p {parent}) or point [tpm] state elsewhere",
        ) from None
    except PermissionError as exc:
        raise TpmError(
            f"tpm.state: cannot create the TPM state in {parent}: {exc.strerror}",
            fix="run handoff as root, or point [tpm] state at a directory you may write",
        ) from None
    try:
        _create_state(tmp, vm_name, owner)
        os.rename(tmp, state)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return True


def _create_state(tmp: Path, vm_name: str, owner: _Owner) -> None:
    """swtpm_setup into the empty ``tmp``, then ``tmp`` given to ``owner``, 0700."""
    config = None
    if os.geteuid() != 0:  # the system's CA (/var/lib/swtpm-localca) is root's and tss's
        ca = tmp / LOCALCA_DIR
        ca.mkdir(mode=0o700)
        tool = shutil.which("swtpm_localca") or "/usr/bin/swtpm_localca"
        for name, text in localca_config(ca, tool).items():
            (ca / name).write_text(text)
        config = ca / "swtpm_setup.conf"
    argv = setup_argv(tmp, vm_name, config)
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=SWTPM_SETUP_TIMEOUT, check=False,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise TpmError(
            f"swtpm_setup did not finish within {SWTPM_SETUP_TIMEOUT:g} s",
            fix="see if the host is starved of entropy or CPU, then run again",
        ) from None
    if done.returncode != 0:
        output = (done.stdout + done.stderr).strip().splitlines()[-10:]
        shown = "\n".join(f"    {line}" for line in output)
        raise TpmError(
            f"swtpm_setup failed (exit status {done.returncode}) creating the TPM state:\n"
            f"{shown}",
            fix=f"the lines above name the cause; `{' '.join(argv)}` repeats it",
        )
    if owner.uid != os.geteuid() or owner.gid != os.getegid():
        for root, dirs, files in os.walk(tmp):
            for entry in (root, *(os.path.join(root, n) for n in dirs + files)):
                os.lchown(entry, owner.uid, owner.gid)
    os.chmod(tmp, 0o700)


class Swtpm:
    """swtpm for one session (``[tpm] type = "emulated"``)."""

    name = "tpm"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, report: Callable[[str], None]
    ) -> None:
        tpm = profile.tpm
        if tpm.type is not TpmType.EMULATED or tpm.state is None:
            raise ValueError("Swtpm needs a profile with [tpm] type = \"emulated\"")
        self.profile = profile
        self.state = tpm.state
        self.socket = tpm_socket_path(paths, profile.name)
        self.log_path = paths.session_dir(profile.name) / QEMU_LOG
        self.report = report
        self._process: trio.Process | None = None
        self._qemu_started = False

    @property
    def memlock_bytes(self) -> int | None:
        return None

    @property
    def pid(self) -> int | None:
        return self._process.pid if self._process is not None else None

    async def acquire(self) -> None:
        require_swtpm(self.profile)
        owner = _owner(self.profile.vm.user)
        if (self.state / STATE_FILE).is_file():  # the usual run: a few stat calls, inline
            created = ensure_state(self.state, self.profile.name, owner)
        else:  # swtpm_setup takes a second or more: off the event loop
            created = await trio.to_thread.run_sync(
                ensure_state, self.state, self.profile.name, owner
            )
        if created:
            self.report(f"created the VM's TPM 2.0 state in {self.state} (owner {owner.name})")
        await self._start(owner)

    async def _start(self, owner: _Owner) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()
        log_fd = os.open(
            self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            argv = swtpm_argv(self.state, self.socket, log_fd)
            if owner.switch:
                os.fchown(log_fd, owner.uid, -1)  # QEMU, the same user, appends to it too
            log.info("swtpm command: %s", " ".join(argv))
            try:
                self._process = await trio.lowlevel.open_process(
                    list(argv),
                    stdin=subprocess.DEVNULL,
                    stdout=log_fd,
                    stderr=log_fd,
                    pass_fds=(log_fd,),
                    start_new_session=True,
                    user=owner.uid if owner.switch else None,
                    group=owner.gid if owner.switch else None,
                    extra_groups=owner.groups if owner.switch else None,
                )
            except FileNotFoundError:
                raise TpmError(
                    "swtpm is not installed", fix=f"{_INSTALL} (or set [tpm] type = \"none\")"
                ) from None
        finally:
            os.close(log_fd)
        await self._wait_socket()

    async def _wait_socket(self) -> None:
        process = self._process
        assert process is not None
        with trio.move_on_after(SWTPM_START_TIMEOUT):
            while not self.socket.exists():
                if process.poll() is not None:
                    raise TpmError(
                        f"swtpm exited (status {process.returncode}) before it listened on "
                        f"{self.socket}{self._log_text()}",
                        fix=f"the lines above name the cause; check {self.state}",
                    )
                await trio.sleep(_POLL)
            self.report(f"swtpm started, pid {process.pid} (state {self.state})")
            return
        await self._stop()
        raise TpmError(
            f"swtpm did not create {self.socket} within {SWTPM_START_TIMEOUT:g} s"
            f"{self._log_text()}",
            fix="see if the host is starved of CPU, then run again",
        )

    def _log_text(self) -> str:
        lines = [
            line for line in read_log_tail(self.log_path, 200).splitlines()
            if line.startswith("swtpm")
        ][-10:]
        if not lines:
            return ""
        return "\n  swtpm's log:\n" + "\n".join(f"    {line}" for line in lines)

    def note_qemu_pid(self, pid: int) -> None:
        self._qemu_started = True

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return

    async def release(self) -> None:
        """After QEMU: swtpm has ended on its own (QEMU hung up) or is stopped now."""
        process = self._process
        if process is None or process.poll() is not None:
            return
        if self._qemu_started:
            with trio.move_on_after(SWTPM_SELF_EXIT):
                await process.wait()
            if process.poll() is not None:
                return
            self.report(f"swtpm still runs {SWTPM_SELF_EXIT:g} s after QEMU: stopping it")
        await self._stop()

    async def _stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.terminate()
        with trio.move_on_after(SWTPM_EXIT_TIMEOUT):
            await process.wait()
        if process.poll() is None:
            process.kill()
            with trio.move_on_after(SWTPM_EXIT_TIMEOUT):
                await process.wait()

    def status(self) -> JsonObject:
        process = self._process
        return {
            "state": str(self.state),
            "socket": str(self.socket),
            "pid": process.pid if process is not None else None,
            "running": process is not None and process.poll() is None,
        }
