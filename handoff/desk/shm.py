"""Looking Glass's memory as a host resource: the shm file made, or /dev/kvmfrN checked.

shm: ``/dev/shm/looking-glass-NAME`` is made before QEMU starts with the
exact size, owned by ``looking_glass.owner`` (the client's user), group
QEMU's group, mode 0660, so both map it and nobody else; whatever was there
(a stale file of another size or owner, a symlink) is removed first, and the
new file is created with O_EXCL|O_NOFOLLOW, so no link is ever followed. The
path is journaled (:mod:`handoff.desk.journal`) before anything is made and
removed after QEMU has exited, or by ``handoff recover``.

kvmfr: nothing is made; /dev/kvmfrN must be the module's character device
with at least the size (``static_size_mb``), or the start is refused with
nothing changed (QEMU would make a plain file there).
"""

from __future__ import annotations

import contextlib
import os
import pwd
import stat
from collections.abc import Callable
from pathlib import Path

import trio

from handoff.base.errors import DeskError
from handoff.base.host import HostPaths
from handoff.desk import looking_glass as lg_core
from handoff.desk.journal import DeskHold
from handoff.profile import LookingGlassDevice, Profile
from handoff.session.resources import ControlRegistry, JsonObject, VmHandle

_KINDS = {
    stat.S_IFREG: "regular file", stat.S_IFDIR: "directory", stat.S_IFLNK: "symlink",
    stat.S_IFBLK: "block device", stat.S_IFIFO: "fifo", stat.S_IFSOCK: "socket",
}


def read_kvmfr(paths: HostPaths, path: Path) -> lg_core.KvmfrFacts:
    """What /dev/kvmfrN is, which driver its major belongs to, the module's sizes."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        kind, driver = "missing", None
    else:
        fmt = stat.S_IFMT(st.st_mode)
        kind = "char" if fmt == stat.S_IFCHR else _KINDS.get(fmt, "special file")
        driver = _char_driver(paths, os.major(st.st_rdev)) if kind == "char" else None
    sizes: tuple[int, ...] = ()
    param = paths.sys / "module" / "kvmfr" / "parameters" / "static_size_mb"
    with contextlib.suppress(OSError, ValueError):
        text = param.read_text().strip()
        sizes = tuple(int(v) for v in text.split(",") if v.strip())
    return lg_core.KvmfrFacts(kind, driver, sizes)


def _char_driver(paths: HostPaths, major: int) -> str | None:
    """The name /proc/devices gives a character major."""
    try:
        lines = (paths.proc / "devices").read_text().splitlines()
    except OSError:
        return None
    for line in lines:
        if line.startswith("Block"):
            break
        parts = line.split()
        if len(parts) == 2 and parts[0] == str(major):
            return parts[1]
    return None


def _account(key: str, user: str, fix: str) -> pwd.struct_passwd:
    try:
        return pwd.getpwnam(user)
    except KeyError:
        raise DeskError(f"{key}: the user {user!r} does not exist on this host", fix=fix) from None


def qemu_gid(profile: Profile) -> int:
    """QEMU's group: vm.user's primary group, else the supervisor's."""
    if profile.vm.user is None:
        return os.getegid()
    return _account("vm.user", profile.vm.user, "create the user or remove vm.user").pw_gid


class LookingGlassShm:
    """The ``looking-glass`` resource (:class:`handoff.session.resources.HostResource`)."""

    name = "looking-glass"

    def __init__(
        self, profile: Profile, paths: HostPaths, *, report: Callable[[str], None] = print
    ) -> None:
        self.profile = profile
        self.paths = paths
        self.report = report
        lg = profile.looking_glass
        self.lg = lg
        self.path = lg_core.memory_path(lg, paths.dev, profile.name)
        self.size_mib = lg_core.size_mib(lg)
        self._hold = DeskHold(paths)
        self._made: tuple[int, int] | None = None  # (st_dev, st_ino) of the file we made

    @property
    def memlock_bytes(self) -> int | None:
        return None

    @property
    def client(self) -> str:
        return lg_core.client_command(self.path)

    def check(self) -> None:
        """The refusals, before anything changes (kvmfr's device; the owner's account)."""
        lg = self.lg
        if lg.device is LookingGlassDevice.KVMFR:
            problem = lg_core.kvmfr_problem(lg, self.path, read_kvmfr(self.paths, self.path))
            if problem is not None:
                raise DeskError(f"looking_glass: {problem}", fix=lg_core.kvmfr_fix(lg, lg.owner))
            return
        assert lg.owner is not None, "parse_looking_glass requires owner for shm"
        _account("looking_glass.owner", lg.owner,
                 "write the desktop user who runs looking-glass-client (`id -un` in their "
                 "session), or create the account")

    async def acquire(self) -> None:
        self.check()
        if self.lg.device is LookingGlassDevice.SHM:
            await trio.to_thread.run_sync(self._make)
        self.report(f"Looking Glass: {self.path} ({self.size_mib} MiB); on the desktop run: "
                    f"{self.client}")

    def _make(self) -> None:
        owner = self.lg.owner
        assert owner is not None
        uid = pwd.getpwnam(owner).pw_uid
        gid = qemu_gid(self.profile)
        name = self.profile.name
        try:
            journal = self._hold.take(name, "", f"the Looking Glass file of {name}")
            journal.files.append(str(self.path))
            journal.save()  # write-ahead: before the file is touched
            self._create(uid, gid)
        except BaseException:
            self._undo()
            raise

    def _create(self, uid: int, gid: int) -> None:
        path = self.path
        try:
            with contextlib.suppress(FileNotFoundError):
                old = os.lstat(path)
                os.unlink(path)
                self.report(f"Looking Glass: replaced a stale {path} ({old.st_size >> 20} MiB, "
                            f"uid {old.st_uid})")
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                         0o600)
            try:
                os.ftruncate(fd, self.size_mib * lg_core.MIB)
                os.fchown(fd, uid, gid)
                os.fchmod(fd, 0o660)
                st = os.fstat(fd)
                self._made = (st.st_dev, st.st_ino)
            finally:
                os.close(fd)
        except OSError as exc:
            raise DeskError(
                f"looking_glass: cannot make {path} ({self.size_mib} MiB, owner "
                f"{self.lg.owner}): {exc.strerror}",
                fix="run handoff as root (it hands the file to the owner), and check that "
                f"{path.parent} is a writable tmpfs with {self.size_mib} MiB free "
                f"(df {path.parent})",
            ) from exc

    def _undo(self) -> None:
        """Remove our file (only the one we made), the journal, the lock."""
        if self._made is not None:
            with contextlib.suppress(FileNotFoundError):
                st = os.lstat(self.path)
                if (st.st_dev, st.st_ino) == self._made:
                    os.unlink(self.path)
            self._made = None
        self._hold.end()

    def note_qemu_pid(self, pid: int) -> None:
        self._hold.note_qemu_pid(pid)

    async def vm_started(
        self, vm: VmHandle, nursery: trio.Nursery, control: ControlRegistry
    ) -> None:
        return None

    async def release(self) -> None:
        self._undo()

    def status(self) -> JsonObject:
        return {
            "device": self.lg.device.value,
            "memory": str(self.path),
            "size_mib": self.size_mib,
            "owner": self.lg.owner,
            "client": self.client,
        }
