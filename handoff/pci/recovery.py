"""`handoff recover`'s policy: which journals left behind to finish, and which to leave.

A journal is what a supervisor that died (SIGKILL, a crash, a power cut
without reboot) left of a hand-off. This module decides, per journal,
whether to discard it (an earlier boot: the reboot already reset every
binding), leave it (its groups are locked by a live handoff, or its
recorded QEMU still runs), or finish it (the engine returns its devices).
It never writes sysfs itself: returning goes through
:meth:`handoff.pci.engine.Engine.give_back`, and host settings a tuning
journal records (hugepage pool, governors, units' AllowedCPUs) go back through
:func:`handoff.tune.settings.restore_settings`, under the same rules
(earlier boot: discarded, the reboot reset them; locked or QEMU alive: left).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from handoff.errors import HandoffError
from handoff.pci import journal as jr
from handoff.pci.engine import Engine
from handoff.pci.holders import vfio_group_users
from handoff.pci.sysfs import read_boot_id, vfio_group_node
from handoff.tune.settings import Systemd, restore_settings


@dataclass
class RecoveryReport:
    """What `handoff recover` did: devices returned, journals it had to leave alone."""

    returned: list[str] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.refused and not self.failed

    def lines(self) -> list[str]:
        out = [f"returned: {note}" for note in self.returned]
        out += [f"discarded: {note}" for note in self.discarded]
        out += [f"left alone: {note}" for note in self.refused]
        out += [f"FAILED: {note}" for note in self.failed]
        return out or ["nothing to recover: no hand-off journal"]


async def recover(
    engine: Engine,
    *,
    kinds: Iterable[jr.Kind] = tuple(jr.Kind),
    groups: set[int] | None = None,
    only: Path | None = None,
) -> RecoveryReport:
    """Finish every journal left by a supervisor that died; return its devices.

    A journal whose groups are still locked belongs to a live handoff and is
    left alone; one whose recorded QEMU is still running is left alone too
    (its devices are in use: stop that QEMU first). A journal from an earlier
    boot is discarded: the reboot already reset every binding. Only journals
    of ``kinds`` (and, given ``groups``, touching one of them; given ``only``,
    that one file) are finished.
    """
    report = RecoveryReport()
    wanted = frozenset(kinds)
    paths = engine.paths
    boot_id = read_boot_id(paths)
    for path in jr.list_journals(paths):
        if only is not None and path != only:
            continue
        try:
            journal = jr.Journal.load(path)
        except HandoffError as exc:
            report.failed.append(str(exc))
            continue
        if journal.boot_id != boot_id:
            journal.remove()
            report.discarded.append(
                f"{path} is from an earlier boot ({journal.boot_id}): the reboot already "
                "returned every device to the kernel's default driver (and every setting "
                "to its boot value)"
            )
            continue
        if journal.kind not in wanted:
            continue
        if groups is not None and not groups.intersection(journal.groups):
            continue
        await _finish(engine, journal, report)
    return report


def _groups_open(engine: Engine, journal: jr.Journal) -> bool:
    from handoff.live.recovery import LiveRecovery, decide

    open_ = any(
        vfio_group_users(engine.paths, vfio_group_node(engine.paths, group)) is not None
        for group in journal.groups
    )
    return decide(qemu_alive=True, group_open=open_) is LiveRecovery.LEAVE_IN_GUEST


async def _finish(engine: Engine, journal: jr.Journal, report: RecoveryReport) -> None:
    """Return one dead supervisor's devices, under its groups' locks."""
    try:
        locks = jr.lock_journal(engine.paths, journal, "handoff recover")
    except HandoffError as exc:
        report.refused.append(f"{journal.path}: {exc.message}")
        return
    try:
        pid = journal.qemu_pid
        alive = pid is not None and jr.process_alive(engine.paths, pid, journal.qemu_start_time)
        if alive and journal.live is not None and not _groups_open(engine, journal):
            # A live group QEMU no longer holds (deleted from the guest, or never
            # added): nothing uses it, it goes to the host (handoff.live.recovery).
            alive = False
        if alive:
            report.refused.append(
                f"{journal.path}: its QEMU (pid {pid}) is still running and uses the devices; "
                f"stop it (`kill {pid}`), then run `handoff recover` again"
            )
            return
        try:
            report.returned += restore_settings(journal, engine.writer, Systemd(engine.paths))
            report.returned += await engine.give_back(journal)
        except HandoffError as exc:
            report.failed.append(f"{journal.path}: {exc}")
    finally:
        locks.release()
