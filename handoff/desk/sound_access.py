"""[sound] user with vm.user: QEMU's account gets just enough of the user's sound server.

The server's socket sits in /run/user/UID/pulse, both directories the user's
alone (0700). For QEMU running as ``vm.user`` the resource adds POSIX ACL
entries (``setfacl``): search (x) on the two directories, read-write on the
socket, each recorded in the desk journal (``<profile>+sound.json``) before it
is added and removed after QEMU has exited (or by ``handoff recover``); an
entry vm.user already had is left alone and not recorded. The user's cookie
is copied into QEMU's 0700 socket directory, owned by vm.user (it goes with
that directory), and QEMU's ``PULSE_COOKIE`` names the copy.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import trio

from handoff.base.errors import DeskError
from handoff.base.host import HostPaths, qemu_account
from handoff.base.run_layout import qemu_socket_dir
from handoff.desk.journal import DeskHold
from handoff.desk.sound import COOKIE_COPY
from handoff.desk.sound_host import read_sound_server
from handoff.profile import Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle


def has_entry(path: Path, user: str) -> bool:
    """Whether ``path``'s ACL already has a named entry for ``user``."""
    shown = subprocess.run(["getfacl", "--absolute-names", "--omit-header", str(path)],
                           capture_output=True, text=True, check=False).stdout
    return any(line.startswith(f"user:{user}:") for line in shown.splitlines())


def add_acl(path: Path, user: str, perms: str) -> None:
    """``setfacl -m u:USER:PERMS PATH``, or a DeskError with the fix."""
    result = subprocess.run(["setfacl", "-m", f"u:{user}:{perms}", str(path)],
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise DeskError(
            f"sound.user: cannot give {user} access to {path}: {result.stderr.strip()}",
            fix="install the acl package (setfacl) and use a filesystem with POSIX ACLs for "
            "/run/user (tmpfs has them), or remove vm.user",
        )


class SoundAccess:
    """The ``sound-access`` resource (:class:`handoff.session.resources.HostResource`)."""

    name = "sound-access"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, report: Callable[[str], None] = print
    ) -> None:
        self.profile = profile
        self.paths = paths
        self.report = report
        self._hold = DeskHold(paths)

    @property
    def memlock_bytes(self) -> int | None:
        return None

    async def acquire(self) -> None:
        await trio.to_thread.run_sync(self._grant)

    def _grant(self) -> None:
        server = read_sound_server(self.profile)
        user = self.profile.vm.user
        if server is None or not server.reachable or user is None:
            return  # no server: the plan gave QEMU the silent driver
        account = qemu_account(user)
        name = self.profile.name
        journal = self._hold.take(name, "sound", f"the sound access of {name}")
        try:
            sock = server.socket
            for path, perms in ((sock.parent.parent, "x"), (sock.parent, "x"), (sock, "rw")):
                if has_entry(path, user):
                    continue
                journal.acls.append([str(path), user])
                journal.save()  # write-ahead
                add_acl(path, user, perms)
            if server.cookie is not None:
                copy = qemu_socket_dir(self.paths, name) / COOKIE_COPY
                shutil.copyfile(server.cookie, copy)
                os.chown(copy, account.pw_uid, account.pw_gid)
                os.chmod(copy, 0o600)
        except BaseException:
            self._undo()
            raise
        self.report(f"sound: {user} may reach {server.user}'s server {server.socket} while the "
                    "VM runs")

    def _undo(self) -> None:
        self._hold.end()

    def note_qemu_pid(self, pid: int) -> None:
        self._hold.note_qemu_pid(pid)

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return None

    async def release(self) -> None:
        await trio.to_thread.run_sync(self._undo)

    def status(self) -> JsonObject:
        journal = self._hold.journal
        return {"acls": [f"{u}: {p}" for p, u in journal.acls] if journal else []}
