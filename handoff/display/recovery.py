"""The host display's part of `handoff recover`: a display a dead supervisor took, back.

A display journal (``<run>/journal/display/<profile>.json``, under the
named lock ``display-<profile>``) is finished by the same
:class:`handoff.display.resource.Restorer` a session's release uses: the
card back on its driver (else one reset and the GPU journal finished again,
through ``return_card``), the framebuffer and consoles bound, the units
started. Registered after the GPU hand-off (:mod:`handoff.session.recovery`): the
card's group must be back on the host first.
"""

from __future__ import annotations

from handoff import journal as jr
from handoff.base import systemctl
from handoff.base.host import HostPaths
from handoff.display.journal import DisplayJournal, list_display_journals, lock_stem
from handoff.display.resource import Report, Restorer, ReturnCard
from handoff.journal.recover import Recoverer
from handoff.pci.ops import SysfsWriter


def display_recoverer(
    paths: HostPaths, writer: SysfsWriter, runner: systemctl.Runner, report: Report,
    return_card: ReturnCard,
) -> Recoverer[DisplayJournal]:
    """The host display's recoverer; ``report`` gets the restore's steps as they happen."""
    restorer = Restorer(paths, writer, runner, report, return_card)

    async def finish(journal: DisplayJournal) -> list[str]:
        await restorer.restore(journal)
        return [f"the host display of {journal.profile} ({journal.card})"]

    return Recoverer(
        name="host display",
        journals=lambda: list_display_journals(paths),
        load=lambda path: DisplayJournal.load(path, paths.proc),
        lock=lambda journal: jr.lock_named(
            paths, lock_stem(journal.profile), "handoff recover",
            f"the host display of {journal.profile}",
        ),
        finish=finish,
        after_reboot="the boot restored the display",
    )
