"""The desk's part of `handoff recover`: what a dead supervisor's desk resources left.

A desk journal (``<run>/journal/desk/<profile>[+part].json``, under the named
lock ``desk-<profile>[+part]``) records Looking Glass's shm file, USB nodes
handed to vm.user, the sound user's ACL entries for vm.user and virtiofsd's
pid. While the recorded QEMU runs it uses them all: the journal is left
alone. Otherwise each helper still running is ended, each file removed, each
node and ACL entry given back. Registered in :mod:`handoff.session.recovery`.
"""

from __future__ import annotations

from collections.abc import Callable

import trio

from handoff import journal as jr
from handoff.base.host import HostPaths
from handoff.desk.journal import DeskJournal, list_desk_journals, remove_files
from handoff.journal.recover import Recoverer, recover


def desk_recoverer(paths: HostPaths) -> Recoverer[DeskJournal]:
    def in_use(journal: DeskJournal) -> str | None:
        pid = journal.qemu_pid
        if pid is None or not jr.process_alive(paths, pid, journal.qemu_start_time):
            return None
        used = ", ".join(journal.files + [n.path for n in journal.nodes]
                         + [a[0] for a in journal.acls]
                         + [f"its helper pid {p}" for p, _ in journal.pids])
        return (f"its QEMU (pid {pid}) still uses {used}; stop it (`kill {pid}`), then run "
                "`handoff recover` again")

    async def finish(journal: DeskJournal) -> list[str]:
        done = await trio.to_thread.run_sync(remove_files, journal, paths)
        what = "gave back" if journal.path.stem != journal.profile else "removed"
        return [f"{what} {', '.join(done) or 'nothing (already gone)'} of {journal.profile}"]

    return Recoverer(
        name="desk",
        journals=lambda: list_desk_journals(paths),
        load=DeskJournal.load,
        lock=lambda journal: jr.lock_named(paths, journal.lock, "handoff recover",
                                           f"the desk files of {journal.profile}"),
        finish=finish,
        in_use=in_use,
        after_reboot="its files went with it (/dev/shm and /run are tmpfs)",
    )


def recover_desk(paths: HostPaths, report: Callable[[str], None]) -> bool:
    """The desk's recoverer alone, outside an event loop; True when nothing was left."""
    result = trio.run(recover, paths, [desk_recoverer(paths)])
    for line in result.lines():
        report(line)
    return result.ok
