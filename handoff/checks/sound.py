"""``[sound] user``: the desktop user's sound server, for ``handoff doctor`` (read-only).

The same reading ``run`` makes (:mod:`handoff.desk.sound_host`): no server is
a warning (the VM runs without sound and says why), an unknown user a failure.
"""

from __future__ import annotations

from handoff.checks import Check, fail, ok, warn
from handoff.desk.sound_host import read_sound_server
from handoff.profile import Profile


def check_sound_server(profile: Profile) -> list[Check]:
    if profile.sound.user is None:
        return []
    server = read_sound_server(profile, strict=False)
    if server is None:
        return [fail("sound-server", f"sound.user {profile.sound.user!r} does not exist",
                     "write the desktop user who hears the guest (`id -un` in their session)")]
    note = server.note()
    if note is not None:
        return [warn("sound-server", note.removeprefix("no sound on the host: "),
                     f"start {server.user}'s desktop session (PulseAudio or pipewire-pulse "
                     f"listens on {server.socket}); until then the VM runs without sound")]
    cookie = f", cookie {server.cookie}" if server.cookie else ", no cookie (pipewire-pulse)"
    return [ok("sound-server", f"{server.socket} answers ({server.user}{cookie}); QEMU plays "
                               f"there with {profile.sound.latency_ms} ms latency")]
