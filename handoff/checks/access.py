"""Who may open a device node or a file, and enter the directories above it: kept pure.

The supervisor (handoff) and QEMU may run as different users: handoff as
root, QEMU as the profile's ``vm.user``. Each node is checked for the user
that will open it, by the kernel's rule (owner bits, else group bits for any
of the user's groups, else other bits; root passes), without switching
users. ACLs (udev's ``uaccess``) are not read; a node that only an ACL opens
shows as a warning whose detail says so.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Identity:
    """A user as the kernel sees it for permission checks."""

    name: str
    uid: int
    gids: frozenset[int]

    @property
    def is_root(self) -> bool:
        return self.uid == 0


class UnknownUserError(LookupError):
    """The profile names a user this host does not have."""


def resolve_identity(user: str | None, euid: int) -> Identity:
    """``user`` (a name or numeric uid) or, when None, the user with ``euid``.

    Raises :class:`UnknownUserError` for a name the password database lacks.
    """
    try:
        entry = (
            pwd.getpwuid(int(user))
            if user and user.isdigit()
            else (pwd.getpwnam(user) if user else pwd.getpwuid(euid))
        )
    except KeyError as err:
        if user is None:
            # A uid without a passwd entry (containers): only its own groups.
            return Identity(str(euid), euid, frozenset({os.getegid(), *os.getgroups()}))
        raise UnknownUserError(user) from err
    gids = frozenset(os.getgrouplist(entry.pw_name, entry.pw_gid))
    return Identity(entry.pw_name, entry.pw_uid, gids)


def may_access(mode: int, owner: int, group: int, who: Identity, *, write: bool) -> bool:
    """Would the kernel let ``who`` open a node with this mode/owner/group (read, or read+write)?"""
    if who.is_root:
        return True
    if who.uid == owner:
        bits = (stat.S_IRUSR, stat.S_IWUSR)
    elif group in who.gids:
        bits = (stat.S_IRGRP, stat.S_IWGRP)
    else:
        bits = (stat.S_IROTH, stat.S_IWOTH)
    need = bits if write else bits[:1]
    return all(mode & b for b in need)


def may_enter(mode: int, owner: int, group: int, who: Identity) -> bool:
    """Would the kernel let ``who`` search (pass through) a directory with this mode/owner/group?"""
    if who.is_root:
        return True
    if who.uid == owner:
        bit = stat.S_IXUSR
    elif group in who.gids:
        bit = stat.S_IXGRP
    else:
        bit = stat.S_IXOTH
    return bool(mode & bit)


def group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def describe_node(path: Path) -> str:
    """``/dev/kvm (root:kvm 0660)`` for a detail line."""
    st = path.stat()
    return f"{path} ({user_name(st.st_uid)}:{group_name(st.st_gid)} {stat.S_IMODE(st.st_mode):04o})"


def node_access(path: Path, who: Identity, *, write: bool) -> bool:
    st = path.stat()
    return may_access(st.st_mode, st.st_uid, st.st_gid, who, write=write)
