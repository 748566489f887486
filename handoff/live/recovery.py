"""The live groups' part of `handoff recover`: a live group's journal, finished.

A supervisor SIGKILLed in the middle of either direction leaves the live
group's journal (its ``live`` step says which way it was going). QEMU does
not die with it (QMP was the supervisor's socket; QEMU keeps running):

- QEMU alive and the group's /dev/vfio/N still open: the devices are in the
  guest (not yet deleted, or already added). They stay there; the journal
  stays for the QEMU's end.
- QEMU alive but the group closed: QEMU no longer uses them (every
  DEVICE_DELETED came, or no device_add happened): they go to the host.
- QEMU gone: whatever the step, the devices go to the host.

:func:`decide` is that rule (pure); :func:`live_recoverer` applies it to the
device journals with a live step, returned by the GPU engine.
"""

from __future__ import annotations

import enum

from handoff import journal as jr
from handoff.journal.record import device_recoverer, qemu_in_use
from handoff.journal.recover import Recoverer
from handoff.pci.engine import Engine
from handoff.pci.holders import vfio_group_users
from handoff.pci.sysfs import vfio_group_node

__all__ = ["LiveRecovery", "decide", "live_recoverer"]


class LiveRecovery(enum.Enum):
    LEAVE_IN_GUEST = "leave-in-guest"
    TO_HOST = "to-host"


def decide(*, qemu_alive: bool, group_open: bool) -> LiveRecovery:
    """The action for one live journal (its step only changes what is reported)."""
    if qemu_alive and group_open:
        return LiveRecovery.LEAVE_IN_GUEST
    return LiveRecovery.TO_HOST


def _in_use(engine: Engine, journal: jr.Journal) -> str | None:
    running = qemu_in_use(engine.paths, journal)
    group_open = any(
        vfio_group_users(engine.paths, vfio_group_node(engine.paths, group)) is not None
        for group in journal.groups
    )
    if decide(qemu_alive=running is not None, group_open=group_open) is LiveRecovery.TO_HOST:
        return None
    return running


def live_recoverer(engine: Engine) -> Recoverer[jr.Journal]:
    """Device journals with a live step: in the guest while QEMU holds them, else returned."""
    return device_recoverer(
        engine.paths, "live GPU",
        wants=lambda journal: journal.live is not None,
        in_use=lambda journal: _in_use(engine, journal),
        finish=engine.give_back,
    )
