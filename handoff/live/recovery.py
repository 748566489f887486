"""What `handoff recover` does with a live group's journal. Pure.

A supervisor SIGKILLed in the middle of either direction leaves the live
group's journal (its ``live`` step says which way it was going). QEMU does
not die with it (QMP was the supervisor's socket; QEMU keeps running):

- QEMU alive and the group's /dev/vfio/N still open: the devices are in the
  guest (not yet deleted, or already added). They stay there; the journal
  stays for the QEMU's end.
- QEMU alive but the group closed: QEMU no longer uses them (every
  DEVICE_DELETED came, or no device_add happened): they go to the host.
- QEMU gone: whatever the step, the devices go to the host.
"""

from __future__ import annotations

import enum

__all__ = ["LiveRecovery", "decide"]


class LiveRecovery(enum.Enum):
    LEAVE_IN_GUEST = "leave-in-guest"
    TO_HOST = "to-host"


def decide(*, qemu_alive: bool, group_open: bool) -> LiveRecovery:
    """The action for one live journal (its step only changes what is reported)."""
    if qemu_alive and group_open:
        return LiveRecovery.LEAVE_IN_GUEST
    return LiveRecovery.TO_HOST
