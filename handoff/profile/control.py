"""``[control]``: parsing the users who may control a root session. Pure.

The accounts' existence is a host fact, checked at preflight
(:func:`handoff.checks.profile_files.check_profile_on_host`); here only the
shape: an array of account names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from handoff.profile.model import SECTION_KEYS, Control

if TYPE_CHECKING:
    from handoff.profile.parse import _Reader

#: A POSIX-ish account name (useradd's default NAME_REGEX, plus dots and capitals).
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]*\$?$")


def parse_control(r: _Reader, data: Mapping[str, Any]) -> Control:
    """``[control] users = ["alice", ...]``."""
    t = r.table(data, "control")
    r.check_keys(t, "control", SECTION_KEYS["control"])
    users = r.strings(
        t, "control", "users", expected="user names", example='["alice"]'
    ) or ()
    for index, user in enumerate(users):
        if not _USER_NAME.match(user) or len(user) > 32:
            raise r.error(
                f"control.users[{index}]",
                f'found "{user}"; expected an account name such as "alice"',
                "write the login name (`id -un` as that user), not a uid or a full name",
            )
    if len(set(users)) != len(users):
        raise r.error(
            "control.users", "found a user named twice; expected each user once",
            "remove the repeated name",
        )
    return Control(users=tuple(users))
