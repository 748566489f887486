"""The control socket's vocabulary, shared by the session and its clients. Pure.

What travels on the wire is JSON text; these are the typed values both ends
parse it into: why a request failed (:class:`ControlErrorCode`) and where
``switch`` sends keyboard and mouse (:class:`SwitchTarget`). The input
router decides on these values, so this module imports nothing that does I/O.
"""

from __future__ import annotations

from enum import Enum

from handoff.errors import InputError

__all__ = ["MAX_LINE", "ControlErrorCode", "SwitchTarget", "switch_target"]

#: Longest request line accepted; a client sending more is disconnected.
MAX_LINE = 64 * 1024

class ControlErrorCode(Enum):
    """Why a session refused a request (the ``code`` of an ``ok: false`` answer)."""

    UNKNOWN_COMMAND = "unknown-command"
    BAD_REQUEST = "bad-request"
    FAILED = "failed"
    NOT_ALLOWED = "not-allowed"


class SwitchTarget(Enum):
    """Where ``switch`` sends keyboard and mouse (its ``mode``; a string on the wire)."""

    HOST = "host"
    GUEST = "guest"
    TOGGLE = "toggle"


def switch_target(value: object) -> SwitchTarget:
    """A request's ``mode`` → :class:`SwitchTarget`; raises InputError naming the choices."""
    for target in SwitchTarget:
        if value == target.value:
            return target
    choices = ", ".join(t.value for t in SwitchTarget)
    raise InputError(
        f"switch: mode {value!r} is not one of {choices}",
        fix="handoff switch [host|guest|toggle]",
    )
