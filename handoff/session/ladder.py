"""The shutdown ladder: bring QEMU down one bounded rung at a time.

The guest's power-off (``vm.shutdown_timeout``): ``guest-shutdown`` through the
guest agent when the profile has one and it answers ``guest-ping`` in time,
else ACPI ``system_powerdown`` (the status line says which) →
``quit`` (:data:`QUIT_TIMEOUT`) → SIGTERM (:data:`SIGTERM_TIMEOUT` +
:data:`SIGTERM_TIMEOUT_PER_DEVICE` per passthrough device: libvirt's rule, a
GPU reset can take seconds) → SIGKILL (:data:`SIGKILL_TIMEOUT`). A second stop
request (second Ctrl-C, ``handoff stop --force``) cancels the guest's rung.

It only talks to QEMU (its process and its monitor, through two small
protocols) and never touches a host resource: devices are returned by the
session after the ladder has seen QEMU exit. Every wait is bounded, so the
session's shielded cleanup cannot hang here.
"""

from __future__ import annotations

import enum
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from handoff.base.errors import QmpError, SessionError
from handoff.profile import Profile

__all__ = [
    "QUIT_TIMEOUT",
    "SIGKILL_TIMEOUT",
    "SIGTERM_TIMEOUT",
    "SIGTERM_TIMEOUT_PER_DEVICE",
    "LadderAgent",
    "LadderMonitor",
    "LadderProcess",
    "LadderTimeouts",
    "Rung",
    "shutdown_ladder",
]

log = logging.getLogger(__name__)

#: Seconds QEMU gets to exit after the QMP ``quit`` command.
QUIT_TIMEOUT = 30.0
#: Seconds QEMU gets to exit after SIGTERM, plus the per-device allowance below.
SIGTERM_TIMEOUT = 10.0
#: Extra SIGTERM seconds per passthrough device (libvirt: device reset takes time).
SIGTERM_TIMEOUT_PER_DEVICE = 2.0
#: Seconds to wait for the kernel to reap QEMU after SIGKILL (it may be in D state).
SIGKILL_TIMEOUT = 60.0


@dataclass(frozen=True)
class LadderTimeouts:
    """Bounds of each rung of the shutdown ladder, in seconds."""

    powerdown: float
    quit: float = QUIT_TIMEOUT
    sigterm: float = SIGTERM_TIMEOUT
    sigkill: float = SIGKILL_TIMEOUT

    @classmethod
    def for_profile(cls, profile: Profile) -> LadderTimeouts:
        return cls(
            powerdown=profile.vm.shutdown_timeout,
            sigterm=SIGTERM_TIMEOUT + SIGTERM_TIMEOUT_PER_DEVICE * len(profile.passthrough),
        )


class Rung(enum.Enum):
    """The rungs of the shutdown ladder, in the order they act."""

    POWERDOWN = "powerdown"
    QUIT = "quit"
    SIGTERM = "sigterm"
    SIGKILL = "sigkill"


class LadderProcess(Protocol):
    """What the ladder needs of QEMU's process (a :class:`QemuProcess`)."""

    @property
    def pid(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    async def wait(self) -> int: ...

    def terminate(self) -> None: ...

    def kill(self) -> None: ...


class LadderMonitor(Protocol):
    """What the ladder needs of QMP (a :class:`QmpConnection`)."""

    @property
    def connected(self) -> bool: ...

    async def execute(
        self, command: str, arguments: Mapping[str, object] | None = None
    ) -> object: ...


class LadderAgent(Protocol):
    """What the ladder needs of the guest agent (a :class:`handoff.qemu.agent.GuestAgent`)."""

    async def request_shutdown(self) -> bool:
        """guest-shutdown if the agent answers guest-ping within its bound; True if sent."""
        ...


def _no_hook(_: Rung) -> None:
    pass


def _exited(process: LadderProcess) -> bool:
    return process.returncode is not None


async def _wait_exit(process: LadderProcess, seconds: float) -> bool:
    with trio.move_on_after(seconds):
        await process.wait()
    return _exited(process)


async def shutdown_ladder(
    process: LadderProcess,
    qmp: LadderMonitor | None,
    timeouts: LadderTimeouts,
    *,
    grace: trio.CancelScope | None,
    report: Callable[[str], None],
    on_rung: Callable[[Rung], None] = _no_hook,
    agent: LadderAgent | None = None,
) -> None:
    """Bring QEMU down, one bounded rung at a time, until it has exited.

    The guest's power-off rung runs inside ``grace`` (cancelling it stops the
    wait for the guest: a second Ctrl-C); None skips that rung. ``on_rung``
    hears each rung before it acts. ``agent``: the guest's rung asks the guest agent
    first. Raises SessionError if QEMU survives SIGKILL.
    """
    if _exited(process):
        return
    t = timeouts
    if grace is not None and qmp is not None and qmp.connected:
        on_rung(Rung.POWERDOWN)
        with grace:
            # One bound for the requests and the wait: a wedged QEMU
            # may not even answer system_powerdown.
            with trio.move_on_after(t.powerdown):
                asked = False
                if agent is not None:  # at most half the guest's time: ACPI gets the rest
                    with trio.move_on_after(t.powerdown / 2):
                        asked = await agent.request_shutdown()
                if asked:
                    report(
                        f"asking the guest to power off through its agent (guest-shutdown, "
                        f"up to {t.powerdown:g} s)"
                    )
                else:
                    if agent is not None:
                        report("the guest agent does not answer guest-ping: using ACPI")
                    report(f"asking the guest to power off (up to {t.powerdown:g} s)")
                    try:
                        await qmp.execute("system_powerdown")
                    except QmpError as exc:
                        log.debug("system_powerdown: %s", exc)
                await process.wait()
            if _exited(process):
                return
            report(f"the guest did not power off within {t.powerdown:g} s")
        if _exited(process):
            return
    if qmp is not None and qmp.connected:
        on_rung(Rung.QUIT)
        report(f"asking QEMU to quit (up to {t.quit:g} s)")
        with trio.move_on_after(t.quit):
            try:
                await qmp.execute("quit")
            except QmpError as exc:
                log.debug("quit: %s", exc)
            await process.wait()
        if _exited(process):
            return
    on_rung(Rung.SIGTERM)
    report(f"sending QEMU SIGTERM (up to {t.sigterm:g} s)")
    process.terminate()
    if await _wait_exit(process, t.sigterm):
        return
    on_rung(Rung.SIGKILL)
    report(f"sending QEMU SIGKILL (up to {t.sigkill:g} s)")
    process.kill()
    if not await _wait_exit(process, t.sigkill):
        raise SessionError(
            f"QEMU (pid {process.pid}) survives SIGKILL after {t.sigkill:g} s: it is stuck "
            "in the kernel (D state)",
            fix=f"check `cat /proc/{process.pid}/stack`; devices are returned once it exits "
            "(`handoff recover`)",
        )
