"""The control socket's vocabulary, shared by the session and its clients. Pure.

What travels on the wire is JSON text; these are the typed values both ends
parse it into: the commands (:class:`Command`), the keys of requests and
results (:class:`Field`), why a request failed (:class:`ControlErrorCode`)
and where ``switch`` sends keyboard and mouse or ``gpu`` a live GPU
(:class:`Side`). The input router decides on these values, so this module
imports nothing that does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import Enum, StrEnum
from typing import Any

from handoff.base.errors import SessionError

__all__ = [
    "MAX_LINE", "SIDE_FIELD", "Command", "ControlErrorCode", "Field", "Side",
    "requested_side",
]

#: Longest request line accepted; a client sending more is disconnected.
MAX_LINE = 64 * 1024

class ControlErrorCode(Enum):
    """Why a session refused a request (the ``code`` of an ``ok: false`` answer)."""

    UNKNOWN_COMMAND = "unknown-command"
    BAD_REQUEST = "bad-request"
    FAILED = "failed"
    NOT_ALLOWED = "not-allowed"


class Command(StrEnum):
    """The control socket's commands (a request's ``command``)."""

    STATUS = "status"
    STOP = "stop"
    SWITCH = "switch"  # keyboard and mouse: the input resource
    GPU = "gpu"  # a live GPU group: the live resource


class Field(StrEnum):
    """The keys of requests and results on the wire."""

    COMMAND = "command"
    FORCE = "force"  # stop: quit QEMU instead of powering the guest down
    MODE = "mode"  # switch's target; its result's side now
    PENDING = "pending"  # switch's result: the side it goes to once every key is up
    TO = "to"  # gpu's target
    RELEASE_WITHIN = "release_within"  # gpu: seconds the guest gets to let go of it


class Side(Enum):
    """Where ``switch`` sends keyboard and mouse, and ``gpu`` a live GPU (a string on the wire)."""

    HOST = "host"
    GUEST = "guest"
    TOGGLE = "toggle"


#: The request field each command names its target in.
SIDE_FIELD = {Command.SWITCH: Field.MODE, Command.GPU: Field.TO}


def requested_side(message: Mapping[str, Any], command: Command) -> Side:
    """The target a ``switch`` or ``gpu`` request names (absent: toggle).

    Raises SessionError naming the choices.
    """
    value = message.get(SIDE_FIELD[command], Side.TOGGLE.value)
    for target in Side:
        if value == target.value:
            return target
    choices = ", ".join(t.value for t in Side)
    raise SessionError(
        f"{command.value}: {SIDE_FIELD[command].value} {value!r} is not one of {choices}",
        fix=f"handoff {command.value} NAME [host|guest|toggle]",
    )
