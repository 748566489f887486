"""Who a root session lets in, read from the passwd and group databases (no trio).

:func:`resolve_access` turns the profile's ``[control] users`` and the
``handoff`` group into the :class:`~handoff.control.access.ControlAccess`
the session's user sockets (:mod:`handoff.control.users`) admit. It runs
before anything changes (an unknown user refuses the profile), also before
trio is imported (:mod:`handoff.session.early`).
"""

from __future__ import annotations

import grp
import pwd
from collections.abc import Mapping

from handoff.base.errors import ProfileError
from handoff.control.access import CONTROL_GROUP, ControlAccess, control_access
from handoff.profile import Profile

__all__ = ["resolve_access"]


def resolve_access(profile: Profile, environ: Mapping[str, str]) -> ControlAccess:
    """The users a root session lets in: its starter, ``[control] users``, the group."""
    uids = []
    for index, name in enumerate(profile.control.users):
        try:
            uids.append(pwd.getpwnam(name).pw_uid)
        except KeyError:
            raise ProfileError(
                f"the user {name!r} does not exist on this host",
                path=str(profile.source), key=f"control.users[{index}]",
                fix=f"create the account, or remove {name!r} from [control] users",
            ) from None
    try:
        group = grp.getgrnam(CONTROL_GROUP)
    except KeyError:
        return control_access(environ, uids)
    members = {pwd.getpwnam(m).pw_uid for m in group.gr_mem if _exists(m)}
    members |= {e.pw_uid for e in pwd.getpwall() if e.pw_gid == group.gr_gid}
    return control_access(environ, uids, (group.gr_gid, members))


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True
