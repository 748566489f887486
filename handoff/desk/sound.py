"""Sound in the desktop user's session, decided: where QEMU plays, and what it needs. Pure.

``[sound] user`` names the desktop user; their PulseAudio (or PipeWire's
pipewire-pulse, which serves the same socket) listens on
``/run/user/UID/pulse/native``. QEMU, started by handoff as root, gets that
socket as the ``pa`` audiodev's ``server`` and the user's auth cookie
(``PULSE_COOKIE``: PulseAudio admits another uid only with it). With no
server there, the VM still runs: the audiodev becomes ``none`` and the
session says why.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

#: The cookie's copy for QEMU as vm.user, in QEMU's socket directory.
COOKIE_COPY = "pulse-cookie"


def server_socket(uid: int) -> Path:
    return Path(f"/run/user/{uid}/pulse/native")


def cookie_path(home: str) -> Path:
    return Path(home) / ".config" / "pulse" / "cookie"


@dataclass(frozen=True)
class SoundServer:
    """What the host said about ``user``'s sound server (read by the edge)."""

    user: str
    uid: int
    socket: Path
    reachable: bool  # something accepts connections on the socket
    reason: str  # why not, when not reachable
    cookie: Path | None  # the user's PulseAudio cookie, when there is one
    explicit: bool = True  # [sound] user: QEMU is told the socket (else it finds it itself)

    def note(self) -> str | None:
        """The session's line when the guest will have no sound on the host."""
        if self.reachable:
            return None
        if not self.explicit:
            return (f"no sound on the host: {self.reason}; the VM runs without it (set [sound] "
                    "user to the desktop user whose PulseAudio or pipewire-pulse should play it)")
        return (f"no sound on the host: {self.reason}; the VM runs without it (start {self.user}'s "
                "desktop session, or `systemctl --user start pulseaudio` / pipewire-pulse as "
                f"{self.user}, then run the VM again)")

    def environment(self, copy: Path | None = None) -> tuple[tuple[str, str], ...]:
        """QEMU's extra environment: the cookie PulseAudio asks another uid for (``copy``:
        where QEMU as vm.user reads it)."""
        if not self.reachable or self.cookie is None:
            return ()
        return (("PULSE_COOKIE", str(copy or self.cookie)),)


def pa_options(server: Path | None, latency_ms: int) -> dict[str, str]:
    """The ``pa`` audiodev's options: the server and both directions' latency (in µs)."""
    options = {"server": f"unix:{server}"} if server is not None else {}
    us = str(latency_ms * 1000)
    options |= {"in.latency": us, "out.latency": us}
    return options
