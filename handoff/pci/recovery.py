"""The GPU hand-off's part of `handoff recover`: its journals, finished by the engine.

A device journal (``<run>/journal/<name>.json``, a session's or a manual
`handoff detach`'s) is finished by returning its devices through
:meth:`handoff.pci.engine.Engine.give_back` under its groups' locks, by
:mod:`handoff.journal.recover`'s policy (earlier boot: discarded; locked:
left; its recorded QEMU still running: left, its devices are in use).
A live group's journal (``live`` set) is :mod:`handoff.live.recovery`'s,
a capability's own journal (``<profile>+<tag>``) that capability's. It never
writes sysfs itself.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from handoff import journal as jr
from handoff.journal.record import device_recoverer, qemu_in_use
from handoff.journal.recover import Recoverer, RecoveryReport
from handoff.journal.recover import recover as recover_journals
from handoff.pci.engine import Engine


def gpu_recoverer(engine: Engine) -> Recoverer[jr.Journal]:
    """The GPU hand-off's recoverer: device journals without a live step."""
    return device_recoverer(
        engine.paths, "GPU hand-off",
        wants=lambda journal: journal.live is None,
        in_use=lambda journal: qemu_in_use(engine.paths, journal),
        finish=engine.give_back,
    )


async def recover(
    engine: Engine,
    *,
    kinds: Iterable[jr.Kind] = tuple(jr.Kind),
    groups: set[int] | None = None,
    only: Path | None = None,
) -> RecoveryReport:
    """Finish the GPU journals a dead supervisor left: of ``kinds``, touching ``groups``.

    What a session's acquire runs before it takes its own groups; `handoff
    recover` runs every capability's recoverer (:mod:`handoff.session.recovery`).
    """
    return await recover_journals(
        engine.paths, [gpu_recoverer(engine)], only=only, select=selecting(kinds, groups)
    )


def selecting(
    kinds: Iterable[jr.Kind] = tuple(jr.Kind), groups: set[int] | None = None
) -> Callable[[jr.Journal], bool]:
    """Journals of ``kinds`` touching one of ``groups`` (None: any)."""
    wanted = frozenset(kinds)

    def select(journal: jr.Journal) -> bool:
        touches = groups is None or bool(groups.intersection(journal.groups))
        return journal.kind in wanted and touches

    return select
