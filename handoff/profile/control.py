"""``[control]``: parsing the users who may control a root session. Pure.

The accounts' existence is a host fact, checked when the session starts
(:func:`handoff.control.accounts.resolve_access`); here only the shape: an
array of account names.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from handoff.profile.model import Control
from handoff.profile.reader import FieldParser, Item, Reader, Texts

#: A POSIX-ish account name (useradd's default NAME_REGEX, plus dots and capitals).
_USER_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,31}\$?$")

CONTROL_KEYS: Mapping[str, FieldParser] = {
    "users": Texts(
        "user names", '["alice"]',
        Item(lambda name: _USER_NAME.match(name) is not None,
             'an account name such as "alice"',
             "write the login name (`id -un` as that user), not a uid or a full name"),
    ),
}


def parse_control(r: Reader, data: Mapping[str, Any]) -> Control:
    """``[control] users = ["alice", ...]``."""
    t = r.section(data, "control")
    chosen = Control(**r.fields(t, "control", Control, CONTROL_KEYS))
    if len(set(chosen.users)) != len(chosen.users):
        raise r.error(
            "control.users", "found a user named twice; expected each user once",
            "remove the repeated name",
        )
    return chosen
