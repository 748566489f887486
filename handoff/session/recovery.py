"""`handoff recover`: every capability's recoverer, composed in one fixed order.

The policy (earlier boot, locks, in use, finish) is
:mod:`handoff.journal.recover`'s; each capability says what is its own in
one ``<capability>/recovery.py``. This module is the one place they are
registered, in this order, each for a reason:

1. GPU hand-off (:mod:`handoff.pci.recovery`): devices back on their host
   drivers; a display needs its card back before anything else.
2. live GPU groups (:mod:`handoff.live.recovery`): the same engine, but left
   in the guest while the recorded QEMU still holds the group.
3. tuning (:mod:`handoff.tune.recovery`): hugepage pools, governors,
   AllowedCPUs= back, once no QEMU uses them.
4. desk (:mod:`handoff.desk.recovery`): Looking Glass's shm file, USB nodes,
   the sound user's ACL entries, a virtiofsd whose QEMU never came.
5. host display (:mod:`handoff.display.recovery`): framebuffer, consoles,
   units, last: the card must be back on its driver.

A new capability (a TPM emulator's state, a shared-memory file) adds its
``recovery.py`` and one line to :func:`recoverers` (ARCHITECTURE.md, "Where
a new capability goes").
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from handoff import journal as jr
from handoff.base import systemctl
from handoff.base.host import HostPaths
from handoff.desk.recovery import desk_recoverer
from handoff.display.recovery import display_recoverer
from handoff.display.resource import ReturnCard
from handoff.journal.recover import Recoverer, RecoveryReport, recover
from handoff.live.recovery import live_recoverer
from handoff.pci.engine import Engine
from handoff.pci.ops import SysfsWriter
from handoff.pci.recovery import gpu_recoverer
from handoff.tune.recovery import tuning_recoverer
from handoff.tune.settings import Systemd


def card_return(paths: HostPaths, writer: SysfsWriter) -> ReturnCard:
    """The display's "finish this profile's GPU journal again" (after a reset)."""

    async def return_card(profile: str) -> list[str]:
        path = jr.journal_path(paths, profile)
        if not path.exists():
            return []
        engine = Engine(paths, writer)
        return (await recover(paths, [gpu_recoverer(engine)], only=path)).lines()

    return return_card


def recoverers(
    paths: HostPaths,
    writer: SysfsWriter,
    *,
    runner: systemctl.Runner | None = None,
    report: Callable[[str], None] = print,
) -> list[Recoverer[Any]]:
    """Every capability's recoverer, in the order of the module docstring.

    ``runner``: the systemctl edge (the tuning's AllowedCPUs=, the display's units).
    """
    engine = Engine(paths, writer)
    systemd = runner or systemctl.SubprocessRunner()
    return [
        gpu_recoverer(engine),
        live_recoverer(engine),
        tuning_recoverer(paths, writer, Systemd(paths, systemd)),
        desk_recoverer(paths),
        display_recoverer(paths, writer, systemd, report, card_return(paths, writer)),
    ]


async def recover_host(
    paths: HostPaths,
    writer: SysfsWriter,
    *,
    runner: systemctl.Runner | None = None,
    report: Callable[[str], None] = print,
) -> RecoveryReport:
    """Finish every journal a dead supervisor left, every capability in order."""
    found = recoverers(paths, writer, runner=runner, report=report)
    return await recover(paths, found)


async def run_recover(
    paths: HostPaths,
    writer: SysfsWriter,
    *,
    out: Callable[[str], None],
    runner: systemctl.Runner | None = None,
) -> int:
    """`handoff recover`: its lines to ``out``; 0 when nothing was left alone or failed."""
    result = await recover_host(paths, writer, runner=runner, report=out)
    for line in result.lines():
        out(line)
    return 0 if result.ok else 1
