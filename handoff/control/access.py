"""Who may use a root session's control socket, and for what. Pure.

A session run as root (``sudo handoff run``, ``pkexec``, the systemd unit)
lets the desktop user switch from their own session: the user who started it
(``SUDO_UID``/``PKEXEC_UID``), the profile's ``[control] users`` and the
members of the ``handoff`` group may run :data:`USER_COMMANDS`; everything
else (the session's other commands; ``recover``, ``detach``, ``attach``,
which need root on the host anyway) stays root's. The edge
(:mod:`handoff.control.users`) gives each allowed uid a socket only it can
connect to and checks the peer's credentials on every connection with
:func:`peer_allowed`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from handoff.control.protocol import Command

#: The control commands a desktop user may run for a root session (today: all of them;
#: a command added to the vocabulary later is root's until it is listed here).
USER_COMMANDS = frozenset({Command.STATUS, Command.SWITCH, Command.GPU, Command.STOP})
#: The group whose members may control every root session (the systemd unit's case).
CONTROL_GROUP = "handoff"
#: Environment variables that name the user who started a root session.
STARTER_VARIABLES = ("SUDO_UID", "PKEXEC_UID")


@dataclass(frozen=True)
class ControlAccess:
    """The uids (besides root) with a socket of their own, and the group's gid and members."""

    uids: frozenset[int] = frozenset()
    group_gid: int | None = None
    group_uids: frozenset[int] = frozenset()

    @property
    def anyone(self) -> bool:
        """Whether any user socket is needed at all."""
        return bool(self.uids) or self.group_gid is not None


def starter_uid(environ: Mapping[str, str]) -> int | None:
    """The ordinary user who ran ``sudo``/``pkexec`` (None: none, or root itself)."""
    for variable in STARTER_VARIABLES:
        value = environ.get(variable, "").strip()
        if value.isdigit() and int(value) != 0:
            return int(value)
    return None


def control_access(
    environ: Mapping[str, str], named_uids: Iterable[int],
    group: tuple[int, Iterable[int]] | None = None,
) -> ControlAccess:
    """The access a root session grants: its starter, ``[control] users``, the group."""
    uids = {uid for uid in named_uids if uid != 0}
    starter = starter_uid(environ)
    if starter is not None:
        uids.add(starter)
    if group is None:
        return ControlAccess(frozenset(uids))
    gid, members = group
    return ControlAccess(frozenset(uids), gid, frozenset(members))


def peer_allowed(access: ControlAccess, socket_uid: int | None, peer_uid: int) -> bool:
    """May ``peer_uid`` use the user socket of ``socket_uid`` (None: the group's socket)?"""
    if peer_uid == 0:
        return True
    if socket_uid is None:
        return peer_uid in access.group_uids
    return peer_uid == socket_uid and socket_uid in access.uids


def user_may(command: object) -> bool:
    """Whether a desktop user may run ``command`` (the rest is root's)."""
    return isinstance(command, str) and command in {c.value for c in USER_COMMANDS}
