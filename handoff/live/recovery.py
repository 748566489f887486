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
    pid = journal.qemu_pid
    alive = pid is not None and jr.process_alive(engine.paths, pid, journal.qemu_start_time)
    group_open = any(
        vfio_group_users(engine.paths, vfio_group_node(engine.paths, group)) is not None
        for group in journal.groups
    )
    if decide(qemu_alive=alive, group_open=group_open) is LiveRecovery.TO_HOST:
        return None
    return (
        f"its QEMU (pid {pid}) is still running and uses the devices; stop it (`kill {pid}`), "
        "then run `handoff recover` again"
    )


def live_recoverer(engine: Engine) -> Recoverer[jr.Journal]:
    """Device journals with a live step: in the guest while QEMU holds them, else returned."""
    paths = engine.paths

    async def finish(journal: jr.Journal) -> list[str]:
        return await engine.give_back(journal)

    return Recoverer(
        name="live GPU",
        journals=lambda: jr.device_journals(paths),
        load=lambda path: jr.Journal.load(path, paths.proc),
        wants=lambda journal: journal.live is not None,
        lock=lambda journal: jr.lock_journal(paths, journal, "handoff recover"),
        in_use=lambda journal: _in_use(engine, journal),
        finish=finish,
        after_reboot=jr.DEVICES_AFTER_REBOOT,
    )
