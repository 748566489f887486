"""``[sound]``'s ``user`` and ``latency_ms`` (the desktop user's sound server). Pure.

:data:`SOUND_PARSERS` is what parse.py's field table reads the two keys with;
:func:`parse_sound_session` adds the check across keys. Whether the user
exists and runs a server are host facts (:mod:`handoff.desk.sound_host`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from handoff.profile.model import AudioBackend, Sound, Vm
from handoff.profile.reader import FieldParser, Reader, Text, Whole

MAX_LATENCY_MS = 1000
_USER = re.compile(r"^[a-z_][a-z0-9_-]{0,31}\$?$")

#: The parsers of the two keys, for ``Reader.fields`` (parse.py's [sound]).
SOUND_PARSERS: Mapping[str, FieldParser] = {
    "user": Text(
        _USER, expected='the desktop user whose sound server plays the guest, such as "alice"',
        fix='write user = "alice" (the user logged in to the desktop)',
    ),
    "latency_ms": Whole(1, MAX_LATENCY_MS),
}


def parse_sound_session(r: Reader, data: Mapping[str, Any], sound: Sound, vm: Vm) -> Sound:
    """``sound`` checked across its keys (``vm``: for refusals that concern both sections)."""
    user = sound.user
    if user is not None and sound.backend not in (AudioBackend.PULSEAUDIO,
                                                  AudioBackend.PIPEWIRE):
        raise r.error(
            "sound.user",
            f'found {user!r} with backend = "{sound.backend.value}"; a user\'s sound server '
            'is reached through backend = "pa" (PulseAudio, or PipeWire\'s pipewire-pulse)',
            'write backend = "pa", or remove user',
        )
    return sound
