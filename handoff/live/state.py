"""One live group's state machine, and the journal step each transition writes first. Pure.

::

    IN_GUEST --to_host--> TO_HOST_RELEASING --released--> ON_HOST
        ^                   |  (device_del, DEVICE_DELETED, engine's return)
        |                   +--refused (no DEVICE_DELETED in time)--> IN_GUEST
        |
    ON_HOST --to_guest--> TO_GUEST_ATTACHING --attached (query-pci)--> IN_GUEST
                            +--failed (preflight, vfio, device_add)--> ON_HOST

Write-ahead: the journal step of a transition is persisted before the
transition's first action (a device_del, a sysfs write), so a supervisor
killed in between leaves the journal saying which way the group was going;
:mod:`handoff.live.recovery` finishes it. ON_HOST has no journal: the
engine removes it once every device is verified back on its host driver.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

__all__ = ["TRANSITIONS", "LiveEvent", "LiveState", "LiveStep", "Transition", "transition"]


class LiveState(enum.Enum):
    IN_GUEST = "guest"
    TO_HOST_RELEASING = "to-host"
    ON_HOST = "host"
    TO_GUEST_ATTACHING = "to-guest"


class LiveEvent(enum.Enum):
    TO_HOST = "to-host"  # `handoff gpu NAME host`, the hotkey
    RELEASED = "released"  # every DEVICE_DELETED came and the group is back on its drivers
    REFUSED = "refused"  # the guest did not let go in time: nothing on the host changed
    TO_GUEST = "to-guest"
    ATTACHED = "attached"  # query-pci shows every function
    FAILED = "failed"  # preflight refused, vfio bind or device_add failed: group returned


class LiveStep(enum.StrEnum):
    """What the journal says of a live group (its ``live`` field)."""

    IN_GUEST = "in-guest"
    RELEASING = "releasing"  # device_del sent or about to be
    ATTACHING = "attaching"  # on its way to vfio-pci and device_add
    ON_HOST = "on-host"  # written only as the journal is removed (never read back)


@dataclass(frozen=True)
class Transition:
    to: LiveState
    step: LiveStep  # written to the journal before the transition's first action


TRANSITIONS: dict[tuple[LiveState, LiveEvent], Transition] = {
    (LiveState.IN_GUEST, LiveEvent.TO_HOST): Transition(
        LiveState.TO_HOST_RELEASING, LiveStep.RELEASING),
    (LiveState.TO_HOST_RELEASING, LiveEvent.RELEASED): Transition(
        LiveState.ON_HOST, LiveStep.ON_HOST),
    (LiveState.TO_HOST_RELEASING, LiveEvent.REFUSED): Transition(
        LiveState.IN_GUEST, LiveStep.IN_GUEST),
    (LiveState.ON_HOST, LiveEvent.TO_GUEST): Transition(
        LiveState.TO_GUEST_ATTACHING, LiveStep.ATTACHING),
    (LiveState.TO_GUEST_ATTACHING, LiveEvent.ATTACHED): Transition(
        LiveState.IN_GUEST, LiveStep.IN_GUEST),
    (LiveState.TO_GUEST_ATTACHING, LiveEvent.FAILED): Transition(
        LiveState.ON_HOST, LiveStep.ON_HOST),
}


def transition(state: LiveState, event: LiveEvent) -> Transition | None:
    """The transition ``event`` causes in ``state``; None: not allowed (a switch is
    under way, or the group is already there)."""
    return TRANSITIONS.get((state, event))
